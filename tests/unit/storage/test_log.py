"""The segmented log through its public surface: append, read, lookups, truncation,
retention, reset, reopen, sync from another thread, and its contract errors."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import crc32c
import pytest

from tests.unit.storage.helpers import as_tuples, make_entries, read_all
from zstream.storage import (
    ConfigError,
    CorruptSegmentError,
    EntryKind,
    IndexOutOfRange,
    InvalidAppendError,
    LogClosedError,
    LogConfig,
    LogEntry,
    OffsetOutOfRange,
    SegmentedLog,
    StorageError,
    TruncateBelowFloorError,
    atomic_write,
    read_file_if_exists,
)

SMALL = LogConfig(segment_bytes=1024, index_interval_bytes=200)
MIXED = (EntryKind.DATA, EntryKind.DATA, EntryKind.NOOP, EntryKind.DATA, EntryKind.CONFIG)


def test_new_log_is_empty(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path / "log", SMALL) as log:
        assert (log.first_index, log.last_index, log.synced_index) == (1, 0, 0)
        assert (log.log_start_offset, log.next_offset) == (0, 0)
        with pytest.raises(IndexOutOfRange) as info:
            log.read(1, 2, 100)
        assert (info.value.first, info.value.last) == (1, 0)
        with pytest.raises(OffsetOutOfRange) as oor:
            log.entry_for_offset(0)
        assert (oor.value.start, oor.value.end) == (0, 0)


def test_append_read_and_reopen_across_segments(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        entries = make_entries(log, 40, kinds=MIXED)
        log.append(entries[:7])
        log.append(entries[7:])
        assert log.segment_count > 3
        assert log.last_index == 40
        assert log.next_offset == 2 * sum(e.kind == EntryKind.DATA for e in entries)
        assert as_tuples(read_all(log)) == as_tuples(entries)
        assert log.sync() == 40
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert as_tuples(read_all(log)) == as_tuples(entries)
        assert log.synced_index == 40
        assert sorted(p.suffix for p in tmp_path.iterdir() if p.suffix == ".index")


def test_non_data_entries_take_the_next_offset_whatever_the_caller_says(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        log.append(make_entries(log, 1))
        log.append([LogEntry(2, 1, EntryKind.NOOP, 999, 0, b"")])
        (noop,) = log.read(2, 3, 100)
        assert noop.base_offset == 2 == log.next_offset
        assert noop.record_count == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"index": 4}, "entry index 4 term 2 does not follow index 1 term 2"),
        ({"term": 0}, "term 0 does not follow"),
        ({"base_offset": 5}, "base offset"),
        ({"record_count": 0}, "record count"),
        ({"kind": EntryKind.NOOP, "record_count": 1}, "record count"),
    ],
)
def test_append_checks_contiguity(tmp_path: Path, change: dict[str, object], message: str) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        log.append(make_entries(log, 1, term=2))
        good = make_entries(log, 1, term=2)[0]
        fields = {
            "index": good.index,
            "term": good.term,
            "kind": good.kind,
            "base_offset": good.base_offset,
            "record_count": good.record_count,
            "payload": good.payload,
        }
        fields.update(change)
        bad = LogEntry(**fields)  # type: ignore[arg-type]
        with pytest.raises(InvalidAppendError, match=message):
            log.append([bad])
        assert log.last_index == 1  # nothing of a rejected call was written


def test_read_respects_max_bytes_but_returns_at_least_one_entry(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, LogConfig(index_interval_bytes=300)) as log:
        entries = make_entries(log, 20, size=100)
        log.append(entries)
        entry_bytes = 145  # 45-byte header + payload
        assert [e.index for e in log.read(3, 100, 0)] == [3]
        assert [e.index for e in log.read(3, 100, entry_bytes * 4)] == [3, 4, 5, 6]
        assert [e.index for e in log.read(3, 100, entry_bytes * 4 - 1)] == [3, 4, 5]
        assert [e.index for e in log.read(5, 8, 1 << 20)] == [5, 6, 7]
        assert log.read(5, 5, 1 << 20) == []
        with pytest.raises(IndexOutOfRange):
            log.read(21, 22, 100)
        with pytest.raises(IndexOutOfRange):
            log.read(0, 2, 100)


def test_read_of_an_entry_larger_than_the_read_window(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        entries = make_entries(log, 3, size=200_000)
        log.append(entries)
        assert as_tuples(log.read(2, 3, 10)) == as_tuples(entries[1:2])
        assert as_tuples(read_all(log)) == as_tuples(entries)


def test_entry_for_offset_and_term_at(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        entries: list[LogEntry] = []
        for term in (1, 1, 2, 3, 3, 5):
            batch = make_entries(log, 4, term=term, kinds=MIXED, records=3)
            log.append(batch)
            entries += batch
        for entry in entries:
            assert log.term_at(entry.index) == entry.term
            if entry.kind != EntryKind.DATA:
                continue
            for offset in range(entry.base_offset, entry.base_offset + entry.record_count):
                found = log.entry_for_offset(offset)
                assert as_tuples([found]) == as_tuples([entry])
        with pytest.raises(OffsetOutOfRange) as info:
            log.entry_for_offset(log.next_offset)
        assert (info.value.offset, info.value.start, info.value.end) == (
            log.next_offset,
            0,
            log.next_offset,
        )
        with pytest.raises(IndexOutOfRange):
            log.term_at(log.last_index + 1)


def test_truncate_suffix_refuses_the_floor_and_is_durable(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        entries = make_entries(log, 30, kinds=MIXED)
        log.append(entries)
        log.sync()
        with pytest.raises(TruncateBelowFloorError):
            log.truncate_suffix(10, floor=10)
        log.truncate_suffix(12, floor=5)
        assert log.last_index == 11
        assert log.synced_index == 11
        assert log.next_offset == entries[11].base_offset
        assert log.term_at(11) == 1
        log.truncate_suffix(50, floor=0)  # beyond the end: nothing to do
        replacement = make_entries(log, 5, term=2, kinds=MIXED)
        log.append(replacement)
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert as_tuples(read_all(log)) == as_tuples(entries[:11] + replacement)


def test_truncate_suffix_to_the_first_entry_keeps_an_empty_log(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        log.append(make_entries(log, 25))
        log.truncate_suffix(1, floor=0)
        assert (log.first_index, log.last_index, log.next_offset) == (1, 0, 0)
        assert log.segment_count == 1
        log.append(make_entries(log, 2, term=3))
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert [e.term for e in read_all(log)] == [3, 3]


def test_truncate_prefix_drops_only_whole_synced_segments(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        entries = make_entries(log, 40)
        log.append(entries)
        log.truncate_prefix(1000)  # unsynced entries in sealed segments are durable already
        assert log.segment_count == 1
        assert log.first_index <= 40
        kept = entries[log.first_index - 1 :]
        assert as_tuples(read_all(log)) == as_tuples(kept)
        assert log.log_start_offset == kept[0].base_offset
        with pytest.raises(IndexOutOfRange):
            log.read(1, 2, 10)
        with pytest.raises(OffsetOutOfRange):
            log.entry_for_offset(0)
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert as_tuples(read_all(log)) == as_tuples(kept)


def test_retention_by_bytes_and_by_age(tmp_path: Path) -> None:
    now = [1_000]
    config = LogConfig(segment_bytes=1024, index_interval_bytes=200, retention_ms=500)
    with SegmentedLog.open(tmp_path / "age", config, clock_ms=lambda: now[0]) as log:
        for _ in range(4):
            log.append(make_entries(log, 7))
            now[0] += 300
        log.sync()
        segments = log.segment_count
        assert log.apply_retention(now[0] - 1_000) == 0
        removed = log.apply_retention(now[0] + 100)
        assert removed > 0
        assert log.segment_count == segments - removed >= 1
        remaining = log.segment_count
        assert log.apply_retention(now[0] + 10_000) == remaining - 1
        assert log.segment_count == 1  # the active segment always stays
    config = LogConfig(segment_bytes=1024, index_interval_bytes=200, retention_bytes=2048)
    with SegmentedLog.open(tmp_path / "size", config) as log:
        log.append(make_entries(log, 40))
        log.sync()
        removed = log.apply_retention(0)
        assert removed > 0
        assert log.size_bytes >= 2048
        assert log.size_bytes - 1024 < 2048


def test_retention_never_drops_unsynced_entries(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=1024, index_interval_bytes=200, retention_bytes=0)
    with SegmentedLog.open(tmp_path, config) as log:
        log.append(make_entries(log, 40))
        # Rolling synced the sealed segments, so they may go; the active one stays.
        log.apply_retention(0)
        assert log.segment_count == 1
        assert log.last_index == 40


def test_reset_starts_an_empty_log_at_the_given_position(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        log.append(make_entries(log, 30))
        log.reset(1000, 5000)
        assert (log.first_index, log.last_index, log.synced_index) == (1000, 999, 999)
        assert (log.log_start_offset, log.next_offset) == (5000, 5000)
        appended = make_entries(log, 3, term=7)
        log.append(appended)
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert as_tuples(read_all(log)) == as_tuples(appended)
        assert log.log_start_offset == 5000
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".log"]) == 1


def test_empty_reset_log_survives_reopen(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, SMALL) as log:
        log.reset(77, 123)
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert (log.first_index, log.last_index, log.next_offset) == (77, 76, 123)


def test_sync_in_a_worker_thread_while_appending_and_rolling(tmp_path: Path) -> None:
    with SegmentedLog.open(tmp_path, LogConfig(segment_bytes=4096)) as log:
        stop = threading.Event()
        seen: list[int] = []
        errors: list[BaseException] = []

        def syncer() -> None:
            try:
                while not stop.is_set():
                    seen.append(log.sync())
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=syncer)
        worker.start()
        try:
            for _ in range(200):
                log.append(make_entries(log, 3, size=50))
        finally:
            stop.set()
            worker.join(timeout=30)
        assert not worker.is_alive()
        assert not errors
        assert seen == sorted(seen)
        assert all(s <= 600 for s in seen)
        assert log.sync() == 600
        assert log.segment_count > 10


def test_contract_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        LogConfig(segment_bytes=10)
    with pytest.raises(ConfigError):
        LogConfig(retention_ms=-1)
    log = SegmentedLog.open(tmp_path, SMALL)
    with pytest.raises(StorageError, match="open elsewhere"):
        SegmentedLog.open(tmp_path, SMALL)
    log.close()
    log.close()
    with pytest.raises(LogClosedError):
        log.append(make_entries(log, 1))
    SegmentedLog.open(tmp_path, SMALL).close()


def test_atomic_write_and_read(tmp_path: Path) -> None:
    path = tmp_path / "hard-state"
    assert read_file_if_exists(path) is None
    atomic_write(path, b"term=1")
    atomic_write(path, b"term=2 vote=3")
    assert read_file_if_exists(path) == b"term=2 vote=3"
    assert [p.name for p in tmp_path.iterdir()] == ["hard-state"]


def test_interrupted_reset_is_completed_on_open(tmp_path: Path) -> None:
    """A crash inside reset() leaves the documented reset.pending marker behind."""
    with SegmentedLog.open(tmp_path, SMALL) as log:
        log.append(make_entries(log, 30))
    head = struct.pack(">qq", 500, 9000)
    atomic_write(tmp_path / "reset.pending", head + struct.pack(">I", crc32c.crc32c(head)))
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert (log.first_index, log.last_index, log.next_offset) == (500, 499, 9000)
        assert log.segment_count == 1
    assert not (tmp_path / "reset.pending").exists()
    atomic_write(tmp_path / "reset.pending", b"\x00" * 20)
    with pytest.raises(CorruptSegmentError, match="marker"):
        SegmentedLog.open(tmp_path, SMALL)


def test_public_surface() -> None:
    from zstream import storage

    contract = {
        "encode_batch", "decode_batch_header", "verify_batch", "stamp_base_offset",
        "decode_records", "iter_batches", "BatchHeader", "Record", "EntryKind", "LogEntry",
        "LogConfig", "SegmentedLog", "atomic_write", "read_file_if_exists", "StorageError",
        "CorruptSegmentError", "CorruptBatchError", "OffsetOutOfRange", "IndexOutOfRange",
    }  # fmt: skip
    assert contract <= set(storage.__all__)
    assert all(hasattr(storage, name) for name in storage.__all__)
    errors = [getattr(storage, n) for n in storage.__all__ if n.endswith(("Error", "Range"))]
    assert all(issubclass(e, storage.StorageError) for e in errors)
