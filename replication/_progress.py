"""The leader's view of each follower's replication (etcd-raft's "tracker").

A follower is in one of three states:

- PROBE: the leader does not know where the follower's log matches; it sends one
  APPEND at a time and waits for the answer (or a heartbeat response) before the next.
- REPLICATE: the logs match up to ``match``; the leader streams APPENDs optimistically,
  advancing ``next`` as it sends, limited by the in-flight window (count and bytes).
- SNAPSHOT: the follower needs entries the leader has compacted; a snapshot was sent
  and nothing else is sent until it is acknowledged (or the retry timer fires).
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum


class ProgressState(IntEnum):
    """How the leader replicates to one follower."""

    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Inflights:
    """APPENDs sent but not yet acknowledged: (last index, payload bytes) in send order."""

    __slots__ = ("_bytes", "_max_bytes", "_max_count", "_q")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self._q: deque[tuple[int, int]] = deque()
        self._bytes = 0
        self._max_count = max_count
        self._max_bytes = max_bytes

    def add(self, last_index: int, size: int) -> None:
        self._q.append((last_index, size))
        self._bytes += size

    def free_le(self, index: int) -> None:
        """Forget every message whose last index is <= ``index`` (acknowledged)."""
        q = self._q
        while q and q[0][0] <= index:
            self._bytes -= q.popleft()[1]

    def free_first_one(self) -> None:
        if self._q:
            self._bytes -= self._q.popleft()[1]

    def full(self) -> bool:
        return len(self._q) >= self._max_count or self._bytes >= self._max_bytes

    def reset(self) -> None:
        self._q.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._q)


class Progress:
    """Replication state of one member, as seen by the leader."""

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "sent_commit",
        "snapshot_wait",
        "state",
    )

    def __init__(self, next_index: int, inflights: Inflights, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        self.snapshot_wait = 0
        self.recent_active = False
        self.probe_sent = False
        # The commit index this member will know once what we sent arrives.
        self.sent_commit = 0
        self.inflights = inflights
        self.is_learner = is_learner

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_wait = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """The follower acknowledged its log matches up to ``n``. Returns whether that
        was news (``match`` grew)."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an APPEND whose previous index was ``rejected``;
        ``match_hint`` is the highest index where the logs may match. Returns False
        when the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        state = self.state
        if state == ProgressState.REPLICATE:
            return self.inflights.full()
        if state == ProgressState.PROBE:
            return self.probe_sent
        return True

    def sent_entries(self, last_index: int, count: int, size: int) -> None:
        """Account for an APPEND just sent carrying ``count`` entries up to ``last_index``."""
        if self.state == ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index, size)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True
