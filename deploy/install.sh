#!/usr/bin/env bash
# Installs strata as a systemd service, or removes it. Run as root from a checkout.
#
#   deploy/install.sh                   build (release), install, enable and start stratad
#   deploy/install.sh --uninstall       stop it and remove what the install put there
#
# Options:
#   --prefix DIR      binaries in DIR/bin, documents in DIR/share/doc/strata (/usr/local)
#   --sysconfdir DIR  the config (DIR/strata), the unit (DIR/systemd/system) and the
#                     tmpfiles entry (DIR/tmpfiles.d) (/etc)
#   --bin-dir DIR     install the stratad and stratactl found in DIR instead of building
#   --no-start        install, but neither enable nor start the service
#
# Running it again changes nothing that is already in place. An edited config is never
# overwritten (the shipped one is put beside it as config.toml.default) and never removed.
# Images and containers (/var/lib/strata) are left alone. Every step is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
sysconfdir=/etc
bin_dir=
start=1
uninstall=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --sysconfdir) sysconfdir=${2:?--sysconfdir needs a directory}; shift 2 ;;
        --sysconfdir=*) sysconfdir=${1#*=}; shift ;;
        --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
        --bin-dir=*) bin_dir=${1#*=}; shift ;;
        --no-start) start=0; shift ;;
        --uninstall) uninstall=1; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
for dir in "$prefix" "$sysconfdir"; do
    case "$dir" in
        /*) ;;
        *) echo "install.sh: $dir: give an absolute path" >&2; exit 2 ;;
    esac
done

bindir=$prefix/bin
docdir=$prefix/share/doc/strata
confdir=$sysconfdir/strata
unit=$sysconfdir/systemd/system/stratad.service
tmpfiles=$sysconfdir/tmpfiles.d/strata.conf
# systemctl only where systemd runs the machine, and only for the machine's own /etc.
systemd=0
if [ -d /run/systemd/system ] && [ "$sysconfdir" = /etc ]; then
    systemd=1
fi

say() { printf '%-10s %s\n' "$1" "$2"; }

# put MODE SOURCE TARGET: install SOURCE as TARGET unless it is already there.
put() {
    local mode=$1 source=$2 target=$3
    if [ -e "$target" ] && cmp -s "$source" "$target"; then
        say unchanged "$target"
        return 1
    fi
    local verb=installed
    [ -e "$target" ] && verb=updated
    install -D -m "$mode" "$source" "$target"
    say "$verb" "$target"
}

# gone TARGET: remove TARGET if it is there.
gone() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -f "$1"
        say removed "$1"
    fi
}

if [ "$uninstall" = 1 ]; then
    if [ "$systemd" = 1 ] && systemctl list-unit-files stratad.service >/dev/null 2>&1; then
        systemctl disable --now stratad.service >/dev/null 2>&1 || true
        say stopped stratad.service
    fi
    gone "$bindir/stratad"
    gone "$bindir/stratactl"
    gone "$unit"
    gone "$tmpfiles"
    gone "$docdir/KUBELET.md"
    gone "$docdir/config.toml"
    gone "$docdir/10-strata.conflist"
    rmdir "$docdir" 2>/dev/null || true
    if [ -e "$confdir/config.toml" ]; then
        if cmp -s deploy/config.toml "$confdir/config.toml"; then
            gone "$confdir/config.toml"
        else
            say kept "$confdir/config.toml (edited)"
        fi
    fi
    gone "$confdir/config.toml.default"
    rmdir "$confdir" 2>/dev/null || true
    [ "$systemd" = 1 ] && systemctl daemon-reload
    say kept "/var/lib/strata (images and containers; remove it yourself if you want them gone)"
    exit 0
fi

if [ -z "$bin_dir" ]; then
    # The seccomp compiler links Debian's libseccomp (libseccomp2 at run time).
    if ! dpkg-query -W -f='${Status}' libseccomp-dev 2>/dev/null | grep -q "install ok installed"; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q libseccomp-dev pkg-config
    fi
    cargo build --release --locked -p strata-agent -p strata-ctl
    bin_dir=target/release
fi
for b in stratad stratactl; do
    [ -x "$bin_dir/$b" ] || { echo "install.sh: $bin_dir/$b is missing" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
changed_unit=0
put 0755 "$bin_dir/stratad" "$bindir/stratad" || true
put 0755 "$bin_dir/stratactl" "$bindir/stratactl" || true

# The unit runs the installed binary, with the installed config when it is not /etc's.
exec_start=$bindir/stratad
[ "$sysconfdir" = /etc ] || exec_start="$exec_start --config $confdir/config.toml"
sed -e "s#^ExecStart=/usr/local/bin/stratad\$#ExecStart=$exec_start#" \
    -e "s#file:///usr/local/share/doc/strata/#file://$docdir/#" \
    deploy/stratad.service > "$work/stratad.service"
put 0644 "$work/stratad.service" "$unit" && changed_unit=1
put 0644 deploy/strata.tmpfiles "$tmpfiles" || true

# The config is the operator's once it is there.
if [ ! -e "$confdir/config.toml" ]; then
    put 0644 deploy/config.toml "$confdir/config.toml" || true
elif cmp -s deploy/config.toml "$confdir/config.toml"; then
    say unchanged "$confdir/config.toml"
else
    say kept "$confdir/config.toml (edited)"
    put 0644 deploy/config.toml "$confdir/config.toml.default" || true
fi
put 0644 deploy/KUBELET.md "$docdir/KUBELET.md" || true
put 0644 deploy/config.toml "$docdir/config.toml" || true
put 0644 deploy/cni/10-strata.conflist "$docdir/10-strata.conflist" || true

if [ "$systemd" = 1 ]; then
    systemd-tmpfiles --create "$tmpfiles"
    [ "$changed_unit" = 1 ] && systemctl daemon-reload && say reloaded systemd
fi
if [ "$systemd" = 1 ] && [ "$start" = 1 ]; then
    systemctl enable stratad.service >/dev/null 2>&1
    if [ "$changed_unit" = 1 ] || ! systemctl is-active --quiet stratad.service; then
        systemctl restart stratad.service
        say started stratad.service
    else
        say running stratad.service
    fi
    "$bindir/stratactl" version
elif [ "$start" = 0 ]; then
    say skipped "enabling and starting stratad.service (--no-start)"
else
    say skipped "enabling and starting: systemd does not run this machine (for $sysconfdir); start $bindir/stratad yourself"
fi
