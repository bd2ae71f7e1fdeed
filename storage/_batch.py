"""Record batches: the client's unit of produce, opaque bytes to the broker.

Byte layout (all integers big-endian, signed unless marked u)::

    offset size field
    0      8    base_offset         int64   offset of the first record; stamped by the
                                            leader, NOT covered by the CRC
    8      4    batch_length        int32   bytes that follow this field
                                            (total batch size - 12)
    12     1    magic               int8    format version, currently 2
    13     4    crc                 uint32  CRC32C (Castagnoli) of bytes [8, 13) followed by
                                            bytes [17, end): everything after the base offset
                                            except the CRC field itself
    17     2    attributes          int16   reserved flags (compression etc.), 0 today
    19     4    record_count        int32   number of records, >= 1
    23     8    first_timestamp_ms  int64   timestamp of the first record
    31     8    max_timestamp_ms    int64   largest record timestamp
    39     8    producer_id         int64   -1 when not idempotent
    47     2    producer_epoch      int16   -1 when not idempotent
    49     4    base_sequence       int32   -1 when not idempotent
    53     ...  records             msgpack, exactly one array of record_count items

Each record is a msgpack array of four items::

    [timestamp_delta_ms: int, key: bin | nil, value: bin, headers: [[str, bin], ...]]

where the record's timestamp is first_timestamp_ms + timestamp_delta_ms and its offset is
base_offset + its position in the array. The records are packed with one `msgpack.packb`
call, so encoding costs one C call per batch, not per record.

Because the CRC skips the base offset, the leader stamps offsets into a batch in place
(`stamp_base_offset`) without recomputing or invalidating the checksum.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import crc32c
import msgpack

from zstream.storage._errors import CorruptBatchError

__all__ = [
    "BATCH_HEADER_SIZE",
    "BATCH_MAGIC",
    "BatchHeader",
    "NewRecord",
    "Record",
    "decode_batch_header",
    "decode_records",
    "encode_batch",
    "iter_batches",
    "stamp_base_offset",
    "verify_batch",
]

BATCH_MAGIC = 2
_HEADER = struct.Struct(">qiBIhiqqqhi")
BATCH_HEADER_SIZE = _HEADER.size  # 53
_LENGTH_PREFIX = 12  # base_offset + batch_length: bytes not counted by batch_length
_CRC_AT = 13
_CRC_END = 17
_OFFSET = struct.Struct(">q")
_CRC = struct.Struct(">I")

Buffer = bytes | bytearray | memoryview


class NewRecord(NamedTuple):
    """A record to encode. Plain ``(key, value)`` tuples are accepted too."""

    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """A decoded record."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The fixed header of a batch. `size_bytes` is the whole batch, header included."""

    base_offset: int
    size_bytes: int
    magic: int
    crc: int
    attributes: int
    record_count: int
    first_timestamp_ms: int
    max_timestamp_ms: int
    producer_id: int
    producer_epoch: int
    base_sequence: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.record_count - 1

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode_batch(
    records: Sequence[NewRecord | tuple[bytes | None, bytes]],
    *,
    base_offset: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    attributes: int = 0,
    timestamp_ms: int | None = None,
) -> bytes:
    """Encode records into one batch.

    A record without its own timestamp takes ``timestamp_ms`` (default: now). Raises
    `ValueError` for an empty batch or values that do not fit their fields (caller bugs).
    """
    if not records:
        raise ValueError("a batch holds at least one record")
    batch_ts = _now_ms() if timestamp_ms is None else timestamp_ms
    first_ts: int | None = None
    max_ts = batch_ts
    rows: list[tuple[object, ...]] = []
    append = rows.append
    for rec in records:
        ts = batch_ts
        headers: Sequence[tuple[str, bytes]] = ()
        if len(rec) > 2:
            full = NewRecord(*rec)
            headers = full.headers
            if full.timestamp_ms is not None:
                ts = full.timestamp_ms
        if first_ts is None:
            first_ts = ts
            max_ts = ts
        elif ts > max_ts:
            max_ts = ts
        append((ts - first_ts, rec[0], rec[1], tuple(map(tuple, headers)) if headers else ()))
    assert first_ts is not None
    try:
        body = msgpack.packb(rows, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"records cannot be encoded: {exc}") from exc
    total = BATCH_HEADER_SIZE + len(body)
    out = bytearray(total)
    try:
        _HEADER.pack_into(
            out,
            0,
            base_offset,
            total - _LENGTH_PREFIX,
            BATCH_MAGIC,
            0,
            attributes,
            len(rows),
            first_ts,
            max_ts,
            producer_id,
            producer_epoch,
            base_sequence,
        )
    except struct.error as exc:
        raise ValueError(f"batch header field out of range: {exc}") from exc
    out[BATCH_HEADER_SIZE:] = body
    _CRC.pack_into(out, _CRC_AT, _checksum(out))
    return bytes(out)


