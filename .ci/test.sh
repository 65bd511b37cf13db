#!/usr/bin/env bash
# ringecho's test command (the README's): installs what the tests need on a
# fresh Debian machine, then runs formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# The browser test drives Debian's Chromium, the deployment test checks the
# systemd unit with systemd-analyze, the proxy tests put nginx (TLS with an
# openssl certificate) in front of one server and HAProxy in front of two;
# the permessage-deflate tests use Python's websockets as a compressing
# client; they fail (never skip) without them. The kernel TLS test
# (tests/ktls.rs) installs what it needs itself (tests/vm/prepare.sh: qemu,
# busybox-static, and Debian's kernel, which has the tls module, unpacked
# under target/vm) and boots that kernel under qemu.
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
/usr/bin/python3 -c 'import websockets' >/dev/null 2>&1 || need+=(python3-websockets)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi
for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test (release: the load and size tests want an optimised server)"
cargo test --workspace --release
# The same socket suites again on the other shells (the default, ring, ran
# above): every shell drives the one engine, so every rule must hold on each.
for io in tokio-uring epoll; do
    echo "== socket suites on --io $io"
    RINGECHO_IO=$io cargo test --release -p ringecho \
        --test echo --test echo_rules --test hostile --test lifecycle --test browser --test proxy --test metrics --test logs --test deflate --test tls
done
