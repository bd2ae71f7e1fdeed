"""The controller's Raft log (group 0) is compacted, and a broker that was down
meanwhile gets the controller state as a Raft snapshot: three real brokers, consumer
offset commits (controller entries) while one broker is stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until, wait_until_async
from zstream.clients import Admin, ClusterClient, ListTopicsRequest, ZStreamError
from zstream.testing import Broker, cluster

pytestmark = pytest.mark.integration

COMPACT_AFTER = 64


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[Broker]]:
    config = tmp_path / "broker.toml"
    config.write_text(f"controller_compact_after = {COMPACT_AFTER}\n")
    with cluster(3, path=tmp_path, extra_args=[f"--config={config}"]) as procs:
        yield procs.brokers


async def _topics_on(broker: Broker) -> list[str]:
    async with ClusterClient(broker.bootstrap, timeout_s=2) as client:
        reply = await client.connection(broker.client_addr).call(ListTopicsRequest())
        topics: list[str] = reply.result["topics"]
        return topics


async def test_a_broker_behind_the_compacted_controller_log_gets_a_snapshot(
    brokers: list[Broker],
) -> None:
    b1, b2, b3 = brokers
    bootstrap = f"{b1.bootstrap},{b2.bootstrap}"
    async with Admin(bootstrap) as admin:
        await admin.create_topic("early", partitions=1, replication_factor=1)
        await wait_until_async(lambda: _has(b3, "early"), 20, "broker 3 to learn 'early'")
        b3.stop()
        await admin.create_topic("late", partitions=2, replication_factor=1)
        for i in range(3 * COMPACT_AFTER):
            await admin.commit_offsets("offsets-only", {("late", i % 2): i})
        wait_until(
            lambda: any("controller log compacted" in b.output() for b in (b1, b2)),
            20,
            "the controller leader to compact its log",
        )
        b3.start()
        await wait_until_async(lambda: _has(b3, "late"), 30, "broker 3 to learn 'late'")
        assert "controller state installed from a snapshot" in b3.output()
        offsets = await admin.fetch_offsets("offsets-only")
        last = 3 * COMPACT_AFTER - 1
        assert offsets == {("late", last % 2): last, ("late", (last - 1) % 2): last - 1}
    # Its own saved state brings it back after a restart, without the leader's help.
    b3.stop()
    b1.stop()
    b2.stop()
    b3.start(timeout_s=30, controller=False)  # alone: no majority, no controller
    assert {"early", "late"} <= set(await _topics_on(b3))


async def _has(broker: Broker, topic: str) -> bool:
    try:
        return topic in await _topics_on(broker)
    except ZStreamError:  # not serving yet
        return False
