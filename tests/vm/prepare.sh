#!/usr/bin/env bash
# Fetch a stock Debian kernel (built with CONFIG_TLS=m) into a cache dir so
# tests/vm/run.sh can boot it under qemu: the host kernel may lack kTLS.
# Usage: tests/vm/prepare.sh [--kernel bookworm|trixie-backports] [CACHE_DIR]
#   bookworm (default): the host's own suite, 6.1; cached in CACHE_DIR itself.
#   trixie-backports: the newest Debian kernel (>= 6.14, so kTLS accepts TLS
#     1.3 KeyUpdate rekeys); cached in CACHE_DIR/trixie-backports.
# CACHE_DIR defaults to <repo>/target/vm; VM_KERNEL sets the default kernel.
# Idempotent; silent when everything is already in place. Delete a kernel's
# kernel.env to pick up a newer upload.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin # depmod, for users whose PATH lacks sbin

die() { echo "prepare.sh: $*" >&2; exit 1; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
kernel=${VM_KERNEL:-bookworm} cache=''
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) [ $# -ge 2 ] || die "--kernel needs a value"; kernel=$2; shift 2 ;;
	--kernel=*) kernel=${1#*=}; shift ;;
	-*) die "unknown option $1 (usage: prepare.sh [--kernel bookworm|trixie-backports] [CACHE_DIR])" ;;
	*) [ -z "$cache" ] || die "more than one CACHE_DIR"; cache=$1; shift ;;
	esac
done
cache=${cache:-$repo/target/vm}
# bookworm keeps the layout this script always had, so caches and callers
# from before the choice existed keep working; others get a subdirectory.
case $kernel in
bookworm) sub='' ;;
trixie-backports) sub=/$kernel ;;
*) die "unknown kernel '$kernel' (want bookworm or trixie-backports)" ;;
esac
mkdir -p "$cache$sub"
dir=$(cd "$cache$sub" && pwd)
# Parallel test runs share the cache; the first one extracts, others wait.
# One lock per kernel, so fetching one never stalls runs that use the other.
exec 9>"$dir/.lock"
flock 9

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Host tools: qemu to boot, busybox-static as the guest userland, cpio for
# the initramfs, kmod for depmod (the .deb ships no modules.dep: its postinst
# would have generated one), xz because newer kernels compress their modules
# and busybox modprobe cannot read them that way (run.sh unpacks them).
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
# Only the static build runs in a guest that has no libc of its own.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q ' installed' ||
	missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
