"""The consumer's columnar batch decoder (clients/_records.py) against the reference,
storage.decode_records: the same batches accepted, the same rows, the same refusals;
the CRC always checked; and the fuzz invariant (bytes decode or raise CorruptBatchError)."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import crc32c
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zstream import storage
from zstream.clients._records import decode_rows


def _forge(rows: Any, count: int | None = None) -> bytes:
    """A batch whose records array is ``rows`` packed as they are (any msgpack), with a
    correct length, record count and CRC32C: what a buggy producer could send."""
    body = msgpack.packb(rows, use_bin_type=True)
    if count is None:
        count = len(rows) if isinstance(rows, list) and rows else 1
    template = storage.encode_batch([(None, b"x")], timestamp_ms=1000, base_offset=7)
    out = bytearray(template[: storage.BATCH_HEADER_SIZE]) + body
    struct.pack_into(">i", out, 8, len(out) - 12)
    struct.pack_into(">i", out, 19, count)
    view = memoryview(out)
    struct.pack_into(">I", out, 13, crc32c.crc32c(view[17:], crc32c.crc32c(view[8:13])))
    return bytes(out)


def _reference(buf: bytes) -> list[tuple[Any, ...]] | None:
    try:
        return [
            (r.offset, r.timestamp_ms, r.key, r.value, r.headers)
            for r in storage.decode_records(buf)
        ]
    except storage.CorruptBatchError:
        return None


def _ours(buf: bytes) -> list[tuple[Any, ...]] | None:
    try:
        header, rows = decode_rows(buf)
    except storage.CorruptBatchError:
        return None
    return [
        (header.base_offset + i, header.first_timestamp_ms + d, k, v, h)
        for i, (d, k, v, h) in enumerate(rows)
    ]


_anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.binary(max_size=2), max_size=2),
)
_valid_row = st.tuples(
    st.integers(-5, 5),
    st.one_of(st.none(), st.binary(max_size=4)),
    st.binary(max_size=4),
    st.lists(st.tuples(st.text(max_size=3), st.binary(max_size=3)).map(list), max_size=2),
).map(list)


_FIELDS = {"delta": 0, "key": 1, "value": 2, "headers": 3}
_FAULTS = ["none", *_FIELDS, "pair", "header name", "header value", "row", "count"]


@settings(max_examples=300)
@given(st.data())
def test_accepts_and_refuses_exactly_what_storage_does(data: st.DataObject) -> None:
    """Valid rows, then (mostly) one thing wrong in one of them: a field, a header
    pair or a header's name or value, the row's shape, or the record count."""
    rows: list[Any] = data.draw(st.lists(_valid_row, min_size=1, max_size=6))
    count = len(rows)
    where = data.draw(st.integers(0, len(rows) - 1))
    fault = data.draw(st.sampled_from(_FAULTS))
    if fault in _FIELDS:
        rows[where][_FIELDS[fault]] = data.draw(_anything)
    elif fault == "pair":
        rows[where][3] = [*rows[where][3], data.draw(_anything)]
    elif fault.startswith("header"):
        pair: list[Any] = [data.draw(st.text(max_size=2)), data.draw(st.binary(max_size=2))]
        pair[fault == "header value"] = data.draw(_anything)
        rows[where][3] = [*rows[where][3], pair]
    elif fault == "row":
        rows[where] = data.draw(st.one_of(_anything, st.lists(_anything, max_size=5)))
    elif fault == "count":
        count += data.draw(st.sampled_from([-1, 1]))
    buf = _forge(rows, count)
    assert _ours(buf) == _reference(buf)


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(max_size=8)),
            st.binary(max_size=32),
            st.lists(st.tuples(st.text(max_size=4), st.binary(max_size=4)), max_size=2),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_valid_batches_decode_as_storage_decodes_them(
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
) -> None:
    buf = storage.encode_batch(
        [storage.NewRecord(k, v, h) for k, v, h in records], timestamp_ms=5, base_offset=40
    )
    decoded = _ours(buf)
    assert decoded is not None
    assert decoded == _reference(buf)
    assert [r[3] for r in decoded] == [v for _, v, _ in records]


def test_the_crc_is_checked_and_the_error_names_the_record_at_fault() -> None:
    buf = bytearray(storage.encode_batch([(b"k", b"value")]))
    buf[-1] ^= 1
    with pytest.raises(storage.CorruptBatchError, match="CRC"):
        decode_rows(bytes(buf))
    bad_header = _forge([[0, None, b"v", []], [0, None, b"v", [["h", "not bytes"]]]])
    with pytest.raises(storage.CorruptBatchError, match="record 1 has a malformed header"):
        decode_rows(bad_header)
    with pytest.raises(storage.CorruptBatchError, match="record 0 has fields of the wrong types"):
        decode_rows(_forge([[True, None, b"v", []]]))


@given(st.binary(max_size=200))
def test_fuzz_raises_only_corrupt_batch(data: bytes) -> None:
    with contextlib.suppress(storage.CorruptBatchError):
        decode_rows(data)


@given(st.data())
def test_fuzz_mutated_valid_batches_agree_with_storage(data: st.DataObject) -> None:
    values = data.draw(st.lists(st.binary(max_size=6), min_size=1, max_size=5))
    buf = bytearray(storage.encode_batch([(None, v) for v in values], timestamp_ms=1))
    for _ in range(data.draw(st.integers(1, 3))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    mutated = bytes(buf[: data.draw(st.integers(0, len(buf)))])
    assert _ours(mutated) == _reference(mutated)
