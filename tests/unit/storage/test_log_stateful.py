"""Random sequences of log operations checked against an in-memory model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.unit.storage.helpers import as_tuples, payload_for
from zstream.storage import (
    EntryKind,
    IndexOutOfRange,
    LogConfig,
    LogEntry,
    OffsetOutOfRange,
    SegmentedLog,
    TruncateBelowFloorError,
    iter_raw_entries,
)

HEADER_BYTES = 45
Row = tuple[int, int, int, int, int, bytes]


class LogModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="zstream-stateful-"))
        self.now = 1_000
        self.config = LogConfig(
            segment_bytes=700, index_interval_bytes=150, retention_bytes=1800, retention_ms=20_000
        )
        self.log = self._open()
        self.rows: list[Row] = []
        self.first = 1
        self.next_offset = 0
        self.term = 1
        self.synced = 0

    def _open(self) -> SegmentedLog:
        return SegmentedLog.open(self.dir, self.config, clock_ms=lambda: self.now)

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def last(self) -> int:
        return self.first + len(self.rows) - 1

    def _drop_below(self, first: int, synced_before: int) -> None:
        # Rolling syncs the sealed segment, so the log's synced_index may be ahead of
        # the model's; what matters is that only entries synced before the call go.
        dropped = first - self.first
        assert dropped >= 0
        assert all(row[0] <= synced_before for row in self.rows[:dropped]), "dropped unsynced"
        self.rows = self.rows[dropped:]
        self.first = first

    @rule(
        count=st.integers(1, 6),
        size=st.integers(0, 260),
        kinds=st.lists(st.sampled_from(EntryKind), min_size=1, max_size=3),
        bump=st.booleans(),
        advance_ms=st.integers(0, 5_000),
    )
    def append(
        self, count: int, size: int, kinds: list[EntryKind], bump: bool, advance_ms: int
    ) -> None:
        self.now += advance_ms
        self.term += bump
        entries = []
        first_new = self.last + 1
        for i in range(count):
            index = first_new + i
            kind = kinds[i % len(kinds)]
            records = 1 + index % 3 if kind == EntryKind.DATA else 0
            payload = payload_for(index, size)
            entries.append(LogEntry(index, self.term, kind, self.next_offset, records, payload))
            self.rows.append((index, self.term, int(kind), self.next_offset, records, payload))
            self.next_offset += records
        self.log.append(entries)

    @rule()
    def sync(self) -> None:
        assert self.log.sync() == self.last
        self.synced = self.last

    @precondition(lambda self: self.rows)
    @rule(data=st.data())
    def truncate_suffix(self, data: st.DataObject) -> None:
        start = data.draw(st.integers(self.first, self.last + 1))
        floor = data.draw(st.integers(self.first - 1, start))
        if start <= floor:
            with pytest.raises(TruncateBelowFloorError):
                self.log.truncate_suffix(start, floor=floor)
            return
        self.log.truncate_suffix(start, floor=floor)
        if start <= self.last:
            self.next_offset = self.rows[start - self.first][3]
            self.rows = self.rows[: start - self.first]
        self.synced = min(self.synced, start - 1)

    @rule(data=st.data())
    def truncate_prefix(self, data: st.DataObject) -> None:
        before = data.draw(st.integers(self.first, self.last + 2))
        synced_before = self.log.synced_index
        self.log.truncate_prefix(before)
        first = self.log.first_index
        assert first <= max(self.first, before)
        self._drop_below(first, synced_before)

    @rule(advance_ms=st.integers(0, 30_000))
    def retention(self, advance_ms: int) -> None:
        self.now += advance_ms
        old = self.first
        synced_before = self.log.synced_index
        cut = self.log.retention_cut(self.now)
        assert cut <= synced_before
        removed = self.log.apply_retention(self.now)
        assert (removed > 0) == (self.log.first_index > old)
        # The cut names exactly what apply_retention deletes.
        assert self.log.first_index == (cut + 1 if cut else old)
        self._drop_below(self.log.first_index, synced_before)

    @rule()
    def reopen(self) -> None:
        self.log.close()
        self.log = self._open()
        self.synced = self.last  # recovery syncs what it finds

    @rule(skip=st.integers(0, 5), offset_skip=st.integers(0, 50))
    def reset(self, skip: int, offset_skip: int) -> None:
        index, offset = self.last + 1 + skip, self.next_offset + offset_skip
        self.log.reset(index, offset)
        self.rows, self.first, self.next_offset, self.synced = [], index, offset, index - 1

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        start = data.draw(st.integers(self.first - 1, self.last + 1))
        end = data.draw(st.integers(start, self.last + 3))
        max_bytes = data.draw(st.integers(0, 2_000))
        if not self.first <= start <= self.last:
            with pytest.raises(IndexOutOfRange) as info:
                self.log.read(start, end, max_bytes)
            assert (info.value.first, info.value.last) == (self.first, self.last)
            return
        got = as_tuples(self.log.read(start, end, max_bytes))
        wanted = self.rows[start - self.first : max(end - self.first, 0)]
        expected: list[Row] = []
        used = 0
        for row in wanted:
            size = HEADER_BYTES + len(row[5])
            if expected and used + size > max_bytes:
                break
            expected.append(row)
            used += size
        if end <= start:
            expected = []
        assert got == expected

    @rule(data=st.data())
    def fetch(self, data: st.DataObject) -> None:
        start = data.draw(st.integers(self.first - 1, self.last + 2))
        max_bytes = data.draw(st.integers(0, 2_000))
        max_index = data.draw(st.none() | st.integers(self.first - 2, self.last + 1))
        if not self.first <= start <= self.last + 1:
            with pytest.raises(IndexOutOfRange):
                self.log.read_raw(start, max_bytes, max_index=max_index)
            return
        chunk = self.log.read_raw(start, max_bytes, max_index=max_index)
        top = self.last if max_index is None else min(self.last, max_index)
        rows = self.rows[start - self.first : chunk.last_index - self.first + 1]
        assert chunk.first_index == start
        assert start - 1 <= chunk.last_index <= max(top, start - 1)
        assert (chunk.last_index >= start) == (start <= top)  # at least one entry
        assert [(r[3], r[5]) for r in rows if r[2] == 0] == [
            (base, bytes(payload)) for base, payload in iter_raw_entries(chunk.data)
        ]
        assert len(chunk.data) == sum(HEADER_BYTES + len(r[5]) for r in rows)
        assert len(chunk.data) <= max_bytes or len(rows) <= 1
        if rows:
            assert (chunk.base_offset, chunk.next_offset) == (rows[0][3], rows[-1][3] + rows[-1][4])

    @rule(data=st.data())
    def lookup_offset(self, data: st.DataObject) -> None:
        start = self.rows[0][3] if self.rows else self.next_offset
        offset = data.draw(st.integers(max(start - 2, 0), self.next_offset + 1))
        holder = [r for r in self.rows if r[2] == 0 and r[3] <= offset < r[3] + r[4]]
        if holder:
            assert as_tuples([self.log.entry_for_offset(offset)]) == holder
            assert self.log.term_at(holder[0][0]) == holder[0][1]
        else:
            with pytest.raises(OffsetOutOfRange) as info:
                self.log.entry_for_offset(offset)
            assert (info.value.start, info.value.end) == (start, self.next_offset)

    @invariant()
    def matches_model(self) -> None:
        assert self.log.first_index == self.first
        assert self.log.last_index == self.last
        assert self.log.next_offset == self.next_offset
        start = self.rows[0][3] if self.rows else self.next_offset
        assert self.log.log_start_offset == start
        assert self.synced <= self.log.synced_index <= self.last


LogModel.TestCase.settings = settings(max_examples=75, stateful_step_count=40, deadline=None)
TestLogModel = LogModel.TestCase
