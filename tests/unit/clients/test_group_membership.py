"""The member's state machine alone (clients._group.Membership): no I/O, no clock."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from clients._group import Membership, Work, committed_offsets


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
    assert work == Work(frozenset(), frozenset({("a", 0), ("a", 1)}))
    assert (m.member_epoch, m.heartbeat_interval_ms) == (3, 200)
    m.taken(work.take)
    beat = m.heartbeat()
    assert beat.topics is None
    assert beat.owned == {"a": [0, 1]}


def test_a_reply_without_an_owned_partition_releases_it() -> None:
    m = _member()
    m.on_reply({"assignment": {"a": [0, 1], "b": [0]}})
    m.taken([("a", 0), ("a", 1), ("b", 0)])
    work = m.on_reply({"assignment": {"a": [1], "b": [0, 1]}})
    assert work == Work(frozenset({("a", 0)}), frozenset({("b", 1)}))
    m.released(work.release)
    assert m.heartbeat().owned == {"a": [1], "b": [0]}


def test_a_new_subscription_is_sent_until_acknowledged() -> None:
    m = _member()
    m.on_reply({"assignment": {}})
    m.subscribe(["c"])
    assert m.heartbeat().topics == ["c"]
    assert m.heartbeat().topics == ["c"]  # a lost reply: send it again
    m.on_reply({"assignment": {}})
    assert m.heartbeat().topics is None


def test_lost_membership_drops_everything_and_joins_under_a_fresh_id() -> None:
    m = _member()
    m.on_reply({"member_epoch": 4, "assignment": {"a": [0]}})
    m.taken([("a", 0)])
    old = m.member_id
    assert m.lost() == frozenset({("a", 0)})
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
    work = m.on_reply(result)
    assert all(isinstance(t, str) and p >= 0 for t, p in work.take)
    assert all(off >= 0 for off in committed_offsets(result).values())
