"""Serializers and batch delivery on a real three-broker cluster (RF 3, stream mode):
JSON values and str keys round trip through Producer / BlockingProducer and
Consumer (getone, getmany, getmany_values); getmany keeps a small stream credit topped
up over many grants and hands out every record once, in order per partition."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import bootstrap_of, running_brokers
from zstream import (
    Admin,
    BlockingProducer,
    Consumer,
    DeserializationError,
    Producer,
    SerializationError,
    TopicPartition,
    json_deserializer,
    json_serializer,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_names = (f"serde{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("serde")
    with running_brokers(root, 3, extra=["--log-level=WARNING"], ready_timeout_s=60) as brokers:
        yield bootstrap_of(brokers)


async def _topic(bootstrap: str, partitions: int) -> str:
    name = next(_names)
    async with Admin(bootstrap) as admin:
        await admin.create_topic(name, partitions=partitions, replication_factor=3)
    return name


async def test_json_round_trip_through_every_delivery_call(bootstrap: str) -> None:
    topic = await _topic(bootstrap, 2)
    docs = [{"n": i, "name": f"zoë-{i}"} for i in range(30)]
    async with Producer[str, dict[str, Any]](
        bootstrap, linger_ms=1000, key_serializer=str.encode, value_serializer=json_serializer
    ) as producer:
        futures = []
        for d in docs:
            futures.append(producer.send(topic, d, key=f"user-{d['n'] % 3}"))
            with pytest.raises(SerializationError, match="value serializer failed"):
                producer.send(topic, {"bad": {1, 2}}, key=f"user-{d['n'] % 3}")  # a set
        await producer.flush()
        metas = [await f for f in futures]
    # The failed sends left no trace: each partition's batch holds the good records only.
    for p in {m.partition for m in metas}:
        offsets = [m.offset for m in metas if m.partition == p]
        assert offsets == list(range(len(offsets)))
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for meta, doc in zip(metas, docs, strict=True):
        by_partition.setdefault(meta.partition, []).append(doc)

    options: dict[str, Any] = {
        "key_deserializer": bytes.decode,
        "value_deserializer": json_deserializer,
    }
    async with Consumer[str, Any](bootstrap, **options) as consumer:
        await consumer.subscribe([topic])
        first = await asyncio.wait_for(consumer.getone(), 20)
        assert isinstance(first.key, str)
        assert first.key.startswith("user-")
        got: dict[int, list[dict[str, Any]]] = {first.partition: [first.value]}
        deadline = time.monotonic() + 20
        while sum(map(len, got.values())) < len(docs):
            assert time.monotonic() < deadline
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                got.setdefault(tp.partition, []).extend(r.value for r in records)
                assert all(r.key == f"user-{r.value['n'] % 3}" for r in records)
        assert got == by_partition

    async with Consumer(bootstrap, value_deserializer=json_deserializer) as consumer:
        consumer.assign([TopicPartition(topic, p) for p in by_partition])
        values: dict[int, list[Any]] = {}
        deadline = time.monotonic() + 20
        while sum(map(len, values.values())) < len(docs):
            assert time.monotonic() < deadline
            for tp, batch in (await consumer.getmany_values(timeout_ms=500)).items():
                values.setdefault(tp.partition, []).extend(batch)
        assert values == by_partition


def test_blocking_producer_serializers_and_a_bad_record_for_the_consumer(
    bootstrap: str,
) -> None:
    topic = asyncio.run(_topic(bootstrap, 1))
    with BlockingProducer[str, Any](
        bootstrap, key_serializer=str.encode, value_serializer=json_serializer
    ) as producer:
        assert producer.send(topic, {"ok": 1}, key="k").offset == 0
    with BlockingProducer(bootstrap) as raw:
        raw.send(topic, b"{not json")
        raw.send(topic, b'{"ok": 3}')

    async def consume() -> None:
        async with Consumer(bootstrap, value_deserializer=json_deserializer) as consumer:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            assert (await asyncio.wait_for(consumer.getone(), 20)).value == {"ok": 1}
            with pytest.raises(DeserializationError, match=rf"{topic}/0 offset 1") as caught:
                await asyncio.wait_for(consumer.getone(), 20)
            assert caught.value.record.value == b"{not json"
            assert consumer.position(tp) == 1
            consumer.seek(tp, caught.value.offset + 1)
            assert (await asyncio.wait_for(consumer.getone(), 20)).value == {"ok": 3}

    asyncio.run(consume())


async def test_getmany_tops_up_a_small_credit_and_loses_nothing(bootstrap: str) -> None:
    topic = await _topic(bootstrap, 3)
    per_partition = 4000  # 100 B values: ~400 KB each, many times the 32 KiB credit
    async with Producer(bootstrap, linger_ms=5) as producer:
        for p in range(3):
            futures = producer.send_many(
                topic, (b"%d:%06d" % (p, i) + bytes(92) for i in range(per_partition)), partition=p
            )
            await producer.flush()
            for f in futures:
                await f
    tps = [TopicPartition(topic, p) for p in range(3)]
    async with Consumer(bootstrap, credit_bytes=32 * 1024) as consumer:
        consumer.assign(tps)
        seen: dict[TopicPartition, list[int]] = {tp: [] for tp in tps}
        deadline = time.monotonic() + 60
        calls = itertools.count()
        while sum(map(len, seen.values())) < 3 * per_partition:
            assert time.monotonic() < deadline, {tp: len(v) for tp, v in seen.items()}
            if next(calls) % 2:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    seen[tp].extend(r.offset for r in records)
            else:
                for tp, values in (await consumer.getmany_values(timeout_ms=500)).items():
                    seen[tp].extend(int(v.split(b":")[1][:6]) for v in values)
        for tp in tps:
            assert seen[tp] == list(range(per_partition)), tp
            assert consumer.position(tp) == per_partition
