#!/bin/sh
# Installs the Debian packages only the benchmarks need, when missing (`make bench`).
# nats-server: the peer system of bench/peers.py, which starts its own 3-node cluster
# on free loopback ports; the packaged service is never started here.
set -eu
missing=""
command -v nats-server >/dev/null 2>&1 || missing="$missing nats-server"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "bench-deps: need root to install:$missing (run: sudo apt-get install$missing)" >&2
    exit 1
fi
echo "bench-deps: installing$missing"
# Keep the package's own service from starting: the benchmark runs its own servers.
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
