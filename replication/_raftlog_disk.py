"""`RaftLog`: the durable Raft log of one group. The partition log IS the Raft log.

It implements the core's `Storage` protocol on top of `storage.SegmentedLog`, plus the
writer side the host calls. Group directory layout::

    <group dir>/log/          SegmentedLog segments (entry format: storage._entry)
    <group dir>/raft-state    msgpack map below, replaced with storage.atomic_write
    <group dir>/snapshot      (records=False only) the state machine's snapshot bytes
    <group dir>/corrupt-segment   only after a read met a corrupt sealed segment: its
                              file name; the next open cuts the log there

``raft-state`` is one msgpack map with str keys (no checksum of its own: it is only ever
replaced whole, by temp file + fsync + rename + fsync of the directory)::

    "v"         uint   format version, 1
    "term"      uint   hard state: current term
    "vote"      uint   hard state: vote in that term (0 = none)
    "commit"    uint   hard state: a commit index known at the last write (a hint; it
                       is clamped to the last index on open)
    "applied"   uint   the host's applied index at the last write; the configuration
                       history below reflects every CONF_CHANGE entry up to it
    "snap"      array of 4: [index uint, term uint, conf_state bin, next_offset uint]:
                       the log starts after ``index`` (term ``term``); ``next_offset`` is
                       the first record offset after it; conf_state is
                       replication._codec's encoding
    "conf"      array of [index uint, conf_state bin], ascending by index: the
                       configuration in force from each index on; the last one is in force
    "recover"   uint   recovering_until: 0, or the last index the log had before a
                       corrupt segment was cut off (votes are blocked until reached again)

Rules:

- Term and vote are durable (`save_hard_state`) before any message that depends on them
  leaves the node; the host runs that write in a worker thread.
- Entries are appended with one SegmentedLog.append (one pwritev per segment) and made
  durable by `sync` (fdatasync, in a worker thread, concurrently with the loop).
- For ``records=True`` a NORMAL entry's data is a record batch. Each replica computes the
  entry's base offset from its own log (`SegmentedLog.next_offset`: offsets are dense and
  every replica's prefix is identical, so they agree) and its record count from the
  batch header; when the batch's stamped base offset differs, a stamped copy is stored
  (the batch CRC excludes the base offset). For ``records=False`` a NORMAL entry is an
  opaque command, stored as a DATA entry of one record (storage requires data entries to
  take offsets; the controller never uses them).
- Snapshots of a partition are "the log starts here": `compact` moves the logical start
  (and the segments below it are deleted whole); the snapshot is its metadata plus
  msgpack ``{"next_offset": n}``. Installing one resets the log to start after it.
- Terms are kept in memory as runs (first index of each term), rebuilt on open with a
  binary search over the log, so `term` never reads the disk.
- A `CorruptSegmentError` on open is repaired by cutting the log from the corrupt
  segment on, after durably recording ``recovering_until`` (see the module's "recover").
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import msgpack

from zstream.storage import (
    BATCH_HEADER_SIZE,
    CorruptChunkError,
    CorruptSegmentError,
    EntryKind,
    LogConfig,
    LogEntry,
    SegmentedLog,
    StorageError,
    atomic_write,
    iter_raw_entries,
    read_file_if_exists,
    stamp_base_offset,
)

from ._codec import decode_conf_state, encode_conf_state
from ._errors import CodecError, CompactedError, RaftError, UnavailableError
from ._types import (
    EMPTY_CONF_STATE,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMetadata,
)

__all__ = ["RaftLog", "RaftLogError"]

_STATE_VERSION = 1
_BASE = struct.Struct(">q")
_COUNT = struct.Struct(">i")
_COUNT_AT = 19  # storage._batch: record_count follows base(8) len(4) magic(1) crc(4) attrs(2)
_CORRUPT_MARKER = "corrupt-segment"
_MAX_REPAIRS = 8
_OFFSET_CACHE = 1 << 16  # entries whose end offset offset_after() knows without a read
_TYPES = tuple(EntryType)
_KINDS = tuple(EntryKind)
_NORMAL = EntryType.NORMAL
_DATA = EntryKind.DATA


class RaftLogError(RaftError):
    """The durable Raft log cannot do what was asked (disk failure, damaged state)."""


@dataclass(slots=True)
class _State:
    term: int = 0
    vote: int = 0
    commit: int = 0
    applied: int = 0
    snap_index: int = 0
    snap_term: int = 0
    snap_conf: ConfState = EMPTY_CONF_STATE
    snap_next_offset: int = 0
    conf: list[tuple[int, ConfState]] = field(default_factory=list)
    recovering_until: int = 0

    def encode(self) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            {
                "v": _STATE_VERSION,
                "term": self.term,
                "vote": self.vote,
                "commit": self.commit,
                "applied": self.applied,
                "snap": [
                    self.snap_index,
                    self.snap_term,
                    encode_conf_state(self.snap_conf),
                    self.snap_next_offset,
                ],
                "conf": [[i, encode_conf_state(cs)] for i, cs in self.conf],
                "recover": self.recovering_until,
            },
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, buf: bytes) -> _State:
        try:
            m: Any = msgpack.unpackb(buf, raw=False)
            _check_version(m)
            snap = m["snap"]
            st = cls(
                term=_int(m["term"]),
                vote=_int(m["vote"]),
                commit=_int(m["commit"]),
                applied=_int(m["applied"]),
                snap_index=_int(snap[0]),
                snap_term=_int(snap[1]),
                snap_conf=decode_conf_state(snap[2]),
                snap_next_offset=_int(snap[3]),
                conf=[(_int(i), decode_conf_state(cs)) for i, cs in m["conf"]],
                recovering_until=_int(m["recover"]),
            )
        except (ValueError, TypeError, KeyError, IndexError, CodecError) as exc:
            raise RaftLogError(f"damaged raft-state: {exc}") from exc
        except msgpack.UnpackException as exc:
            raise RaftLogError(f"damaged raft-state: {exc}") from exc
        return st


def _check_version(m: Any) -> None:
    if not isinstance(m, dict) or m.get("v") != _STATE_VERSION:
        raise TypeError("not a version 1 raft-state map")


def _int(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise TypeError(f"expected a non-negative int, got {v!r}")
    return v


class RaftLog:
    """The durable Raft log of one group (see the module docstring).

    Threads: the host's loop thread calls everything, except that `sync`,
    `save_hard_state` and `save_state` may run in worker threads (one sync at a time,
    never while `append`/`apply_snapshot`/`compact` truncate the log).
    """

    def __init__(self, directory: Path, log: SegmentedLog, records: bool, state: _State) -> None:
        self._dir = directory
        self._log = log
        self._records = records
        self._state = state
        self._write_lock = threading.Lock()
        self._run_starts: list[int] = []
        self._run_terms: list[int] = []
        self._commit_floor = 0
        self._closed = False
        # The offset after each recently appended entry, from index _ofs_start on: lets
        # offset_after() answer without reading the disk (appends compute it anyway).
        self._ofs_start = log.last_index + 1
        self._ofs: list[int] = []

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path | str, log_config: LogConfig, *, records: bool) -> RaftLog:
        """Open (or create) the group's log in ``directory``, repairing a corrupt sealed
        segment by cutting the log there (see ``recovering_until``)."""
        path = Path(directory)
        try:
            path.mkdir(parents=True, exist_ok=True)
            raw = read_file_if_exists(path / "raft-state")
            state = _State.decode(raw) if raw is not None else _State()
            marker = read_file_if_exists(path / _CORRUPT_MARKER)
            if marker is not None:
                # A read found a corrupt entry last time (sealed segments are verified
                # lazily, so open alone would not notice): cut there now.
                name = marker.decode(errors="replace").strip()
                _repair(path, log_config, CorruptSegmentError(path / "log" / name, 0), state)
                os.unlink(path / _CORRUPT_MARKER)
            for _ in range(_MAX_REPAIRS):
                try:
                    log = SegmentedLog.open(path / "log", log_config)
                except CorruptSegmentError as exc:
                    _repair(path, log_config, exc, state)
                    continue
                self = cls(path, log, records, state)
                try:
                    self._reconcile()
                except CorruptSegmentError as exc:  # met by the term-run search
                    log.close()
                    _repair(path, log_config, exc, state)
                    continue
                except BaseException:
                    log.close()
                    raise
                return self
        except StorageError as exc:
            raise RaftLogError(f"cannot open raft log {path}: {exc}") from exc
        raise RaftLogError(f"cannot open raft log {path}: still corrupt after repairs")

    def _reconcile(self) -> None:
        st, log = self._state, self._log
        s = st.snap_index
        try:
            if s > 0:
                first, last = log.first_index, log.last_index
                if first - 1 > s:
                    raise RaftLogError(
                        f"log starts at {first} but the recorded log start is {s + 1}"
                    )
                matches = s == first - 1 or (s <= last and log.term_at(s) == st.snap_term)
                if not matches:
                    # An install interrupted between raft-state and the log reset.
                    log.reset(s + 1, st.snap_next_offset)
                elif s >= first:
                    log.truncate_prefix(s + 1)  # finish an interrupted compaction
        except CorruptSegmentError:
            raise
        except StorageError as exc:
            raise RaftLogError(f"cannot reconcile raft log {self._dir}: {exc}") from exc
        self._build_runs()
        if st.recovering_until and log.last_index >= st.recovering_until:
            st.recovering_until = 0
        if not st.conf:
            st.conf = [(s, st.snap_conf)]
        last = self.last_index()
        st.commit = min(st.commit, last)
        st.applied = max(min(st.applied, st.commit), s)
        self._commit_floor = st.commit

    def _build_runs(self) -> None:
        """Term runs over the physical log, by binary search (terms never decrease)."""
        log = self._log
        first, last = log.first_index, log.last_index
        starts: list[int] = []
        terms: list[int] = []
        if last >= first:
            term_at = log.term_at
            lo, t = first, term_at(first)
            last_term = term_at(last)
            while True:
                starts.append(lo)
                terms.append(t)
                if t == last_term:
                    break
                a, b = lo + 1, last  # term_at(b) > t
                while a < b:
                    m = (a + b) // 2
                    if term_at(m) > t:
                        b = m
                    else:
                        a = m + 1
                lo, t = a, term_at(a)
        self._run_starts, self._run_terms = starts, terms

    def bootstrap(self, conf_state: ConfState) -> None:
        """Make a fresh log a member of a new group with ``conf_state`` (durable). Only
        for a log that never held anything; otherwise a no-op."""
        st = self._state
        if st.term or self.last_index() or st.snap_index or any(cs.voters for _, cs in st.conf):
            return
        st.conf = [(0, conf_state)]
        st.snap_conf = conf_state
        self.save_state()

    # -- Storage protocol ----------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        st = self._state
        return HardState(st.term, st.vote, st.commit), st.conf[-1][1]

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        if lo < self.first_index():
            raise CompactedError(f"entry {lo} compacted (first index {self.first_index()})")
        if hi > self._log.last_index + 1:
            raise UnavailableError(f"entries up to {hi - 1} unavailable")
        if lo >= hi:
            return []
        try:
            got = self._log.read(lo, hi, max_bytes)
        except CorruptSegmentError as exc:
            self._mark_corrupt(exc)
            raise RaftLogError(f"cannot read entries [{lo}, {hi}): {exc}") from exc
        except StorageError as exc:
            raise RaftLogError(f"cannot read entries [{lo}, {hi}): {exc}") from exc
        types = _TYPES
        return [Entry(e.term, e.index, types[e.kind], bytes(e.payload)) for e in got]

    def term(self, index: int) -> int:
        st = self._state
        if index == st.snap_index:
            return st.snap_term
        if index < st.snap_index:
            raise CompactedError(f"term of {index} compacted")
        if index > self._log.last_index:
            raise UnavailableError(f"term of {index} unavailable")
        return self._run_terms[bisect_right(self._run_starts, index) - 1]

    def first_index(self) -> int:
        return max(self._log.first_index, self._state.snap_index + 1)

    def last_index(self) -> int:
        return max(self._log.last_index, self._state.snap_index)

    def snapshot(self) -> Snapshot:
        st = self._state
        meta = SnapshotMetadata(st.snap_index, st.snap_term, self.conf_state_at(st.snap_index))
        if self._records:
            data = msgpack.packb({"next_offset": st.snap_next_offset})
        else:
            data = read_file_if_exists(self._dir / "snapshot") or b""
        return Snapshot(meta, data)

    # -- information for the host --------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def records(self) -> bool:
        return self._records

    @property
    def applied_index(self) -> int:
        """The applied index recorded in the state (pass it as RaftConfig.applied)."""
        return self._state.applied

    @property
    def recovering_until(self) -> int:
        """0, or the index this replica must reach again before it may vote."""
        st = self._state
        if st.recovering_until and self._log.last_index >= st.recovering_until:
            st.recovering_until = 0
        return st.recovering_until

    @property
    def log_start_offset(self) -> int:
        """The first record offset of the log (after compaction or a snapshot)."""
        return self._state.snap_next_offset if self._state.snap_index else 0

    @property
    def next_offset(self) -> int:
        """The record offset the next appended data entry gets."""
        return self._log.next_offset

    def conf_state_at(self, index: int) -> ConfState:
        """The configuration in force at ``index`` (from the kept history)."""
        conf = self._state.conf
        for i in range(len(conf) - 1, -1, -1):
            if conf[i][0] <= index:
                return conf[i][1]
        return conf[0][1]

    def offset_after(self, index: int) -> int:
        """The first record offset after entry ``index`` (for index in
        ``first_index() - 1 .. last_index()``)."""
        st = self._state
        if index == st.snap_index or index < self._log.first_index:
            if index < st.snap_index:
                raise CompactedError(f"entry {index} compacted")
            return self.log_start_offset
        if index > self._log.last_index:
            raise UnavailableError(f"entry {index} unavailable")
        k = index - self._ofs_start
        if 0 <= k < len(self._ofs):
            return self._ofs[k]
        try:
            e = self._log.read(index, index + 1, 0)[0]
        except CorruptSegmentError as exc:
            self._mark_corrupt(exc)
            raise RaftLogError(f"cannot read entry {index}: {exc}") from exc
        except StorageError as exc:
            raise RaftLogError(f"cannot read entry {index}: {exc}") from exc
        return e.base_offset + e.record_count

    def batch_at(self, offset: int) -> tuple[int, memoryview]:
        """The data entry holding record ``offset``: (its base offset, its batch bytes).
        Raises storage.OffsetOutOfRange outside the physical log."""
        e = self._entry_for_offset(offset)
        return e.base_offset, memoryview(e.payload)

    def _entry_for_offset(self, offset: int) -> LogEntry:
        try:
            return self._log.entry_for_offset(offset)
        except CorruptSegmentError as exc:
            self._mark_corrupt(exc)
            raise RaftLogError(f"cannot read offset {offset}: {exc}") from exc

    def read_batches(
        self, offset: int, max_bytes: int, *, max_index: int | None = None
    ) -> list[tuple[int, memoryview]]:
        """Data batches from the one holding record ``offset``: (base offset, batch bytes).

        The fetch path: one `SegmentedLog.read_raw` per segment touched, each chunk checked
        by `iter_raw_entries` (entry CRCs, sequence), instead of one lookup per batch. Stops
        within ``max_bytes`` (entry headers included) but returns at least one batch, and
        none from an entry past ``max_index`` (the commit index, for a high watermark).
        Raises storage.OffsetOutOfRange outside the physical log.
        """
        log = self._log
        start = self._entry_for_offset(offset).index
        last = log.last_index if max_index is None else min(max_index, log.last_index)
        out: list[tuple[int, memoryview]] = []
        budget = max_bytes
        while start <= last and (budget > 0 or not out):
            chunk = log.read_raw(start, max(budget, 1), max_index=last)
            if chunk.last_index < chunk.first_index:
                break
            try:
                out.extend(iter_raw_entries(chunk.data))
            except CorruptChunkError as exc:
                self._raise_corrupt(start, chunk.last_index, exc)
            budget -= len(chunk.data)
            start = chunk.last_index + 1
        return out

    def _raise_corrupt(self, first: int, last: int, exc: CorruptChunkError) -> NoReturn:
        """A raw chunk failed its checks: find the damage with the verifying reader, so
        the file and position are named and the next open cuts the log there."""
        try:
            self._log.read(first, last + 1, 1 << 62)
        except CorruptSegmentError as found:
            self._mark_corrupt(found)
            raise RaftLogError(f"cannot read entries {first}..{last}: {found}") from found
        raise RaftLogError(f"entries {first}..{last} failed a raw read: {exc}") from exc

    def _mark_corrupt(self, exc: CorruptSegmentError) -> None:
        """Remember a corrupt segment found by a read: the next open cuts the log there
        (fail-stop: the process is expected to exit and restart)."""
        if exc.path.suffix == ".log" and exc.path.parent == self._dir / "log":
            atomic_write(self._dir / _CORRUPT_MARKER, exc.path.name.encode())

    # -- writer side (the host) ----------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append entries from a Ready, first cutting a conflicting suffix (never at or
        below the commit index), with one SegmentedLog.append."""
        if not entries:
            return
        log = self._log
        first_new = entries[0].index
        first = self.first_index()
        if first_new < first:
            entries = [e for e in entries if e.index >= first]
            if not entries:
                return
            first_new = entries[0].index
        try:
            if first_new <= log.last_index:
                log.truncate_suffix(first_new, floor=self._commit_floor)
                del self._ofs[max(0, first_new - self._ofs_start) :]
                if not self._ofs:
                    self._ofs_start = first_new
                cut = bisect_right(self._run_starts, first_new - 1)
                del self._run_starts[cut:]
                del self._run_terms[cut:]
            elif first_new != log.last_index + 1:
                raise RaftLogError(f"gap: appending {first_new} after {log.last_index}")
            log.append(self._to_log_entries(entries, log.next_offset))
        except StorageError as exc:
            raise RaftLogError(f"cannot append to raft log {self._dir}: {exc}") from exc
        terms = self._run_terms
        if not terms or entries[-1].term != terms[-1]:
            starts = self._run_starts
            cur = terms[-1] if terms else -1
            for e in entries:
                if e.term != cur:
                    cur = e.term
                    starts.append(e.index)
                    terms.append(cur)

    def _to_log_entries(self, entries: list[Entry], next_offset: int) -> list[LogEntry]:
        ofs = self._ofs
        if len(ofs) > _OFFSET_CACHE:
            drop = len(ofs) - _OFFSET_CACHE // 2
            del ofs[:drop]
            self._ofs_start += drop
        if not ofs:
            self._ofs_start = entries[0].index
        elif self._ofs_start + len(ofs) != entries[0].index:
            ofs.clear()
            self._ofs_start = entries[0].index
        note = ofs.append
        out: list[LogEntry] = []
        add = out.append
        kinds = _KINDS
        records = self._records
        base_of, count_of = _BASE.unpack_from, _COUNT.unpack_from
        for e in entries:
            if e.type != _NORMAL:
                add(LogEntry(e.index, e.term, kinds[e.type], next_offset, 0, e.data))
                note(next_offset)
                continue
            data: bytes | memoryview = e.data
            if not records:
                add(LogEntry(e.index, e.term, _DATA, next_offset, 1, data))
                next_offset += 1
                note(next_offset)
                continue
            if len(data) < BATCH_HEADER_SIZE:
                raise RaftLogError(f"entry {e.index}: {len(data)} bytes is not a record batch")
            count = count_of(data, _COUNT_AT)[0]
            if count < 1:
                raise RaftLogError(f"entry {e.index}: batch with record count {count}")
            if base_of(data, 0)[0] != next_offset:
                copy = bytearray(data)
                stamp_base_offset(copy, next_offset)
                data = memoryview(copy)
            add(LogEntry(e.index, e.term, _DATA, next_offset, count, data))
            next_offset += count
            note(next_offset)
        return out

    def sync(self) -> int:
        """fdatasync what was appended; returns the synced index. Worker-thread safe."""
        try:
            return self._log.sync()
        except StorageError as exc:
            raise RaftLogError(f"cannot sync raft log {self._dir}: {exc}") from exc

    def set_commit(self, commit: int) -> None:
        """The host reports the commit index (the floor of suffix truncation; persisted
        with the next state write)."""
        if commit > self._commit_floor:
            self._commit_floor = commit
            self._state.commit = commit

    def set_applied(self, index: int) -> None:
        """The host applied up to ``index`` (persisted with the next state write)."""
        if index > self._state.applied:
            self._state.applied = index

    def record_conf_state(self, index: int, cs: ConfState) -> None:
        """The host applied the CONF_CHANGE entry at ``index``; ``cs`` is now in force.
        Kept in memory; call `save_state` (in a thread) to make it durable."""
        st = self._state
        st.conf.append((index, cs))
        st.applied = max(st.applied, index)
        self._prune_conf()

    def _prune_conf(self) -> None:
        """Keep the configurations from the log start on (and the one in force there)."""
        st = self._state
        keep_from = 0
        for i, (idx, _) in enumerate(st.conf):
            if idx <= st.snap_index:
                keep_from = i
        if keep_from:
            del st.conf[:keep_from]

    def save_hard_state(self, hs: HardState) -> None:
        """Durably record term, vote and commit (atomic replace). Worker-thread safe."""
        st = self._state
        st.term, st.vote = hs.term, hs.vote
        if hs.commit > st.commit:
            st.commit = hs.commit
        self.save_state()

    def save_state(self) -> None:
        """Durably write raft-state as it is now. Worker-thread safe."""
        with self._write_lock:
            data = self._state.encode()
            try:
                atomic_write(self._dir / "raft-state", data)
            except StorageError as exc:
                raise RaftLogError(f"cannot write raft-state in {self._dir}: {exc}") from exc

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Install a snapshot from the leader: the log restarts after it. Durable."""
        meta = snap.metadata
        st = self._state
        if meta.index <= st.snap_index:
            return
        if self._records:
            try:
                m = msgpack.unpackb(snap.data, raw=False)
                next_offset = _int(m["next_offset"])
            except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
                raise RaftLogError(f"bad partition snapshot data: {exc}") from exc
        else:
            atomic_write(self._dir / "snapshot", snap.data)
            next_offset = 0
        st.snap_index, st.snap_term = meta.index, meta.term
        st.snap_conf, st.snap_next_offset = meta.conf_state, next_offset
        st.conf = [(meta.index, meta.conf_state)]
        st.commit = max(st.commit, meta.index)
        st.applied = max(st.applied, meta.index)
        self._commit_floor = max(self._commit_floor, meta.index)
        self.save_state()
        try:
            self._log.reset(meta.index + 1, next_offset)
        except StorageError as exc:
            raise RaftLogError(f"cannot install snapshot in {self._dir}: {exc}") from exc
        self._run_starts, self._run_terms = [], []
        self._ofs, self._ofs_start = [], meta.index + 1

    def reconfigure(self, log_config: LogConfig) -> None:
        """New storage settings for the segments (see SegmentedLog.reconfigure)."""
        self._log.reconfigure(log_config)

    def retention_index(self, now_ms: int) -> int:
        """Where the log's retention settings (storage.LogConfig retention_bytes and
        retention_ms) would move its start now: the index to `compact` to, or 0.
        Whole segments only, and never past the applied and synced entries."""
        cut = self._log.retention_cut(now_ms)
        cut = min(cut, self._state.applied, self._log.synced_index)
        return cut if cut > self._state.snap_index else 0

    def compact(self, up_to_index: int, data: bytes | None = None) -> None:
        """Move the log start past ``up_to_index`` (which must be applied and synced):
        the snapshot becomes (up_to_index, its term, the conf state then). Whole
        segments below are deleted. ``data`` is the state machine's snapshot, required
        for ``records=False`` and ignored for partitions. With a running host, call it
        inside ``RaftHost.exclusive()`` (no sync thread may run meanwhile)."""
        st = self._state
        if up_to_index <= st.snap_index:
            return
        if up_to_index > min(st.applied, self._log.synced_index):
            raise RaftLogError(f"cannot compact to {up_to_index}: not applied and synced")
        term = self.term(up_to_index)
        next_offset = self.offset_after(up_to_index) if self._records else 0
        if not self._records:
            if data is None:
                raise RaftLogError("a records=False log needs the state machine's data")
            atomic_write(self._dir / "snapshot", data)
        conf = self.conf_state_at(up_to_index)
        st.snap_index, st.snap_term, st.snap_conf = up_to_index, term, conf
        st.snap_next_offset = next_offset
        self._prune_conf()
        self.save_state()
        try:
            self._log.truncate_prefix(up_to_index + 1)
        except StorageError as exc:
            raise RaftLogError(f"cannot compact {self._dir}: {exc}") from exc
        cut = bisect_right(self._run_starts, self._log.first_index) - 1
        if cut > 0:
            del self._run_starts[:cut]
            del self._run_terms[:cut]

    def close(self) -> None:
        """Persist the applied index and close the files (does not sync the log)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.save_state()
        finally:
            self._log.close()


