"""Consumer-group state and the assignor: pure values, used by the controller.

Theory of operation (KIP-848 style: the controller assigns, members converge)
----------------------------------------------------------------------------
A group has members and committed offsets. Each member has a subscription
(``topics``), a ``target`` (where the assignor wants its partitions to be) and
``owned`` (what it last reported consuming). The two differ while partitions
move: a partition the assignor takes from member A and gives to member B stays in
A's ``owned`` until A reports it released, and only then appears in B's
*assignment* (what B may consume now)::

    assignment(m) = m.target - union(o.owned for every other member o)

So a partition is never in two assignments, whatever the order of heartbeats.

The assignor (`rebalance`) is deterministic, sticky and incremental:

1. each member keeps the partitions of its target that still exist and that it
   still subscribes to (a partition in two targets, which cannot happen, would be
   kept by the lowest member id);
2. every unassigned partition of a subscribed topic, in (topic, partition) order,
   goes to the eligible member (one subscribing its topic) with the fewest
   partitions (ties: the lowest member id);
3. while some member could take a partition from another member holding at least
   two more, one partition moves: the donor is the member with the most partitions
   (ties: the lowest id), the partition is its highest (topic, partition) that some
   such member can take, the receiver is the eligible member with the fewest (ties:
   the lowest id). Each move lowers the sum of squared counts, so this ends.

A join therefore moves only what balance requires (the newcomer's fair share), and
a leave moves only the leaver's partitions (step 2 keeps counts within one).

Member epochs: the group epoch grows on every membership or target change; a
member whose target changes takes the new group epoch as its ``member_epoch``.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
from collections.abc import Iterable, Mapping

__all__ = [
    "Group",
    "Member",
    "Sessions",
    "TopicPartition",
    "partition_map",
    "rebalance",
]

TopicPartition = tuple[str, int]


@dataclasses.dataclass(slots=True)
class Member:
    member_id: str
    topics: tuple[str, ...]  # sorted, unique
    session_timeout_ms: int
    member_epoch: int = 0
    target: set[TopicPartition] = dataclasses.field(default_factory=set)
    owned: set[TopicPartition] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(slots=True)
class Group:
    name: str
    epoch: int = 0
    members: dict[str, Member] = dataclasses.field(default_factory=dict)
    offsets: dict[TopicPartition, int] = dataclasses.field(default_factory=dict)
    # Wall-clock ms (the proposer's, carried in the command) of the last commit or
    # departure: offsets retention counts from it once the group has no members. 0:
    # unknown (restored from an older snapshot); the next retention pass sets it.
    active_ms: int = 0

    def is_empty(self) -> bool:
        return not self.members and not self.offsets

    def owned_by_others(self, member_id: str) -> set[TopicPartition]:
        out: set[TopicPartition] = set()
        for other in self.members.values():
            if other.member_id != member_id:
                out |= other.owned
        return out

    def assignment(self, member_id: str) -> set[TopicPartition]:
        """What the member may consume now: its target minus what others still own."""
        return self.members[member_id].target - self.owned_by_others(member_id)


def partition_map(tps: Iterable[TopicPartition]) -> dict[str, list[int]]:
    """{topic: [partition, ...]}, both sorted."""
    out: dict[str, list[int]] = {}
    for topic, p in sorted(tps):
        out.setdefault(topic, []).append(p)
    return out


def rebalance(group: Group, partition_counts: Mapping[str, int]) -> bool:
    """Recompute every member's target (see the module docstring); True when a
    target changed. ``partition_counts`` gives each existing topic's partitions."""
    members = sorted(group.members.values(), key=lambda m: m.member_id)
    subs = {m.member_id: frozenset(m.topics) for m in members}
    new: dict[str, set[TopicPartition]] = {}
    taken: set[TopicPartition] = set()
    for m in members:  # 1. keep what still exists and is still subscribed
        keep = {
            tp
            for tp in m.target
            if tp[0] in subs[m.member_id]
            and tp[1] < partition_counts.get(tp[0], 0)
            and tp not in taken
        }
        new[m.member_id] = keep
        taken |= keep
    topics = sorted({t for m in members for t in m.topics if t in partition_counts})
    for topic in topics:  # 2. the unassigned, one by one, to the fewest
        # Only this topic's eligible members gain here, so a heap of them stays exact.
        heap = [(len(new[m.member_id]), m.member_id) for m in members if topic in subs[m.member_id]]
        heapq.heapify(heap)
        for p in range(partition_counts[topic]):
            if (topic, p) in taken:
                continue
            count, receiver = heapq.heappop(heap)
            new[receiver].add((topic, p))
            taken.add((topic, p))
            heapq.heappush(heap, (count + 1, receiver))
    _even_out(new, subs)  # 3.
    changed = False
    for m in members:
        if new[m.member_id] != m.target:
            changed = True
    if changed:
        group.epoch += 1
        for m in members:
            if new[m.member_id] != m.target:
                m.target = new[m.member_id]
                m.member_epoch = group.epoch
    return changed


