"""One segment file of the log: its in-memory sparse index, scanning and reading.

The formats are written out in `storage._entry`. This module holds the mechanics the
log is built from; `storage._log` decides when to call them.
"""

from __future__ import annotations

import os
import sys
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path

import crc32c

from zstream.storage._entry import (
    ENTRY_HEADER,
    INDEX_RECORD,
    KIND_COUNT,
    SEGMENT_HEADER,
    EntryKind,
    LogEntry,
    RawChunk,
    decode_segment_header,
    encode_segment_header,
    make_entry,
)
from zstream.storage._errors import CorruptSegmentError
from zstream.storage._files import fsync_directory

__all__ = ["ScanState", "Segment", "scan_buffer"]

_HDR = ENTRY_HEADER.size
_SEG_HDR = SEGMENT_HEADER.size
_unpack_entry = ENTRY_HEADER.unpack_from
_crc = crc32c.crc32c
_KINDS = tuple(EntryKind)
_DATA = 0
_SCAN_CHUNK_BYTES = 4 * 1024 * 1024  # recovery reads: big enough to amortize the syscall
_BIG_ENDIAN = sys.byteorder == "big"


def segment_name(first_index: int) -> str:
    return f"{first_index:020d}"


@dataclass(slots=True)
class ScanState:
    """What the next entry must look like, and what the last one was."""

    index: int
    offset: int
    term: int
    append_ms: int = 0


def scan_buffer(buf: bytes | memoryview, state: ScanState) -> tuple[int, str | None, int]:
    """Validate whole entries at the start of ``buf``, advancing ``state`` over each.

    Returns (bytes consumed, reason, bytes needed): reason is None when the scan stopped
    only because the next entry is not wholly inside ``buf`` (bytes needed then says how
    many bytes that entry needs, or the header size when even the header is cut), and a
    description of the first invalid entry otherwise. Never raises on any input.
    """
    view = memoryview(buf)
    end = len(view)
    pos = 0
    while True:
        if pos + _HDR > end:
            return pos, None, _HDR
        size, crc, term, index, kind, base, count, append_ms = _unpack_entry(view, pos)
        if size < _HDR:
            return pos, f"entry length {size} below header size", 0
        if pos + size > end:
            return pos, None, size
        if _crc(view[pos + 8 : pos + size]) != crc:
            return pos, "entry CRC32C mismatch", 0
        if index != state.index:
            return pos, f"entry index {index}, expected {state.index}", 0
        if term < state.term:
            return pos, f"entry term {term} below previous term {state.term}", 0
        if kind >= KIND_COUNT:
            return pos, f"unknown entry kind {kind}", 0
        if base != state.offset:
            return pos, f"entry base offset {base}, expected {state.offset}", 0
        if (count < 1) if kind == _DATA else (count != 0):
            return pos, f"record count {count} invalid for kind {kind}", 0
        state.index = index + 1
        state.offset = base + count
        state.term = term
        state.append_ms = append_ms
        pos += size


def _read_segment_header(fd: int, path: Path, name_index: int) -> tuple[int, int]:
    decoded = decode_segment_header(os.pread(fd, _SEG_HDR, 0))
    if decoded is None:
        raise CorruptSegmentError(path, 0, "segment header is damaged")
    if decoded[0] != name_index:
        raise CorruptSegmentError(path, 0, "segment header disagrees with file name")
    return decoded


class IndexMismatch(Exception):
    """The sparse index points at an entry that is not the one it names."""


