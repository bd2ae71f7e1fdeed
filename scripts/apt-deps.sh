#!/bin/sh
# Installs Debian packages when their command is missing, without starting their
# packaged services (the tests and benchmarks start their own servers on free
# loopback ports).
#
#   sh scripts/apt-deps.sh LABEL COMMAND=PACKAGE [COMMAND=PACKAGE ...]
set -eu
label=$1
shift
missing=""
for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || missing="$missing ${pair#*=}"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "$label: need root to install:$missing (run: sudo apt-get install$missing)" >&2
    exit 1
fi
echo "$label: installing$missing"
# Keep each package's own service from starting.
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
