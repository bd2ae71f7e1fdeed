"""Raft log entries and the byte layouts of segment files.

Entry (all integers big-endian)::

    offset size field
    0      4    entry_bytes     uint32  size of the whole entry, this header included
    4      4    crc             uint32  CRC32C of bytes [8, entry_bytes): the rest of the
                                        header and the payload
    8      8    term            int64   Raft term, >= 0, never decreasing along the log
    16     8    index           int64   Raft index, exactly previous + 1
    24     1    kind            uint8   0 data, 1 config, 2 no-op
    25     8    base_offset     int64   offset of the first record (data); for other kinds
                                        the log's next offset at that point
    33     4    record_count    int32   records in a data entry (>= 1); 0 otherwise
    37     8    append_time_ms  int64   wall clock of the local append (retention by age)
    45     ...  payload                 a data payload is the client's record batch, stamped

Segment file ``<first index, 20 digits>.log``::

    0      4    magic           b"ZSLG"
    4      2    version         uint16  1
    6      2    reserved        0
    8      8    first_index     int64   index of the first entry (equals the file name)
    16     8    first_offset    int64   next record offset when the segment was created
    24     4    crc             uint32  CRC32C of bytes [0, 24)
    28     4    reserved        0
    32     ...  entries, back to back

Sparse index ``<first index, 20 digits>.index`` (derived data, never fsynced)::

    repeated 24-byte records: index int64, base_offset int64, position int64

The first record always points at the first entry (position 32). A record is added when
at least ``index_interval_bytes`` were written since the previous one.

Raw chunk (`SegmentedLog.read_raw`, decoded by `iter_raw_entries`): whole consecutive
entries exactly as stored above, back to back, with nothing added. The log reads it
without checking any entry; the reader checks every entry's CRC32C, and that indexes go
up by one and base offsets continue (base + record_count of one entry is the next
entry's base offset).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import crc32c

from zstream.storage._errors import CorruptChunkError

__all__ = [
    "ENTRY_HEADER",
    "ENTRY_TAIL",
    "INDEX_RECORD",
    "SEGMENT_HEADER",
    "EntryKind",
    "LogEntry",
    "RawChunk",
    "decode_segment_header",
    "encode_segment_header",
    "entry_crc",
    "iter_raw_entries",
    "make_entry",
]

ENTRY_HEADER = struct.Struct(">IIqqBqiq")  # 45 bytes
ENTRY_TAIL = struct.Struct(">qqBqiq")  # the header after its CRC field: bytes [8, 45)
SEGMENT_HEADER = struct.Struct(">4sHHqqII")  # 32 bytes
INDEX_RECORD = struct.Struct(">qqq")  # 24 bytes
SEGMENT_MAGIC = b"ZSLG"
SEGMENT_VERSION = 1
_SEGMENT_CRC_COVERS = 24


class EntryKind(enum.IntEnum):
    DATA = 0
    CONFIG = 1
    NOOP = 2


KIND_COUNT = len(EntryKind)
_KINDS = tuple(EntryKind)


def kind_of(value: int) -> EntryKind:
    return _KINDS[value]


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One Raft log entry. Non-data entries have record_count 0 and take no offsets."""

    index: int
    term: int
    kind: EntryKind
    base_offset: int
    record_count: int
    payload: bytes | memoryview

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count


_new = object.__new__
_set_index, _set_term, _set_kind, _set_base, _set_count, _set_payload = (
    LogEntry.__dict__[name].__set__
    for name in ("index", "term", "kind", "base_offset", "record_count", "payload")
)


def make_entry(
    index: int,
    term: int,
    kind: EntryKind,
    base_offset: int,
    record_count: int,
    payload: bytes | memoryview,
) -> LogEntry:
    """Build a `LogEntry` on the read path, skipping the frozen dataclass ``__init__``.

    The generated ``__init__`` goes through ``object.__setattr__`` once per field, which
    was two thirds of the per-entry cost of a read; the slot descriptors set the same
    fields directly. The result is an ordinary, equal, immutable `LogEntry`.
    """
    entry: LogEntry = _new(LogEntry)
    _set_index(entry, index)
    _set_term(entry, term)
    _set_kind(entry, kind)
    _set_base(entry, base_offset)
    _set_count(entry, record_count)
    _set_payload(entry, payload)
    return entry


