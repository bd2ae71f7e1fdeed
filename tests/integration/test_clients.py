"""Producer and Consumer against one real broker process: metadata of sends, keys
and headers, batching, stream and fetch consumption, seek, pause/resume, lag, and
the leader's idempotence table (duplicates and gaps)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until_async
from zstream import storage
from zstream.clients import (
    Acks,
    Admin,
    BlockingProducer,
    ClusterClient,
    Consumer,
    OutOfOrderSequenceError,
    Producer,
    ProduceRequest,
    Record,
    TopicPartition,
    UnknownTopicError,
)
from zstream.testing import Broker

pytestmark = pytest.mark.integration

_names = (f"t{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    node = Broker(tmp_path_factory.mktemp("clients"), 1, log_level="WARNING")
    node.start()
    try:
        yield node
    finally:
        node.stop()


async def _topic(broker: Broker, partitions: int = 1) -> str:
    name = next(_names)
    async with Admin(broker.bootstrap) as admin:
        await admin.create_topic(name, partitions=partitions, replication_factor=1)
    return name


async def _take(consumer: Consumer, n: int, timeout_s: float = 20) -> list[Record]:
    async def take() -> list[Record]:
        return [await consumer.getone() for _ in range(n)]

    return await asyncio.wait_for(take(), timeout_s)


async def test_send_returns_offsets_and_consumer_reads_keys_values_headers(
    broker: Broker,
) -> None:
    topic = await _topic(broker, partitions=3)
    async with Producer(broker.bootstrap, linger_ms=20) as producer:
        futures = [
            producer.send(topic, f"v{i}".encode(), key=b"k", headers={"h": b"x"}) for i in range(10)
        ]
        metas = [await f for f in futures]
    # one key -> one partition, consecutive offsets, one batch timestamp
    assert len({m.partition for m in metas}) == 1
    assert [m.offset for m in metas] == list(range(10))
    assert all(m.topic == topic and m.timestamp_ms > 0 for m in metas)
    async with Consumer(broker.bootstrap) as consumer:
        consumer.assign([TopicPartition(topic, metas[0].partition)])
        records = await _take(consumer, 10)
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(10)]
    assert {(r.key, r.headers) for r in records} == {(b"k", (("h", b"x"),))}
    assert [r.offset for r in records] == list(range(10))


async def test_keyless_records_stick_to_a_partition_per_batch(broker: Broker) -> None:
    topic = await _topic(broker, partitions=4)
    async with Producer(broker.bootstrap, linger_ms=1000, batch_bytes=1000) as producer:
        futures = [producer.send(topic, bytes(100)) for _ in range(40)]
        await producer.flush()
        metas = [await f for f in futures]
    partitions = [m.partition for m in metas]
    # a batch holds ~9 records of 108 bytes; each batch's records share a partition
    runs = [len(list(g)) for _, g in itertools.groupby(partitions)]
    assert len(set(partitions)) == 4
    assert all(r >= 8 for r in runs[:-1])


async def test_send_many_and_fetch_mode_and_seek(broker: Broker) -> None:
    topic = await _topic(broker)
    async with Producer(broker.bootstrap, batch_bytes=4096) as producer:
        bases = await asyncio.gather(
            *producer.send_many(topic, (str(i).encode() for i in range(1000)))
        )
    assert bases[0] == 0
    assert len(bases) > 1
    tp = TopicPartition(topic, 0)
    async with Consumer(broker.bootstrap, mode="fetch", fetch_max_bytes=2048) as consumer:
        consumer.assign([tp])
        records = await _take(consumer, 1000)
        assert [int(r.value) for r in records] == list(range(1000))
        assert consumer.position(tp) == 1000
        assert consumer.lag(tp) == 0
        consumer.seek(tp, 990)
        again = await _take(consumer, 10)
        assert [r.offset for r in again] == list(range(990, 1000))
        await consumer.seek_to_beginning(tp)
        assert (await consumer.getone()).offset == 0


async def test_stream_consumer_follows_new_records_pause_resume_and_lag(
    broker: Broker,
) -> None:
    topic = await _topic(broker)
    tp = TopicPartition(topic, 0)
    async with (
        Producer(broker.bootstrap, linger_ms=0) as producer,
        Consumer(broker.bootstrap, credit_bytes=4096) as consumer,
    ):
        consumer.assign([tp])
        for i in range(300):  # several credit grants' worth
            producer.send(topic, bytes(50) + str(i).encode())
        await producer.flush()
        first = await _take(consumer, 100)
        assert [r.offset for r in first] == list(range(100))
        consumer.pause(tp)
        assert consumer.paused() == {tp}
        assert consumer.position(tp) == 100
        # Never more than what was produced and not yet delivered (300 - 100); the
        # exact figure depends on which high watermark the last push carried.
        assert 0 <= consumer.lag(tp) <= 200
        consumer.resume(tp)
        rest = await _take(consumer, 200)
        assert [r.offset for r in rest] == list(range(100, 300))
        await producer.send(topic, b"late")
        late = await _take(consumer, 1)
        assert late[0].value == b"late"
        assert late[0].offset == 300
        await consumer.seek_to_end(tp)
        assert consumer.position(tp) == 301
        assert consumer.lag(tp) == 0


async def test_latest_reset_skips_old_records(broker: Broker) -> None:
    topic = await _topic(broker)
    async with Producer(broker.bootstrap) as producer:
        await producer.send(topic, b"old")
        async with Consumer(broker.bootstrap, auto_offset_reset="latest") as consumer:
            await consumer.subscribe([topic])
            tp = TopicPartition(topic, 0)

            async def positioned() -> bool:
                return consumer.position(tp) is not None

            await wait_until_async(positioned, 10, "the consumer to find the log end")
            await producer.send(topic, b"new")
            assert (await _take(consumer, 1))[0].value == b"new"


async def test_unknown_topic_is_a_clear_error(broker: Broker) -> None:
    async with Producer(broker.bootstrap, metadata_wait_ms=300, retry_backoff_ms=20) as producer:
        record = producer.send("no-such-topic", b"x")
        many = producer.send_many("no-such-topic", [b"y", b"z"])
        with pytest.raises(UnknownTopicError):
            await record
        with pytest.raises(UnknownTopicError):
            await many[0]
        with pytest.raises(UnknownTopicError):
            await producer.partitions_for("no-such-topic")


async def test_send_to_a_topic_created_after_start(broker: Broker) -> None:
    old = await _topic(broker)
    async with Producer(broker.bootstrap, linger_ms=0) as producer:
        assert (await producer.send(old, b"before")).offset == 0
        new = await _topic(broker, partitions=2)  # not in the producer's metadata
        keyed = producer.send(new, b"a", partition=1)
        many = producer.send_many(new, [b"b", b"c"], partition=0)
        last = producer.send(new, b"d", partition=0)
        meta = await keyed
        assert (meta.topic, meta.partition, meta.offset) == (new, 1, 0)
        assert [await f for f in many] == [0]
        assert ((await last).partition, (await last).offset) == (0, 2)
        # The lookup refreshed only the new topic: the old one is still known.
        assert (await producer.send(old, b"after")).offset == 1
    async with Consumer(broker.bootstrap) as consumer:
        consumer.assign([TopicPartition(new, 0)])
        assert [r.value for r in await _take(consumer, 3)] == [b"b", b"c", b"d"]


def test_blocking_producer(broker: Broker) -> None:
    topic = asyncio.run(_topic(broker))
    with BlockingProducer(broker.bootstrap) as producer:
        assert producer.send(topic, b"a").offset == 0
        futures = [producer.send_async(topic, b"b") for _ in range(5)]
        producer.flush()
        assert all(f.done() for f in futures)
        assert producer.send(topic, b"c").offset == 6


async def test_leader_answers_a_duplicate_with_its_offset_and_refuses_a_gap(
    broker: Broker, tmp_path: Path
) -> None:
    topic = await _topic(broker)

    def batch(seq: int, *values: bytes) -> bytes:
        return storage.encode_batch(
            [(None, v) for v in values], producer_id=777, producer_epoch=0, base_sequence=seq
        )

    async with ClusterClient(broker.bootstrap) as client:
        await client.refresh()
        request = ProduceRequest(topic, 0, Acks.ALL)

        async def produce(frame: bytes) -> int:
            reply = await client.call_leader(topic, 0, request, [frame])
            base: int = reply.result["base_offset"]
            return base

        assert await produce(batch(0, b"a", b"b")) == 0
        assert await produce(batch(2, b"c")) == 2
        assert await produce(batch(0, b"a", b"b")) == 0  # a retry: the original offset
        assert await produce(batch(2, b"c")) == 2
        with pytest.raises(OutOfOrderSequenceError):
            await produce(batch(5, b"gap"))
        # a plain producer is never deduplicated
        plain = storage.encode_batch([(None, b"p")])
        assert await produce(plain) == 3
        assert await produce(plain) == 4
        assert await produce(batch(3, b"d")) == 5


async def test_send_many_of_exactly_full_batches_and_bad_types(broker: Broker) -> None:
    topic = await _topic(broker)
    async with Producer(broker.bootstrap, batch_bytes=1000) as producer:
        # 9 records of 100 B close a batch exactly: no empty batch may be left open
        futures = producer.send_many(topic, [bytes(100)] * 9, partition=0)
        assert await asyncio.gather(*futures) == [0]
        with pytest.raises(TypeError):
            producer.send(topic, "not bytes", partition=0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            producer.send(topic, b"v", key="not bytes", partition=0)  # type: ignore[arg-type]
        good = await producer.send(topic, b"after", partition=0)
        assert good.offset == 9


async def test_close_ends_an_iteration_waiting_for_records(broker: Broker) -> None:
    topic = await _topic(broker)
    consumer = Consumer(broker.bootstrap)
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0)])

    async def drain() -> list[Record]:
        return [record async for record in consumer]

    task = asyncio.create_task(drain())
    async with Producer(broker.bootstrap) as producer:
        await producer.send(topic, b"only")

    async def delivered() -> bool:
        return consumer.position(TopicPartition(topic, 0)) == 1

    await wait_until_async(delivered, 10, "the record to be delivered")
    await consumer.close()
    assert [r.value for r in await asyncio.wait_for(task, 5)] == [b"only"]
