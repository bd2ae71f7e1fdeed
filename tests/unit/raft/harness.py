"""A scripted in-memory network for 3-5 RaftNodes, so a test reads like a conversation.

Nothing moves unless the test says so::

    c = Cluster(voters=(1, 2, 3))
    c.node(1).campaign()
    c.process()                      # node 1 persists its vote, sends PRE_VOTE/VOTE
    votes = c.take(MessageType.VOTE_RESP)   # ... or c.deliver_all(), c.drop(...)
    c.stabilize()                    # process + deliver until the network is quiet

Every node runs behind a ``tests.sim.Host`` (the same host loop as the simulator:
hard state durable at once, entries synced before ``messages_after_append``), and
the simulator's safety ``Checker`` watches every step of every scripted test too.
Messages sent wait in ``outbox`` in send order; a partition drops the messages it
cuts when they are delivered.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from tests.sim import Checker, Host, SnapshotRegistry
from zstream.replication import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    RaftConfig,
    RaftNode,
    Role,
)


class Cluster:
    def __init__(
        self,
        voters: Iterable[int] = (1, 2, 3),
        *,
        learners: Iterable[int] = (),
        blank: Iterable[int] = (),
        pre_vote: bool = False,
        check_quorum: bool = False,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        max_size_per_msg: int = 1 << 20,
        max_inflight_msgs: int = 256,
        max_inflight_bytes: int = 32 << 20,
        seed: int = 0,
        logs: dict[int, Sequence[int]] | None = None,
        terms: dict[int, int] | None = None,
    ) -> None:
        """``logs`` gives nodes a prepared history: the term of each entry from index 1;
        ``terms`` their current term (default: the last entry's term)."""
        self.voters = tuple(voters)
        boot = ConfState(voters=frozenset(self.voters), learners=frozenset(learners))
        self._options = {
            "pre_vote": pre_vote,
            "check_quorum": check_quorum,
            "election_tick": election_tick,
            "heartbeat_tick": heartbeat_tick,
            "max_size_per_msg": max_size_per_msg,
            "max_inflight_msgs": max_inflight_msgs,
            "max_inflight_bytes": max_inflight_bytes,
        }
        self.election_tick = election_tick
        self.registry = SnapshotRegistry()
        self.checker = Checker(strict_proposals=False)
        rng = random.Random(seed)
        self.hosts: dict[int, Host] = {}
        logs = logs or {}
        terms = terms or {}
        for i in (*self.voters, *learners):
            log = history(logs.get(i, ()))
            term = terms.get(i, log[-1].term if log else 0)
            self.hosts[i] = Host(
                i,
                boot,
                self.registry,
                config=self._config,
                rng=random.Random(rng.getrandbits(64)),
                log=log,
                hard_state=HardState(term=term) if term else None,
            )
        for i in blank:
            self.hosts[i] = Host(
                i,
                ConfState(voters=frozenset()),
                self.registry,
                config=self._config,
                rng=random.Random(rng.getrandbits(64)),
            )
        self.outbox: list[Message] = []
        self.groups: dict[int, int] | None = None
        self.read_states: dict[int, list[tuple[int, bytes]]] = {}
        self._seq = 0

    def _config(self, node_id: int, applied: int) -> RaftConfig:
        return RaftConfig(id=node_id, applied=applied, **self._options)  # type: ignore[arg-type]

    # -- looking ---------------------------------------------------------------------

    def node(self, i: int) -> RaftNode:
        node = self.hosts[i].node
        assert node is not None, f"node {i} is down"
        return node

    def host(self, i: int) -> Host:
        return self.hosts[i]

    def leader_id(self) -> int | None:
        """The live leader of the highest term, if any."""
        best: tuple[int, int] | None = None
        for h in self.hosts.values():
            node = h.node
            if (
                node is not None
                and node.role == Role.LEADER
                and (best is None or node.term > best[0])
            ):
                best = (node.term, h.id)
        return None if best is None else best[1]

    def roles(self) -> dict[int, Role]:
        return {i: h.node.role for i, h in self.hosts.items() if h.node is not None}

    def applied(self, i: int) -> list[bytes]:
        """Payloads of the NORMAL entries node ``i`` has applied, in order."""
        return [d for _, t, d in self.hosts[i].state if t == EntryType.NORMAL and d]

    def log(self, i: int) -> list[tuple[int, int]]:
        """(index, term) of every entry in node ``i``'s stable storage."""
        s = self.hosts[i].storage
        lo, hi = s.first_index(), s.last_index()
        return [(e.index, e.term) for e in (s.entries(lo, hi + 1, 1 << 62) if hi >= lo else [])]

    def entries(self, i: int) -> list[Entry]:
        s = self.hosts[i].storage
        lo, hi = s.first_index(), s.last_index()
        return s.entries(lo, hi + 1, 1 << 62) if hi >= lo else []

    def pending(
        self, type: MessageType | None = None, frm: int | None = None, to: int | None = None
    ) -> list[Message]:
        return [m for m in self.outbox if _match(m, type, frm, to)]

    # -- the network -------------------------------------------------------------------

    def take(
        self, type: MessageType | None = None, frm: int | None = None, to: int | None = None
    ) -> list[Message]:
        """Remove the matching messages from the network and return them (to drop them,
        or to deliver them later, out of order, or twice)."""
        taken = [m for m in self.outbox if _match(m, type, frm, to)]
        self.outbox = [m for m in self.outbox if not _match(m, type, frm, to)]
        return taken

    def drop(
        self, type: MessageType | None = None, frm: int | None = None, to: int | None = None
    ) -> int:
        return len(self.take(type, frm, to))

    def deliver(self, *msgs: Message) -> None:
        """Step the given messages into their recipients (ignoring partitions)."""
        for m in msgs:
            host = self.hosts.get(m.to)
            if host is None or host.node is None:
                continue
            host.node.step(m)
            self._check()

    def deliver_all(
        self, type: MessageType | None = None, frm: int | None = None, to: int | None = None
    ) -> list[Message]:
        """Deliver every matching message now waiting; partitions drop the ones they cut."""
        msgs = [m for m in self.take(type, frm, to) if self._linked(m.frm, m.to)]
        self.deliver(*msgs)
        return msgs

    def isolate(self, i: int) -> None:
        self.partition([i], [j for j in self.hosts if j != i])

    def partition(self, *groups: Iterable[int]) -> None:
        self.groups = {i: g for g, ids in enumerate(groups) for i in ids}

    def heal(self) -> None:
        self.groups = None

    def _linked(self, a: int, b: int) -> bool:
        return self.groups is None or self.groups.get(a, -1) == self.groups.get(b, -2)

    # -- time and the host loop ----------------------------------------------------------

    def tick(self, i: int, n: int = 1) -> None:
        for _ in range(n):
            self.node(i).tick()
            self._check()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for h in self.hosts.values():
                if h.node is not None:
                    h.node.tick()
            self._check()

    def process(self, *ids: int) -> list[Message]:
        """Run the Ready loop (append, sync, send, apply, advance) on the given nodes
        (default: all live ones) until none has anything ready; return what was sent."""
        sent: list[Message] = []
        targets = ids or tuple(self.hosts)
        for _ in range(100):
            moved = False
            for i in targets:
                h = self.hosts[i]
                if h.node is None or not h.node.has_ready():
                    continue
                msgs = self.begin(i) + self.finish(i)
                sent.extend(msgs)
                moved = True
            if not moved:
                return sent
        raise AssertionError("a node keeps having a Ready after 100 rounds")

    def begin(self, i: int) -> list[Message]:
        """Phase one of node ``i``'s Ready only: entries are appended but not synced."""
        msgs = [m for m in self.hosts[i].begin_ready(self._on_write) if m.to != m.frm]
        self.outbox.extend(msgs)
        self._check()
        return msgs

    def finish(self, i: int) -> list[Message]:
        """Phase two: sync, then send ``messages_after_append``, apply and advance."""
        h = self.hosts[i]
        msgs, out = h.finish_ready()
        msgs = [m for m in msgs if m.to != m.frm]
        if out.installed is not None:
            self.checker.on_install(h)
        self.checker.on_apply(h, out.applied)
        for index, ctx in out.read_states:
            self.read_states.setdefault(i, []).append((index, ctx))
        self.outbox.extend(msgs)
        self._check()
        return msgs

    def stabilize(self, max_rounds: int = 1000) -> None:
        """Process and deliver until no node has a Ready and no message is in flight."""
        for _ in range(max_rounds):
            self.process()
            if not self.outbox:
                return
            self.deliver_all()
        raise AssertionError(f"cluster not quiet after {max_rounds} rounds")

    def run(self, ticks: int) -> None:
        """Let time pass: ``ticks`` rounds of tick-everyone-then-stabilize."""
        for _ in range(ticks):
            self.tick_all()
            self.stabilize()

    def _on_write(self, node_id: int, entries: list[Entry]) -> None:
        self.checker.on_write(self.hosts[node_id], entries)

    def _check(self) -> None:
        self.checker.check_step(list(self.hosts.values()))

    # -- conversations -------------------------------------------------------------------

    def elect(self, i: int) -> None:
        """Node ``i`` campaigns and the network runs until it is leader with its no-op
        committed."""
        self.node(i).campaign()
        self.stabilize()
        assert self.node(i).role == Role.LEADER, f"node {i} did not win: {self.roles()}"

    def propose(self, i: int, data: bytes | None = None) -> tuple[int, bytes]:
        """Propose a (unique by default) payload to node ``i``; return (index, payload)."""
        if data is None:
            self._seq += 1
            data = b"v%d" % self._seq
        node = self.node(i)
        index = node.propose(data)
        self.checker.proposed(data, index, node.term)
        return index, data

    def change(self, i: int, *changes: tuple[ConfChangeType, int]) -> int:
        return self.node(i).propose_conf_change(ConfChange(tuple(changes)))

    def crash(self, i: int) -> None:
        self.hosts[i].crash()
        self.checker.on_crash(self.hosts[i])
        self.outbox = [m for m in self.outbox if m.to != i]

    def restart(self, i: int) -> None:
        before = self.hosts[i].durable_commit
        self.hosts[i].restart()
        self.checker.on_restart(self.hosts[i], before)


def history(terms: Sequence[int]) -> list[Entry]:
    """Entries 1..n with the given terms (NORMAL, with a payload naming index and term)."""
    return [Entry(t, i, EntryType.NORMAL, b"h%d.%d" % (i, t)) for i, t in enumerate(terms, 1)]


def _match(m: Message, type: MessageType | None, frm: int | None, to: int | None) -> bool:
    return (
        (type is None or m.type == type)
        and (frm is None or m.frm == frm)
        and (to is None or m.to == to)
    )
