"""A Jepsen-style checker for a replicated append-only log used as a queue.

A fault test records a *history*: one `Append` per attempted append, with the value it
tried to write (unique per attempt: a client never retries the same value), the offset
the cluster acknowledged (``None`` when the attempt failed or its outcome is unknown)
and the client's monotonic invocation and completion times. Afterwards it reads what
every replica's log holds (committed records from offset 0, in offset order) and calls
`check_queue`. The report lists, per replica:

- **lost**: an acknowledged value that the replica's log does not hold;
- **duplicated**: a value the log holds more than once;
- **reordered**: an acknowledged value held at another offset than the one
  acknowledged (the offset is the contract a client was given);
- **phantom**: a value no client ever attempted;

and, across the history and the replicas:

- **realtime**: two acknowledged appends whose offsets contradict real time: A was
  acknowledged before B was invoked, yet A's offset is above B's (the log must be
  linearizable, so this also catches a reordering no replica shows on its own);
- **divergent**: two replicas whose logs differ at an offset both hold (committed logs
  must be prefixes of one another).

Values that were attempted but not acknowledged may or may not be present (an append
whose reply was lost can still commit); they are never an anomaly on their own.

Visibility (nothing past the high watermark is visible, and it never goes backwards) is
checked from what readers saw while the faults ran:

- `check_reads`: every `Read` (a record some replica served as committed at some
  offset) must be the record the final log holds there; anything else was a dirty read
  (served before it was committed, then replaced) or an unstable one;
- `check_watermarks`: a process's committed end offset (`Watermark` samples, in the
  order they were taken) never decreases. A restarted process (new pid) may start lower:
  the commit index is volatile state in Raft.

And Raft's election safety from the same samples: `check_election_safety` finds terms in
which two different nodes said they lead (`LeaderClaim`), which a lost vote (term and
vote not durable before the reply left) would allow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Append",
    "LeaderClaim",
    "QueueReport",
    "Read",
    "Watermark",
    "check_election_safety",
    "check_queue",
    "check_reads",
    "check_watermarks",
]


@dataclass(frozen=True, slots=True)
class Append:
    """One attempted append: ``offset`` is None unless it was acknowledged."""

    value: bytes
    offset: int | None
    invoked: float = 0.0
    completed: float = 0.0


@dataclass(frozen=True, slots=True)
class Divergence:
    """Replicas ``a`` and ``b`` hold different records at ``offset``."""

    a: str
    b: str
    offset: int


@dataclass(slots=True)
class QueueReport:
    """What `check_queue` found; empty everywhere means no anomaly."""

    acknowledged: int = 0
    attempted: int = 0
    lost: dict[str, list[bytes]] = field(default_factory=dict)
    duplicated: dict[str, list[bytes]] = field(default_factory=dict)
    reordered: dict[str, list[tuple[bytes, int, int]]] = field(default_factory=dict)
    phantom: dict[str, list[bytes]] = field(default_factory=dict)
    realtime: list[tuple[bytes, bytes]] = field(default_factory=list)
    divergent: list[Divergence] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            any(self.lost.values())
            or any(self.duplicated.values())
            or any(self.reordered.values())
            or any(self.phantom.values())
            or self.realtime
            or self.divergent
        )

    def summary(self, limit: int = 5) -> str:
        """A short human-readable account (the first ``limit`` items of each kind)."""
        lines = [f"{self.acknowledged} acknowledged of {self.attempted} attempted appends"]
        for name in ("lost", "duplicated", "reordered", "phantom"):
            per_node: dict[str, list[object]] = getattr(self, name)
            for node, items in sorted(per_node.items()):
                if items:
                    lines.append(f"{name} on {node}: {len(items)}, e.g. {items[:limit]}")
        if self.realtime:
            lines.append(f"realtime inversions: {len(self.realtime)}, e.g. {self.realtime[:limit]}")
        for d in self.divergent[:limit]:
            lines.append(f"divergent: {d.a} and {d.b} differ at offset {d.offset}")
        return "\n".join(lines)


def check_queue(history: Iterable[Append], logs: Mapping[str, Sequence[bytes]]) -> QueueReport:
    """Check ``logs`` (replica name -> its records from offset 0) against ``history``.

    Raises ValueError when the history itself is unusable (a value attempted twice).
    """
    ops = list(history)
    counts = Counter(op.value for op in ops)
    repeated = [v for v, n in counts.items() if n > 1]
    if repeated:
        raise ValueError(f"every attempt needs its own value; repeated: {repeated[:5]}")
    acked = {op.value: op.offset for op in ops if op.offset is not None}
    report = QueueReport(acknowledged=len(acked), attempted=len(ops))

    for node, log in logs.items():
        held = Counter(log)
        report.lost[node] = [v for v in acked if v not in held]
        report.duplicated[node] = [v for v, n in held.items() if n > 1]
        report.phantom[node] = [v for v in held if v not in counts]
        report.reordered[node] = [
            (v, offset, log.index(v))
            for v, offset in acked.items()
            if v in held and (offset >= len(log) or log[offset] != v)
        ]

    report.realtime = _realtime_inversions([op for op in ops if op.offset is not None])

    names = sorted(logs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            la, lb = logs[a], logs[b]
            for offset in range(min(len(la), len(lb))):
                if la[offset] != lb[offset]:
                    report.divergent.append(Divergence(a, b, offset))
                    break
    return report


def _realtime_inversions(acked: list[Append]) -> list[tuple[bytes, bytes]]:
    """Pairs (A, B) with A completed before B was invoked but offset(A) > offset(B).

    Walks the acknowledged appends from the highest offset down, keeping the one that
    completed earliest among those above: B is inverted when that one completed before
    B was invoked.
    """
    inversions: list[tuple[bytes, bytes]] = []
    earliest: Append | None = None
    for op in sorted(acked, key=lambda o: o.offset or 0, reverse=True):
        if earliest is not None and earliest.completed < op.invoked:
            inversions.append((earliest.value, op.value))
        if earliest is None or op.completed < earliest.completed:
            earliest = op
    return inversions


@dataclass(frozen=True, slots=True)
class Read:
    """Replica ``node`` served ``value`` as the committed record at ``offset``."""

    node: str
    offset: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Watermark:
    """Replica ``node`` (process ``pid``) reported committed end offset ``end``."""

    node: str
    pid: int
    end: int


def check_reads(reads: Iterable[Read], final: Sequence[bytes]) -> list[tuple[Read, bytes | None]]:
    """Reads that disagree with the final committed log ``final``, each with what the
    final log holds at that offset (None: nothing)."""
    bad: list[tuple[Read, bytes | None]] = []
    for r in reads:
        now = final[r.offset] if r.offset < len(final) else None
        if now != r.value:
            bad.append((r, now))
    return bad


def check_watermarks(samples: Iterable[Watermark]) -> list[tuple[Watermark, Watermark]]:
    """Pairs (earlier, later) of samples of the same process where the end went down."""
    last: dict[tuple[str, int], Watermark] = {}
    regressions: list[tuple[Watermark, Watermark]] = []
    for s in samples:
        key = (s.node, s.pid)
        prev = last.get(key)
        if prev is not None and s.end < prev.end:
            regressions.append((prev, s))
        if prev is None or s.end >= prev.end:
            last[key] = s
    return regressions


@dataclass(frozen=True, slots=True)
class LeaderClaim:
    """Replica ``node`` said it leads in ``term``."""

    node: str
    term: int


def check_election_safety(claims: Iterable[LeaderClaim]) -> dict[int, set[str]]:
    """Terms claimed by more than one node, with the claimants."""
    by_term: dict[int, set[str]] = {}
    for c in claims:
        by_term.setdefault(c.term, set()).add(c.node)
    return {term: nodes for term, nodes in by_term.items() if len(nodes) > 1}