def _checksum(buf: Buffer) -> int:
    view = memoryview(buf)
    return int(crc32c.crc32c(view[_CRC_END:], crc32c.crc32c(view[8:_CRC_AT])))


def decode_batch_header(buf: Buffer) -> BatchHeader:
    """Decode the header of the batch at the start of ``buf`` without touching records.

    Validates the length field (the whole batch must be inside ``buf``; ``buf`` may hold
    more after it), the magic and the record count. Does not check the CRC.
    """
    if len(buf) < BATCH_HEADER_SIZE:
        raise CorruptBatchError(f"batch of {len(buf)} bytes is shorter than its header")
    fields = _HEADER.unpack_from(buf, 0)
    (base, length, magic, crc, attrs, count, first_ts, max_ts, pid, epoch, seq) = fields
    size = length + _LENGTH_PREFIX
    if size < BATCH_HEADER_SIZE or size > len(buf):
        raise CorruptBatchError(f"batch length {length} does not fit buffer of {len(buf)}")
    if magic != BATCH_MAGIC:
        raise CorruptBatchError(f"unknown batch magic {magic}")
    if count < 1:
        raise CorruptBatchError(f"batch record count {count} < 1")
    return BatchHeader(base, size, magic, crc, attrs, count, first_ts, max_ts, pid, epoch, seq)


def verify_batch(buf: Buffer) -> BatchHeader:
    """Check that ``buf`` is exactly one intact batch (header, length and CRC32C)."""
    header = decode_batch_header(buf)
    if header.size_bytes != len(buf):
        raise CorruptBatchError(
            f"buffer of {len(buf)} bytes holds a batch of {header.size_bytes} and more"
        )
    if _checksum(buf) != header.crc:
        raise CorruptBatchError("batch CRC32C mismatch")
    return header


def stamp_base_offset(buf: bytearray | memoryview, base_offset: int) -> None:
    """Write ``base_offset`` into the batch at the start of ``buf``; the CRC stays valid."""
    if len(buf) < BATCH_HEADER_SIZE:
        raise CorruptBatchError("buffer is shorter than a batch header")
    _OFFSET.pack_into(buf, 0, base_offset)


def iter_batches(buf: Buffer) -> Iterator[memoryview]:
    """Split a buffer of concatenated batches into one memoryview per batch.

    Checks each header (not the CRC); trailing bytes that are not a whole batch raise
    `CorruptBatchError`.
    """
    view = memoryview(buf)
    pos = 0
    end = len(view)
    while pos < end:
        header = decode_batch_header(view[pos:])
        yield view[pos : pos + header.size_bytes]
        pos += header.size_bytes


_UNPACK_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


def decode_records(buf: Buffer, *, verify: bool = True) -> list[Record]:
    """Decode every record of the single batch in ``buf`` (checking the CRC by default)."""
    header = verify_batch(buf) if verify else decode_batch_header(buf)
    view = memoryview(buf)[BATCH_HEADER_SIZE : header.size_bytes]
    try:
        rows = msgpack.unpackb(view, raw=False, use_list=False, strict_map_key=True)
    except _UNPACK_ERRORS as exc:
        raise CorruptBatchError(f"records are not valid msgpack: {exc}") from exc
    if not isinstance(rows, tuple) or len(rows) != header.record_count:
        raise CorruptBatchError("records are not an array of record_count items")
    base = header.base_offset
    first_ts = header.first_timestamp_ms
    out: list[Record] = []
    for i, row in enumerate(rows):
        if not isinstance(row, tuple) or len(row) != 4:
            raise CorruptBatchError(f"record {i} is not a 4-item array")
        delta, key, value, headers = row
        if (
            type(delta) is not int
            or not (key is None or type(key) is bytes)
            or type(value) is not bytes
            or type(headers) is not tuple
        ):
            raise CorruptBatchError(f"record {i} has fields of the wrong types")
        for h in headers:
            if (
                type(h) is not tuple
                or len(h) != 2
                or type(h[0]) is not str
                or type(h[1]) is not bytes
            ):
                raise CorruptBatchError(f"record {i} has a malformed header")
        out.append(Record(base + i, first_ts + delta, key, value, headers))
    return out
