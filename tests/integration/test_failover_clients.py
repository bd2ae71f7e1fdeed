"""Clients with their default timeouts notice a leader killed under them at once:
the broker's end of the connection closes, so they do not wait out
request_timeout_ms (30 s) before they look for the new leader."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support import wait_until_async
from zstream import Admin, Consumer, Producer, TopicPartition
from zstream.testing import ClusterFactory

pytestmark = pytest.mark.integration

# Far below the 30 s request timeout a client would otherwise wait, and above an
# election (about a second) plus a metadata refresh on a loaded machine.
FAILOVER_BUDGET_S = 12.0


async def _leader(bootstrap: str, topic: str) -> int:
    found: list[int] = []

    async def known() -> bool:
        async with Admin(bootstrap) as admin:
            leader = (await admin.describe_topic(topic))["partitions"][0]["leader"]
        found.append(leader)
        return leader is not None

    await wait_until_async(known, 20, f"a leader for {topic}", interval_s=0.1)
    return found[-1]


async def test_a_producer_and_a_consumer_go_on_soon_after_kill_9_of_the_leader(
    zstream_cluster_factory: ClusterFactory,
) -> None:
    c = zstream_cluster_factory(3)
    async with Admin(c.bootstrap) as admin:
        await admin.create_topic("fast", partitions=1, replication_factor=3)
    tp = TopicPartition("fast", 0)
    async with (
        Producer(c.bootstrap, linger_ms=0) as producer,
        Consumer(c.bootstrap, auto_offset_reset="earliest") as consumer,
    ):
        consumer.assign([tp])
        await producer.send("fast", b"before")
        assert (await asyncio.wait_for(consumer.getone(), 20)).value == b"before"
        leader = await _leader(c.bootstrap, "fast")
        # A request in flight at the kill, and one sent after it.
        in_flight = asyncio.ensure_future(producer.send("fast", b"during"))
        await asyncio.to_thread(c.kill, leader)
        started = time.monotonic()
        await asyncio.wait_for(producer.send("fast", b"after"), FAILOVER_BUDGET_S)
        await asyncio.wait_for(in_flight, FAILOVER_BUDGET_S)
        assert time.monotonic() - started < FAILOVER_BUDGET_S
        # The consumer's stream was on the dead leader too: it resubscribes on the
        # new one and reads on, each record once (the producer is idempotent).
        got = [
            (await asyncio.wait_for(consumer.getone(), FAILOVER_BUDGET_S)).value for _ in range(2)
        ]
        assert got == [b"during", b"after"]