def _repair(directory: Path, config: LogConfig, exc: CorruptSegmentError, st: _State) -> None:
    """Cut the log from the corrupt segment on, after durably recording how far the log
    went (``recovering_until``), so this replica votes again only once it caught up."""
    log_dir = directory / "log"
    if exc.path.suffix != ".log" or exc.path.parent != log_dir:
        raise RaftLogError(f"cannot repair {exc.path}: {exc}") from exc
    cut = int(exc.path.stem)
    quarantine = directory / "log.quarantine"
    shutil.rmtree(quarantine, ignore_errors=True)
    tail = quarantine / "tail"
    tail.mkdir(parents=True)
    segment_files = sorted(p for p in log_dir.iterdir() if p.suffix in (".log", ".index"))
    highest_first = cut
    for p in segment_files:
        if p.stem.isdigit() and int(p.stem) >= cut:
            highest_first = max(highest_first, int(p.stem))
            dest = quarantine if int(p.stem) == cut else tail
            os.replace(p, dest / p.name)
    old_last = highest_first
    try:
        with SegmentedLog.open(tail, config) as later:
            if later.last_index >= later.first_index:
                old_last = max(old_last, later.last_index)
    except StorageError:
        pass  # the later segments are damaged too: fall back to the file names
    st.recovering_until = max(old_last, st.commit, st.recovering_until)
    atomic_write(directory / "raft-state", st.encode())
    shutil.rmtree(quarantine)
