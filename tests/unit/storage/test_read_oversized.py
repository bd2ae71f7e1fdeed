"""Regression: a read whose first entry alone exceeds the byte budget (returned
because the read must return at least one) stops there, in the middle of a
segment, instead of reporting the segment as corrupt."""

from __future__ import annotations

from pathlib import Path

from zstream.storage import EntryKind, LogConfig, LogEntry, SegmentedLog, encode_batch


def _log_of_big_batches(path: Path, count: int) -> SegmentedLog:
    log = SegmentedLog.open(path, LogConfig())
    offset = 0
    for index in range(1, count + 1):
        batch = encode_batch([(None, b"x" * 100)] * 1000, base_offset=offset)
        log.append([LogEntry(index, 1, EntryKind.DATA, offset, 1000, batch)])
        offset += 1000
    return log


def test_oversized_first_entry_is_returned_alone(tmp_path: Path) -> None:
    with _log_of_big_batches(tmp_path / "log", 3) as log:
        entries = log.read(1, 4, 10)
        assert [e.index for e in entries] == [1]
        assert [log.entry_for_offset(o).index for o in (0, 999, 1000, 1500, 2999)] == [
            1,
            1,
            2,
            2,
            3,
        ]
        assert [e.index for e in log.read(1, 4, 1 << 30)] == [1, 2, 3]
