#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Debian 12, as root), checks
# formatting and lints, builds the workspace, and runs every test. Fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: the end-to-end tests need root (namespaces, mounts, cgroups)" >&2
    exit 1
fi

# Packages the tests use, from Debian's archive.
packages=(ca-certificates docker-registry busybox-static apache2-utils curl iproute2 util-linux)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the real binaries: build them before the tests look for them.
cargo build --workspace --locked
cargo test --workspace --locked
