"""Consumer groups in the controller state machine: the assignor, the release-
before-reassign rule, fencing of commits, expiry, topic changes, snapshots."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import msgpack
import pytest

import zstream.broker._controller as controller_module
from tests.unit.broker.test_controller import Log
from zstream.broker._controller import (
    ControllerState,
    commit_offsets_command,
    create_topic_command,
    delete_topic_command,
    expire_offsets_command,
    group_delete_command,
    group_expire_command,
    group_join_or_update_command,
    group_leave_command,
    heartbeat_interval_ms,
    register_broker_command,
)
from zstream.broker._groups import Sessions
from zstream.clients import (
    FencedMemberError,
    GroupNotEmptyError,
    InvalidRequestError,
    UnknownGroupError,
    UnknownMemberError,
    UnknownPartitionError,
    UnknownTopicError,
)

TP = tuple[str, int]


def _cluster(**topics: int) -> Log:
    log = Log()
    log.apply(register_broker_command(1, "tcp://h:1", "tcp://h:2"))
    for name, count in topics.items():
        log.apply(create_topic_command(name, count, 1, {}, [1]))
    return log


def _join(
    log: Log,
    member: str,
    topics: list[str] | None,
    owned: set[TP] = frozenset(),  # type: ignore[assignment]
    group: str = "g",
    timeout_ms: int = 6000,
) -> Any:
    return log.apply(group_join_or_update_command(group, member, topics, timeout_ms, owned))


def _target(log: Log, member: str, group: str = "g") -> set[TP]:
    return set(log.state.groups[group].members[member].target)


def _assigned(log: Log, member: str, group: str = "g") -> set[TP]:
    reply = log.state.heartbeat_reply(group, member)
    return {(t, p) for t, ps in reply["assignment"].items() for p in ps}


def _settle(log: Log, group: str = "g") -> None:
    """Every member heartbeats reporting what it may consume, until nothing changes
    (members release what left their assignment and take what is now free)."""
    for _ in range(10):
        before = copy.deepcopy(log.state.groups)
        for mid in sorted(log.state.groups[group].members):
            _join(log, mid, None, _assigned(log, mid, group), group)
        if log.state.groups == before:
            return
    raise AssertionError("the group did not settle")


def _counts(log: Log, group: str = "g") -> list[int]:
    return sorted(len(m.target) for m in log.state.groups[group].members.values())


def _assert_no_allowed_move(log: Log, group: str = "g") -> None:
    """No member holds 2+ more than one that could take one of its partitions."""
    members = log.state.groups[group].members.values()
    for x in members:
        for y in members:
            if len(x.target) - len(y.target) >= 2:
                assert not any(t in y.topics for t, _ in x.target), (x, y)


# -- the assignor -------------------------------------------------------------------------


def test_a_single_member_gets_everything_at_once() -> None:
    log = _cluster(t=4, u=2)
    reply = _join(log, "a", ["t", "u"])
    assert reply["assignment"] == {"t": [0, 1, 2, 3], "u": [0, 1]}
    assert reply["member_id"] == "a"
    assert reply["heartbeat_interval_ms"] == 1000
    assert reply["member_epoch"] == log.state.groups["g"].epoch


def test_assignments_are_balanced_and_disjoint() -> None:
    log = _cluster(t=10)
    for mid in "abc":
        _join(log, mid, ["t"])
        _settle(log)
    assert _counts(log) == [3, 3, 4]
    parts = [tp for mid in "abc" for tp in _assigned(log, mid)]
    assert sorted(parts) == [("t", p) for p in range(10)]


def test_a_join_moves_only_the_newcomers_share() -> None:
    log = _cluster(t=12)
    for mid in "abc":
        _join(log, mid, ["t"])
    _settle(log)
    before = {mid: _target(log, mid) for mid in "abc"}
    _join(log, "d", ["t"])
    after = {mid: _target(log, mid) for mid in "abcd"}
    assert len(after["d"]) == 3  # 12 / 4
    for mid in "abc":
        assert after[mid] <= before[mid]  # nobody gains, the old members only give
        assert len(before[mid] - after[mid]) == 1
    # Uneven: 7 partitions, 2 -> 3 members moves exactly floor(7/3) = 2.
    log = _cluster(t=7)
    _join(log, "a", ["t"])
    _join(log, "b", ["t"])
    old = _target(log, "a") | _target(log, "b")
    _join(log, "c", ["t"])
    assert len(_target(log, "c")) == 2
    assert len(old - _target(log, "a") - _target(log, "b")) == 2


def test_a_leave_moves_only_the_leavers_partitions() -> None:
    log = _cluster(t=11)
    for mid in "abcd":
        _join(log, mid, ["t"])
    _settle(log)
    before = {mid: _target(log, mid) for mid in "abcd"}
    log.apply(group_leave_command("g", "b"))
    for mid in "acd":
        assert _target(log, mid) >= before[mid]
    moved = set().union(*(_target(log, m) - before[m] for m in "acd"))
    assert moved == before["b"]
    assert _counts(log) in ([3, 4, 4], [4, 4, 3])


def test_heterogeneous_subscriptions() -> None:
    log = _cluster(t=4, u=2)
    _join(log, "a", ["t"])
    _join(log, "b", ["t", "u"])
    _join(log, "c", ["u"])
    targets = {mid: _target(log, mid) for mid in "abc"}
    assert all(t == "t" for t, _ in targets["a"])
    assert all(t == "u" for t, _ in targets["c"])
    every = [tp for ts in targets.values() for tp in ts]
    assert sorted(every) == [("t", 0), ("t", 1), ("t", 2), ("t", 3), ("u", 0), ("u", 1)]
    # a (t only) cannot take from c (u only): no move is possible that the rule allows.
    _assert_no_allowed_move(log)
    # A subscription change: b drops u, so u goes to c alone.
    _join(log, "b", ["t"], owned=_assigned(log, "b"))
    assert _target(log, "c") == {("u", 0), ("u", 1)}
    assert sorted(len(_target(log, m)) for m in "ab") == [2, 2]


def test_a_member_of_an_unknown_topic_gets_it_when_it_is_created() -> None:
    log = _cluster()
    assert _join(log, "a", ["later"])["assignment"] == {}
    log.apply(create_topic_command("later", 2, 1, {}, [1]))
    assert _assigned(log, "a") == {("later", 0), ("later", 1)}


# -- release before reassign ------------------------------------------------------------


def test_a_moved_partition_is_assigned_only_after_its_release() -> None:
    log = _cluster(t=2)
    _join(log, "a", ["t"])
    _join(log, "a", None, owned={("t", 0), ("t", 1)})
    reply = _join(log, "b", ["t"])
    moved = _target(log, "b")
    assert len(moved) == 1
    assert reply["assignment"] == {}  # a still owns it
    assert _assigned(log, "a") == {("t", 0), ("t", 1)} - moved
    desc = log.state.describe_group("g")
    b = next(m for m in desc["members"] if m["member_id"] == "b")
    assert b["assignment"] == {}
    assert b["target"] == {"t": [p for _, p in moved]}
    _join(log, "a", None, owned=_assigned(log, "a"))  # a releases it
    assert _assigned(log, "b") == moved


def test_member_epoch_grows_when_its_target_changes() -> None:
    log = _cluster(t=4)
    first = _join(log, "a", ["t"])["member_epoch"]
    _join(log, "b", ["t"])
    assert log.state.heartbeat_reply("g", "a")["member_epoch"] > first
    epoch_b = log.state.heartbeat_reply("g", "b")["member_epoch"]
    _join(log, "a", None, owned=_assigned(log, "a"))  # no target change
    assert log.state.heartbeat_reply("g", "b")["member_epoch"] == epoch_b


# -- heartbeats, leave, expiry ----------------------------------------------------------


def test_unknown_member_without_topics() -> None:
    log = _cluster(t=1)
    assert isinstance(_join(log, "ghost", None), UnknownMemberError)
    assert "g" not in log.state.groups
    with pytest.raises(UnknownMemberError):
        log.state.heartbeat_reply("g", "ghost")
    assert isinstance(log.apply(group_leave_command("g", "ghost")), UnknownMemberError)


def test_leave_and_expire_remove_the_member_and_empty_groups_vanish() -> None:
    log = _cluster(t=2)
    _join(log, "a", ["t"])
    _join(log, "b", ["t"])
    assert log.state.list_groups() == ["g"]
    assert log.apply(group_expire_command("g", "a")) is None
    assert _target(log, "b") == {("t", 0), ("t", 1)}
    assert isinstance(log.apply(group_expire_command("g", "a")), UnknownMemberError)
    log.apply(group_leave_command("g", "b"))
    assert log.state.list_groups() == []
    with pytest.raises(UnknownGroupError):
        log.state.describe_group("g")


def test_heartbeat_changes_nothing_is_the_fast_path_test() -> None:
    log = _cluster(t=2)
    _join(log, "a", ["t"], timeout_ms=3000)
    owned = _assigned(log, "a")
    state = log.state
    assert state.heartbeat_changes_nothing("g", "a", None, 3000, set())
    assert not state.heartbeat_changes_nothing("g", "a", None, 3000, owned)
    _join(log, "a", None, owned=owned, timeout_ms=3000)
    assert state.heartbeat_changes_nothing("g", "a", None, 3000, owned)
    assert state.heartbeat_changes_nothing("g", "a", ["t", "t"], 3000, owned)
    # A partition that does not exist is not state: reporting it changes nothing.
    assert state.heartbeat_changes_nothing("g", "a", None, 3000, owned | {("gone", 0)})
    assert not state.heartbeat_changes_nothing("g", "a", ["t", "u"], 3000, owned)
    assert not state.heartbeat_changes_nothing("g", "a", None, 4000, owned)
    assert not state.heartbeat_changes_nothing("g", "b", ["t"], 3000, set())
    assert heartbeat_interval_ms(3000) == 1000
    assert heartbeat_interval_ms(900) == 300
    assert state.members() == [("g", "a", 3000)]


# -- commits ----------------------------------------------------------------------------


def test_commits_are_fenced_to_what_the_member_owns() -> None:
    log = _cluster(t=2)
    _join(log, "a", ["t"])
    _join(log, "a", None, owned={("t", 0), ("t", 1)})
    _join(log, "b", ["t"])
    (moved,) = _target(log, "b")
    (kept,) = _target(log, "a")
    # a still owns the moved partition (not released yet): a may commit it, b may not.
    assert log.apply(commit_offsets_command("g", "a", [(*moved, 5), (*kept, 7)])) is None
    result = log.apply(commit_offsets_command("g", "b", [(*moved, 9)]))
    assert isinstance(result, FencedMemberError)
    # Nothing of a rejected commit is applied, even the allowed part.
    _join(log, "a", None, owned={kept})
    result = log.apply(commit_offsets_command("g", "a", [(*kept, 8), (*moved, 6)]))
    assert isinstance(result, FencedMemberError)
    assert log.state.fetch_offsets("g", None)["offsets"] == {
        "t": sorted([[moved[1], 5], [kept[1], 7]])
    }
    # Released by a, but b has not claimed it yet: b is not reading it, so no commit.
    result = log.apply(commit_offsets_command("g", "b", [(*moved, 9)]))
    assert isinstance(result, FencedMemberError)
    _join(log, "b", None, owned={moved})
    assert log.apply(commit_offsets_command("g", "b", [(*moved, 9)])) is None
    # Offsets may go backwards (seek, then commit).
    assert log.apply(commit_offsets_command("g", "b", [(*moved, 1)])) is None
    assert log.state.fetch_offsets("g", ["t"])["offsets"]["t"][moved[1]] == [moved[1], 1]
    result = log.apply(commit_offsets_command("g", "ghost", [(*moved, 1)]))
    assert isinstance(result, UnknownMemberError)
    result = log.apply(commit_offsets_command("nog", "ghost", [(*moved, 1)]))
    assert isinstance(result, UnknownMemberError)


def test_non_member_commits_only_into_a_group_without_members() -> None:
    log = _cluster(t=2)
    assert log.apply(commit_offsets_command("solo", "", [("t", 0, 3)])) is None
    assert log.state.list_groups() == ["solo"]
    assert log.state.fetch_offsets("solo", None) == {"offsets": {"t": [[0, 3]]}}
    assert log.state.fetch_offsets("nothing", None) == {"offsets": {}}
    assert log.state.fetch_offsets("solo", ["other"]) == {"offsets": {}}
    _join(log, "a", ["t"], group="solo")
    result = log.apply(commit_offsets_command("solo", "", [("t", 0, 4)]))
    assert isinstance(result, FencedMemberError)
    assert "has members" in str(result)
    # An empty commit creates no group.
    assert log.apply(commit_offsets_command("empty", "", [])) is None
    assert "empty" not in log.state.groups
    # A group left by its last member keeps its offsets.
    log.apply(group_leave_command("solo", "a"))
    assert log.state.describe_group("solo")["members"] == []


def test_group_delete_is_refused_while_members_remain_then_drops_the_offsets() -> None:
    log = _cluster(t=2)
    log.apply(commit_offsets_command("g", "", [("t", 0, 3), ("t", 1, 9)]))
    _join(log, "a", ["t"])
    before = log.state.snapshot()
    refused = log.apply(group_delete_command("g"))
    assert isinstance(refused, GroupNotEmptyError)
    assert "1 member" in str(refused)
    # Refused means nothing changed (beyond the applied index every entry moves).
    assert log.state.fetch_offsets("g", None) == {"offsets": {"t": [[0, 3], [1, 9]]}}
    assert set(log.state.groups["g"].members) == {"a"}
    assert ControllerState.restore(before).groups["g"].offsets == log.state.groups["g"].offsets
    log.apply(group_leave_command("g", "a"))
    assert log.apply(group_delete_command("g")) is None
    assert log.state.list_groups() == []
    assert log.state.fetch_offsets("g", None) == {"offsets": {}}
    # The snapshot no longer carries it: a replica restored from it agrees.
    assert "g" not in ControllerState.restore(log.state.snapshot()).groups
    assert isinstance(log.apply(group_delete_command("g")), UnknownGroupError)
    assert isinstance(log.apply(group_delete_command("never")), UnknownGroupError)


def test_commits_for_unknown_topics_or_partitions() -> None:
    log = _cluster(t=2)
    result = log.apply(commit_offsets_command("g", "", [("nope", 0, 1)]))
    assert isinstance(result, UnknownTopicError)
    result = log.apply(commit_offsets_command("g", "", [("t", 2, 1)]))
    assert isinstance(result, UnknownPartitionError)
    assert "g" not in log.state.groups


# -- topic changes ------------------------------------------------------------------------


def test_topic_delete_drops_partitions_and_offsets() -> None:
    log = _cluster(t=2, u=1)
    _join(log, "a", ["t", "u"])
    _join(log, "a", None, owned=_assigned(log, "a"))
    log.apply(commit_offsets_command("g", "a", [("t", 0, 4), ("u", 0, 2)]))
    log.apply(commit_offsets_command("other", "", [("t", 1, 4)]))
    log.apply(delete_topic_command("t"))
    assert _target(log, "a") == {("u", 0)}
    assert log.state.groups["g"].members["a"].owned == {("u", 0)}
    assert log.state.fetch_offsets("g", None) == {"offsets": {"u": [[0, 2]]}}
    assert "other" not in log.state.groups  # only had offsets of the deleted topic
    # Created again: the subscriber gets it (and no stale offsets come back).
    log.apply(create_topic_command("t", 3, 1, {}, [1]))
    assert _target(log, "a") == {("u", 0), ("t", 0), ("t", 1), ("t", 2)}
    assert log.state.fetch_offsets("g", ["t"]) == {"offsets": {}}


def test_topic_create_balances_across_members() -> None:
    log = _cluster()
    _join(log, "a", ["t"])
    _join(log, "b", ["t"])
    log.apply(create_topic_command("t", 5, 1, {}, [1]))
    assert _counts(log) == [2, 3]
    assert not _target(log, "a") & _target(log, "b")


# -- snapshots and determinism -------------------------------------------------------------


def _busy_log() -> Log:
    log = _cluster(t=5, u=3)
    _join(log, "a", ["t", "u"])
    _join(log, "a", None, owned=_assigned(log, "a"))
    _join(log, "b", ["t"])
    log.apply(commit_offsets_command("g", "a", [("t", 0, 10), ("u", 2, 3)]))
    log.apply(commit_offsets_command("h", "", [("u", 1, 7)]))
    return log


def test_snapshot_round_trip_with_groups() -> None:
    log = _busy_log()
    restored = ControllerState.restore(log.state.snapshot())
    assert restored.groups == log.state.groups
    assert restored.snapshot() == log.state.snapshot()
    assert restored.describe_group("g") == log.state.describe_group("g")
    # The restored state goes on exactly as the original.
    cmd = group_join_or_update_command("g", "c", ["u"], 6000, [])
    assert restored.apply(log.index + 1, cmd) == log.apply(cmd)
    assert restored.snapshot() == log.state.snapshot()


def test_a_version_1_snapshot_restores_with_no_groups() -> None:
    log = _busy_log()
    doc = msgpack.unpackb(log.state.snapshot(), raw=False)
    del doc["groups"]
    doc["v"] = 1
    restored = ControllerState.restore(msgpack.packb(doc, use_bin_type=True))
    assert restored.groups == {}
    assert restored.topics == log.state.topics
    assert restored.applied_index == log.state.applied_index


def test_two_replicas_agree() -> None:
    a, b = _busy_log(), _busy_log()
    assert a.state.snapshot() == b.state.snapshot()


def test_malformed_group_commands_are_rejected_as_results() -> None:
    log = _cluster(t=1)
    bad: list[dict[str, Any]] = [
        {"op": "group_join_or_update", "group": "g", "member_id": "a", "topics": ["t"]},
        {"op": "group_join_or_update", "group": "g", "member_id": "", "topics": ["t"],
         "session_timeout_ms": 6000},
        {"op": "group_join_or_update", "group": "g", "member_id": "a", "topics": "t",
         "session_timeout_ms": 6000},
        {"op": "group_join_or_update", "group": "g", "member_id": "a", "topics": ["t"],
         "session_timeout_ms": 10**9},
        {"op": "group_join_or_update", "group": "g", "member_id": "a", "topics": ["t"],
         "session_timeout_ms": 6000, "owned": [["t", -1]]},
        {"op": "group_join_or_update", "group": "g", "member_id": "a", "topics": ["t"],
         "session_timeout_ms": 6000, "owned": [["t", True]]},
        {"op": "group_leave", "group": "", "member_id": "a"},
        {"op": "group_expire", "group": 3, "member_id": "a"},
        {"op": "commit_offsets", "group": "g", "member_id": "", "offsets": [["t", 0]]},
        {"op": "commit_offsets", "group": "g", "member_id": "", "offsets": {"t": 1}},
        {"op": "commit_offsets", "group": "g", "member_id": 5, "offsets": []},
        {"op": "group_delete"},
        {"op": "group_delete", "group": "a/b"},
    ]  # fmt: skip
    for cmd in bad:
        result = log.apply(msgpack.packb(cmd, use_bin_type=True))
        assert isinstance(result, InvalidRequestError), cmd
    assert log.state.groups == {}


def test_counts_stay_within_one_when_members_churn() -> None:
    log = _cluster(t=9, u=4)
    for mid in "abcde":
        _join(log, mid, ["t", "u"])
    log.apply(group_leave_command("g", "c"))
    _join(log, "f", ["u", "t"])
    log.apply(group_expire_command("g", "a"))
    counts = _counts(log)
    assert max(counts) - min(counts) <= 1
    every = Counter(tp for m in log.state.groups["g"].members.values() for tp in m.target)
    assert set(every.values()) == {1}
    assert len(every) == 13


# -- session clocks (the controller leader's, not replicated) ---------------------------


def test_sessions_expire_silent_members_and_restart_clocks_in_a_new_term() -> None:
    sessions = Sessions()
    members = [("g", "a", 1000), ("g", "b", 3000)]
    sessions.touch("g", "a", term=2, now=99.5)
    assert sessions.expired(members, term=2, now=100.0) == []  # b's clock starts now
    sessions.touch("g", "a", term=2, now=100.9)
    assert sessions.expired(members, term=2, now=101.5) == []
    assert sessions.expired(members, term=2, now=102.0) == [("g", "a")]
    assert sessions.expired(members, term=2, now=103.5) == [("g", "a"), ("g", "b")]
    # A new term: nobody is blamed for the election's silence.
    assert sessions.expired(members, term=3, now=110.0) == []
    assert sessions.expired(members, term=3, now=110.9) == []
    sessions.forget("g", "a")  # forgotten: its clock starts again when next seen
    assert sessions.expired(members, term=3, now=111.5) == []
    assert sessions.expired(members, term=3, now=112.6) == [("g", "a")]
    sessions.touch("g", "a", term=3, now=112.7)
    assert sessions.expired(members, term=4, now=150.0) == []  # a clock of term 3
    sessions.reset()
    assert sessions.expired(members[1:], term=4, now=200.0) == []
    assert sessions.expired(members[1:], term=4, now=203.1) == [("g", "b")]
    assert sessions.expired([], term=4, now=203.2) == []  # gone members are forgotten
    assert sessions.expired(members[1:], term=4, now=204.0) == []


def test_group_size_and_count_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "MAX_GROUP_MEMBERS", 2)
    monkeypatch.setattr(controller_module, "MAX_GROUPS", 2)
    log = _cluster(t=2)
    _join(log, "a", ["t"])
    _join(log, "b", ["t"])
    full = _join(log, "c", ["t"])
    assert isinstance(full, InvalidRequestError)
    assert "at most 2 members" in str(full)
    assert sorted(log.state.groups["g"].members) == ["a", "b"]
    _join(log, "a", ["t"], group="g2")
    too_many = _join(log, "a", ["t"], group="g3")
    assert isinstance(too_many, InvalidRequestError)
    offsets_only = log.apply(commit_offsets_command("g4", "", [("t", 0, 1)]))
    assert isinstance(offsets_only, InvalidRequestError)
    assert sorted(log.state.groups) == ["g", "g2"]


def test_offsets_of_an_idle_group_expire_after_the_retention() -> None:
    log = _cluster(t=2)
    _join(log, "a", ["t"], owned={("t", 0), ("t", 1)})
    assert log.apply(commit_offsets_command("g", "a", [("t", 0, 5)], now_ms=1_000)) is None
    assert log.apply(commit_offsets_command("idle", "", [("t", 1, 3)], now_ms=1_000)) is None
    # A group with members keeps its offsets however old they are.
    assert log.apply(expire_offsets_command(now_ms=10_000, retention_ms=100)) == ["idle"]
    assert sorted(log.state.groups) == ["g"]
    assert log.apply(group_leave_command("g", "a", now_ms=20_000)) is None
    assert not log.state.expired_offsets(20_050, 100)
    assert log.apply(expire_offsets_command(now_ms=20_050, retention_ms=100)) == []
    assert log.state.fetch_offsets("g", None) == {"offsets": {"t": [[0, 5]]}}
    assert log.state.expired_offsets(20_101, 100)
    assert log.apply(expire_offsets_command(now_ms=20_101, retention_ms=100)) == ["g"]
    assert log.state.groups == {}


def test_an_older_snapshot_starts_the_offsets_clock_at_the_first_retention_pass() -> None:
    log = _cluster(t=1)
    assert log.apply(commit_offsets_command("old", "", [("t", 0, 3)])) is None  # no now_ms
    doc = msgpack.unpackb(log.state.snapshot())
    doc["v"] = 2
    doc["groups"] = [g[:4] for g in doc["groups"]]  # version 2 had no active_ms
    state = ControllerState.restore(msgpack.packb(doc))
    assert state.groups["old"].active_ms == 0
    assert state.apply(state.applied_index + 1, expire_offsets_command(5_000, 100)) == []
    assert state.groups["old"].active_ms == 5_000
    assert state.apply(state.applied_index + 1, expire_offsets_command(5_101, 100)) == ["old"]
