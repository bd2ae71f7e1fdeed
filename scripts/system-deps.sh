#!/bin/sh
# Installs the Debian packages the tests and `make run` need, when missing.
# etcd-server: member discovery for the broker (tests start their own etcd
# on free loopback ports; the packaged service is never started here).
set -eu
missing=""
command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: need root to install:$missing (run: sudo apt-get install$missing)" >&2
    exit 1
fi
echo "system-deps: installing$missing"
# Keep the package's own service from starting: tests run their own etcd.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