def _even_out(new: dict[str, set[TopicPartition]], subs: Mapping[str, frozenset[str]]) -> None:
    """Step 3: move single partitions until no member holds two more than one that
    subscribes to the topic of one of them (see the module docstring for the choice).
    Each member's partitions are kept in a sorted list, so a move costs a member sort
    and a memmove, not a sort of the donor's partitions."""
    order = {mid: sorted(tps) for mid, tps in new.items()}
    while _move_one(order, subs):
        pass
    for mid, tps in order.items():
        new[mid] = set(tps)


def _move_one(order: dict[str, list[TopicPartition]], subs: Mapping[str, frozenset[str]]) -> bool:
    """Move one partition from the fullest possible donor to the emptiest member
    that can take it; False when no such move exists."""
    # Members by (count, id), once: the takers of a donor holding ``count`` are the
    # prefix of members holding at most count - 2.
    ascending = sorted(order, key=lambda mid: (len(order[mid]), mid))
    counts = [len(order[mid]) for mid in ascending]
    for donor in sorted(order, key=lambda mid: (-len(order[mid]), mid)):
        count = len(order[donor])
        takers = ascending[: bisect.bisect_right(counts, count - 2)]
        if not takers:
            return False  # later donors hold no more than this one: no takers either
        receiver_of: dict[str, str | None] = {}
        held = order[donor]
        for i in range(len(held) - 1, -1, -1):  # its highest partitions first
            topic = held[i][0]
            if topic not in receiver_of:
                receiver_of[topic] = next((r for r in takers if topic in subs[r]), None)
            receiver = receiver_of[topic]
            if receiver is not None:
                bisect.insort(order[receiver], held.pop(i))
                return True
    return False


class Sessions:
    """When the controller leader last heard from each member: in memory on the
    leader only, never replicated (a heartbeat that changes nothing costs no Raft
    proposal). Time is an input (seconds, monotonic), and so is the Raft term.

    Each clock belongs to the term it was set in. A leader of a new term starts every
    member's clock afresh: it cannot know when the previous leader last heard from a
    member, and must not expire one for the silence of an election."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[int, float]] = {}

    def touch(self, group: str, member_id: str, term: int, now: float) -> None:
        self._seen[(group, member_id)] = (term, now)

    def forget(self, group: str, member_id: str) -> None:
        self._seen.pop((group, member_id), None)

    def reset(self) -> None:
        """No longer the leader: forget everything."""
        self._seen.clear()

    def expired(
        self, members: Iterable[tuple[str, str, int]], term: int, now: float
    ) -> list[tuple[str, str]]:
        """The members (group, member_id, session_timeout_ms) silent for longer than
        their session timeout. A member not seen yet in this term starts its clock
        now; members no longer in the state are forgotten."""
        live: set[tuple[str, str]] = set()
        out: list[tuple[str, str]] = []
        for group, member_id, timeout_ms in members:
            key = (group, member_id)
            live.add(key)
            seen = self._seen.get(key)
            if seen is None or seen[0] != term:
                self._seen[key] = (term, now)
            elif now - seen[1] > timeout_ms / 1000:
                out.append(key)
        for key in [k for k in self._seen if k not in live]:
            del self._seen[key]
        return out
