#!/usr/bin/env bash
# Boot Debian's stock kernel (from tests/vm/prepare.sh) under qemu with a
# throwaway initramfs and run a shell script in it. This exists because the
# host kernel may have no kernel-TLS module; the guest's kernel does.
#
# Usage: tests/vm/run.sh [--kernel bookworm|trixie-backports] [--cache DIR]
#                        [--cpus N] [--mem MiB] [--timeout SECS]
#                        [--bin PATH]... [--file SRC:DEST]... -- 'guest script'
# --timeout covers boot too. Guest output goes to stdout, ours to stderr.
# --kernel (default $VM_KERNEL, else bookworm): see prepare.sh; the guest
# can tell which one it got from /proc/sys/kernel/osrelease.
# Exit status: the guest script's; 124 on timeout; 125 if the guest never
# reported one (kernel panic, init failure, qemu failure).
# VM_ACCEL=kvm|tcg overrides the accelerator probe.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin # depmod, for users whose PATH lacks sbin
# The body is one brace group so bash parses the whole file before running
# any of it: editing this script cannot derail runs already in progress.
{
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=$repo/target/vm cpus=2 mem=2048 limit=300 kernel=${VM_KERNEL:-bookworm}
bins=() files=()
usage() { sed -n '6,11p' "${BASH_SOURCE[0]}" | sed 's/^# //' >&2; exit 2; }
while [ $# -gt 0 ]; do
	[ $# -ge 2 ] || [ "$1" = -- ] || usage # every option takes a value
	case $1 in
	--kernel) kernel=$2; shift 2 ;;
	--cache) cache=$2; shift 2 ;;
	--cpus) cpus=$2; shift 2 ;;
	--mem) mem=$2; shift 2 ;;
	--timeout) limit=$2; shift 2 ;;
	--bin) bins+=("$2"); shift 2 ;;
	--file) files+=("$2"); shift 2 ;;
	--) shift; break ;;
	*) usage ;;
	esac
