#!/usr/bin/env bash
# portmap makes three node-wide nat chains (CNI-HOSTPORT-DNAT, -SETMARK, -MASQ) and their jumps
# at its first ADD, and never removes them. Whoever runs portmap on a machine that had none
# removes them when done:
#   tests/portmap-chains.sh present   exits 0 if the chains are there
#   tests/portmap-chains.sh remove    removes them, unless a pod's rule is still in them
set -uo pipefail
present() { iptables -w -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1; }
case "${1:-}" in
present) present ;;
remove)
    present || exit 0
    iptables -w -t nat -S CNI-HOSTPORT-DNAT | grep -q '^-A' && exit 0
    iptables -w -t nat -S | grep -E '^-A (PREROUTING|OUTPUT|POSTROUTING) .*-j CNI-HOSTPORT-' |
        while read -r rule; do sh -c "iptables -w -t nat -D ${rule#-A }"; done
    for chain in CNI-HOSTPORT-DNAT CNI-HOSTPORT-SETMARK CNI-HOSTPORT-MASQ; do
        iptables -w -t nat -F "$chain" 2>/dev/null && iptables -w -t nat -X "$chain"
    done
    exit 0
    ;;
*) echo "usage: $0 present|remove" >&2; exit 2 ;;
esac
