#!/usr/bin/env bash
# Builds strata and installs it as a systemd service. Run as root from a checkout.
#   deploy/install.sh            build (release), install, enable and start stratad
#   PREFIX=/opt/strata deploy/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${PREFIX:-/usr/local}
# The seccomp compiler links Debian's libseccomp (libseccomp2 at run time).
if ! dpkg-query -W -f='${Status}' libseccomp-dev 2>/dev/null | grep -q "install ok installed"; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libseccomp-dev pkg-config
fi
cargo build --release --locked -p strata-agent -p strata-ctl
install -D -m 0755 target/release/stratad "$prefix/bin/stratad"
install -D -m 0755 target/release/stratactl "$prefix/bin/stratactl"
# Keep an existing config: it is the operator's.
if [ ! -e /etc/strata/config.toml ]; then
    install -D -m 0644 deploy/config.toml /etc/strata/config.toml
fi
sed "s#/usr/local/bin/stratad#$prefix/bin/stratad#" deploy/stratad.service \
    > /etc/systemd/system/stratad.service
systemctl daemon-reload
systemctl enable --now stratad.service
"$prefix/bin/stratactl" version
