"""The core's read-only view of stable storage, and ``MemoryStorage`` for tests.

The core never writes storage: the host persists what ``Ready`` lists and the core
reads it back through :class:`Storage`. Indexes follow Raft: the first entry ever is
index 1; a snapshot at index ``i`` replaces entries ``1..i``, after which
``first_index() == i + 1`` and ``term(i)`` is still answered from the snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ._errors import CompactedError, ConfigError, UnavailableError
from ._types import (
    EMPTY_CONF_STATE,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMetadata,
)
from ._util import limit_size


class Storage(Protocol):
    """Read-only access to the durable Raft state."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the configuration in force."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries ``[lo, hi)``, cut after ``max_bytes`` of payload but at least one when
        ``lo < hi``. Raises CompactedError if ``lo < first_index()`` and
        UnavailableError if ``hi > last_index() + 1``."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``, for ``first_index() - 1 .. last_index()``.
        Raises CompactedError below and UnavailableError above that range."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (may raise SnapshotTemporarilyUnavailableError)."""
        ...


class MemoryStorage:
    """An in-memory :class:`Storage`, with the writer methods a host or test harness uses.

    ``MemoryStorage(conf_state=ConfState(voters=frozenset({1, 2, 3})))`` bootstraps a
    member of a fresh group; ``MemoryStorage()`` is a blank node that waits to be added.
    """

    def __init__(
        self, conf_state: ConfState = EMPTY_CONF_STATE, hard_state: HardState | None = None
    ) -> None:
        self._hard_state = hard_state or HardState()
        self._snapshot = Snapshot(SnapshotMetadata(0, 0, conf_state), b"")
        # _ents[0] is a dummy standing for the snapshot: its index and term.
        self._ents: list[Entry] = [Entry(0, 0, EntryType.NOOP, b"")]

    # -- Storage -------------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(f"entry {lo} compacted (first index {offset + 1})")
        if hi > self._ents[-1].index + 1:
            raise UnavailableError(f"entries up to {hi - 1} unavailable")
        if lo >= hi:
            return []
        return limit_size(self._ents[lo - offset : hi - offset], max_bytes)

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(f"term of {index} compacted")
        if index - offset >= len(self._ents):
            raise UnavailableError(f"term of {index} unavailable")
        return self._ents[index - offset].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[-1].index

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- writers -------------------------------------------------------------------------

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def set_conf_state(self, cs: ConfState) -> None:
        """Record the configuration in force (the host calls this after applying a
        configuration change, so that a restart sees it)."""
        m = self._snapshot.metadata
        self._snapshot = Snapshot(SnapshotMetadata(m.index, m.term, cs), self._snapshot.data)

    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``, first truncating any suffix from ``entries[0].index``.
        Entries already compacted are skipped."""
        if not entries:
            return
        first = self.first_index()
        last = entries[-1].index
        if last < first:
            return
        ents = list(entries)
        if ents[0].index < first:
            ents = ents[first - ents[0].index :]
        start = ents[0].index
        offset = self._ents[0].index
        if start - offset > len(self._ents):
            raise UnavailableError(
                f"gap: appending {start} after last index {self._ents[-1].index}"
            )
        del self._ents[start - offset :]
        self._ents.extend(ents)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log by ``snap`` (a newer snapshot than the current one).
        An older snapshot is ignored."""
        meta = snap.metadata
        if meta.index <= self._snapshot.metadata.index and self._snapshot.metadata.index:
            return
        self._snapshot = snap
        self._ents = [Entry(meta.term, meta.index, EntryType.NOOP, b"")]

    def compact(self, index: int) -> None:
        """Discard entries up to and including ``index`` (which must be applied; the
        host makes a snapshot first so lagging followers can still catch up)."""
        offset = self._ents[0].index
        if index <= offset:
            return
        if index > self._ents[-1].index:
            raise ConfigError(f"compact {index} beyond last index {self._ents[-1].index}")
        dummy = self._ents[index - offset]
        del self._ents[: index - offset]
        self._ents[0] = Entry(dummy.term, dummy.index, EntryType.NOOP, b"")

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine at ``index`` (which must be applied)."""
        if index <= self._snapshot.metadata.index:
            return self._snapshot
        if index > self._ents[-1].index:
            raise ConfigError(f"snapshot {index} beyond last index {self._ents[-1].index}")
        term = self.term(index)
        self._snapshot = Snapshot(SnapshotMetadata(index, term, conf_state), data)
        return self._snapshot
