#!/usr/bin/env bash
# The CRI conformance suite (critest v1.26.1, or v1.36.0 with CRITEST_VERSION=1.36; unmodified,
# from ../shared/cri-tools) against the workspace's own stratad build. Starts a local registry with critest's stand-in images,
# a daemon that mirrors registry.k8s.io, gcr.io and k8s.gcr.io to it, runs the whole suite,
# prints the summary and fails when a spec listed in tests/critest-passing.txt (for v1.36:
# tests/critest-1.36-passing.txt) did not pass.
# Cleans up the daemon, its containers and mounts, and the registry, also when it fails.
#
# Env: STRATAD (default target/debug/stratad), KEEP_OUT=1 keeps the results directory,
#      FOCUS/SKIP as for run-critest.sh (SKIP always includes the digest-pinned public image).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

kit=$(cd "$top/../shared/cri-tools" 2>/dev/null && pwd) || {
    echo "critest.sh: ../shared/cri-tools (the conformance kit) is missing beside the checkout" >&2
    exit 1
}
stratad=${STRATAD:-$top/target/debug/stratad}
[ -x "$stratad" ] || { echo "critest.sh: $stratad is not built (cargo build --workspace)" >&2; exit 1; }
version=${CRITEST_VERSION:-1.26}
case "$version" in
    1.26) suffix='' ;;
    1.36) suffix='-1.36' ;;
    *) echo "critest.sh: CRITEST_VERSION is 1.26 or 1.36, not $version" >&2; exit 1 ;;
esac
expected=$top/tests/critest${suffix}-passing.txt
[ -f "$expected" ] || { echo "critest.sh: $expected is missing" >&2; exit 1; }

bin=$top/target/cri-tools
"$kit/install.sh" "$bin" >/dev/null
crictl=$bin/crictl${suffix}

# The registry keeps its images across runs (images.sh skips tags it already has).
cache=/var/tmp/strata-critest
mkdir -p "$cache/registry" "$cache/work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
registry=127.0.0.1:$port
work=$(mktemp -d /tmp/strata-critest-XXXXXX)
daemon_pid='' registry_pid=''
# portmap's node-wide chains: removed at the end if the machine had none before.
had_portmap=0
tests/portmap-chains.sh present && had_portmap=1