command -v depmod >/dev/null || missing+=(kmod)
[ "$kernel" = bookworm ] || command -v xz >/dev/null || missing+=(xz-utils)
if [ ${#missing[@]} -gt 0 ]; then
	echo "prepare.sh: installing ${missing[*]}" >&2
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The fast path: the marker names the extracted kernel, written only after a
# complete extraction, so an interrupted run is redone rather than trusted.
if [ -f "$dir/kernel.env" ]; then
	# shellcheck source=/dev/null
	. "$dir/kernel.env"
	if [ -f "${VM_VMLINUZ:-}" ] && [ -d "${VM_MODULES:-}" ]; then exit 0; fi
fi

# Which apt answers: bookworm is the host's own suite, so its configuration
# is used as is. Other suites get a private apt state under the cache (the
# host's sources must stay untouched): only that suite's index, no installed
# packages and no pins, so its metapackage resolves to its own kernel even on
# a host with a kernel installed or backports pinned low. The archive key
# still comes from the host's keyring, so downloads are verified as usual.
apt_opts=(-o APT::Sandbox::User=root) # _apt may not write into the cache dir
if [ "$kernel" != bookworm ]; then
	mirror=${VM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
	keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	[ -f "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"
	a=$dir/apt
	mkdir -p "$a/lists/partial" "$a/cache/archives/partial"
	echo "deb [signed-by=$keyring] $mirror $kernel main" >"$a/sources.list"
	: >"$a/status"
	apt_opts+=(-o "Dir::Etc::SourceList=$a/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o "Dir::State::Lists=$a/lists" -o "Dir::State::status=$a/status"
		-o "Dir::Cache=$a/cache" -o Dir::Etc::Preferences=/dev/null
		-o Dir::Etc::PreferencesParts=/dev/null)
	echo "prepare.sh: reading the $kernel index from $mirror" >&2
	# Error-Mode: a mirror that cannot be reached is an error, not a warning.
	apt-get "${apt_opts[@]}" -o APT::Update::Error-Mode=any update -qq ||
		die "apt-get update of $kernel failed (mirror $mirror; set VM_DEBIAN_MIRROR to use another)"
fi

# Follow the metapackage so we track whatever kernel the suite currently ships.
# awk reads to the end: quitting early could kill apt-cache with SIGPIPE,
# which pipefail would make fatal; and apt-cache fails outright when it has
# no index yet, which the bookworm fallback below handles.
resolve() {
	{ apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null || true; } |
		awk '/Depends: linux-image-[0-9]/ && !p {p = $2} END {print p}'
}
pkg=$(resolve)
if [ -z "$pkg" ] && [ "$kernel" = bookworm ]; then
	as_root apt-get update -qq
	pkg=$(resolve)
fi
[ -n "$pkg" ] || die "cannot resolve linux-image-amd64 in $kernel"
ver=${pkg#linux-image-}
# Newer Debian kernels (trixie-backports' 6.19 and later at least) come
# split: linux-image-$ver is empty and
# depends on linux-binary-$ver (vmlinuz), linux-modules-$ver (the modules)
# and linux-base-$ver (modules.builtin, modules.order). Older kernels have
# none of these, so for bookworm this adds nothing.
mapfile -t pkgs < <(echo "$pkg"
	{ apt-cache "${apt_opts[@]}" depends "$pkg" 2>/dev/null || true; } | awk -v v="$ver" '
		$1 ~ /Depends:$/ && ($2 == "linux-binary-" v || $2 == "linux-modules-" v ||
			$2 == "linux-base-" v) { print $2 }' | sort -u)

echo "prepare.sh: fetching ${pkgs[*]} into $dir" >&2
# Old runs left the .deb in the cache dir itself; the debs dir is new.
rm -rf "$dir/root" "$dir/debs" "$dir"/linux-image-*.deb
mkdir -p "$dir/debs"
# Download only (never install into /boot); apt checks the hashes.
(cd "$dir/debs" && apt-get "${apt_opts[@]}" download -q "${pkgs[@]}" >/dev/null) ||
	die "apt-get download ${pkgs[*]} failed"
for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$dir/root"; done
rm -rf "$dir/debs" # 70-120 MB we no longer need; the tree is what we use

# Packages moved the tree from /lib to /usr/lib with the usr merge.
vmlinuz='' modules=''
for m in "$dir/root/lib/modules/$ver" "$dir/root/usr/lib/modules/$ver"; do
	if [ -d "$m/kernel" ]; then modules=$m; fi
done
for v in "$dir/root/boot/vmlinuz-$ver" "$dir/root/usr/lib/modules/$ver/vmlinuz"; do
	if [ -f "$v" ]; then vmlinuz=$v; fi
done
if [ -z "$vmlinuz" ] || [ -z "$modules" ] || ! [ -d "$modules/kernel/net/tls" ]; then
	die "${pkgs[*]} lack vmlinuz or net/tls modules"
fi
# The package's postinst would have run depmod; run.sh needs modules.dep to
# pull in the dependencies of the modules it copies into the guest. depmod
# only looks under <base>/lib/modules, so the base is whatever holds that.
depmod -b "${modules%/lib/modules/"$ver"}" "$ver" ||
	die "depmod failed for $ver"
[ -s "$modules/modules.dep" ] || die "depmod wrote no modules.dep for $ver"
printf 'VM_KVER=%q\nVM_VMLINUZ=%q\nVM_MODULES=%q\n' "$ver" "$vmlinuz" "$modules" >"$dir/kernel.env"
echo "prepare.sh: kernel $ver ready" >&2
