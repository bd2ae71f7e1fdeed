#!/bin/sh
# The Debian packages only the benchmarks need (`make bench`), installed when missing.
# nats-server: the peer system of bench/peers.py, which starts its own 3-node cluster.
exec sh "$(dirname "$0")/apt-deps.sh" bench-deps nats-server=nats-server
