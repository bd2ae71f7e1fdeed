"""Helpers for tests that run real processes: free ports, condition waits, and
processes that are always torn down by PID. Brokers come from `zstream.testing`
(``cluster``, ``Broker``), the same module users test their own code with;
``running_brokers`` and ``BrokerProcess`` are this suite's former names for it."""

from tests.support.broker import (
    BrokerProcess,
    answers_metadata,
    bootstrap_of,
    broker_removed,
    running_brokers,
)
from tests.support.etcd import EtcdServer
from tests.support.proc import ManagedProcess, free_port, wait_until, wait_until_async

__all__ = [
    "BrokerProcess",
    "EtcdServer",
    "ManagedProcess",
    "answers_metadata",
    "bootstrap_of",
    "broker_removed",
    "free_port",
    "running_brokers",
    "wait_until",
    "wait_until_async",
]
