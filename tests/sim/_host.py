"""One Raft node as its host runs it: the core, its storage, and what survives a crash.

The host loop follows the contract in two phases per Ready, so a crash can fall
between them:

* ``begin_ready``: persist the term and vote (durable at once), persist and
  install an incoming snapshot (durable at once), append ``entries`` to the
  MemoryStorage as *unsynced*, and return ``messages`` to send right away;
* ``finish_ready``: "fsync" (the entries and the commit index become durable),
  return ``messages_after_append``, apply ``committed_entries`` and call
  ``advance``.

A crash keeps only the durable part: term and vote, the last snapshot, the
entries synced so far and the commit index synced with them. The state machine
is rebuilt on restart from the durable snapshot, and the core re-emits the
committed entries after it (``applied`` = the snapshot's index).

The state machine is the list of every applied entry, ``(term, type, data)`` at
position ``index - 1``; a snapshot's data names a frozen copy of that list in a
``SnapshotRegistry`` shared by all hosts of one cluster.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from zstream.replication import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    RaftConfig,
    RaftNode,
    Ready,
    Snapshot,
    decode_conf_change,
)

# One applied entry of the state machine: (term, type, data).
Record = tuple[int, int, bytes]


class HostError(AssertionError):
    """The core broke the host contract (e.g. committed entries with a gap)."""


@dataclass
class SnapshotRegistry:
    """Maps snapshot data (an opaque name) to the state machine it captures."""

    states: dict[bytes, tuple[Record, ...]] = field(default_factory=dict)

    def add(self, records: tuple[Record, ...]) -> bytes:
        name = b"snap-%d" % len(self.states)
        self.states[name] = records
        return name

    def get(self, name: bytes) -> tuple[Record, ...]:
        try:
            return self.states[name]
        except KeyError:
            raise HostError(f"snapshot data {name!r} was never created by a host") from None


@dataclass
class ReadyOutcome:
    """What a finished Ready produced, for the simulator's checks."""

    applied: list[Entry] = field(default_factory=list)
    installed: Snapshot | None = None  # a snapshot installed into the state machine
    read_states: list[tuple[int, bytes]] = field(default_factory=list)


# Observer called on every write to stable storage: (node id, entries written).
WriteHook = Callable[[int, list[Entry]], None]


