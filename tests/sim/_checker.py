"""Safety invariants of a Raft group, checked incrementally after every step.

The checker is fed by the simulator (or the unit-test harness) through a few
hooks and keeps global knowledge that no single node has:

* ``leaders``: term -> the node that led it (at most one leader per term);
* ``entries``: (index, term) -> (previous term, type, data): two logs holding an
  entry with the same index and term hold the same entry and, by induction over
  the previous term, the same prefix (log matching);
* ``canon``: the one applied sequence; every node's applied sequence must be a
  prefix of it, and an entry written at an index canon already covers must be
  the committed one (committed entries never change or disappear);
* ``proposals``: payload -> (index, term) returned by ``propose``: an applied
  payload was proposed, is applied once, and at the index and term it was given;
* commit indexes never decrease, per live node and, across restarts, from the
  durable commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zstream.replication import Entry, EntryType, Role

from ._host import Host, Record


class InvariantError(AssertionError):
    """A Raft safety property was violated."""


@dataclass
class Checker:
    leaders: dict[int, int] = field(default_factory=dict)
    entries: dict[tuple[int, int], tuple[int, int, bytes]] = field(default_factory=dict)
    canon: list[Record] = field(default_factory=list)
    canon_payloads: set[bytes] = field(default_factory=set)
    proposals: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    last_commit: dict[int, int] = field(default_factory=dict)
    reads: dict[bytes, int] = field(default_factory=dict)
    reads_served: int = 0
    # The simulator registers every proposal; the unit-test harness only those it makes.
    strict_proposals: bool = True
    # Durability: when an entry is first applied anywhere it must be durable (synced,
    # or inside a durable snapshot) on a majority of one recent configuration. Needs
    # ``hosts``; the simulator sets both, scripted tests with forged leaders do not.
    hosts: list[Host] = field(default_factory=list)
    voter_sets: list[frozenset[int]] = field(default_factory=list)
    durable_checked: int = 0  # commit indexes up to here were checked for durability

    # -- hooks -------------------------------------------------------------------

    def proposed(self, data: bytes, index: int, term: int) -> None:
        if data in self.proposals:
            raise InvariantError(f"payload {data!r} proposed twice by the test")
        self.proposals[data] = (index, term)

    def on_write(self, host: Host, entries: list[Entry]) -> None:
        """Entries about to be appended to ``host``'s storage (before truncation)."""
        first = entries[0].index
        storage = host.storage
        prev_term: int | None = None
        if first - 1 >= storage.first_index() - 1 and first - 1 <= storage.last_index():
            prev_term = storage.term(first - 1)
        if first - 1 == 0:
            prev_term = 0
        expect = first
        for e in entries:
            if e.index != expect:
                raise InvariantError(f"node {host.id}: Ready.entries not contiguous at {e.index}")
            expect += 1
            if prev_term is not None and e.term < prev_term:
                raise InvariantError(
                    f"node {host.id}: entry {e.index} has term {e.term} below the "
                    f"previous entry's term {prev_term}"
                )
            if e.index <= host.applied_index and host.state[e.index - 1][0] != e.term:
                raise InvariantError(
                    f"node {host.id}: overwrites applied entry {e.index} "
                    f"(term {host.state[e.index - 1][0]} -> {e.term})"
                )
            key = (e.index, e.term)
            value = (prev_term if prev_term is not None else -1, int(e.type), e.data)
            seen = self.entries.get(key)
            if seen is None:
                self.entries[key] = value
            elif seen[1:] != value[1:] or (seen[0] != value[0] and -1 not in (seen[0], value[0])):
                raise InvariantError(
                    f"log matching: node {host.id} writes index {e.index} term {e.term} as "
                    f"{value!r}, another log holds {seen!r}"
                )
            elif seen[0] == -1 and value[0] != -1:
                self.entries[key] = value
            commit = host.node.commit if host.node is not None else 0
            if e.index <= min(commit, len(self.canon)):
                rec = self.canon[e.index - 1]
                if rec != (e.term, int(e.type), e.data):
                    raise InvariantError(
                        f"node {host.id} (commit {commit}) writes index {e.index} term {e.term}, "
                        f"but the committed entry there has term {rec[0]}"
                    )
            prev_term = e.term
        # Appending truncates the stored log from ``first``: a committed entry stored
        # there must be written back identically, never dropped or replaced.
        new = {e.index: e for e in entries}
        for index in range(
            max(first, storage.first_index()), min(storage.last_index(), len(self.canon)) + 1
        ):
            rec = self.canon[index - 1]
            if storage.term(index) != rec[0]:
                break  # the stored entry is not the committed one (nor, then, what follows)
            e2 = new.get(index)
            if e2 is None or (e2.term, int(e2.type), e2.data) != rec:
                raise InvariantError(
                    f"node {host.id} drops committed entry {index} (term {rec[0]}) by writing "
                    f"entries from {first}"
                )

    def on_install(self, host: Host) -> None:
        """``host`` replaced its state machine by a snapshot's: it must agree with canon."""
        state = host.state
        for i, rec in enumerate(state[: len(self.canon)]):
            if rec != self.canon[i]:
                raise InvariantError(
                    f"node {host.id} installed a snapshot whose entry {i + 1} is {rec!r}, "
                    f"but {self.canon[i]!r} was applied"
                )
        self.canon.extend(state[len(self.canon) :])

    def on_apply(self, host: Host, applied: list[Entry]) -> None:
        for e in applied:
            rec: Record = (e.term, int(e.type), e.data)
            if e.index <= len(self.canon):
                if self.canon[e.index - 1] != rec:
                    raise InvariantError(
                        f"node {host.id} applies index {e.index} as {rec!r}; another node "
                        f"applied {self.canon[e.index - 1]!r}"
                    )
                continue
            if e.index != len(self.canon) + 1:
                raise InvariantError(f"node {host.id} applies index {e.index} past a gap")
            if e.type == EntryType.NORMAL and e.data:
                want = self.proposals.get(e.data)
                if want is None and self.strict_proposals:
                    raise InvariantError(f"node {host.id} applies {e.data!r}, never proposed")
                if e.data in self.canon_payloads:
                    raise InvariantError(f"payload {e.data!r} applied twice")
                if want is not None and want != (e.index, e.term):
                    raise InvariantError(
                        f"payload {e.data!r} proposed at index/term {want}, applied at "
                        f"{(e.index, e.term)}"
                    )
                self.canon_payloads.add(e.data)
            self.canon.append(rec)
            if self.hosts:
                self._check_durable_majority(e.index, e.term)
        if self.hosts:
            self.note_config(host.conf_state.voters)
            self.note_config(host.conf_state.voters_outgoing)

    def note_config(self, voters: frozenset[int]) -> None:
        if voters and (not self.voter_sets or self.voter_sets[-1] != voters):
            if voters in self.voter_sets:
                self.voter_sets.remove(voters)
            self.voter_sets.append(voters)

    def _check_commit_durable(self, hosts: list[Host]) -> None:
        """Any node's commit index covers only entries durable on a majority: a leader
        that counted an unsynced write (its own or a follower's) shows up here."""
        for h in hosts:
            node = h.node
            if node is None or node.commit <= self.durable_checked:
                continue
            storage = h.storage
            i = self.durable_checked + 1
            while i <= node.commit:
                if i < storage.first_index():
                    i = storage.first_index()
                    continue
                if i > storage.last_index():
                    break  # committed entries still in this node's Ready: check later
                self._check_durable_majority(i, storage.term(i))
                i += 1
            self.durable_checked = max(self.durable_checked, i - 1)

    def _check_durable_majority(self, index: int, term: int) -> None:
        holders = {h.id for h in self.hosts if h.durably_holds(index, term)}
        for voters in self.voter_sets[-4:]:
            if len(holders & voters) * 2 > len(voters):
                return
        raise InvariantError(
            f"entry {index} (term {term}) is committed but durable only on "
            f"{sorted(holders)}: no majority of {[sorted(v) for v in self.voter_sets[-4:]]}"
        )

    def on_read_issued(self, context: bytes, hosts: list[Host]) -> None:
        """A ReadIndex request: its answer must cover every index committed by then."""
        self.reads[context] = max((h.node.commit for h in hosts if h.node is not None), default=0)

    def on_read_state(self, host: Host, index: int, context: bytes) -> None:
        need = self.reads.pop(context, None)
        if need is None:
            return  # a read the harness issued itself, or answered twice
        self.reads_served += 1
        if index < need:
            raise InvariantError(
                f"node {host.id}: ReadIndex {context!r} answered {index}, but {need} was "
                "already committed when it was issued"
            )

    def on_restart(self, host: Host, durable_commit_before: int) -> None:
        node = host.node
        assert node is not None
        if node.commit < durable_commit_before:
            raise InvariantError(
                f"node {host.id} restarted with commit {node.commit} below its durable "
                f"commit {durable_commit_before}"
            )
        self.last_commit[host.id] = node.commit

    def on_crash(self, host: Host) -> None:
        self.last_commit.pop(host.id, None)

    # -- after every step --------------------------------------------------------

    def check_step(self, hosts: list[Host]) -> None:
        for h in hosts:
            node = h.node
            if node is None:
                continue
            if node.role == Role.LEADER:
                term = node.term
                other = self.leaders.setdefault(term, h.id)
                if other != h.id:
                    raise InvariantError(f"two leaders in term {term}: {other} and {h.id}")
            commit = node.commit
            before = self.last_commit.get(h.id, 0)
            if commit < before:
                raise InvariantError(f"node {h.id}: commit went back from {before} to {commit}")
            self.last_commit[h.id] = commit
            if h.durable_commit > commit:
                raise InvariantError(
                    f"node {h.id}: commit {commit} is below its durable commit {h.durable_commit}"
                )
        if self.hosts:
            self._check_commit_durable(hosts)
        for h in hosts:
            if len(h.state) > len(self.canon):
                raise InvariantError(f"node {h.id} applied past the canonical sequence")
