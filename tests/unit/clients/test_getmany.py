"""Batch delivery (`getmany`, `getmany_values`) and deserializers against the fake
broker (fakebroker.py, fetch mode): per-partition offset order, ``max_records``,
``timeout_ms``, the partitions filter, pause, what auto-commit counts as processed,
and a failing deserializer (clear error, position kept, seek skips it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.support import wait_until_async
from tests.unit.clients.fakebroker import FakeBroker
from zstream.clients import (
    Consumer,
    DeserializationError,
    Record,
    TopicPartition,
    UnknownPartitionError,
)

T0, T1, T2, T3 = (TopicPartition("t", p) for p in range(4))


@pytest.fixture
async def fake() -> AsyncIterator[FakeBroker]:
    broker = FakeBroker()
    broker.create_topic("t", 4)
    broker.start()
    try:
        yield broker
    finally:
        await broker.close()


def _options(**extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "mode": "fetch",
        "fetch_max_wait_ms": 50,
        "request_timeout_ms": 2000,
        "session_timeout_ms": 3000,
        "auto_commit_interval_ms": 60_000,
    }
    settings.update(extra)
    return settings


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    async def check() -> bool:
        return condition()

    await wait_until_async(check, timeout_s, what)


async def _drain(
    consumer: Consumer, want: int, **kwargs: Any
) -> dict[TopicPartition, list[Record]]:
    """getmany until ``want`` records came (bounded by a deadline)."""
    got: dict[TopicPartition, list[Record]] = {}
    deadline = time.monotonic() + 10
    while sum(map(len, got.values())) < want:
        assert time.monotonic() < deadline, f"only {sum(map(len, got.values()))} of {want}"
        for tp, records in (await consumer.getmany(timeout_ms=200, **kwargs)).items():
            got.setdefault(tp, []).extend(records)
    return got


async def test_getmany_gives_every_partition_in_offset_order(fake: FakeBroker) -> None:
    for p in range(4):
        for start in range(0, 30, 10):  # three batches per partition
            await fake.append("t", p, *(f"{p}-{i}".encode() for i in range(start, start + 10)))
    async with Consumer(fake.addr, **_options()) as consumer:
        consumer.assign([T0, T1, T2, T3])
        got = await _drain(consumer, 120)
        assert set(got) == {T0, T1, T2, T3}
        for tp, records in got.items():
            assert [r.offset for r in records] == list(range(30))
            assert [r.value for r in records] == [f"{tp.partition}-{i}".encode() for i in range(30)]
            assert {(r.topic, r.partition) for r in records} == {tp}
            assert consumer.position(tp) == 30
        assert await consumer.getmany() == {}  # nothing more buffered: at once


async def _first_batch(consumer: Consumer, **kwargs: Any) -> list[Record]:
    deadline = time.monotonic() + 10
    while True:
        assert time.monotonic() < deadline, "nothing arrived"
        batch = await consumer.getmany(timeout_ms=200, **kwargs)
        if batch:
            return [r for records in batch.values() for r in records]


async def test_max_poll_records_bounds_getmany_by_default(fake: FakeBroker) -> None:
    # One batch of 1,200 records arrives as one chunk: Kafka's max.poll.records of
    # 500 is what a call hands out unless max_records or the setting says otherwise.
    await fake.append("t", 0, *(b"%d" % i for i in range(1200)))
    async with Consumer(fake.addr, **_options()) as consumer:
        consumer.assign([T0])
        first = await _first_batch(consumer)
        assert [r.offset for r in first] == list(range(500))
        assert [r.offset for r in await _first_batch(consumer, max_records=800)] == list(
            range(500, 1200)
        )
    async with Consumer(fake.addr, **_options(max_poll_records=None)) as consumer:
        consumer.assign([T0])
        assert len(await _first_batch(consumer)) == 1200
    async with Consumer(fake.addr, **_options(max_poll_records=1000)) as consumer:
        consumer.assign([T0])
        assert len(await _first_batch(consumer)) == 1000
    async with Consumer(fake.addr, **_options(max_poll_records=100)) as consumer:
        consumer.assign([T0])
        values = await consumer.getmany_values(timeout_ms=5000)  # not bounded by it
        assert len(values[T0]) == 1200
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="max_poll_records"):
            Consumer(fake.addr, max_poll_records=bad)


async def test_one_budget_spans_the_partitions_in_arrival_order(fake: FakeBroker) -> None:
    for tp in (T0, T1, T2):
        await fake.append("t", tp.partition, *(b"%d" % i for i in range(300)))
    async with Consumer(fake.addr, **_options()) as consumer:
        consumer.assign([T0, T1, T2])
        await until(lambda: len(consumer._ready) == 3, "three chunks buffered")
        first = await consumer.getmany(timeout_ms=1000)
        assert sum(map(len, first.values())) == 500
        got = await _drain(consumer, 400)
        for tp in (T0, T1, T2):  # nothing lost, nothing twice, offsets in order
            offsets = [r.offset for r in first.get(tp, []) + got.get(tp, [])]
            assert offsets == list(range(300))
        with pytest.raises(ValueError, match="max_records"):
            await consumer.getmany(max_records=2.5)  # type: ignore[arg-type]


async def test_a_failing_oldest_record_raises_even_with_other_partitions_buffered(
    fake: FakeBroker,
) -> None:
    await fake.append("t", 0, b"bad")
    await fake.append("t", 1, *(b"%d" % i for i in range(2000)))
    async with Consumer(fake.addr, value_deserializer=int, **_options()) as consumer:
        consumer.assign([T0, T1])
        await until(lambda: len(consumer._ready) == 2, "both chunks buffered")
        # Kafka's poll raises at the poison record; a backlog elsewhere must not
        # keep the error from the application for call after call.
        with pytest.raises(DeserializationError, match="t/0 offset 0"):
            await consumer.getmany(timeout_ms=1000)
        consumer.seek(T0, 1)
        got = await _drain(consumer, 2000)
        assert [r.value for r in got[T1]] == list(range(2000))


async def test_max_records_bounds_each_call_and_skips_nothing(fake: FakeBroker) -> None:
    await fake.append("t", 0, *(b"%d" % i for i in range(50)))
    await fake.append("t", 0, *(b"%d" % i for i in range(50, 100)))
    async with Consumer(fake.addr, **_options()) as consumer:
        consumer.assign([T0])
        offsets: list[int] = []
        deadline = time.monotonic() + 10
        while len(offsets) < 100:
            assert time.monotonic() < deadline
            batch = await consumer.getmany(timeout_ms=200, max_records=7)
            assert sum(map(len, batch.values())) <= 7
            offsets.extend(r.offset for r in batch.get(T0, []))
        assert offsets == list(range(100))
        with pytest.raises(ValueError, match="max_records"):
            await consumer.getmany(max_records=0)


async def test_timeout_waits_for_the_first_record_then_returns_at_once(
    fake: FakeBroker,
) -> None:
    async with Consumer(fake.addr, **_options()) as consumer:
        consumer.assign([T0])
        started = time.monotonic()
        assert await consumer.getmany(timeout_ms=0) == {}
        assert await consumer.getmany(timeout_ms=300) == {}
        assert time.monotonic() - started >= 0.29
        waiting = asyncio.create_task(consumer.getmany(T0, timeout_ms=10_000))
        await asyncio.sleep(0)  # let it start waiting (not a timing assumption)
        assert not waiting.done()
        started = time.monotonic()
        await fake.append("t", 0, b"late")
        batch = await asyncio.wait_for(waiting, 10)
        assert time.monotonic() - started < 5  # woken by the record, not the timeout
        assert [r.value for r in batch[T0]] == [b"late"]


async def test_only_the_partitions_asked_for_and_they_must_be_assigned(
    fake: FakeBroker,
) -> None:
    await fake.append("t", 0, b"a0", b"a1")
    await fake.append("t", 1, b"b0", b"b1")
    async with Consumer(fake.addr, **_options()) as consumer:
        consumer.assign([T0, T1])
        only_t1: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(only_t1) < 2:
            assert time.monotonic() < deadline
            batch = await consumer.getmany(T1, timeout_ms=200)
            assert set(batch) <= {T1}
            only_t1.extend(r.value for r in batch.get(T1, []))
        assert only_t1 == [b"b0", b"b1"]
        assert consumer.position(T0) == 0  # T0's records wait for a call that wants them
        rest = await _drain(consumer, 2)
        assert {tp: [r.value for r in rs] for tp, rs in rest.items()} == {T0: [b"a0", b"a1"]}
        with pytest.raises(UnknownPartitionError):
            await consumer.getmany(T2)


async def test_a_paused_partition_gives_nothing_until_resumed_then_no_gap(
    fake: FakeBroker,
) -> None:
    await fake.append("t", 0, *(b"%d" % i for i in range(10)))
    await fake.append("t", 1, b"other")
    async with Consumer(fake.addr, **_options()) as consumer:
        consumer.assign([T0, T1])
        first = await consumer.getmany(T0, timeout_ms=5000, max_records=3)
        assert [r.offset for r in first[T0]] == [0, 1, 2]
        consumer.pause(T0)
        await fake.append("t", 0, *(b"%d" % i for i in range(10, 20)))
        got = await _drain(consumer, 1)
        assert set(got) == {T1}  # T0's buffered records were dropped with the pause
        assert await consumer.getmany(timeout_ms=200) == {}
        consumer.resume(T0)
        rest = await _drain(consumer, 17)
        assert [r.offset for r in rest[T0]] == list(range(3, 20))


async def test_auto_commit_commits_what_getmany_handed_out_once_more_is_asked_for(
    fake: FakeBroker,
) -> None:
    await fake.append("t", 0, *(b"%d" % i for i in range(30)))
    options = _options(auto_commit_interval_ms=50)
    async with Consumer(fake.addr, "g", **options) as consumer:
        consumer.assign([T0])
        first = await consumer.getmany(T0, timeout_ms=5000, max_records=5)
        assert len(first[T0]) == 5
        second = await consumer.getmany(T0, timeout_ms=5000, max_records=5)
        assert [r.offset for r in second[T0]] == list(range(5, 10))
        # The first five are processed (more was asked for); the next five are held.
        await until(lambda: fake.offsets.get(("t", 0)) == 5, "the first five committed")
        assert consumer.position(T0) == 10
        third = await consumer.getmany(T0, timeout_ms=5000, max_records=20)
        assert [r.offset for r in third[T0]] == list(range(10, 30))
        await until(lambda: fake.offsets.get(("t", 0)) == 10, "the second five committed")
    assert fake.offsets[("t", 0)] == 30  # close: everything handed out counts as done


async def test_getmany_values_gives_values_only_and_moves_the_position(
    fake: FakeBroker,
) -> None:
    await fake.append("t", 0, b"1", b"2", b"3")
    await fake.append("t", 2, b"7")
    async with Consumer(fake.addr, value_deserializer=int, **_options()) as consumer:
        consumer.assign([T0, T2])
        got: dict[TopicPartition, list[int]] = {}
        deadline = time.monotonic() + 10
        while sum(map(len, got.values())) < 4:
            assert time.monotonic() < deadline
            for tp, values in (await consumer.getmany_values(timeout_ms=200)).items():
                got.setdefault(tp, []).extend(values)
        assert got == {T0: [1, 2, 3], T2: [7]}
        assert consumer.position(T0) == 3
        assert consumer.position(T2) == 1


@pytest.mark.parametrize("path", ["getone", "getmany", "getmany_values"])
async def test_a_failing_deserializer_names_the_record_and_keeps_the_position(
    fake: FakeBroker, path: str
) -> None:
    await fake.append("t", 0, b"1", b"2", b"oops")
    await fake.append("t", 0, b"4")  # a later batch: must not jump the bad record
    async with Consumer(fake.addr, value_deserializer=int, **_options()) as consumer:
        consumer.assign([T0])

        async def take() -> list[int]:
            if path == "getone":
                return [(await asyncio.wait_for(consumer.getone(), 10)).value]
            if path == "getmany":
                batch = await consumer.getmany(timeout_ms=5000)
                return [r.value for r in batch.get(T0, [])]
            return (await consumer.getmany_values(timeout_ms=5000)).get(T0, [])

        good: list[int] = []
        while len(good) < 2:
            good.extend(await take())
        assert good == [1, 2]  # the records before the bad one are delivered
        for _ in range(2):  # and again: the position stays at the bad record
            with pytest.raises(DeserializationError, match="t/0 offset 2") as caught:
                await take()
            assert consumer.position(T0) == 2
        error = caught.value
        assert (error.topic, error.partition, error.offset) == ("t", 0, 2)
        assert error.record.value == b"oops"
        assert isinstance(error.__cause__, ValueError)
        consumer.seek(T0, error.offset + 1)
        assert await take() == [4]


async def test_getone_and_getmany_share_one_order(fake: FakeBroker) -> None:
    await fake.append("t", 0, *(b"%d" % i for i in range(6)))
    async with Consumer(fake.addr, key_deserializer=bytes.decode, **_options()) as consumer:
        consumer.assign([T0])
        first = await asyncio.wait_for(consumer.getone(), 10)
        assert first.offset == 0
        assert first.key is None
        rest = await consumer.getmany(timeout_ms=5000)
        assert [r.offset for r in rest[T0]] == list(range(1, 6))
        await consumer.close()
        assert await consumer.getmany(timeout_ms=1000) == {}  # closed: nothing, at once
