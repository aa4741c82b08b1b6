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
# libseccomp-dev and pkg-config build the agent's seccomp compiler; the six after them are what
# ../shared/cri-tools needs to unpack crictl/critest and build critest's stand-in images;
# containernetworking-plugins (bridge, host-local, portmap, loopback) and iptables wire the
# network tests' pods; g++ builds libFuzzer for the fuzz targets; systemd brings systemd-analyze and
# systemd-tmpfiles, which check deploy/'s unit and tmpfiles entry.
packages=(ca-certificates docker-registry busybox-static apache2-utils curl iproute2 util-linux
          libseccomp-dev pkg-config xz-utils jq skopeo gcc libc6-dev binutils
          containernetworking-plugins iptables g++ systemd)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# The real CRI clients (unmodified cri-tools v1.26.1) the tests drive strata with.
kit=../shared/cri-tools
[ -x "$kit/install.sh" ] || { echo "tests/run.sh: $kit (the CRI conformance kit) is missing" >&2; exit 1; }
"$kit/install.sh" target/cri-tools

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the real binaries: build them before the tests look for them.
cargo build --workspace --locked
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cargo test --workspace --locked 2>&1 | tee "$out/cargo-test.log"
# The CRI conformance suites, against the same build: v1.26.1 (the old clients' `:authority`)
# and v1.36.0 (today's kubelet's CRI).
tests/critest.sh 2>&1 | tee "$out/critest.log"
CRITEST_VERSION=1.36 tests/critest.sh 2>&1 | tee -a "$out/critest.log"
# The fuzz targets, a short run of each (FUZZ_SECS, default 20 s).
tests/fuzz.sh 2>&1 | tee "$out/fuzz.log"

# One closing line for the whole suite (any failure has ended the script above): the
# cargo tests, and the critest specs that must pass.
tests=$(awk '/^test result:/ {n += $4} END {print n + 0}' "$out/cargo-test.log")
specs=$(sed -n 's/.*(\([0-9]*\) specs passed).*/\1/p' "$out/critest.log" | awk '{n += $1} END {print n + 0}')
fuzzed=$(grep -c '^fuzz: .*no crash' "$out/fuzz.log" || true)
echo "suite: $tests cargo tests and ${specs:-0} critest specs passed; $fuzzed fuzz targets ran without a crash"
echo "suite: $((tests + ${specs:-0})) passed, 0 failed"
