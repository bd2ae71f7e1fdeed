"""Record batch codec: round trips, offset stamping, CRC coverage, and fuzzing."""

from __future__ import annotations

import gc
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zstream.storage import (
    BATCH_HEADER_SIZE,
    CorruptBatchError,
    NewRecord,
    decode_batch_header,
    decode_records,
    encode_batch,
    iter_batches,
    stamp_base_offset,
    verify_batch,
)

headers_st = st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8)), max_size=3)
record_st = st.builds(
    NewRecord,
    key=st.none() | st.binary(max_size=16),
    value=st.binary(max_size=64),
    headers=headers_st,
    timestamp_ms=st.none() | st.integers(0, 2**40),
)


@given(
    records=st.lists(record_st, min_size=1, max_size=20),
    base=st.integers(0, 2**62),
    pid=st.integers(-1, 2**62),
    epoch=st.integers(-1, 2**15 - 1),
    seq=st.integers(-1, 2**31 - 1),
    ts=st.integers(0, 2**40),
)
def test_round_trip(
    records: list[NewRecord], base: int, pid: int, epoch: int, seq: int, ts: int
) -> None:
    buf = encode_batch(
        records,
        base_offset=base,
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
        timestamp_ms=ts,
    )
    header = verify_batch(buf)
    assert header.base_offset == base
    assert header.record_count == len(records)
    assert header.size_bytes == len(buf)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (pid, epoch, seq)
    stamps = [ts if r.timestamp_ms is None else r.timestamp_ms for r in records]
    assert header.first_timestamp_ms == stamps[0]
    assert header.max_timestamp_ms == max(stamps)
    decoded = decode_records(buf)
    assert [r.offset for r in decoded] == list(range(base, base + len(records)))
    assert [r.timestamp_ms for r in decoded] == stamps
    assert [(r.key, r.value) for r in decoded] == [(r.key, r.value) for r in records]
    assert [r.headers for r in decoded] == [tuple(map(tuple, r.headers)) for r in records]


@given(
    records=st.lists(
        record_st | st.tuples(st.none() | st.binary(max_size=16), st.binary(max_size=64)),
        min_size=1,
        max_size=20,
    ),
    ts=st.integers(0, 2**40),
)
def test_the_body_is_the_documented_msgpack_rows(
    records: list[NewRecord | tuple[bytes | None, bytes]], ts: int
) -> None:
    # Rows are built as tuples of tuples, which the collector untracks instead of
    # promoting; msgpack writes a tuple as the same array as a list, so the bytes
    # are those of docs/storage-format.md, written here with lists.
    full = [r if isinstance(r, NewRecord) else NewRecord(r[0], r[1]) for r in records]
    stamps = [ts if r.timestamp_ms is None else r.timestamp_ms for r in full]
    rows = [
        [stamp - stamps[0], r.key, r.value, [list(h) for h in r.headers]]
        for stamp, r in zip(stamps, full, strict=True)
    ]
    buf = encode_batch(records, timestamp_ms=ts)
    assert buf[BATCH_HEADER_SIZE:] == msgpack.packb(rows, use_bin_type=True)