done
[ $# -gt 0 ] || usage
script=$*

# Silent no-op once done; it also rejects kernel names it does not know.
"$repo/tests/vm/prepare.sh" --kernel "$kernel" "$cache"
# The layout is prepare.sh's: bookworm in the cache dir itself, for the
# caches made before there was a choice; any other kernel in a subdirectory.
env=$cache/kernel.env
[ "$kernel" = bookworm ] || env=$cache/$kernel/kernel.env
# shellcheck source=/dev/null
. "$env"

work=$(mktemp -d "${TMPDIR:-/tmp}/ringecho-vm.XXXXXX")
# qemu runs in the background while we `wait`: a signal that arrives while
# bash blocks on a foreground pipeline is only handled once that ends, and
# `timeout` puts qemu in its own process group, out of reach of Ctrl-C.
# shellcheck disable=SC2317 # only called from the trap
cleanup() {
	if [ -s "$work/qemu.pid" ]; then kill "$(cat "$work/qemu.pid")" 2>/dev/null || true; fi
	wait || true # for tee and the status writer, before removing their files
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc}

# Busybox is the whole guest userland; its applets become symlinks at their
# canonical paths so the kernel's request_module finds /sbin/modprobe.
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list-full); do
	[ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done

# Binaries keep their host libraries at the same absolute paths, so the
# dynamic loader finds them without an ld.so.cache.
for bin in "${bins[@]}"; do
	dest=$root/bin/$(basename "$bin")
	rm -f "$dest" # may be a busybox symlink; cp would write through it
	cp -L "$bin" "$dest"
	if ldd "$bin" 2>/dev/null | grep -q 'not found'; then
		echo "run.sh: $bin needs libraries this host lacks:" >&2
		ldd "$bin" | grep 'not found' >&2
		exit 2
	fi
	for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
done
for spec in "${files[@]}"; do
	src=${spec%%:*} dst=${spec#*:}
	mkdir -p "$root$(dirname "$dst")"
	cp -a "$src" "$root$dst"
done

# Kernel modules: tls plus every crypto provider the kernel may ask for by
# alias at setsockopt(TLS_TX/RX) time (gcm(aes), ccm(aes), rfc7539(chacha20,
# poly1305), ...), plus their dependencies from the full tree's modules.dep.
kmods=$root/lib/modules/$VM_KVER
mkdir -p "$kmods"
seeds=$(cd "$VM_MODULES" && find kernel/net/tls kernel/crypto kernel/arch/x86/crypto \
	kernel/lib/crypto -name '*.ko*' 2>/dev/null)
needed=$(awk -F': ?' 'NR == FNR { want[$0] = 1; next }
	$1 in want { print $1; n = split($2, d, " "); for (i = 1; i <= n; i++) print d[i] }' \
	<(echo "$seeds") "$VM_MODULES/modules.dep" | sort -u)
(cd "$VM_MODULES" && echo "$needed" | cpio -pdm --quiet "$kmods")
cp "$VM_MODULES"/modules.{builtin,builtin.modinfo,order} "$kmods/" 2>/dev/null || true
# Busybox modprobe reads plain .ko only; newer Debian kernels compress them.
find "$kmods" -name '*.ko.xz' -exec xz -dq {} +
find "$kmods" -name '*.ko.zst' -exec zstd -dq --rm {} +
find "$kmods" -name '*.ko.gz' -exec gzip -dq {} +
# Re-index the subset so every modules.dep/alias entry names a file present.
depmod -b "$root" "$VM_KVER"

printf '%s\n' "$script" >"$root/guest.sh"
cat >"$root/init" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp
mount -t devtmpfs dev /dev
# The initramfs has no /dev/console node (making one needs root), so the
# kernel may have started us without stdio; take the console now.
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
ip link set lo up
modprobe tls || echo "VM-INIT: modprobe tls FAILED (status $?)"
ulimit -n 65536
cd /tmp
echo "VM-GUEST-START"
/bin/sh /guest.sh
status=$?
echo "VM-EXIT-STATUS=$status"
sync
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$work/initrd.gz"

# An array, not a function: `timeout` must exec it. stdin from /dev/null
# keeps qemu from putting a terminal into raw mode, so Ctrl-C still works.
set_qemu() {
	local cpu=max
	[ "$accel" = kvm ] && cpu=host
	qemu=(qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -smp "$cpus" -m "$mem"
		-nodefaults -no-user-config -display none -serial stdio -no-reboot
		-pidfile "$work/qemu.pid" -kernel "$VM_VMLINUZ" -initrd "$work/initrd.gz")
}

# /dev/kvm can exist yet be useless for a stock kernel (nested virt that
# only runs paravirtualised guests, e.g. kvm_pvm: the decompressor crawls
# for minutes), so the probe boots this kernel to userspace under a short
# deadline. The verdict is cached per host kernel: a failed probe costs 20s.
probe=$cache/accel.$(uname -r)
accel=${VM_ACCEL:-$(cat "$probe" 2>/dev/null || true)}
if [ -z "$accel" ]; then
	accel=kvm
	set_qemu
	timeout 20 "${qemu[@]}" -append "console=ttyS0 quiet panic=-1 rdinit=/bin/poweroff -- -f" \
		</dev/null >/dev/null 2>&1 &
	wait $! || accel=tcg
	rm -f "$work/qemu.pid"
	echo "$accel" >"$probe"
fi
set_qemu

log=$work/console.log
# Emulated SMP boots of newer kernels panic now and then while the kernel
# patches its own code (about 1 in 100 here), before anything of ours
# runs: such a boot, and only such a one, is tried once more.
for attempt in 1 2; do
	start=$(date +%s.%N)
	{
		timeout -k 5 "$limit" "${qemu[@]}" -append "console=ttyS0 quiet panic=-1" </dev/null
		echo $? >"$work/qemu.rc"
	} | tee "$log" &
	wait $!
	qemu_rc=$(cat "$work/qemu.rc")
	elapsed=$(echo "$(date +%s.%N) $start" | awk '{printf "%.1f", $1 - $2}')
	if [ "$attempt" -eq 1 ] && [ "$qemu_rc" -ne 124 ] && [ "$qemu_rc" -ne 137 ] &&
		! tr -d '\r' <"$log" | grep -q '^VM-GUEST-START$'; then
		echo "run.sh: the kernel stopped before the guest script (qemu exit $qemu_rc); booting again" >&2
		continue
	fi
	break
done

if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
	echo "run.sh: timed out after ${limit}s (accel=$accel)" >&2
	exit 124
fi
status=$(tr -d '\r' <"$log" | sed -n 's/^VM-EXIT-STATUS=\([0-9]*\)$/\1/p' | tail -n 1)
if [ -z "$status" ]; then
	echo "run.sh: guest reported no exit status (qemu exit $qemu_rc, accel=$accel, ${elapsed}s)" >&2
	exit 125
fi
echo "run.sh: guest exit status $status (accel=$accel, ${elapsed}s)" >&2
exit "$status"
}
