"""A deterministic simulation of one Raft group: a faulty network, crashing
hosts, clients proposing entries and configuration changes, invariants after
every step, and a liveness check once the faults stop.

Everything random is drawn from one ``random.Random(seed)`` (each core gets its
own RNG seeded from it), and no wall clock is read, so a seed replays exactly.

One step is one event, chosen at random with weights:

* deliver one in-flight message (usually the oldest, sometimes any: reordering;
  messages were dropped or duplicated when sent; a partition drops them);
* run phase one or phase two of a node's Ready (see ``_host``), so other events
  happen between a node's append and its sync;
* tick one node, or all of them;
* propose an entry (or a batch) to the leader, a configuration change, a
  leadership transfer or a ReadIndex;
* crash a node, restart one, open or heal a partition, snapshot and compact one
  node's log.
"""

from __future__ import annotations

import functools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack  # type: ignore[import-untyped]

from zstream.replication import (
    ConfChange,
    ConfChangeInProgressError,
    ConfChangeType,
    ConfState,
    Entry,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RaftConfig,
    RaftError,
    Role,
    decode_message,
    encode_message,
    message_from_wire,
    message_to_wire,
)

from ._checker import Checker, InvariantError
from ._host import Host, HostError, SnapshotRegistry


class LivenessError(AssertionError):
    """The healed cluster did not elect a leader or commit within the bound."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One run. Everything else (fault rates, core options) is drawn from the seed."""

    seed: int
    steps: int = 3000
    nodes: int = 0  # 0: 3 or 5, drawn from the seed
    liveness_rounds: int = 400  # ticks allowed, after healing, for a leader and a commit
    step_while_busy: bool = True  # deliver and tick while a Ready waits for its sync
    trace_len: int = 200  # events kept for the failure report


@dataclass
class SimResult:
    seed: int
    nodes: int
    steps: int
    committed: int = 0  # length of the applied sequence
    acknowledged: int = 0  # client proposals seen applied at their index and term
    proposed: int = 0
    leaders: int = 0  # terms that had a leader
    crashes: int = 0
    snapshots_sent: int = 0
    conf_changes: int = 0
    reads: int = 0
    liveness_ticks: int = 0
    error: str = ""
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error

    def replay_command(self) -> str:
        return (
            f"python -m tests.simulate --seed {self.seed} --steps {self.steps} --nodes {self.nodes}"
        )


@dataclass
class _Faults:
    drop: float
    dup: float
    reorder: float
    crash: float
    partition: float
    churn: float  # how often the leader itself is crashed or cut off
    membership: float  # how often configuration changes are proposed