@dataclass(frozen=True, slots=True)
class RawChunk:
    """Whole consecutive entries [first_index, last_index] as stored, in one buffer.

    ``data`` holds entry headers and payloads back to back (layout at the top of this
    module); the log did not verify them, `iter_raw_entries` does. ``base_offset`` is
    the first entry's base offset and ``next_offset`` the offset after the last entry.
    An empty chunk has last_index = first_index - 1 and base_offset = next_offset.
    """

    data: memoryview
    first_index: int
    last_index: int
    base_offset: int
    next_offset: int

    @property
    def entry_count(self) -> int:
        return self.last_index - self.first_index + 1


_unpack_entry = ENTRY_HEADER.unpack_from
_HDR = ENTRY_HEADER.size


def iter_raw_entries(buf: bytes | bytearray | memoryview) -> Iterator[tuple[int, memoryview]]:
    """Verify and walk a raw chunk: yields (base_offset, payload) for each data entry.

    Every entry's CRC32C is checked, and its length, kind and record count; indexes must
    go up by one, terms must not decrease and base offsets must continue from entry to
    entry. Config and no-op entries are checked and skipped. Payloads are memoryview
    slices of ``buf`` (no copies). Raises `CorruptChunkError`, and nothing else, at the
    first entry that fails; the entries yielded before it passed every check.
    """
    view = memoryview(buf).cast("B")
    end = len(view)
    pos = 0
    expect_index = expect_offset = -1
    last_term = 0
    crc = crc32c.crc32c
    while pos < end:
        if pos + _HDR > end:
            raise CorruptChunkError(f"entry header cut short at byte {pos}")
        size, want, term, index, kind, base, count, _ = _unpack_entry(view, pos)
        if size < _HDR or pos + size > end:
            raise CorruptChunkError(f"entry length {size} at byte {pos} overruns the chunk")
        if crc(view[pos + 8 : pos + size]) != want:
            raise CorruptChunkError(f"entry CRC32C mismatch at byte {pos}")
        if kind >= KIND_COUNT or ((count < 1) if kind == 0 else (count != 0)):
            raise CorruptChunkError(f"entry kind {kind} with record count {count} at byte {pos}")
        if pos and (index != expect_index or base != expect_offset or term < last_term):
            raise CorruptChunkError(
                f"entry at byte {pos} (index {index}, offset {base}, term {term}) does not "
                f"follow index {expect_index - 1}, offset {expect_offset}, term {last_term}"
            )
        if kind == 0:
            yield base, view[pos + _HDR : pos + size]
        expect_index = index + 1
        expect_offset = base + count
        last_term = term
        pos += size


def entry_crc(header: memoryview, payload: bytes | memoryview) -> int:
    """CRC32C of a header's bytes after the CRC field, then the payload."""
    return int(crc32c.crc32c(payload, crc32c.crc32c(header[8:])))


def encode_segment_header(first_index: int, first_offset: int) -> bytes:
    buf = bytearray(SEGMENT_HEADER.size)
    SEGMENT_HEADER.pack_into(
        buf, 0, SEGMENT_MAGIC, SEGMENT_VERSION, 0, first_index, first_offset, 0, 0
    )
    crc = crc32c.crc32c(memoryview(buf)[:_SEGMENT_CRC_COVERS])
    struct.pack_into(">I", buf, _SEGMENT_CRC_COVERS, crc)
    return bytes(buf)


def decode_segment_header(buf: bytes | memoryview) -> tuple[int, int] | None:
    """(first_index, first_offset), or None if the header is not intact."""
    if len(buf) < SEGMENT_HEADER.size:
        return None
    magic, version, res1, first_index, first_offset, crc, res2 = SEGMENT_HEADER.unpack_from(buf)
    if magic != SEGMENT_MAGIC or version != SEGMENT_VERSION or res1 or res2:
        return None
    if crc32c.crc32c(memoryview(buf)[:_SEGMENT_CRC_COVERS]) != crc:
        return None
    if first_index < 1 or first_offset < 0:
        return None
    return first_index, first_offset
