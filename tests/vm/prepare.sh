#!/usr/bin/env bash
# Fetch Debian's stock kernel (built with CONFIG_TLS=m) into a cache dir so
# tests/vm/run.sh can boot it under qemu: the host kernel may lack kTLS.
# Usage: tests/vm/prepare.sh [CACHE_DIR]   (default: <repo>/target/vm)
# Idempotent; silent when everything is already in place.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin # depmod, for users whose PATH lacks sbin

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${1:-$repo/target/vm}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
# Parallel test runs share the cache; the first one extracts, others wait.
exec 9>"$cache/.lock"
flock 9

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Host tools: qemu to boot, busybox-static as the guest userland, cpio for
# the initramfs, kmod for depmod (the .deb ships no modules.dep: its postinst
# would have generated one).
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
# Only the static build runs in a guest that has no libc of its own.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q ' installed' ||
	missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
command -v depmod >/dev/null || missing+=(kmod)
if [ ${#missing[@]} -gt 0 ]; then
	echo "prepare.sh: installing ${missing[*]}" >&2
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The fast path: the marker names the extracted kernel, written only after a
# complete extraction, so an interrupted run is redone rather than trusted.
if [ -f "$cache/kernel.env" ]; then
	# shellcheck source=/dev/null
	. "$cache/kernel.env"
	if [ -f "${VM_VMLINUZ:-}" ] && [ -d "${VM_MODULES:-}" ]; then exit 0; fi
fi

# Follow the metapackage so we track whatever kernel bookworm currently ships.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
	awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
	as_root apt-get update -qq
	pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "prepare.sh: cannot resolve linux-image-amd64" >&2; exit 1; }
ver=${pkg#linux-image-}

echo "prepare.sh: fetching $pkg into $cache" >&2
rm -rf "$cache/root" "$cache"/linux-image-*.deb
# Download only (never install into /boot); the sandbox user option keeps apt
# from warning when _apt cannot write into a root-owned cache directory.
(cd "$cache" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
dpkg -x "$cache"/"$pkg"_*.deb "$cache/root"
rm -f "$cache"/"$pkg"_*.deb # 70 MB we no longer need; the tree is what we use

vmlinuz=$cache/root/boot/vmlinuz-$ver
modules=$cache/root/lib/modules/$ver
if ! [ -f "$vmlinuz" ] || ! [ -d "$modules/kernel/net/tls" ]; then
	echo "prepare.sh: $pkg lacks vmlinuz or net/tls modules" >&2
	exit 1
fi
# The package's postinst would have run depmod; run.sh needs modules.dep to
# pull in the dependencies of the modules it copies into the guest.
depmod -b "$cache/root" "$ver"
printf 'VM_KVER=%q\nVM_VMLINUZ=%q\nVM_MODULES=%q\n' "$ver" "$vmlinuz" "$modules" >"$cache/kernel.env"
echo "prepare.sh: kernel $ver ready" >&2
