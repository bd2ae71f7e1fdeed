"""This suite's former broker helpers, now thin names over `zstream.testing` (the
module users test with), kept so tests written against them go on working. New
tests use `zstream.testing` directly: ``cluster(...)``, ``Broker``, the fixtures."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from zstream.clients import Admin, ZStreamError
from zstream.testing import Broker, Cluster
from zstream.testing._cluster import serves

__all__ = [
    "BrokerProcess",
    "answers_metadata",
    "bootstrap_of",
    "broker_removed",
    "running_brokers",
]


async def broker_removed(bootstrap: str, broker_id: int) -> bool:
    """Is ``broker_id`` marked removed, holding no replica, as a fresh client sees it
    (False while no broker answers)? The end condition of a decommission."""
    try:
        async with Admin(bootstrap, timeout_s=2) as admin:
            meta = await admin.describe_cluster()
    except ZStreamError:
        return False
    states = {b["id"]: b.get("state") for b in meta["brokers"]}
    held = [p["replicas"] for t in meta["topics"] for p in t["partitions"]]
    return states.get(broker_id) == "removed" and all(broker_id not in r for r in held)


def answers_metadata(addr: str, timeout_ms: int = 300) -> bool:
    """Does the broker at ``addr`` answer a metadata request (controller or not)?"""
    return serves(addr, controller=False, timeout_ms=timeout_ms)


class BrokerProcess(Broker):
    """A `zstream.testing.Broker` with the names this module used to give it."""

    @property
    def addr(self) -> str:
        return self.client_addr

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until it answers metadata (`wait_serving` also waits for a controller)."""
        self.wait_serving(timeout_s, controller=False)


class _Brokers(Cluster):
    broker_type = BrokerProcess


def bootstrap_of(brokers: Sequence[Broker]) -> str:
    """The brokers' client addresses as one bootstrap string."""
    return ",".join(b.bootstrap for b in brokers)


@contextmanager
def running_brokers(
    workdir: Path,
    count: int = 3,
    *,
    etcd: str | None = None,
    extra: Sequence[str] = (),
    ready_timeout_s: float = 30.0,
) -> Iterator[list[BrokerProcess]]:
    """``count`` brokers forming one cluster (`zstream.testing.cluster` with DEBUG
    logs, as this helper always had), stopped by PID on the way out."""
    with _Brokers(
        count,
        path=workdir,
        etcd=etcd,
        extra_args=extra,
        log_level="DEBUG",
        ready_timeout_s=ready_timeout_s,
    ) as c:
        brokers = [b for b in c.brokers if isinstance(b, BrokerProcess)]
        assert len(brokers) == count
        yield brokers