def test_rows_leave_nothing_for_the_collector_to_promote() -> None:
    # The rows are alive while the batch encodes: as lists, every young collection
    # then moved hundreds of them to an older generation (and full collections
    # followed). A header-less row is a tuple of untracked things, which a young
    # collection untracks. (A row with headers stays tracked while its pairs are.)
    seen: list[int] = []

    def tracked_rows(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            rows = [o for o in gc.get_objects() if type(o) in (list, tuple) and len(o) == 4]
            seen.append(sum(1 for o in rows if isinstance(o[2], bytes) and o[2] == b"gc-probe"))

    records = [(None, b"gc-probe"), (b"key", b"gc-probe")] * 5000
    thresholds = gc.get_threshold()
    gc.callbacks.append(tracked_rows)
    gc.set_threshold(100)
    try:
        encode_batch(records, timestamp_ms=1)
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks.remove(tracked_rows)
    assert seen, "no collection ran during the encode"
    assert max(seen) == 0


def test_plain_key_value_tuples_and_default_timestamp() -> None:
    buf = encode_batch([(None, b"a"), (b"k", b"b")])
    records = decode_records(buf)
    assert [(r.key, r.value, r.headers) for r in records] == [(None, b"a", ()), (b"k", b"b", ())]
    assert records[0].timestamp_ms == records[1].timestamp_ms > 1_600_000_000_000


def test_stamping_the_base_offset_keeps_the_crc_valid() -> None:
    buf = bytearray(encode_batch([(b"k", b"v")] * 3, base_offset=0, timestamp_ms=1))
    crc_before = decode_batch_header(buf).crc
    stamp_base_offset(buf, 1234)
    header = verify_batch(buf)
    assert header.base_offset == 1234
    assert header.crc == crc_before
    assert [r.offset for r in decode_records(buf)] == [1234, 1235, 1236]
    view = memoryview(buf)
    stamp_base_offset(view, 7)
    assert verify_batch(view).base_offset == 7


@pytest.mark.parametrize("position", range(8, 60))
def test_every_byte_after_the_base_offset_is_covered(position: int) -> None:
    buf = bytearray(encode_batch([(b"key", b"value")], timestamp_ms=5))
    buf[position] ^= 0x01
    with pytest.raises(CorruptBatchError):
        verify_batch(buf)


def test_header_only_decode_does_not_check_crc_but_checks_magic_and_length() -> None:
    good = encode_batch([(b"k", b"v")], timestamp_ms=1)
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF
    assert decode_batch_header(flipped).record_count == 1
    with pytest.raises(CorruptBatchError, match="magic"):
        decode_batch_header(good[:12] + b"\x07" + good[13:])
    with pytest.raises(CorruptBatchError, match="length"):
        decode_batch_header(good[:-1])
    with pytest.raises(CorruptBatchError, match="shorter"):
        decode_batch_header(good[: BATCH_HEADER_SIZE - 1])
    with pytest.raises(CorruptBatchError, match="more"):
        verify_batch(good + b"\x00")


def test_iter_batches_splits_concatenated_batches() -> None:
    batches = [encode_batch([(b"k", b"v" * i)] * i, base_offset=i * 10) for i in range(1, 5)]
    parts = list(iter_batches(b"".join(batches)))
    assert [bytes(p) for p in parts] == batches
    with pytest.raises(CorruptBatchError):
        list(iter_batches(b"".join(batches)[:-1]))


def test_encode_rejects_caller_mistakes() -> None:
    with pytest.raises(ValueError, match="at least one"):
        encode_batch([])
    with pytest.raises(ValueError, match="out of range"):
        encode_batch([(b"k", b"v")], producer_epoch=2**20)


def test_records_of_the_wrong_shape_are_corrupt() -> None:
    buf = bytearray(encode_batch([(b"k", b"v")], timestamp_ms=1))
    # Replace the record array by a 1-item array holding a string where a record belongs,
    # then fix the length; verify=False isolates the structural check from the CRC.
    body = b"\x91\xa1x"
    forged = bytearray(buf[:BATCH_HEADER_SIZE]) + body
    struct.pack_into(">i", forged, 8, len(forged) - 12)
    with pytest.raises(CorruptBatchError, match="4-item"):
        decode_records(forged, verify=False)


@given(st.binary(max_size=200))
def test_fuzz_decoders_raise_only_their_own_error(data: bytes) -> None:
    for decode in (decode_batch_header, verify_batch, decode_records, iter_batches):
        try:
            result = decode(data)
            if decode is iter_batches:
                list(result)  # type: ignore[call-overload]
        except CorruptBatchError:
            pass


@given(st.data())
def test_fuzz_mutated_valid_batches(data: st.DataObject) -> None:
    records = data.draw(st.lists(record_st, min_size=1, max_size=5))
    buf = bytearray(encode_batch(records, timestamp_ms=1))
    edits = data.draw(
        st.lists(st.tuples(st.integers(0, len(buf) - 1), st.integers(0, 255)), max_size=4)
    )
    for pos, value in edits:
        buf[pos] = value
    cut = data.draw(st.integers(0, len(buf)))
    mutated = bytes(buf[:cut])
    for verify in (True, False):
        try:
            decoded = decode_records(mutated, verify=verify)
        except CorruptBatchError:
            pass
        else:
            assert len(decoded) == decode_batch_header(mutated).record_count