cleanup() {
    set +e
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        # Containers outlive the daemon by design: remove them while it still answers.
        "$crictl" --timeout 30s -r "unix://$work/run/strata.sock" rmp -fa >/dev/null 2>&1
        kill -TERM "$daemon_pid"
        for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null
    fi
    # Anything critest's failures left: what runs in the daemon's cgroups (containers,
    # execs, PID-namespace holders), monitors (their command line names the root),
    # mounts, cgroups.
    cgroups=$(ls -d /sys/fs/cgroup/*/strata-critest-$$ /sys/fs/cgroup/strata-critest-$$ 2>/dev/null)
    for d in $cgroups; do
        find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null
    done
    pkill -KILL -f "__monitor $work/" 2>/dev/null
    sleep 0.5
    grep -F " $work/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
    for d in $cgroups; do
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    # The pods' DEL removed their rules; what a killed daemon left is removed here.
    for t in nat filter; do
        rules=$(iptables -w -t "$t" -S 2>/dev/null | grep -F "name: \\\"strata-critest-$$\\\"" | grep '^-A')
        while read -r rule; do [ -n "$rule" ] && sh -c "iptables -w -t $t -D ${rule#-A }"; done <<< "$rules"
        for chain in $(grep -o -- '-j CNI-[0-9a-fDN-]*' <<< "$rules" | awk '{print $2}' | sort -u); do
            iptables -w -t "$t" -F "$chain" && iptables -w -t "$t" -X "$chain"
        done
    done
    [ -n "${bridge:-}" ] && ip link del "$bridge" 2>/dev/null
    [ "$had_portmap" = 1 ] || tests/portmap-chains.sh remove
    [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
    if [ "${KEEP_OUT:-}" = 1 ]; then echo "critest.sh: results kept in $work/out"; else rm -rf "$work"; fi
}
trap cleanup EXIT

cat > "$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $cache/registry
http:
  addr: $registry
EOF
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do curl -fs "http://$registry/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://$registry/v2/" >/dev/null || { echo "critest.sh: the registry did not start" >&2; cat "$work/registry.log" >&2; exit 1; }

WORK=$cache/work "$kit/images.sh" "$registry" > "$work/images.log" 2>&1 || {
    echo "critest.sh: building critest's images failed:" >&2; tail -20 "$work/images.log" >&2; exit 1; }

cat > "$work/config.toml" <<EOF
root = "$work/root"
state_dir = "$work/run"
socket = "$work/run/strata.sock"
cgroup_parent = "strata-critest-$$"
[cni]
conf_dir = "$work/cni"
bin_dirs = ["/usr/lib/cni"]
[registries."registry.k8s.io"]
mirrors = ["http://$registry"]
[registries."k8s.gcr.io"]
mirrors = ["http://$registry"]
[registries."gcr.io"]
mirrors = ["http://$registry"]
EOF
# The pods' network: Debian's reference plugins on a bridge of the run's own, its leases in
# the run's directory. critest maps host ports on 127.0.0.1, which portmap's snat serves.
bridge=stcrit$(( $$ % 100000 ))
mkdir -p "$work/cni"
cat > "$work/cni/10-critest.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "strata-critest-$$", "plugins": [
  {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$work/leases",
            "ranges": [[{"subnet": "10.249.$(( $$ % 250 )).0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
  {"type": "loopback"}]}
EOF
"$stratad" --config "$work/config.toml" > "$work/stratad.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 200); do "$crictl" -r "unix://$work/run/strata.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
"$crictl" -r "unix://$work/run/strata.sock" version >/dev/null || {
    echo "critest.sh: stratad did not start" >&2; tail -20 "$work/stratad.log" >&2; exit 1; }

skip='public image with digest'
[ -n "${SKIP:-}" ] && skip="$skip|$SKIP"
started=$(date +%s)
set +e
OUT=$work/out SKIP=$skip CRITEST=$bin/critest${suffix} TIMEOUT=${TIMEOUT:-30m} \
    "$kit/run-critest.sh" "unix://$work/run/strata.sock" "$registry"
code=$?
set -e
echo "critest $version: $(( $(date +%s) - started )) s, exit code $code"

report=$work/out/report.json
[ -s "$report" ] || { echo "critest.sh: critest wrote no report" >&2; tail -30 "$work/out/critest.log" >&2; exit 1; }
jq -r '.[].SpecReports[] | select(.LeafNodeType == "It") | select(.State == "passed")
       | ([.ContainerHierarchyTexts[], .LeafNodeText] | join(" "))' "$report" | sort -u > "$work/passed.txt"
passed=$(wc -l < "$work/passed.txt")

# A spec that passed before must pass now; one that passes now for the first time is news.
regressed=$(comm -23 <(grep -v '^#' "$expected" | sed '/^$/d' | sort -u) "$work/passed.txt")
new=$(comm -13 <(grep -v '^#' "$expected" | sed '/^$/d' | sort -u) "$work/passed.txt")
if [ -n "$new" ]; then
    echo "critest $version: passing now, not yet in ${expected#$top/} (add them):"
    printf '%s\n' "$new" | sed 's/^/  /'
fi
if [ -n "$regressed" ]; then
    echo "critest $version: FAILED: these specs passed before and do not now:"
    printf '%s\n' "$regressed" | sed 's/^/  /'
    echo "critest: the daemon's log ends:"; tail -40 "$work/stratad.log"
    echo "$passed passed, $(printf '%s\n' "$regressed" | wc -l) failed"
    exit 1
fi
echo "critest $version: every spec of ${expected#$top/} passed ($passed specs passed)"
