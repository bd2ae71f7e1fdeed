#!/bin/sh
# The Debian packages the tests and `make run` need, installed when missing.
# etcd-server: member discovery for the broker; iproute2: the network-namespace
# partition tests.
exec sh "$(dirname "$0")/apt-deps.sh" system-deps etcd=etcd-server ip=iproute2
