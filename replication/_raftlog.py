"""The core's view of its log: stable entries in :class:`Storage` followed by
*unstable* entries (and possibly a snapshot) the host has not yet persisted.

Indexes: ``first_index() - 1`` is the index of the snapshot the log starts after (its
term is still known); ``[first_index(), last_index()]`` are entries. ``committed`` and
``applied`` follow Raft; ``applying`` is the highest index already handed to the host
for applying (in a Ready not yet advanced).

The unstable part tracks what was handed to the host in a Ready: entries below
``_in_progress`` are being persisted and are not handed out again, and
``stable_to`` drops them once the host has persisted them (if they were not
overwritten meanwhile: the term must still match).
"""

from __future__ import annotations

from ._errors import CompactedError, RaftError, UnavailableError
from ._storage import Storage
from ._types import Entry, EntryType, Snapshot
from ._util import entries_size, limit_size


class RaftLog:
    __slots__ = (
        "_in_progress",
        "_snap_in_progress",
        "_u_ents",
        "_u_offset",
        "_u_snap",
        "applied",
        "applying",
        "committed",
        "max_applying_bytes",
        "storage",
    )

    def __init__(self, storage: Storage, applied: int, max_applying_bytes: int) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self._u_offset = last + 1
        self._u_ents: list[Entry] = []
        self._u_snap: Snapshot | None = None
        self._in_progress = last + 1
        self._snap_in_progress = False
        self.committed = first - 1
        self.applied = max(first - 1, min(applied, last))
        self.applying = self.applied
        self.max_applying_bytes = max_applying_bytes

    # -- indexes and terms ----------------------------------------------------------------

    def first_index(self) -> int:
        if self._u_snap is not None:
            return self._u_snap.metadata.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self._u_ents:
            return self._u_offset + len(self._u_ents) - 1
        if self._u_snap is not None:
            return self._u_snap.metadata.index
        return self.storage.last_index()

    def stable_last_index(self) -> int:
        """The last index known to be durable (persisted by the host and not overwritten)."""
        return self._u_offset - 1

    def term(self, index: int) -> int:
        """Term at ``index``; raises CompactedError/UnavailableError outside the log."""
        off = self._u_offset
        if index >= off:
            ents = self._u_ents
            if index - off < len(ents):
                return ents[index - off].term
            raise UnavailableError(f"term of {index} unavailable")
        snap = self._u_snap
        if snap is not None:
            if index == snap.metadata.index:
                return snap.metadata.term
            if index < snap.metadata.index:
                raise CompactedError(f"term of {index} compacted")
            raise UnavailableError(f"term of {index} unavailable")  # pragma: no cover
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except (CompactedError, UnavailableError):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Is a log ending at (``last_index``, ``term``) at least as up to date as ours?"""
        lt = self.last_term()
        return term > lt or (term == lt and last_index >= self.last_index())

    # -- reading entries ------------------------------------------------------------------

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi) cut after ``max_bytes`` (at least one if lo < hi)."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(f"entry {lo} compacted")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1} unavailable")
        off = self._u_offset
        if lo >= off:
            return limit_size(self._u_ents[lo - off : hi - off], max_bytes)
        stable = self.storage.entries(lo, min(hi, off), max_bytes)
        if hi <= off or len(stable) < min(hi, off) - lo:
            return stable
        rest = max_bytes - entries_size(stable)
        if rest <= 0:
            return stable
        more = self._u_ents[: hi - off]
        cut = limit_size(more, rest)
        if len(cut) == 1 and len(cut[0].data) > rest:
            return stable
        return stable + cut

    def snapshot(self) -> Snapshot:
        if self._u_snap is not None:
            return self._u_snap
        return self.storage.snapshot()

    # -- appending ------------------------------------------------------------------------

    def find_conflict(self, ents: tuple[Entry, ...] | list[Entry]) -> int:
        """Index of the first entry of ``ents`` that is not in our log (a different term
        or beyond our end), or 0 when every entry is already there."""
        if not ents:
            return 0
        last = self.last_index()
        first_new = ents[0].index
        if first_new > last:
            return first_new
        # Log matching: if our entry at the end of the overlap has the same term,
        # everything before it matches too.
        end = min(last, ents[-1].index)
        if self.match_term(end, ents[end - first_new].term):
            return end + 1 if ents[-1].index > end else 0
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0  # pragma: no cover - the overlap's end mismatched

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest (i, term(i)) with i <= index and term(i) <= term: where a leader
        whose log has ``term`` at ``index`` may find a match (fast backtracking)."""
        index = min(index, self.last_index())
        while index > 0:
            try:
                t = self.term(index)
            except (CompactedError, UnavailableError):
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, ents: tuple[Entry, ...]
    ) -> int | None:
        """A leader's APPEND: None if our log does not contain (prev_index, prev_term);
        otherwise append what is new, truncating only from the first conflict, advance
        the commit index and return the last index now known to match the leader."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise RaftError(
                    f"entry {ci} conflicts with committed entry (commit {self.committed})"
                )
            start = ci - (prev_index + 1)
            self._truncate_and_append(list(ents[start:]) if start else list(ents))
        self.commit_to(min(commit, last_new))
        return last_new

    def append(self, ents: list[Entry]) -> int:
        if ents:
            if ents[0].index - 1 < self.committed:
                raise RaftError(f"appending at {ents[0].index} below commit {self.committed}")
            self._truncate_and_append(ents)
        return self.last_index()

    def _truncate_and_append(self, ents: list[Entry]) -> None:
        fromi = ents[0].index
        off = self._u_offset
        u = self._u_ents
        if fromi == off + len(u):
            u.extend(ents)
        elif fromi <= off:
            # Replaces the whole unstable part and a suffix of stable storage.
            self._u_offset = fromi
            self._u_ents = ents if isinstance(ents, list) else list(ents)
            self._in_progress = fromi
        else:
            del u[fromi - off :]
            u.extend(ents)
            self._in_progress = min(self._in_progress, fromi)

    def restore(self, snap: Snapshot) -> None:
        """Replace the whole log by ``snap`` (the Figure 13 'discard' case)."""
        idx = snap.metadata.index
        self.committed = idx
        self._u_snap = snap
        self._snap_in_progress = False
        self._u_offset = idx + 1
        self._u_ents = []
        self._in_progress = idx + 1

    # -- commit and apply -----------------------------------------------------------------

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            self.committed = min(index, self.last_index())

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to ``index`` if that entry is of ``term`` (Figure 8's rule)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.committed = index
            return True
        return False

    def has_next_committed(self) -> bool:
        if self._u_snap is not None:
            return False
        return self.applying < self.committed

    def next_committed(self) -> list[Entry]:
        """The next committed entries to apply (bounded by ``max_applying_bytes``); marks
        them as being applied."""
        if self._u_snap is not None or self.applying >= self.committed:
            return []
        ents = self.slice(self.applying + 1, self.committed + 1, self.max_applying_bytes)
        if ents:
            self.applying = ents[-1].index
        return ents

    def unapplied_conf_change(self) -> bool:
        """Is there a committed configuration change not yet applied?"""
        lo = max(self.applied + 1, self.first_index())
        hi = self.committed + 1
        while lo < hi:
            ents = self.slice(lo, hi, 1 << 62)
            if not ents:  # pragma: no cover - slice returns at least one
                break
            for e in ents:
                if e.type == EntryType.CONF_CHANGE:
                    return True
            lo = ents[-1].index + 1
        return False

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            self.applied = index
        if self.applying < self.applied:
            self.applying = self.applied

    # -- handing out unstable state -------------------------------------------------------

    def has_unstable(self) -> bool:
        return self._in_progress < self._u_offset + len(self._u_ents)

    def take_unstable(self) -> list[Entry]:
        off = self._u_offset
        start = self._in_progress - off
        u = self._u_ents
        if start >= len(u):
            return []
        ents = u[start:] if start else u[:]
        self._in_progress = off + len(u)
        return ents

    def has_pending_snapshot(self) -> bool:
        return self._u_snap is not None and not self._snap_in_progress

    def take_snapshot(self) -> Snapshot | None:
        if self._u_snap is None or self._snap_in_progress:
            return None
        self._snap_in_progress = True
        return self._u_snap

    def stable_to(self, index: int, term: int) -> None:
        """The host persisted entries up to (``index``, ``term``)."""
        off = self._u_offset
        u = self._u_ents
        if off <= index < off + len(u) and u[index - off].term == term:
            del u[: index + 1 - off]
            self._u_offset = index + 1
            if self._in_progress < index + 1:
                self._in_progress = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self._u_snap is not None and self._u_snap.metadata.index == index:
            self._u_snap = None
            self._snap_in_progress = False
            self.applied_to(index)