class Simulation:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        rng = self.rng
        drawn = rng.choice((3, 5))  # drawn even when given, so a replay is exact
        self.n = cfg.nodes or drawn
        self.faults = _Faults(
            drop=rng.choice((0.0, 0.02, 0.1, 0.2)),
            dup=rng.choice((0.0, 0.02, 0.1)),
            reorder=rng.choice((0.0, 0.1, 0.4)),
            crash=rng.choice((0.0, 0.3, 1.0)),
            partition=rng.choice((0.0, 0.2, 0.6)),
            churn=rng.choice((0.0, 0.0, 0.5, 2.0)),
            membership=rng.choice((1.0, 1.0, 5.0)),
        )
        self.pre_vote = rng.random() < 0.8
        self.check_quorum = rng.random() < 0.8
        small = rng.random() < 0.4
        self.max_size_per_msg = rng.choice((1, 16, 64)) if small else 1 << 20
        self.max_inflight = rng.choice((1, 2, 4)) if small else 256
        self.ids = list(range(1, self.n + 1))
        # Most runs start with every node a voter; some start with the last as a
        # blank node that a configuration change must add.
        voters = self.ids if rng.random() < 0.7 else self.ids[:-1]
        boot = ConfState(voters=frozenset(voters))
        self.registry = SnapshotRegistry()
        self.hosts: dict[int, Host] = {}
        for i in self.ids:
            conf = boot if i in voters else ConfState(voters=frozenset())
            self.hosts[i] = Host(
                i, conf, self.registry, config=self._config, rng=random.Random(rng.getrandbits(64))
            )
        self.checker = Checker(hosts=list(self.hosts.values()))
        self.checker.note_config(boot.voters)
        self.pool: list[Message] = []
        self.groups: dict[int, int] | None = None  # node -> side of the partition
        self.trace: deque[str] = deque(maxlen=cfg.trace_len)
        self.now = 0  # step number
        self.seq = 0
        self.result = SimResult(cfg.seed, self.n, cfg.steps)
        self._faulty = True
        # Odd seeds send every message through the codec, as a transport would (no RNG
        # draw, so this choice does not perturb the rest of the run).
        self.wire = cfg.seed % 2 == 1

    def _config(self, node_id: int, applied: int) -> RaftConfig:
        return RaftConfig(
            id=node_id,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            max_size_per_msg=self.max_size_per_msg,
            max_inflight_msgs=self.max_inflight,
            applied=applied,
        )

    # -- helpers -----------------------------------------------------------------

    def log(self, text: str) -> None:
        self.trace.append(f"[{self.now}] {text}")

    def live(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.node is not None]

    def leader(self) -> Host | None:
        best: Host | None = None
        best_term = -1
        for h in self.live():
            node = h.node
            if node is not None and node.role == Role.LEADER and node.term > best_term:
                best, best_term = h, node.term
        return best

    def _linked(self, a: int, b: int) -> bool:
        return self.groups is None or self.groups.get(a) == self.groups.get(b)

    def send(self, msgs: list[Message]) -> None:
        rng, f = self.rng, self.faults
        for m in msgs:
            if self.wire:
                m = _through_codec(m)
            if m.to not in self.hosts or m.to == m.frm:
                continue
            if m.snapshot is not None:
                self.result.snapshots_sent += 1
            if self._faulty and rng.random() < f.drop:
                continue
            self.pool.append(m)
            if self._faulty and rng.random() < f.dup:
                self.pool.append(m)

    # -- events ------------------------------------------------------------------

    def _deliver(self) -> bool:
        pool = self.pool
        if not pool:
            return False
        for _ in range(4):
            i = self.rng.randrange(len(pool)) if self.rng.random() < self.faults.reorder else 0
            m = pool[i]
            host = self.hosts[m.to]
            if host.busy and not self.cfg.step_while_busy:
                continue
            del pool[i]
            if host.node is None or not self._linked(m.frm, m.to):
                self.log(f"lost {_fmt(m)}")
                return True
            self.log(f"deliver {_fmt(m)}")
            host.node.step(m)
            return True
        return False

    def _ready(self, host: Host) -> None:
        if host.busy:
            after, out = host.finish_ready()
            self.log(f"n{host.id} sync+apply {len(out.applied)} -> {len(after)} msgs")
            if out.installed is not None:
                self.checker.on_install(host)
            self.checker.on_apply(host, out.applied)
            for index, ctx in out.read_states:
                self.checker.on_read_state(host, index, ctx)
            self.send(after)
        else:
            msgs = host.begin_ready(self._on_write)
            self.log(f"n{host.id} ready: {len(msgs)} msgs")
            self.send(msgs)

    def _on_write(self, node_id: int, entries: list[Entry]) -> None:
        self.log(f"n{node_id} append {entries[0].index}..{entries[-1].index}")
        self.checker.on_write(self.hosts[node_id], entries)

    def _tick(self) -> None:
        live = self.live()
        if not live:
            return
        targets = live if self.rng.random() < 0.3 else [self.rng.choice(live)]
        for h in targets:
            if h.busy and not self.cfg.step_while_busy:
                continue
            assert h.node is not None
            h.node.tick()
        self.log("tick " + ",".join(str(h.id) for h in targets))

    def _propose(self) -> None:
        rng = self.rng
        live = self.live()
        if not live:
            return
        # Usually the leader; sometimes a random node (which must refuse).
        host = self.leader() if rng.random() < 0.9 else rng.choice(live)
        if host is None or host.node is None:
            return
        node = host.node
        count = 1 if rng.random() < 0.8 else rng.randint(2, 8)
        datas = []
        for _ in range(count):
            self.seq += 1
            datas.append(b"p%d" % self.seq)
        try:
            index = node.propose(datas[0]) if count == 1 else node.propose_batch(datas)
        except NotLeaderError:
            if node.role == Role.LEADER:
                raise InvariantError(f"leader {host.id} refused a proposal as not leader") from None
            self.log(f"n{host.id} refuses proposal (not leader)")
            return
        except ProposalDroppedError:
            self.log(f"n{host.id} drops proposal")
            return
        for k, d in enumerate(datas):
            self.checker.proposed(d, index + k, node.term)
        self.result.proposed += count
        self.log(f"n{host.id} proposes {count} at {index} (term {node.term})")

    def _conf_change(self) -> None:
        host = self.leader()
        if host is None or host.node is None:
            return
        rng = self.rng
        cs = host.node.conf_state
        if cs.voters_outgoing:
            return
        voters, learners = set(cs.voters), set(cs.learners)
        outside = [i for i in self.ids if i not in voters and i not in learners]
        min_voters = 2 if self.n == 3 else 3
        options: list[tuple[tuple[ConfChangeType, int], ...]] = []
        for i in outside:
            options.append(((ConfChangeType.ADD_LEARNER, i),))
            options.append(((ConfChangeType.ADD_VOTER, i),))
        for i in learners:
            options.append(((ConfChangeType.ADD_VOTER, i),))
            options.append(((ConfChangeType.REMOVE_NODE, i),))
        if len(voters) > min_voters:
            for i in voters:
                options.append(((ConfChangeType.REMOVE_NODE, i),))
                options.append(((ConfChangeType.ADD_LEARNER, i),))
        if outside and len(voters) >= min_voters:
            # A joint change: swap a voter for a newcomer.
            for v in voters:
                options.append(
                    ((ConfChangeType.ADD_VOTER, outside[0]), (ConfChangeType.REMOVE_NODE, v))
                )
        if not options:
            return
        changes = rng.choice(options)
        cc = ConfChange(changes)
        try:
            index = host.node.propose_conf_change(cc)
        except (ConfChangeInProgressError, NotLeaderError, ProposalDroppedError) as exc:
            self.log(f"n{host.id} conf change refused: {type(exc).__name__}")
            return
        self.result.conf_changes += 1
        self.log(f"n{host.id} proposes conf change {_fmt_cc(changes)} at {index}")

    def _transfer(self) -> None:
        host = self.leader()
        if host is None or host.node is None:
            return
        others = [v for v in host.node.conf_state.voters if v != host.id]
        if not others:
            return
        target = self.rng.choice(sorted(others))
        host.node.transfer_leader(target)
        self.log(f"n{host.id} transfers leadership to n{target}")

    def _read(self) -> None:
        host = self.leader()
        if host is None or host.node is None:
            return
        self.seq += 1
        ctx = b"r%d" % self.seq
        try:
            host.node.read_index(ctx)
        except (NotLeaderError, ProposalDroppedError):
            return
        self.checker.on_read_issued(ctx, self.live())
        self.log(f"n{host.id} read_index {ctx!r}")

    def _crash(self) -> None:
        live = self.live()
        if len(live) <= 1:
            return
        host = self.rng.choice(live)
        host.crash()
        self.checker.on_crash(host)
        self.pool = [m for m in self.pool if m.to != host.id]
        self.result.crashes += 1
        self.log(f"CRASH n{host.id} (durable commit {host.durable_commit})")

    def _restart(self, host: Host) -> None:
        before = host.durable_commit
        self._check_durable(host)
        host.restart()
        self.checker.on_restart(host, before)
        self.log(f"RESTART n{host.id} (commit {before})")

    def _check_durable(self, host: Host) -> None:
        """The durable log covers the durable commit and agrees with what was applied."""
        base = host.durable_snapshot.metadata.index if host.durable_snapshot else 0
        entries = [e for e in host.durable_entries if e.index > base]
        last = entries[-1].index if entries else base
        if host.durable_commit > last:
            raise InvariantError(
                f"node {host.id}: durable commit {host.durable_commit} beyond its "
                f"durable log ({last})"
            )
        canon = self.checker.canon
        for e in entries:
            if e.index <= min(host.durable_commit, len(canon)) and canon[e.index - 1][0] != e.term:
                raise InvariantError(
                    f"node {host.id}: durable committed entry {e.index} has term {e.term}, "
                    f"the applied one has {canon[e.index - 1][0]}"
                )

    def _depose(self) -> None:
        """Crash the leader, or cut it off from everyone else."""
        host = self.leader()
        if host is None:
            return
        if self.rng.random() < 0.5 and len(self.live()) > 1:
            host.crash()
            self.checker.on_crash(host)
            self.pool = [m for m in self.pool if m.to != host.id]
            self.result.crashes += 1
            self.log(f"CRASH leader n{host.id}")
        else:
            self.groups = {i: int(i == host.id) for i in self.ids}
            self.log(f"ISOLATE leader n{host.id}")

    def _heal(self) -> None:
        self.groups = None
        self.log("HEAL")

    def _partition(self) -> None:
        if self.groups is not None or self.rng.random() < 0.3:
            self.groups = None
            self.log("HEAL")
            return
        ids = self.ids[:]
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        self.groups = {i: (0 if k < cut else 1) for k, i in enumerate(ids)}
        self.log(f"PARTITION {sorted(ids[:cut])} | {sorted(ids[cut:])}")

    def _compact(self) -> None:
        live = [h for h in self.live() if not h.busy]
        if not live:
            return
        host = self.rng.choice(live)
        snap = host.compact(keep=self.rng.choice((0, 1, 5)))
        if snap is not None:
            self.log(f"n{host.id} snapshot+compact at {snap.metadata.index}")

    # -- driving -----------------------------------------------------------------

    def step(self) -> None:
        rng = self.rng
        self.now += 1
        events: list[tuple[float, Callable[[], None]]] = []
        if self.pool:
            events.append((min(len(self.pool), 12) * 1.0, self._deliver_event))
        for h in self.hosts.values():
            if h.node is None:
                if self.faults.crash or self.faults.churn:
                    events.append((0.3, functools.partial(self._restart, h)))
            elif h.busy or h.node.has_ready():
                events.append((4.0, functools.partial(self._ready, h)))
        events.append((3.0, self._tick))
        events.append((1.5, self._propose))
        events.append((0.15 * self.faults.membership, self._conf_change))
        events.append((0.03, self._transfer))
        events.append((0.2, self._read))
        events.append((0.1, self._compact))
        if self.faults.crash:
            events.append((0.05 * self.faults.crash, self._crash))
        if self.faults.partition:
            events.append((0.05 * self.faults.partition, self._partition))
        if self.faults.churn:
            events.append((0.02 * self.faults.churn, self._depose))
        if self.groups is not None:
            events.append((0.05, self._heal))
        total = sum(w for w, _ in events)
        x = rng.random() * total
        for w, fn in events:
            x -= w
            if x <= 0:
                fn()
                break
        else:
            events[-1][1]()
        self.checker.check_step(list(self.hosts.values()))

    def _deliver_event(self) -> None:
        self._deliver()

    def heal_and_check_liveness(self) -> None:
        """Stop all faults, restart every node, and require progress within a bound."""
        self._faulty = False
        self.groups = None
        self.log("=== faults stop: heal, restart all ===")
        for h in self.hosts.values():
            if h.node is None:
                self._restart(h)
        # Nodes outside the newest configuration are shut down, as an operator would,
        # unless pre-vote and check-quorum are both on (they must not disrupt then); one
        # that a pending change adds back is started again once any node applies it.
        stopped: set[int] = set()
        if not (self.pre_vote and self.check_quorum):
            needed: set[int] = set()  # a member in some node's view
            for h in self.live():
                assert h.node is not None
                needed |= _members(h.node.conf_state)
            for h in self.hosts.values():
                if h.id not in needed and h.node is not None:
                    h.crash()
                    self.checker.on_crash(h)
                    stopped.add(h.id)
                    self.log(f"stop n{h.id} (not a member)")
        probe: tuple[bytes, int, int] | None = None  # payload, index, term
        for rnd in range(self.cfg.liveness_rounds):
            self.now = -rnd  # liveness rounds show as negative steps in the trace
            self.result.liveness_ticks = rnd
            for h in self.live():
                assert h.node is not None
                for i in sorted(stopped & _members(h.node.conf_state)):
                    stopped.discard(i)
                    self._restart(self.hosts[i])
            for h in self.live():
                if not h.busy:
                    assert h.node is not None
                    h.node.tick()
            self._quiesce()
            lead = self.leader()
            if lead is None or lead.node is None:
                continue
            node = lead.node
            if probe is not None and probe[2] != node.term and len(self.checker.canon) < probe[1]:
                probe = None  # proposed to an earlier leader that lost it: propose again
            if probe is None:
                try:
                    self.seq += 1
                    data = b"probe%d" % self.seq
                    index = node.propose(data)
                except (NotLeaderError, ProposalDroppedError):
                    continue
                self.checker.proposed(data, index, node.term)
                self.result.proposed += 1
                probe = (data, index, node.term)
                self.log(f"probe proposed to n{lead.id} at {index}")
                self._quiesce()
            canon = self.checker.canon
            index = probe[1]
            if len(canon) < index or canon[index - 1][2] != probe[0]:
                if len(canon) >= index:
                    probe = None  # lost in a leader change: propose another
                continue
            cs = node.conf_state
            if cs.voters_outgoing:
                continue
            members = cs.voters | cs.learners
            if all(
                self.hosts[i].node is not None and self.hosts[i].applied_index >= index
                for i in members
            ):
                self._check_pending_committed(node.term)
                return
        lead = self.leader()
        raise LivenessError(
            f"no progress within {self.cfg.liveness_rounds} ticks after healing: leader "
            f"{lead.id if lead else None}, probe {probe}, "
            + ", ".join(f"n{h.id}:{_fmt_node(h)}" for h in self.hosts.values())
        )

    def _check_pending_committed(self, term: int) -> None:
        """Every proposal the current leader accepted in its term has committed where
        it was placed (earlier leaders' proposals may legitimately be lost)."""
        canon = self.checker.canon
        for data, (index, t) in self.checker.proposals.items():
            if t == term and (len(canon) < index or canon[index - 1][2] != data):
                raise LivenessError(
                    f"proposal {data!r} accepted at index {index} in the leader's term {t} "
                    "is not committed"
                )

    def _quiesce(self) -> None:
        for _ in range(200):
            moved = False
            for h in self.live():
                if h.busy or (h.node is not None and h.node.has_ready()):
                    self._ready(h)
                    if h.busy:
                        self._ready(h)
                    moved = True
                    self.checker.check_step(list(self.hosts.values()))
            while self.pool:
                self._deliver()
                moved = True
                self.checker.check_step(list(self.hosts.values()))
            if not moved:
                return

    def run(self) -> SimResult:
        res = self.result
        try:
            for _ in range(self.cfg.steps):
                self.step()
            self.heal_and_check_liveness()
        except (InvariantError, LivenessError, HostError, RaftError, AssertionError) as exc:
            res.error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a crash inside the core is a finding too
            res.error = f"core raised {type(exc).__name__}: {exc}"
            import traceback

            self.trace.append(traceback.format_exc())
            res.trace = list(self.trace)
        res.committed = len(self.checker.canon)
        res.acknowledged = len(self.checker.canon_payloads)
        res.leaders = len(self.checker.leaders)
        res.reads = self.checker.reads_served
        res.trace = list(self.trace)
        return res


