"""Topic retention on a real broker: retention_bytes moves the log start in whole
segments, a consumer behind it skips to the new start, and the newest records stay."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support import wait_until_async
from zstream.clients import (
    Admin,
    ClusterClient,
    Consumer,
    DescribeTopicRequest,
    FetchRequest,
    OffsetOutOfRangeError,
    Producer,
    TopicPartition,
    ZStreamError,
)
from zstream.testing import Broker, ClusterFactory

pytestmark = pytest.mark.integration

SEGMENT_BYTES = 64 * 1024
RETENTION_BYTES = 2 * SEGMENT_BYTES


@pytest.fixture
def broker(tmp_path: Path, zstream_cluster_factory: ClusterFactory) -> Broker:
    config = tmp_path / "broker.toml"
    config.write_text("retention_check_ms = 100\n")
    return zstream_cluster_factory(extra_args=[f"--config={config}"]).broker(1)


async def test_retention_bytes_moves_the_log_start_and_consumers_follow(
    broker: Broker,
) -> None:
    topic, tp = "retained", TopicPartition("retained", 0)
    async with Admin(broker.bootstrap) as admin:
        await admin.create_topic(
            topic,
            partitions=1,
            configs={"segment_bytes": SEGMENT_BYTES, "retention_bytes": RETENTION_BYTES},
        )
        async with Producer(broker.bootstrap, linger_ms=0) as producer:
            # 1 KiB records in batches of 16 (16 KiB): about ten 64 KiB segments.
            for i in range(0, 640, 16):
                values = [b"%05d" % n + b"x" * 1019 for n in range(i, i + 16)]
                for sent in producer.send_many(topic, values, partition=0):
                    await sent

        async def log_start() -> int:
            doc = await admin.describe_topic(topic)
            start: int = doc["partitions"][0]["log_start"]
            return start

        async def trimmed() -> bool:
            return await log_start() > 0

        await wait_until_async(trimmed, 20, "retention to move the log start")
        start = await log_start()
        # Whole segments went, and at least retention_bytes of the newest stayed.
        assert 0 < start <= 640 - RETENTION_BYTES // 1024

    for mode in ("fetch", "stream"):
        async with Consumer(broker.bootstrap, mode=mode) as consumer:
            with pytest.raises(OffsetOutOfRangeError) as info:
                await consumer.cluster.call_leader(topic, 0, FetchRequest(topic, 0, 0))
            assert info.value.details["start"] >= start
            consumer.assign([tp])
            consumer.seek(tp, 0)  # below the log start: the consumer skips to it
            first = await asyncio.wait_for(consumer.getone(), 20)
            assert first.offset >= start, mode
            assert first.value.startswith(b"%05d" % first.offset)
            assert (await asyncio.wait_for(consumer.getone(), 20)).offset == first.offset + 1


async def test_altered_retention_moves_the_log_start_on_every_replica(
    tmp_path: Path, zstream_cluster_factory: ClusterFactory
) -> None:
    """A topic created without retention, altered to retention_bytes: each of its three
    replicas (leader and followers) moves its own log start."""
    config = tmp_path / "broker.toml"
    config.write_text("retention_check_ms = 100\n")
    cluster = zstream_cluster_factory(3, extra_args=[f"--config={config}"])
    brokers, bootstrap = cluster.brokers, cluster.bootstrap
    topic = "altered"
    async with Admin(bootstrap) as admin:
        await admin.create_topic(
            topic, partitions=1, replication_factor=3, configs={"segment_bytes": SEGMENT_BYTES}
        )
        async with Producer(bootstrap, linger_ms=0) as producer:
            for i in range(0, 640, 16):
                values = [b"%05d" % n + b"x" * 1019 for n in range(i, i + 16)]
                for sent in producer.send_many(topic, values, partition=0):
                    await sent
        starts = await _local_starts(brokers, topic)
        assert starts == [0, 0, 0]  # no retention yet: nothing goes
        doc = await admin.alter_topic(topic, {"retention_bytes": RETENTION_BYTES})
        assert doc["configs"] == {
            "segment_bytes": SEGMENT_BYTES,
            "retention_bytes": RETENTION_BYTES,
        }
        assert (await admin.describe_topic(topic))["configs"] == doc["configs"]

        async def all_trimmed() -> bool:
            return all(s > 0 for s in await _local_starts(brokers, topic))

        await wait_until_async(all_trimmed, 30, "every replica to move its log start")
        assert all(s <= 640 - RETENTION_BYTES // 1024 for s in await _local_starts(brokers, topic))


async def _local_starts(brokers: Sequence[Broker], topic: str) -> list[int]:
    """Each broker's own log start of partition 0 (-1 when it does not answer)."""
    out = []
    async with ClusterClient(",".join(b.bootstrap for b in brokers), timeout_s=2) as client:
        for b in brokers:
            try:
                reply = await client.connection(b.client_addr).call(DescribeTopicRequest(topic))
            except ZStreamError:
                out.append(-1)
                continue
            out.append(reply.result["partitions"][0]["local_start"])
    return out
