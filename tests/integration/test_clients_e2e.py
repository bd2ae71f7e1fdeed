"""Producer and Consumer end to end on a real three-broker cluster (etcd discovery,
replication factor 3, fsync on): 100,000 records over six partitions, and kill -9 of
a partition leader under an idempotent producer and under a stream consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import EtcdServer, wait_until_async
from zstream.clients import Admin, ClusterClient, Consumer, Producer, Record, TopicPartition
from zstream.testing import Cluster, cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def three(tmp_path: Path, etcd: EtcdServer) -> Iterator[Cluster]:
    with cluster(3, path=tmp_path, etcd=etcd.endpoint) as brokers:
        yield brokers


async def _create(bootstrap: str, name: str, partitions: int) -> None:
    async with Admin(bootstrap) as admin:
        await admin.create_topic(name, partitions=partitions, replication_factor=3)


async def _leader(bootstrap: str, topic: str, partition: int) -> int:
    leader = 0
    async with ClusterClient(bootstrap, timeout_s=2) as client:

        async def known() -> bool:
            nonlocal leader
            meta = await client.refresh([topic])
            alive = {b["id"] for b in meta["brokers"] if b["alive"]}
            reported = client.topic(topic)["partitions"][partition]["leader"]
            leader = reported if reported in alive else 0
            return leader > 0

        await wait_until_async(known, 30, f"a leader for {topic}/{partition}")
    return leader


async def _take(consumer: Consumer, n: int, timeout_s: float) -> list[Record]:
    async def take() -> list[Record]:
        return [await consumer.getone() for _ in range(n)]

    return await asyncio.wait_for(take(), timeout_s)


async def test_100k_records_over_six_partitions_arrive_once_and_in_order(
    three: Cluster,
) -> None:
    bootstrap = three.bootstrap
    await _create(bootstrap, "bulk", 6)
    total = 100_000
    async with Producer(bootstrap, linger_ms=5, batch_bytes=64 * 1024) as producer:
        futures = [producer.send("bulk", str(i).encode()) for i in range(total)]
        await producer.flush()
        metas = [await f for f in futures]
    assert len({m.partition for m in metas}) == 6  # the sticky partitioner moved on
    async with Consumer(bootstrap) as consumer:
        await consumer.subscribe(["bulk"])
        records = await _take(consumer, total, 60)
    assert sorted(int(r.value) for r in records) == list(range(total))  # each exactly once
    by_partition: dict[int, list[Record]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append(r)
    for partition, got in by_partition.items():
        offsets = [r.offset for r in got]
        assert offsets == list(range(len(got))), partition
        values = [int(r.value) for r in got]
        assert values == sorted(values), partition  # in the order produced
    # each send's metadata names where its record landed
    at = {(r.partition, r.offset): r.value for r in records}
    assert all(at[(m.partition, m.offset)] == str(i).encode() for i, m in enumerate(metas))


async def test_leader_killed_under_an_idempotent_producer_no_duplicate_no_loss(
    three: Cluster,
) -> None:
    bootstrap = three.bootstrap
    await _create(bootstrap, "idem", 1)
    first = await _leader(bootstrap, "idem", 0)
    total = 3000
    async with Producer(bootstrap, linger_ms=2, batch_bytes=2048, request_timeout_ms=3000) as p:
        futures = []
        killed = False
        for i in range(total):
            futures.append(p.send("idem", f"r{i}".encode()))
            if i % 50 == 49:
                await futures[-1]  # pace the sender: batches keep flowing through the kill
            if i == 1000:
                three.kill(first)  # SIGKILL
                killed = True
        await p.flush()
        metas = [await f for f in futures]
    assert killed
    assert [m.offset for m in metas] == list(range(total))
    assert await _leader(bootstrap, "idem", 0) != first
    async with Consumer(bootstrap) as consumer:
        consumer.assign([TopicPartition("idem", 0)])
        records = await _take(consumer, total, 60)
        assert [r.value for r in records] == [f"r{i}".encode() for i in range(total)]
        assert consumer.lag(TopicPartition("idem", 0)) == 0


async def test_leader_killed_under_a_stream_consumer_no_gap_no_duplicate(
    three: Cluster,
) -> None:
    bootstrap = three.bootstrap
    await _create(bootstrap, "watched", 1)
    first = await _leader(bootstrap, "watched", 0)
    tp = TopicPartition("watched", 0)
    async with (
        Producer(bootstrap, linger_ms=2, request_timeout_ms=3000) as producer,
        Consumer(bootstrap, credit_bytes=8192, stream_silence_ms=2000) as consumer,
    ):
        consumer.assign([tp])
        for i in range(1000):
            producer.send("watched", f"v{i}".encode())
        await producer.flush()
        seen = await _take(consumer, 500, 30)
        three.kill(first)  # SIGKILL under the stream
        for i in range(1000, 2000):
            producer.send("watched", f"v{i}".encode())
        await producer.flush()
        seen += await _take(consumer, 1500, 60)
    assert [r.offset for r in seen] == list(range(2000))
    assert [r.value for r in seen] == [f"v{i}".encode() for i in range(2000)]