class Host:
    """A RaftNode plus durable state and a state machine; crashable."""

    def __init__(
        self,
        node_id: int,
        conf_state: ConfState,
        registry: SnapshotRegistry,
        *,
        config: Callable[[int, int], RaftConfig],
        rng: random.Random,
        log: Sequence[Entry] = (),
        hard_state: HardState | None = None,
    ) -> None:
        self.id = node_id
        self._bootstrap = conf_state
        self._registry = registry
        self._make_config = config  # (node id, applied) -> RaftConfig
        self._rng = rng
        # Durable state.
        self.durable_term = 0
        self.durable_vote = 0
        self.durable_commit = 0
        self.durable_snapshot: Snapshot | None = None
        self.durable_entries: list[Entry] = []  # contiguous, possibly from before the snapshot
        # Volatile state.
        self.storage = MemoryStorage(conf_state=conf_state)
        self.node: RaftNode | None = None
        self.state: list[Record] = []
        self.conf_state = conf_state
        self.pending: Ready | None = None
        self._hard_state = HardState()
        self.restarts = 0
        if log:  # a prepared history (paper tests): durable from the start
            self.storage.append(log)
            self.durable_entries = list(log)
        if hard_state is not None:
            self.storage.set_hard_state(hard_state)
            self._hard_state = hard_state
            self.durable_term, self.durable_vote = hard_state.term, hard_state.vote
            self.durable_commit = hard_state.commit
        self._start(applied=0)

    # -- lifecycle ---------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.node is not None

    @property
    def busy(self) -> bool:
        """A Ready has been taken and is waiting for its sync (between the phases)."""
        return self.pending is not None

    @property
    def applied_index(self) -> int:
        return len(self.state)

    def durably_holds(self, index: int, term: int) -> bool:
        """Would entry (index, term) survive a crash of this node right now?"""
        snap = self.durable_snapshot
        if snap is not None and index <= snap.metadata.index:
            return True
        durable = self.durable_entries
        if not durable:
            return False
        k = index - durable[0].index
        return 0 <= k < len(durable) and durable[k].term == term

    def _start(self, applied: int) -> None:
        self.node = RaftNode(self._make_config(self.id, applied), self.storage, rng=self._rng)

    def crash(self) -> None:
        """Lose everything not durable: unsynced entries, the Ready in progress, the state
        machine beyond the durable snapshot."""
        self.node = None
        self.pending = None

    def restart(self) -> None:
        """Rebuild storage from durable state and start a new core on it."""
        assert self.node is None, "restart of a live node"
        storage = MemoryStorage(conf_state=self._bootstrap)
        snap = self.durable_snapshot
        base = 0
        if snap is not None:
            storage.apply_snapshot(snap)
            base = snap.metadata.index
            self.state = list(self._registry.get(snap.data))
            self.conf_state = snap.metadata.conf_state
        else:
            self.state = []
            self.conf_state = self._bootstrap
        tail = [e for e in self.durable_entries if e.index > base]
        if tail:
            storage.append(tail)
        commit = max(self.durable_commit, base)
        self._hard_state = HardState(self.durable_term, self.durable_vote, commit)
        storage.set_hard_state(self._hard_state)
        self.storage = storage
        self.restarts += 1
        self._start(applied=base)

    # -- the Ready loop ----------------------------------------------------------

    def begin_ready(self, on_write: WriteHook | None = None) -> list[Message]:
        """Phase one: take a Ready, persist what is durable at once, stage the entries."""
        node = self.node
        assert node is not None
        assert self.pending is None
        rd = node.ready()
        hs_new = rd.hard_state
        vote_changed = hs_new is not None and (
            (hs_new.term, hs_new.vote) != (self.durable_term, self.durable_vote)
        )
        if (vote_changed or rd.entries) and not rd.must_sync:
            raise HostError(f"node {self.id}: Ready with new entries or term/vote lacks must_sync")
        if rd.hard_state is not None:
            hs = rd.hard_state
            self._hard_state = hs
            self.durable_term, self.durable_vote = hs.term, hs.vote
            self.storage.set_hard_state(hs)
        if rd.snapshot is not None:
            snap = rd.snapshot
            self._registry.get(snap.data)  # must be a snapshot some host made
            self.storage.apply_snapshot(snap)
            self.durable_snapshot = snap
            first, last = self.storage.first_index(), self.storage.last_index()
            self.durable_entries = (
                self.storage.entries(first, last + 1, 1 << 62) if last >= first else []
            )
            self.durable_commit = max(self.durable_commit, snap.metadata.index)
        if rd.entries:
            if on_write is not None:
                on_write(self.id, rd.entries)
            self.storage.append(rd.entries)
        self.pending = rd
        return list(rd.messages)

    def finish_ready(self) -> tuple[list[Message], ReadyOutcome]:
        """Phase two: sync, release the acknowledgements, apply, advance."""
        node, rd = self.node, self.pending
        assert node is not None
        assert rd is not None
        if rd.entries:
            first = rd.entries[0].index
            durable = self.durable_entries
            if durable:
                cut = max(first - durable[0].index, 0)
                if cut > len(durable):
                    raise HostError(
                        f"node {self.id}: entries from {first} leave a gap after "
                        f"{durable[-1].index}"
                    )
                del durable[cut:]
            durable.extend(rd.entries)
        self.durable_commit = max(self.durable_commit, self._hard_state.commit)
        out = ReadyOutcome()
        if rd.snapshot is not None:
            snap = rd.snapshot
            self.state = list(self._registry.get(snap.data))
            if len(self.state) != snap.metadata.index:
                raise HostError(
                    f"snapshot {snap.data!r} does not hold {snap.metadata.index} entries"
                )
            self.conf_state = snap.metadata.conf_state
            out.installed = snap
        for entry in rd.committed_entries:
            if entry.index != self.applied_index + 1:
                raise HostError(
                    f"node {self.id}: committed entry {entry.index} does not follow "
                    f"applied {self.applied_index}"
                )
            if entry.type == EntryType.CONF_CHANGE:
                self.conf_state = node.apply_conf_change(decode_conf_change(entry.data))
            self.state.append((entry.term, int(entry.type), entry.data))
            out.applied.append(entry)
        out.read_states = [(rs.index, rs.context) for rs in rd.read_states]
        self.pending = None
        node.advance(rd)
        return list(rd.messages_after_append), out

    def process(self, on_write: WriteHook | None = None) -> tuple[list[Message], ReadyOutcome]:
        """Both phases back to back (a host whose fsync is instant)."""
        now = self.begin_ready(on_write)
        later, out = self.finish_ready()
        return now + later, out

    # -- host-side snapshots -----------------------------------------------------

    def compact(self, keep: int) -> Snapshot | None:
        """Snapshot the state machine at the applied index; keep ``keep`` entries before it."""
        assert self.node is not None
        assert self.pending is None
        index = self.applied_index
        snap = self.durable_snapshot
        if index == 0 or (snap is not None and snap.metadata.index >= index):
            return None
        data = self._registry.add(tuple(self.state))
        new = self.storage.create_snapshot(index, self.conf_state, data)
        self.durable_snapshot = new
        self.storage.compact(index - keep)
        self.durable_entries = [e for e in self.durable_entries if e.index > index - keep]
        return new
