"""Helpers for tests that run real processes: free ports, condition waits, and
processes that are always torn down by PID. Brokers come from `zstream.testing`
(``cluster``, ``Broker``), the same module users test their own code with."""

from tests.support.etcd import EtcdServer
from tests.support.proc import ManagedProcess, free_port, wait_until, wait_until_async

__all__ = [
    "EtcdServer",
    "ManagedProcess",
    "free_port",
    "wait_until",
    "wait_until_async",
]