def run_seed(cfg: SimConfig) -> SimResult:
    return Simulation(cfg).run()


def _fmt(m: Message) -> str:
    name = getattr(m.type, "name", str(m.type))
    extra = ""
    if m.entries:
        extra = f" ents={m.entries[0].index}..{m.entries[-1].index}"
    if m.snapshot is not None:
        extra += f" snap@{m.snapshot.metadata.index}"
    if m.reject:
        extra += f" REJECT hint={m.reject_hint}"
    return f"{name} {m.frm}->{m.to} t{m.term} idx={m.index} lt={m.log_term} c={m.commit}{extra}"


def _through_codec(m: Message) -> Message:
    """Encode and decode ``m`` (whole, or header plus payload frames): it must survive."""
    if m.index % 2:
        back = decode_message(encode_message(m))
    else:
        header, payloads = message_to_wire(m)
        back = message_from_wire(
            msgpack.unpackb(msgpack.packb(header)), [bytes(p) for p in payloads]
        )
    if back != m:
        raise InvariantError(f"codec round trip changed {m!r} into {back!r}")
    return back


def _members(cs: ConfState) -> set[int]:
    return set(cs.voters | cs.learners | cs.voters_outgoing | cs.learners_next)


def _fmt_cc(changes: tuple[tuple[ConfChangeType, int], ...]) -> str:
    return "+".join(f"{t.name}({i})" for t, i in changes) or "LEAVE_JOINT"


def _fmt_node(h: Host) -> str:
    if h.node is None:
        return "down"
    n = h.node
    cs = n.conf_state
    return (
        f"{n.role.name} t{n.term} c{n.commit} last{n.last_index} app{h.applied_index} "
        f"v{sorted(cs.voters)} l{sorted(cs.learners)} out{sorted(cs.voters_outgoing)}"
    )