class Segment:
    """An open segment file and its sparse index (three parallel int64 arrays)."""

    __slots__ = (
        "fd",
        "first_index",
        "first_offset",
        "idx_index",
        "idx_offset",
        "idx_pos",
        "last_append_ms",
        "last_index",
        "last_term",
        "next_offset",
        "path",
        "since_index",
        "size",
    )

    def __init__(self, path: Path, fd: int, first_index: int, first_offset: int) -> None:
        self.path = path
        self.fd = fd
        self.first_index = first_index
        self.first_offset = first_offset
        self.last_index = first_index - 1
        self.next_offset = first_offset
        self.last_term = 0
        self.last_append_ms = 0
        self.size = _SEG_HDR
        self.idx_index = array("q")
        self.idx_offset = array("q")
        self.idx_pos = array("q")
        self.since_index = 0

    @property
    def index_path(self) -> Path:
        return self.path.with_suffix(".index")

    @property
    def empty(self) -> bool:
        return self.last_index < self.first_index

    # -- creation and opening -------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, first_index: int, first_offset: int) -> Segment:
        """Create a segment durably: temp file, header, fdatasync, rename, fsync dir."""
        path = directory / (segment_name(first_index) + ".log")
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, encode_segment_header(first_index, first_offset))
            os.fdatasync(fd)
            os.replace(tmp, path)
            fsync_directory(directory)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, first_index, first_offset)

    @classmethod
    def open_existing(cls, path: Path, name_index: int) -> Segment:
        """Open a segment file and check its header; raises `CorruptSegmentError`."""
        fd = os.open(path, os.O_RDWR)
        try:
            first_index, first_offset = _read_segment_header(fd, path, name_index)
            seg = cls(path, fd, first_index, first_offset)
            seg.size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        return seg

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- the sparse index --------------------------------------------------------------

    def note_entry(self, index: int, offset: int, pos: int, size: int, interval: int) -> None:
        """Record a newly written or scanned entry in the sparse index when due."""
        if not self.idx_index or self.since_index >= interval:
            self.idx_index.append(index)
            self.idx_offset.append(offset)
            self.idx_pos.append(pos)
            self.since_index = 0
        self.since_index += size

    def clear_index(self) -> None:
        self.idx_index = array("q")
        self.idx_offset = array("q")
        self.idx_pos = array("q")
        self.since_index = 0

    def cut_index(self, from_index: int) -> None:
        """Drop index records for entries >= from_index."""
        keep = bisect_left(self.idx_index, from_index)
        del self.idx_index[keep:]
        del self.idx_offset[keep:]
        del self.idx_pos[keep:]
        # The next entry will be indexed only after another interval's worth of bytes;
        # treat the cut as a fresh interval so the index stays dense enough.
        self.since_index = 1 << 62 if keep else 0

    def index_bytes(self) -> bytes:
        n = len(self.idx_index)
        flat = array("q", bytes(8 * 3 * n))
        flat[0::3] = self.idx_index
        flat[1::3] = self.idx_offset
        flat[2::3] = self.idx_pos
        if not _BIG_ENDIAN:
            flat.byteswap()
        return flat.tobytes()

    def write_index_file(self) -> None:
        """Write the sparse index beside the segment. Derived data: no fsync."""
        tmp = self.index_path.with_name(self.index_path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(self.index_bytes())
        os.replace(tmp, self.index_path)

    def load_index(self, data: bytes) -> bool:
        """Adopt an index file's content if it is consistent with this segment."""
        rec = INDEX_RECORD.size
        if not data or len(data) % rec:
            return False
        flat = array("q")
        flat.frombytes(data)
        if not _BIG_ENDIAN:
            flat.byteswap()
        idx, off, pos = flat[0::3], flat[1::3], flat[2::3]
        if idx[0] != self.first_index or off[0] != self.first_offset or pos[0] != _SEG_HDR:
            return False
        if pos[-1] + _HDR > self.size:
            return False
        for i in range(1, len(idx)):
            step = idx[i] - idx[i - 1]
            if step < 1 or off[i] < off[i - 1] or pos[i] - pos[i - 1] < step * _HDR:
                return False
        self.idx_index, self.idx_offset, self.idx_pos = idx, off, pos
        self.since_index = 0
        return True

    # -- scanning (recovery) ------------------------------------------------------------

    def scan(self, start_pos: int, state: ScanState, interval: int) -> tuple[int, str | None]:
        """Validate entries from ``start_pos`` to the end of the file, indexing them.

        Returns (end of the valid entries, reason the scan stopped early or None). On
        return the segment's last_index/next_offset/last_term describe the valid part.
        """
        pos = start_pos
        want = _SCAN_CHUNK_BYTES
        while pos < self.size:
            chunk = os.pread(self.fd, min(max(want, _SCAN_CHUNK_BYTES), self.size - pos), pos)
            if not chunk:
                return pos, "file shorter than its size"
            before = state.index
            consumed, reason, need = scan_buffer(chunk, state)
            if consumed:
                self._index_scanned(chunk, pos, consumed, before, interval)
            pos += consumed
            self.last_index = state.index - 1
            self.next_offset = state.offset
            self.last_term = state.term
            self.last_append_ms = state.append_ms
            if reason is not None:
                return pos, reason
            if pos + need > self.size:
                return pos, "torn entry at end of file" if pos < self.size else None
            want = need
        return pos, None

    def _index_scanned(
        self, chunk: bytes, file_pos: int, consumed: int, index: int, interval: int
    ) -> None:
        pos = 0
        while pos < consumed:
            size, _, _, _, _, base, _, _ = _unpack_entry(chunk, pos)
            self.note_entry(index, base, file_pos + pos, size, interval)
            index += 1
            pos += size

    # -- reading -------------------------------------------------------------------------

    def read(
        self, start: int, end: int, max_bytes: int, slack: int, force: bool
    ) -> tuple[list[LogEntry], int]:
        """Entries [start, end) of this segment within ``max_bytes`` (at least one).

        Reads with one ``os.pread`` in the common case: from the sparse index record at
        or before ``start`` to the index record at or after ``end`` (or the budget), and
        returns memoryview slices of that one buffer. Every returned entry's CRC32C is
        checked. Returns the entries and the bytes they use on disk. With ``force`` the
        first entry is returned even when it alone exceeds ``max_bytes``.
        """
        j = bisect_right(self.idx_index, start) - 1
        pos = self.idx_pos[j]
        expect = self.idx_index[j]
        first_base = self.idx_offset[j]
        k = bisect_left(self.idx_index, end, j + 1)
        bound = self.idx_pos[k] if k < len(self.idx_pos) else self.size
        out: list[LogEntry] = []
        used = 0
        need = 0
        first = True
        fd = self.fd
        path = self.path
        while pos < bound and expect < end:
            n = min(bound - pos, max(max_bytes - used + slack, need))
            chunk = os.pread(fd, n, pos)
            length = len(chunk)
            if length < _HDR:
                raise CorruptSegmentError(path, pos, "segment ends inside an entry")
            view = memoryview(chunk)
            off = 0
            need = 0
            while off + _HDR <= length:
                size, crc, term, index, kind, base, count, _ = _unpack_entry(chunk, off)
                if index != expect or size < _HDR or (first and base != first_base):
                    if first:  # the index named another entry than the one found
                        raise IndexMismatch
                    raise CorruptSegmentError(path, pos + off, f"expected entry {expect}")
                first = False
                if off + size > length:
                    need = size
                    break
                if index >= start:
                    if (out or not force) and used + size > max_bytes:
                        return out, used
                    if _crc(view[off + 8 : off + size]) != crc or kind >= KIND_COUNT:
                        raise CorruptSegmentError(path, pos + off, "entry CRC32C mismatch")
                    out.append(
                        make_entry(
                            index, term, _KINDS[kind], base, count, view[off + _HDR : off + size]
                        )
                    )
                    used += size
                    if used >= max_bytes:  # budget spent (or one forced oversized entry)
                        return out, used
                off += size
                expect += 1
                if expect >= end:
                    return out, used
            else:
                need = _HDR if off < length else 0
            if off == 0 and need == 0:
                raise CorruptSegmentError(path, pos, "segment ends inside an entry")
            pos += off
        if expect < end and expect <= self.last_index:
            raise CorruptSegmentError(path, pos, f"entry {expect} missing")
        return out, used

    def read_raw(self, start: int, end: int, max_bytes: int, slack: int) -> RawChunk:
        """Whole entries [start, stop) of this segment as stored, stop <= end, in one buffer.

        No entry is decoded or verified: the sparse index gives both ends, so the bytes
        come from one ``os.pread``. The chunk ends at ``end`` if it fits within
        ``max_bytes``, else at the last index record that fits (so a fetch that goes on
        from there starts at an indexed entry and needs no header walk), else after the
        whole entries that fit, and holds at least one entry when start < end. Only the
        first entry's header is checked against the index (`IndexMismatch`).
        """
        if start >= end:
            base = self.next_offset if start > self.last_index else self._locate(start, slack)[1]
            return RawChunk(memoryview(b""), start, start - 1, base, base)
        idx_index, idx_pos, idx_offset = self.idx_index, self.idx_pos, self.idx_offset
        j = bisect_right(idx_index, start) - 1
        if idx_index[j] == start:
            spos, sbase = idx_pos[j], idx_offset[j]
        else:
            spos, sbase = self._locate(start, slack)
        limit = spos + max(max_bytes, 0)
        # Where `end` is, when it matters: the segment's end, an index record, or a walk.
        epos = ebase = -1
        if end > self.last_index:
            epos, ebase = self.size, self.next_offset
        else:
            k = bisect_right(idx_index, end) - 1
            if idx_index[k] == end:
                epos, ebase = idx_pos[k], idx_offset[k]
            elif idx_pos[k] < limit:
                epos, ebase = self._locate(end, slack)
        if 0 <= epos <= limit:
            stop_pos, stop, stop_base = epos, end, ebase
        else:
            # `end` lies past the budget: stop at the last index record that fits.
            m = bisect_right(idx_pos, limit) - 1
            if idx_pos[m] <= spos:
                return self._read_raw_walk(start, end, spos, sbase, limit)
            stop_pos, stop, stop_base = idx_pos[m], idx_index[m], idx_offset[m]
        chunk = os.pread(self.fd, stop_pos - spos, spos)
        if len(chunk) != stop_pos - spos:
            raise CorruptSegmentError(self.path, spos + len(chunk), "segment ends inside an entry")
        size, _, _, index, _, base, _, _ = _unpack_entry(chunk, 0)
        if index != start or base != sbase or size < _HDR:
            raise IndexMismatch
        return RawChunk(memoryview(chunk), start, stop - 1, sbase, stop_base)

    def _read_raw_walk(self, start: int, end: int, spos: int, sbase: int, limit: int) -> RawChunk:
        """`read_raw` when no index record falls inside the budget: walk the headers."""
        want = min(max(limit - spos, _HDR), self.size - spos)
        chunk = os.pread(self.fd, want, spos)
        length = len(chunk)
        off = 0
        expect = start
        base = sbase
        while expect < end and off + _HDR <= length:
            size, _, _, index, _, found, count, _ = _unpack_entry(chunk, off)
            if index != expect or found != base or size < _HDR:
                if off == 0:
                    raise IndexMismatch
                raise CorruptSegmentError(self.path, spos + off, f"expected entry {expect}")
            if off + size > length:
                if off == 0:  # a first entry bigger than the budget comes whole
                    chunk = os.pread(self.fd, size, spos)
                    if len(chunk) != size:
                        raise CorruptSegmentError(self.path, spos, "segment ends inside an entry")
                    off = size
                    expect += 1
                    base = found + count
                break
            off += size
            expect += 1
            base = found + count
        if off == 0:
            raise CorruptSegmentError(self.path, spos, "segment ends inside an entry header")
        return RawChunk(memoryview(chunk)[:off], start, expect - 1, sbase, base)

    def _locate(self, index: int, slack: int) -> tuple[int, int]:
        """(file position, base offset) of entry ``index``, walking headers from the
        index record before it. `IndexMismatch` if that record names another entry."""
        j = bisect_right(self.idx_index, index) - 1
        pos = self.idx_pos[j]
        expect = self.idx_index[j]
        first_base = self.idx_offset[j]
        first = True
        while pos + _HDR <= self.size:
            chunk = os.pread(self.fd, min(slack, self.size - pos), pos)
            off = 0
            while off + _HDR <= len(chunk):
                size, _, _, found, _, base, _, _ = _unpack_entry(chunk, off)
                if found != expect or size < _HDR or (first and base != first_base):
                    if first:
                        raise IndexMismatch
                    raise CorruptSegmentError(self.path, pos + off, f"expected entry {expect}")
                first = False
                if found == index:
                    return pos + off, base
                off += size
                expect += 1
            if off == 0:
                raise CorruptSegmentError(self.path, pos, "entry header cut short")
            pos += off
        raise CorruptSegmentError(self.path, pos, f"entry {index} not found")


def locate_entry(seg: Segment, index: int, slack: int) -> tuple[int, int]:
    """(file position, base offset) of entry ``index`` of ``seg``, walking headers only."""
    j = bisect_right(seg.idx_index, index) - 1
    pos = seg.idx_pos[j]
    expect = seg.idx_index[j]
    while pos + _HDR <= seg.size:
        chunk = os.pread(seg.fd, min(slack, seg.size - pos), pos)
        off = 0
        while off + _HDR <= len(chunk):
            size, _, _, found, _, base, _, _ = _unpack_entry(chunk, off)
            if found != expect or size < _HDR:
                raise CorruptSegmentError(seg.path, pos + off, f"expected entry {expect}")
            if found == index:
                return pos + off, base
            off += size
            expect += 1
        if off == 0:
            raise CorruptSegmentError(seg.path, pos, "entry header cut short")
        pos += off
    raise CorruptSegmentError(seg.path, pos, f"entry {index} not found")
