"""Rebalance planning (pure): which reassignments even out replica counts and
preferred leaders over the brokers that may take replicas.

Theory of operation
===================

Input: every partition's replica list (a partition being reassigned gives its
target, and is ``fixed``: it counts, but the plan leaves it alone, as the controller
allows one reassignment per partition) and the brokers new replicas may go to
(registered, live, not decommissioning). Replicas on other brokers (dead, leaving)
are left where they are and counted nowhere: re-placing those is the decommission
and dead-broker loops' work.

Two phases, each greedy and deterministic (ties go to the lowest broker id, then
to the first partition in (topic, partition) order):

1. Replica counts. While the most loaded broker ``h`` holds at least two replicas
   more than the least loaded ``l``, one replica moves from ``h`` to ``l``, in a
   partition on ``h`` but not on ``l`` (one always exists: ``h`` holds more
   partitions than ``l``), preferring one where ``h`` is not the first replica (the
   preferred leader stays). The moved replica keeps its place in the list. Each move
   lowers the sum of squared counts, and takes the count of an overloaded broker
   one closer to the mean, so the phase ends with max - min <= 1 after the fewest
   moves this kind of step can make (the excess above the mean).
2. Preferred leaders (first replicas). No data moves: a partition's list is only
   reordered. Over placeable first replicas, while some broker ``a`` leads two more
   than some broker ``b`` that can be reached by a chain of swaps (``a`` leads a
   partition holding ``m1``, ``m1`` leads one holding ``m2``, ... ``b``), the chain
   is applied: each partition on it hands the first place to the next broker. A
   breadth-first search finds the shortest such chain. With no such chain left the
   leader counts are as even as reordering can make them (the semi-matching
   argument: no improving path means every convex measure of imbalance, max - min
   among them, is at its minimum).

Applying a plan and planning again gives no moves: both phases stop only where
their own condition fails, and the second run starts there.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["Move", "plan_rebalance"]

TopicPartitionKey = tuple[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Move:
    """Partition ``topic``/``partition`` goes from ``replicas`` to ``target`` (the same
    brokers in another order: only its preferred leader changes)."""

    topic: str
    partition: int
    replicas: tuple[int, ...]
    target: tuple[int, ...]

    @property
    def moves_data(self) -> bool:
        return set(self.replicas) != set(self.target)


def plan_rebalance(
    partitions: Mapping[TopicPartitionKey, Sequence[int]],
    brokers: Iterable[int],
    fixed: Iterable[TopicPartitionKey] = (),
) -> list[Move]:
    """The moves that balance ``partitions`` (replica lists, first the preferred
    leader) over ``brokers`` (those that may take replicas); ``fixed`` partitions
    count but do not move. Sorted by (topic, partition); see the module docstring."""
    placeable = sorted(set(brokers))
    if not placeable:
        return []
    frozen = set(fixed)
    now = {tp: list(r) for tp, r in sorted(partitions.items())}
    movable = [tp for tp in now if tp not in frozen]
    _even_replicas(now, movable, placeable)
    _even_leaders(now, movable, placeable)
    return [
        Move(tp[0], tp[1], tuple(partitions[tp]), tuple(now[tp]))
        for tp in movable
        if tuple(now[tp]) != tuple(partitions[tp])
    ]


def _even_replicas(
    now: dict[TopicPartitionKey, list[int]], movable: list[TopicPartitionKey], placeable: list[int]
) -> None:
    counts = dict.fromkeys(placeable, 0)
    for replicas in now.values():
        for b in replicas:
            if b in counts:
                counts[b] += 1
    while True:
        # Highest count first (ties: lowest id); lowest count first (ties: lowest id).
        heavy = sorted(placeable, key=lambda b: (-counts[b], b))
        light = sorted(placeable, key=lambda b: (counts[b], b))
        if counts[heavy[0]] - counts[light[0]] <= 1:
            return
        h, low = heavy[0], light[0]
        candidates = [tp for tp in movable if h in now[tp] and low not in now[tp]]
        # Prefer keeping the preferred leader where it is.
        candidates.sort(key=lambda tp: now[tp][0] == h)
        if not candidates:  # only fixed partitions are left to move: as even as it gets
            return
        replicas = now[candidates[0]]
        replicas[replicas.index(h)] = low
        counts[h] -= 1
        counts[low] += 1


def _even_leaders(
    now: dict[TopicPartitionKey, list[int]], movable: list[TopicPartitionKey], placeable: list[int]
) -> None:
    allowed = set(placeable)
    leads = dict.fromkeys(placeable, 0)
    for replicas in now.values():
        if replicas and replicas[0] in allowed:
            leads[replicas[0]] += 1
    while True:
        path = _improving_path(now, movable, allowed, leads)
        if path is None:
            return
        for tp, to in path:
            replicas = now[tp]
            frm = replicas[0]
            i = replicas.index(to)
            replicas[0], replicas[i] = to, frm
            leads[frm] -= 1
            leads[to] += 1


def _improving_path(
    now: dict[TopicPartitionKey, list[int]],
    movable: list[TopicPartitionKey],
    allowed: set[int],
    leads: dict[int, int],
) -> list[tuple[TopicPartitionKey, int]] | None:
    """The shortest chain of first-place hand-overs from the broker leading the most
    (ties: lowest id, then the next) to one leading at least two fewer, or None."""
    led_by: dict[int, list[TopicPartitionKey]] = collections.defaultdict(list)
    for tp in movable:
        replicas = now[tp]
        if replicas and replicas[0] in allowed:
            led_by[replicas[0]].append(tp)
    for start in sorted(allowed, key=lambda b: (-leads[b], b)):
        came: dict[int, tuple[int, TopicPartitionKey] | None] = {start: None}
        queue = collections.deque([start])
        while queue:
            b = queue.popleft()
            if leads[b] <= leads[start] - 2:
                path = []
                while (step := came[b]) is not None:
                    prev, tp = step
                    path.append((tp, b))
                    b = prev
                return path[::-1]
            for tp in led_by[b]:
                for m in now[tp][1:]:
                    if m in allowed and m not in came:
                        came[m] = (b, tp)
                        queue.append(m)
    return None
