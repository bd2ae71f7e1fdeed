"""The fetch path: `SegmentedLog.read_raw` chunks and the `iter_raw_entries` decoder.

A chunk is checked against what `read` returns for the same range (the per-entry path
that verifies every entry), over every start, budget and high watermark of small logs,
and after truncation, retention, reset and reopen. Damage the log does not look for is
caught by the decoder; the decoder is fuzzed.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.storage.helpers import make_entries, read_all
from zstream.storage import (
    CorruptChunkError,
    CorruptSegmentError,
    EntryKind,
    IndexOutOfRange,
    LogConfig,
    LogEntry,
    RawChunk,
    SegmentedLog,
    StorageIOError,
    iter_raw_entries,
)

SMALL = LogConfig(segment_bytes=1024, index_interval_bytes=200)
MIXED = (EntryKind.DATA, EntryKind.DATA, EntryKind.NOOP, EntryKind.DATA, EntryKind.CONFIG)
HEADER = 45


def _data(entries: Sequence[LogEntry]) -> list[tuple[int, bytes]]:
    return [(e.base_offset, bytes(e.payload)) for e in entries if e.kind == EntryKind.DATA]


def _decoded(chunk: RawChunk) -> list[tuple[int, bytes]]:
    return [(base, bytes(payload)) for base, payload in iter_raw_entries(chunk.data)]


def _check_chunk(
    log: SegmentedLog, chunk: RawChunk, start: int, max_bytes: int, max_index: int | None
) -> None:
    """Everything a chunk promises, against the verifying per-entry read path."""
    assert chunk.first_index == start
    end = log.last_index if max_index is None else min(log.last_index, max_index)
    if start > end:
        assert chunk.entry_count == 0
        assert len(chunk.data) == 0
        assert chunk.base_offset == chunk.next_offset
        return
    assert start <= chunk.last_index <= end
    expected = log.read(start, chunk.last_index + 1, 1 << 40)
    assert [e.index for e in expected] == list(range(start, chunk.last_index + 1))
    assert _decoded(chunk) == _data(expected)
    assert len(chunk.data) == sum(HEADER + len(e.payload) for e in expected)
    assert chunk.base_offset == expected[0].base_offset
    assert chunk.next_offset == expected[-1].next_offset
    assert len(chunk.data) <= max_bytes or chunk.entry_count == 1


def _check_every_read(log: SegmentedLog) -> None:
    last = log.last_index
    for start in range(log.first_index, last + 2):
        for max_bytes in (0, 50, 200, 700, 1 << 20):
            for max_index in (None, start - 1, start, start + 2, last - 1):
                chunk = log.read_raw(start, max_bytes, max_index=max_index)
                _check_chunk(log, chunk, start, max_bytes, max_index)


def _fetch_all(log: SegmentedLog, max_bytes: int) -> list[tuple[int, bytes]]:
    """What a consumer does: fetch from the start until it is caught up."""
    out: list[tuple[int, bytes]] = []
    index = log.first_index
    offset = log.log_start_offset
    while index <= log.last_index:
        chunk = log.read_raw(index, max_bytes)
        assert chunk.base_offset == offset
        out.extend(_decoded(chunk))
        index, offset = chunk.last_index + 1, chunk.next_offset
    assert offset == log.next_offset
    return out


def test_every_start_budget_and_high_watermark(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        for size in (10, 300, 0, 90, 1500, 60):  # 1500: entries bigger than a segment
            log.append(make_entries(log, 4, kinds=MIXED, size=size))
        assert log.segment_count > 5
        _check_every_read(log)
        assert _fetch_all(log, 300) == _data(read_all(log))
    with SegmentedLog.open(tmp_path, SMALL) as log:  # indexes loaded from their files
        _check_every_read(log)
    for index_file in tmp_path.glob("*.index"):
        index_file.unlink()
    with SegmentedLog.open(tmp_path, SMALL) as log:  # indexes rebuilt by a scan
        _check_every_read(log)


def test_chunks_stop_at_segment_ends_and_fetches_cover_the_log(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        log.append(make_entries(log, 60, kinds=MIXED, size=70))
        starts = []
        index = 1
        while index <= log.last_index:
            chunk = log.read_raw(index, 1 << 20)
            starts.append(chunk.first_index)
            index = chunk.last_index + 1
        firsts = sorted(int(p.stem) for p in tmp_path.glob("*.log"))
        assert starts == firsts  # one chunk per segment with a big budget
        for budget in (1, 100, 333, 1000):
            assert _fetch_all(log, budget) == _data(read_all(log))


def test_bounds(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, LogConfig(index_interval_bytes=200)) as log:
        empty = log.read_raw(1, 100)
        assert (empty.first_index, empty.entry_count, empty.base_offset) == (1, 0, 0)
        log.append(make_entries(log, 5, size=400, records=3))
        with pytest.raises(IndexOutOfRange) as info:
            log.read_raw(0, 100)
        assert (info.value.first, info.value.last) == (1, 5)
        with pytest.raises(IndexOutOfRange):
            log.read_raw(7, 100)
        caught_up = log.read_raw(6, 100)
        assert (caught_up.entry_count, caught_up.base_offset, caught_up.next_offset) == (0, 15, 15)
        big = log.read_raw(2, 10)  # one entry even though it exceeds the budget
        assert (big.first_index, big.last_index, len(big.data)) == (2, 2, HEADER + 400)
        assert log.read_raw(2, 900).last_index == 3
        assert log.read_raw(1, 1 << 20, max_index=3).last_index == 3
        at_watermark = log.read_raw(4, 1 << 20, max_index=3)
        assert (at_watermark.entry_count, at_watermark.base_offset) == (0, 9)
        assert log.read_raw(4, 1 << 20, max_index=0).entry_count == 0


def test_after_truncate_suffix_and_append(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        log.append(make_entries(log, 40, kinds=MIXED, size=70))
        log.truncate_suffix(31, floor=0)  # inside an earlier segment: later ones go
        log.append(make_entries(log, 5, kinds=MIXED, size=20, term=2))
        _check_every_read(log)
        first_of_active = int(max(tmp_path.glob("*.log")).stem)
        log.truncate_suffix(first_of_active, floor=0)  # the active segment is now empty
        assert log.read_raw(first_of_active, 100).entry_count == 0
        log.append(make_entries(log, 6, kinds=MIXED, size=150, term=3))
        _check_every_read(log)
        log.sync()
    with SegmentedLog.open(tmp_path, SMALL) as log:
        _check_every_read(log)


def test_after_retention_prefix_truncation_and_reset(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=1024, index_interval_bytes=200, retention_bytes=2500)
    with SegmentedLog.open(tmp_path, config) as log:
        log.append(make_entries(log, 60, kinds=MIXED, size=70))
        log.sync()
        assert log.apply_retention(0) > 0
        with pytest.raises(IndexOutOfRange):
            log.read_raw(log.first_index - 1, 100)
        _check_every_read(log)
        log.truncate_prefix(log.first_index + 12)
        _check_every_read(log)
        log.reset(500, 9000)
        chunk = log.read_raw(500, 100)
        assert (chunk.entry_count, chunk.base_offset) == (0, 9000)
        log.append(make_entries(log, 12, kinds=MIXED, size=70))
        _check_every_read(log)
        log.sync()
    with SegmentedLog.open(tmp_path, config) as log:
        assert log.first_index == 500
        _check_every_read(log)


def test_a_stale_index_record_is_rebuilt_on_read(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        entries = make_entries(log, 30, size=60)
        log.append(entries)
        log.sync()
    index_file = min(tmp_path.glob("*.index"))
    records = [list(r) for r in struct.iter_unpack(">qqq", index_file.read_bytes())]
    assert len(records) >= 3
    records[1][2] += 1  # still passes validation on open, but names the wrong bytes
    index_file.write_bytes(b"".join(struct.pack(">qqq", *r) for r in records))
    with SegmentedLog.open(tmp_path, SMALL) as log:
        chunk = log.read_raw(records[1][0], 1 << 20)
        _check_chunk(log, chunk, records[1][0], 1 << 20, None)


def test_damage_in_a_sealed_segment_is_caught_by_the_reader(tmp_path: Path) -> None:
    """The trade: read_raw does not verify entries, iter_raw_entries does."""
    with SegmentedLog.open(tmp_path, SMALL) as log:
        entries = make_entries(log, 30, size=60)
        log.append(entries)
        log.sync()
    target = min(tmp_path.glob("*.log"))
    data = bytearray(target.read_bytes())
    data[32 + HEADER + 10] ^= 0x04  # inside the payload of the first entry
    target.write_bytes(data)
    with SegmentedLog.open(tmp_path, SMALL) as log:
        chunk = log.read_raw(1, 1 << 20)
        assert chunk.entry_count > 1
        with pytest.raises(CorruptChunkError, match="CRC32C"):
            _decoded(chunk)
        with pytest.raises(CorruptSegmentError):  # the per-entry path names the file
            log.read(1, 2, 100)


def _valid_chunk(tmp_path: Path) -> tuple[bytes, list[tuple[int, bytes]]]:
    with SegmentedLog.open(tmp_path, LogConfig()) as log:
        entries = make_entries(log, 8, kinds=MIXED, size=23)
        log.append(entries)
        chunk = log.read_raw(1, 1 << 20)
        return bytes(chunk.data), _data(entries)


def test_decoder_catches_torn_and_flipped_chunks(tmp_path: Path) -> None:
    data, expected = _valid_chunk(tmp_path)
    assert [(b, bytes(p)) for b, p in iter_raw_entries(data)] == expected
    boundaries = {0}
    while max(boundaries) < len(data):
        top = max(boundaries)
        boundaries.add(top + int.from_bytes(data[top : top + 4], "big"))
    for cut in range(1, len(data)):
        got: list[tuple[int, bytes]] = []
        if cut in boundaries:
            got.extend((b, bytes(p)) for b, p in iter_raw_entries(data[:cut]))
        else:
            with pytest.raises(CorruptChunkError):
                got.extend((b, bytes(p)) for b, p in iter_raw_entries(data[:cut]))
        assert got == expected[: len(got)]  # only whole, verified entries came out
        if cut % 7 == 0:
            for bit in (0, 5):
                flipped = bytearray(data)
                flipped[cut] ^= 1 << bit
                with pytest.raises(CorruptChunkError):
                    list(iter_raw_entries(flipped))


def test_decoder_catches_entries_out_of_sequence(tmp_path: Path) -> None:
    data, _ = _valid_chunk(tmp_path)
    first = int.from_bytes(data[:4], "big")
    second = int.from_bytes(data[first : first + 4], "big")
    with pytest.raises(CorruptChunkError, match="does not follow"):
        list(iter_raw_entries(data[first : first + second] + data[:first]))  # reordered
    with pytest.raises(CorruptChunkError, match="does not follow"):
        list(iter_raw_entries(data[:first] + data[:first]))  # duplicated
    assert list(iter_raw_entries(b"")) == []


def _entry(index: int, term: int, kind: int, base: int, count: int, payload: bytes) -> bytes:
    tail = struct.pack(">qqBqiq", term, index, kind, base, count, 0) + payload
    return struct.pack(">II", 8 + len(tail), crc32c.crc32c(tail)) + tail


def test_decoder_checks_kind_count_and_term() -> None:
    ok = _entry(1, 2, 0, 0, 1, b"x")
    assert [b for b, _ in iter_raw_entries(ok + _entry(2, 2, 2, 1, 0, b""))] == [0]
    for bad in (
        _entry(1, 2, 3, 0, 0, b""),  # unknown kind
        _entry(1, 2, 0, 0, 0, b""),  # data without records
        _entry(1, 2, 1, 0, 1, b""),  # config with records
        ok + _entry(2, 1, 0, 1, 1, b""),  # term goes back
    ):
        with pytest.raises(CorruptChunkError):
            list(iter_raw_entries(bad))


@given(st.binary(max_size=300))
def test_fuzz_decoder_raises_only_its_own_error(data: bytes) -> None:
    try:
        for base, payload in iter_raw_entries(data):
            assert isinstance(base, int)
            assert isinstance(payload, memoryview)
    except CorruptChunkError:
        pass


@given(st.data())
def test_fuzz_mutated_valid_chunks(data: st.DataObject) -> None:
    entries = [
        _entry(5 + i, 1, k, base, c, b"p" * (i * 5))
        for i, (k, c, base) in enumerate([(0, 1, 7), (2, 0, 8), (0, 2, 8), (1, 0, 10), (0, 1, 10)])
    ]
    chunk = bytearray(b"".join(entries))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(chunk) - 1))
        chunk[at] = data.draw(st.integers(0, 255))
    chunk = chunk[: data.draw(st.integers(0, len(chunk)))]
    try:
        out = [(b, bytes(p)) for b, p in iter_raw_entries(chunk)]
    except CorruptChunkError:
        return
    # A damaged chunk that still decodes would take a CRC32C collision (odds 2**-32):
    # anything that decodes is a whole-entry prefix of the original, byte for byte.
    assert bytes(chunk) == b"".join(entries)[: len(chunk)]
    assert out == [(7, b""), (8, b"p" * 10), (10, b"p" * 20)][: len(out)]


@pytest.mark.parametrize("call", ["pwritev", "fdatasync", "pread"])
def test_disk_errors_become_storage_io_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        log.append(make_entries(log, 3))

        def failing(*args: object) -> None:
            raise OSError(errno.EIO, "injected")

        more = make_entries(log, 2)
        action = {
            "pwritev": lambda: log.append(more),
            "fdatasync": log.sync,
            "pread": lambda: log.read_raw(1, 1000),
        }[call]
        monkeypatch.setattr(os, call, failing)
        with pytest.raises(StorageIOError) as info:
            action()
        assert isinstance(info.value.__cause__, OSError)
        monkeypatch.undo()
        assert (log.last_index, log.synced_index) == (3, 0)  # nothing half-done
        assert _decoded(log.read_raw(1, 1000)) == _data(log.read(1, 4, 1000))
