"""The member's state machine alone (clients._group.Membership): no I/O, no clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from zstream.clients._group import TP, Coordinator, Membership, Work, committed_offsets
from zstream.clients._protocol import GroupHeartbeatRequest, Reply, RequestArgs


def _member() -> Membership:
    return Membership("g", ["b", "a", "a"], session_timeout_ms=6000)


def test_the_first_heartbeat_joins_with_topics_then_only_reports_owned() -> None:
    m = _member()
    join = m.heartbeat()
    assert (join.group, join.topics, join.owned, join.session_timeout_ms) == (
        "g",
        ["a", "b"],
        {},
        6000,
    )
    assert m.heartbeat_interval_ms == 1000  # min(1000, 6000 // 3) until the reply says
    work = m.on_reply(
        {"member_epoch": 3, "heartbeat_interval_ms": 200, "assignment": {"a": [1, 0]}}
    )
    # Newly assigned partitions are claimed first, not read yet.
    assert work == Work(frozenset(), frozenset(), claimed=frozenset({("a", 0), ("a", 1)}))
    assert work.changes_owned
    assert (m.member_epoch, m.heartbeat_interval_ms) == (3, 200)
    claim = m.heartbeat()
    assert claim.topics is None
    assert claim.owned == {"a": [0, 1]}
    work = m.on_reply({"assignment": {"a": [0, 1]}})
    assert work == Work(frozenset(), frozenset({("a", 0), ("a", 1)}))
    assert not work.changes_owned
    m.taken(work.take)
    assert m.consumed == {("a", 0), ("a", 1)}
    assert m.heartbeat().owned == {"a": [0, 1]}


def _consuming(m: Membership, assignment: dict[str, list[int]]) -> None:
    """Claim and take ``assignment``, as the coordinator does over two round trips."""
    m.heartbeat()
    m.on_reply({"assignment": assignment})
    m.heartbeat()
    m.taken(m.on_reply({"assignment": assignment}).take)


def test_a_reply_without_an_owned_partition_releases_it() -> None:
    m = _member()
    _consuming(m, {"a": [0, 1], "b": [0]})
    m.heartbeat()
    work = m.on_reply({"assignment": {"a": [1], "b": [0, 1]}})
    assert work == Work(frozenset({("a", 0)}), frozenset(), claimed=frozenset({("b", 1)}))
    m.released(work.release)
    assert m.heartbeat().owned == {"a": [1], "b": [0, 1]}
    assert m.consumed == {("a", 1), ("b", 0)}


def test_a_claim_is_read_only_once_the_reply_to_the_claiming_heartbeat_assigns_it() -> None:
    """Regression: readers started on the reply that first assigned a partition, before
    the controller knew (from ``owned``) that this member reads it, so it could hand
    the partition to a joining member meanwhile: two members read it at once."""
    m = _member()
    m.heartbeat()  # the join
    first = m.on_reply({"assignment": {"a": [0, 1]}})
    assert first.take == frozenset()
    assert m.consumed == frozenset()
    claim = m.heartbeat()
    assert claim.owned == {"a": [0, 1]}
    # Meanwhile another member claimed a/1 first: the controller leaves it out.
    work = m.on_reply({"assignment": {"a": [0]}})
    assert work == Work(frozenset(), frozenset({("a", 0)}), dropped=frozenset({("a", 1)}))
    assert work.changes_owned  # tell the controller at once that a/1 is not ours
    m.taken(work.take)
    assert m.consumed == {("a", 0)}
    assert m.heartbeat().owned == {"a": [0]}


def test_a_claim_made_after_the_heartbeat_was_sent_is_not_taken_by_its_reply() -> None:
    m = _member()
    m.heartbeat()
    m.on_reply({"assignment": {"a": [0]}})  # claims a/0 ...
    m.heartbeat()  # ... and reports it
    m.taken(m.on_reply({"assignment": {"a": [0]}}).take)
    m.claimed.add(("a", 1))  # a claim the in-flight heartbeat below does not carry
    m.owned.add(("a", 1))
    in_flight = m.heartbeat()
    m.claimed.add(("a", 2))
    m.owned.add(("a", 2))
    assert in_flight.owned == {"a": [0, 1]}
    work = m.on_reply({"assignment": {"a": [0, 1, 2]}})
    assert work.take == {("a", 1)}  # a/2 waits for a heartbeat that carries it
    assert ("a", 2) in m.claimed


def test_a_failed_take_stays_claimed_and_is_taken_by_a_later_reply() -> None:
    m = _member()
    m.heartbeat()
    m.on_reply({"assignment": {"a": [0]}})
    m.heartbeat()
    assert m.on_reply({"assignment": {"a": [0]}}).take == {("a", 0)}
    # The coordinator could not fetch the committed offsets: no taken() call.
    assert m.heartbeat().owned == {"a": [0]}
    assert m.on_reply({"assignment": {"a": [0]}}).take == {("a", 0)}


def test_a_new_subscription_is_sent_until_acknowledged() -> None:
    m = _member()
    m.on_reply({"assignment": {}})
    m.subscribe(["c"])
    assert m.heartbeat().topics == ["c"]
    assert m.heartbeat().topics == ["c"]  # a lost reply: send it again
    m.on_reply({"assignment": {}})
    assert m.heartbeat().topics is None


def test_a_subscription_changed_while_a_heartbeat_is_in_flight_is_still_sent() -> None:
    """Regression: the reply to a heartbeat sent before `subscribe` marked the new
    topics acknowledged, so the controller never heard of them."""
    m = _member()
    m.heartbeat()
    m.on_reply({"assignment": {}})  # joined with a, b
    in_flight = m.heartbeat()
    assert in_flight.topics is None
    m.subscribe(["a", "b", "c"])
    m.on_reply({"assignment": {}})  # the reply to the heartbeat without c
    assert m.heartbeat().topics == ["a", "b", "c"]
    m.on_reply({"assignment": {}})
    assert m.heartbeat().topics is None


def test_a_subscription_changed_back_while_in_flight_is_sent_again() -> None:
    m = _member()
    m.heartbeat()
    m.on_reply({"assignment": {}})
    m.subscribe(["c"])
    assert m.heartbeat().topics == ["c"]  # in flight ...
    m.subscribe(["a", "b"])  # ... and changed back before its reply
    m.on_reply({"assignment": {}})  # the controller holds ["c"] now
    assert m.heartbeat().topics == ["a", "b"]


def test_lost_membership_drops_everything_and_joins_under_a_fresh_id() -> None:
    m = _member()
    _consuming(m, {"a": [0]})
    m.heartbeat()
    m.on_reply({"member_epoch": 4, "assignment": {"a": [0], "b": [0]}})  # b/0 claimed
    old = m.member_id
    assert m.lost() == frozenset({("a", 0)})  # the claim was never read: not lost
    join = m.heartbeat()
    assert join.member_id != old
    assert (join.topics, join.owned, m.member_epoch) == (["a", "b"], {}, -1)


def test_leave_carries_the_subscription_and_the_leave_flag() -> None:
    m = _member()
    m.on_reply({"assignment": {}})
    leave = m.heartbeat(leave=True)
    assert leave.leave
    assert leave.topics == ["a", "b"]


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(["assignment", "member_epoch", "offsets", "x"]), _values))
def test_any_reply_shape_is_read_without_raising(result: dict[str, Any]) -> None:
    m = _member()
    m.heartbeat()
    work = m.on_reply(result)
    assert all(isinstance(t, str) and p >= 0 for t, p in work.claimed)
    assert not work.take
    assert m.claimed == work.claimed == m.owned
    assert all(off >= 0 for off in committed_offsets(result).values())


class _SwallowingHost:
    """on_assign that swallows a cancellation, as Python 3.11's asyncio.wait_for does
    when the awaited reply arrives just as the task is cancelled."""

    def __init__(self) -> None:
        self.assigning = asyncio.Event()

    def group_take(self, offsets: Mapping[TP, int | None]) -> None:
        pass

    async def group_release(self, tps: frozenset[TP], *, lost: bool) -> None:
        pass

    async def group_assigned(self, tps: frozenset[TP]) -> None:
        self.assigning.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)


async def test_close_ends_the_coordinator_even_when_its_cancellation_is_swallowed() -> None:
    """Regression: a cancellation swallowed inside the heartbeat loop (Python 3.11's
    wait_for does so when a reply coincides with it) left the loop running forever,
    and Consumer.close() hung waiting for it."""
    calls: list[RequestArgs] = []

    async def call(args: RequestArgs) -> Reply:
        calls.append(args)
        return Reply(0, result={"assignment": {"a": [0]}, "heartbeat_interval_ms": 10})

    host = _SwallowingHost()
    coordinator = Coordinator(_member(), call, host)
    coordinator.start()
    await asyncio.wait_for(host.assigning.wait(), 5)
    await asyncio.wait_for(coordinator.close(leave=True), 5)
    assert coordinator.closed
    last = calls[-1]
    assert isinstance(last, GroupHeartbeatRequest)
    assert last.leave
