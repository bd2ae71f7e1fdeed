"""`offset_for_time`, the leader's answer to offsets_for_time, against a model: the
first record whose timestamp reaches the target, when timestamps grow with offsets;
with timestamps in any order it still answers an offset in range whose record reaches
the target (or the high watermark), and raises nothing but the protocol's errors."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.broker.fakes import FakePartition
from zstream import storage
from zstream.broker._frontend import offset_for_time
from zstream.clients import Acks, CorruptBatchError

Batches = list[list[int]]  # each batch: its records' timestamps


def _partition(batches: Batches, committed_batches: int | None = None) -> FakePartition:
    part = FakePartition()
    part.auto_commit = False

    async def fill() -> None:
        for i, stamps in enumerate(batches):
            records = [storage.NewRecord(None, b"v", (), ts) for ts in stamps]
            await part.produce(storage.encode_batch(records), Acks.ALL, 1.0)
            if committed_batches is None or i < committed_batches:
                await part.commit()

    asyncio.run(fill())
    return part


def _model(batches: Batches, target: int) -> int:
    offset = 0
    for stamps in batches:
        for ts in stamps:
            if ts >= target:
                return offset
            offset += 1
    return offset


_monotonic = st.lists(
    st.lists(st.integers(0, 50), min_size=1, max_size=5).map(sorted), max_size=30
).map(lambda bs: _chain(bs))


def _chain(batches: Batches) -> Batches:
    """Shift each batch so that timestamps never go down from batch to batch."""
    out: Batches = []
    floor = 0
    for stamps in batches:
        shifted = [floor + ts for ts in stamps]
        out.append(shifted)
        floor = shifted[-1]
    return out


@settings(max_examples=200, deadline=None)
@given(_monotonic, st.integers(0, 1600))
def test_growing_timestamps_give_the_first_record_reaching_the_target(
    batches: Batches, target: int
) -> None:
    reply = offset_for_time(_partition(batches), target)
    total = sum(len(b) for b in batches)
    assert reply["offset"] == _model(batches, target)
    assert (reply["log_start"], reply["hwm"]) == (0, total)
    flat = [ts for b in batches for ts in b]
    if reply["offset"] < total:
        assert reply["timestamp_ms"] == flat[reply["offset"]] >= target
    else:
        assert reply["timestamp_ms"] is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 100), min_size=1, max_size=4), max_size=20), st.data())
def test_any_order_answers_an_offset_in_range_that_reaches_the_target(
    batches: Batches, data: st.DataObject
) -> None:
    committed = data.draw(st.integers(0, len(batches)))
    target = data.draw(st.integers(0, 120))
    reply = offset_for_time(_partition(batches, committed), target)
    flat = [ts for b in batches[:committed] for ts in b]
    assert 0 <= reply["offset"] <= len(flat) == reply["hwm"]
    if reply["offset"] < len(flat):
        assert reply["timestamp_ms"] == flat[reply["offset"]] >= target
    else:
        assert reply["timestamp_ms"] is None


def test_nothing_past_the_high_watermark_is_considered() -> None:
    part = _partition([[10], [20], [30]], committed_batches=2)
    assert offset_for_time(part, 25) == {
        "offset": 2,
        "timestamp_ms": None,
        "log_start": 0,
        "hwm": 2,
    }
    assert offset_for_time(part, 15)["offset"] == 1
    assert offset_for_time(part, 0)["offset"] == 0


def test_a_corrupt_stored_batch_is_the_protocols_error() -> None:
    part = _partition([[10, 11], [20]])
    base, batch = part.batches[0]
    damaged = bytearray(batch)
    damaged[-1] ^= 0xFF  # a record byte: the header still parses, the CRC fails
    part.batches[0] = (base, bytes(damaged))
    with pytest.raises(CorruptBatchError):
        offset_for_time(part, 11)
