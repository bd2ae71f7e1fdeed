"""Reassignment: the walk-towards-target decision (pure), the controller's
reassign/complete commands and snapshots, and the leader's report codec."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.broker.test_controller import Log, _cluster
from zstream.broker._controller import (
    MAX_MOVES_PER_BROKER,
    ControllerState,
    PartitionAssignment,
    TopicRecord,
    add_partitions_command,
    alter_topic_configs_command,
    complete_reassignment_command,
    create_topic_command,
    decommission_broker_command,
    group_join_or_update_command,
    reassign_partition_command,
    register_broker_command,
    remove_broker_command,
)
from zstream.broker._reassign import (
    Reached,
    ReassignedReport,
    Transfer,
    decode_report,
    encode_report,
    next_step,
)
from zstream.clients import (
    InvalidRequestError,
    UnavailableError,
    UnknownPartitionError,
    UnknownTopicError,
)
from zstream.replication import ConfChange, ConfChangeType, ConfState
from zstream.replication._confchange import apply_change

ADD_VOTER, ADD_LEARNER, REMOVE = (
    ConfChangeType.ADD_VOTER,
    ConfChangeType.ADD_LEARNER,
    ConfChangeType.REMOVE_NODE,
)


def _conf(
    voters: set[int], learners: frozenset[int] = frozenset(), outgoing: frozenset[int] = frozenset()
) -> ConfState:
    return ConfState(frozenset(voters), learners, outgoing)


# -- next_step --------------------------------------------------------------------------


def test_new_replicas_join_as_learners_first() -> None:
    step = next_step(_conf({1, 2, 3}), 1, frozenset({1, 2, 4}), {2: 10, 3: 10}, 10, 0)
    assert step == ConfChange(((ADD_LEARNER, 4),))


def test_a_learner_behind_the_commit_index_is_waited_for() -> None:
    conf = _conf({1, 2, 3}, frozenset({4}))
    assert next_step(conf, 1, frozenset({1, 2, 4}), {4: 5}, 100, 10) is None
    # Within the allowed lag: promoted and the old voter removed in one joint change.
    step = next_step(conf, 1, frozenset({1, 2, 4}), {4: 95}, 100, 10)
    assert step == ConfChange(((ADD_VOTER, 4), (REMOVE, 3)))


def test_a_joint_configuration_is_left_alone() -> None:
    conf = _conf({1, 2, 4}, outgoing=frozenset({1, 2, 3}))
    assert next_step(conf, 1, frozenset({1, 2, 4}), {}, 10, 0) is None


def test_the_target_reached_is_reported() -> None:
    assert next_step(_conf({1, 2, 4}), 1, frozenset({1, 2, 4}), {}, 10, 0) == Reached()


def test_a_leader_being_removed_promotes_then_hands_over_first() -> None:
    target = frozenset({2, 3, 4})
    step = next_step(_conf({1, 2, 3}, frozenset({4})), 1, target, {4: 10}, 10, 0)
    assert step == ConfChange(((ADD_VOTER, 4),))  # promote only: nobody removed yet
    caught_up = {2: 10, 3: 10, 4: 10}
    assert next_step(_conf({1, 2, 3, 4}), 1, target, caught_up, 10, 0) == Transfer(2)
    # A lagging transferee is skipped.
    assert next_step(_conf({1, 2, 3, 4}), 1, target, {2: 1, 3: 10, 4: 10}, 10, 0) == Transfer(3)
    # The new leader (2) removes the old one.
    step = next_step(_conf({1, 2, 3, 4}), 2, target, {1: 10, 3: 10, 4: 10}, 10, 0)
    assert step == ConfChange(((REMOVE, 1),))


def test_stale_learners_of_an_older_walk_are_removed() -> None:
    step = next_step(_conf({1, 2, 3}, frozenset({5})), 1, frozenset({1, 2, 4}), {}, 10, 0)
    assert step == ConfChange(((REMOVE, 5),))


def test_shrinking_and_growing_the_replica_set() -> None:
    assert next_step(_conf({1, 2, 3}), 1, frozenset({1}), {}, 10, 0) == ConfChange(
        ((REMOVE, 2), (REMOVE, 3))
    )
    step = next_step(_conf({1}, frozenset({2, 3})), 1, frozenset({1, 2, 3}), {2: 10, 3: 10}, 10, 0)
    assert step == ConfChange(((ADD_VOTER, 2), (ADD_VOTER, 3)))


def _leave(conf: ConfState) -> ConfState:
    return apply_change(conf, ConfChange(())) if conf.joint else conf


@given(
    st.sets(st.integers(1, 6), min_size=1, max_size=4),
    st.sets(st.integers(1, 6), min_size=1, max_size=4),
    st.data(),
)
def test_walking_always_reaches_the_target_and_keeps_a_majority(
    start: set[int], target_set: set[int], data: st.DataObject
) -> None:
    """From any configuration, following next_step (with every member caught up, the
    leader a voter) reaches exactly the target; no step removes a voter without a
    joint configuration, and the leader never removes itself."""
    target = frozenset(target_set)
    conf = _conf(start)
    leader = data.draw(st.sampled_from(sorted(start)))
    for _ in range(12):
        matches = dict.fromkeys(conf.members(), 10)
        step = next_step(conf, leader, target, matches, 10, 0)
        if step == Reached():
            assert conf.voters == target
            assert not conf.learners
            assert not conf.joint
            return
        if isinstance(step, Transfer):
            assert step.to in target
            assert step.to in conf.voters
            leader = step.to
            continue
        assert isinstance(step, ConfChange)
        removed = {n for t, n in step.changes if t == REMOVE}
        assert leader not in removed
        new = apply_change(conf, step)
        if removed & conf.voters:
            assert new.joint  # voters only ever leave through a joint configuration
        conf = _leave(new)
    pytest.fail(f"no target after 12 steps: {conf} towards {sorted(target)}")


# -- the controller's commands -----------------------------------------------------------


def _topic(n_brokers: int = 4) -> Log:
    log = _cluster(n_brokers)
    log.apply(create_topic_command("t", 2, 3, {}, [1, 2, 3]))
    return log


def _part(log: Log, p: int = 0) -> PartitionAssignment:
    return log.state.topics["t"].partitions[p]


def test_reassign_records_a_target_then_completion_makes_it_the_replicas() -> None:
    log = _topic()
    before = _part(log)
    new = (*before.replicas[:2], 4)
    result = log.apply(reassign_partition_command("t", 0, new, [1, 2, 3, 4]))
    assert isinstance(result, PartitionAssignment)
    assert result.target == new
    assert _part(log).replicas == before.replicas  # nothing moved yet
    assert any(p.partition == 0 for _, p in log.state.partitions_of(4))  # 4 opens it
    assert log.state.reassignments()[0]["adding"] == [4]
    # Asking again is a no-op; another target meanwhile is refused.
    assert log.apply(reassign_partition_command("t", 0, new, [1, 2, 3, 4])) == result
    other = log.apply(reassign_partition_command("t", 0, (1, 2, 3), [1, 2, 3, 4]))
    assert isinstance(other, InvalidRequestError)
    assert "already being reassigned" in str(other)
    # A stale report (wrong voters) changes nothing.
    stale = log.apply(complete_reassignment_command("t", 0, before.group_id, before.replicas))
    assert isinstance(stale, InvalidRequestError)
    done = log.apply(complete_reassignment_command("t", 0, before.group_id, new))
    assert isinstance(done, PartitionAssignment)
    assert _part(log).replicas == new
    assert _part(log).target == ()
    assert log.state.reassignments() == []
    removed = next(b for b in before.replicas if b not in new)
    assert all(p.group_id != before.group_id for _, p in log.state.partitions_of(removed))


def test_reassign_validates_brokers() -> None:
    log = _topic()
    cases = [
        ((1, 1, 2), InvalidRequestError, "twice"),
        ((1, 2, 9), InvalidRequestError, "unknown broker"),
        ((), InvalidRequestError, "non-empty"),
        ((1, 2, 4), UnavailableError, "not live"),
    ]
    for replicas, error, fragment in cases:
        result = log.apply(reassign_partition_command("t", 0, replicas, [1, 2, 3]))
        assert isinstance(result, error), replicas
        assert fragment in str(result)
    missing = log.apply(reassign_partition_command("t", 7, (1,), [1, 2, 3, 4]))
    assert isinstance(missing, UnknownPartitionError)


def test_same_brokers_only_reorder_the_preferred_leader() -> None:
    log = _topic()
    flipped = tuple(reversed(_part(log).replicas))
    result = log.apply(reassign_partition_command("t", 0, flipped, [1, 2, 3]))
    assert isinstance(result, PartitionAssignment)
    assert result.replicas == flipped
    assert result.target == ()


def test_moves_into_one_broker_are_bounded() -> None:
    log = _cluster(4)
    log.apply(create_topic_command("t", MAX_MOVES_PER_BROKER + 1, 1, {}, [1]))
    for p in range(MAX_MOVES_PER_BROKER):
        assert isinstance(
            log.apply(reassign_partition_command("t", p, (4,), [1, 4])), PartitionAssignment
        )
    busy = log.apply(reassign_partition_command("t", MAX_MOVES_PER_BROKER, (4,), [1, 4]))
    assert isinstance(busy, UnavailableError)
    assert "retry" in str(busy)


def test_targets_survive_a_snapshot_and_old_snapshots_restore() -> None:
    log = _topic()
    log.apply(reassign_partition_command("t", 1, (1, 2, 4), [1, 2, 3, 4]))
    restored = ControllerState.restore(log.state.snapshot())
    assert restored.topics == log.state.topics
    assert restored.snapshot() == log.state.snapshot()
    # A version 3 snapshot: partitions as [partition, group_id, replicas].
    doc = msgpack.unpackb(log.state.snapshot(), raw=False)
    doc["v"] = 3
    for topic in doc["topics"]:
        topic[2] = [row[:3] for row in topic[2]]
    old = ControllerState.restore(msgpack.packb(doc, use_bin_type=True))
    assert all(not p.target for t in old.topics.values() for p in t.partitions)
    assert old.topics["t"].partitions[1].replicas == _part(log, 1).replicas


# -- the leader's report ------------------------------------------------------------------


def test_report_round_trip() -> None:
    report = ReassignedReport("t", 3, 17, (1, 2, 4))
    assert decode_report(encode_report(report)) == report


@given(st.binary(max_size=300))
def test_fuzz_report_decoder_raises_only_invalid_request(data: bytes) -> None:
    with contextlib.suppress(InvalidRequestError):
        decode_report(data)


_values = st.one_of(
    st.none(),
    st.integers(-3, 2**64 - 1),
    st.text(max_size=4),
    st.lists(st.integers(-1, 3), max_size=3),
)


@given(
    st.dictionaries(st.sampled_from(["op", "topic", "partition", "group_id", "voters"]), _values)
)
def test_fuzz_structured_reports(doc: dict[str, object]) -> None:
    doc.setdefault("op", "reassigned")
    with contextlib.suppress(InvalidRequestError):
        decode_report(msgpack.packb(doc, use_bin_type=True))


def test_dead_members_are_neither_promoted_nor_handed_leadership() -> None:
    target = frozenset({1, 2, 4})
    conf = _conf({1, 2, 3}, frozenset({4}))
    assert next_step(conf, 1, target, {4: 10}, 10, 0, down=frozenset({4})) is None
    # The leader (3) is leaving; voter 1 is caught up on paper but dead: hand to 2.
    four = _conf({1, 2, 3, 4})
    matches = {1: 10, 2: 10, 4: 10}
    assert next_step(four, 3, target, matches, 10, 0, down=frozenset({1})) == Transfer(2)


# -- decommission -------------------------------------------------------------------------


def test_decommission_moves_replicas_off_then_removes_the_broker_for_good() -> None:
    log = _topic()  # 2 partitions on brokers 1-3, broker 4 idle
    assert log.apply(decommission_broker_command(3)) == [3]
    assert not log.state.placeable(3)
    moves = log.state.decommission_moves([1, 2, 3, 4])
    assert [(t, p, o) for t, p, _, o in moves] == [("t", 0, False), ("t", 1, False)]
    for _, p, replicas, _ in moves:
        assert 3 not in replicas
        assert replicas[-1] == 4  # the idle broker takes the place
        assert [b for b in _part(log, p).replicas if b != 3] == list(replicas[:2])
    # Still holding replicas: not removable yet.
    early = log.apply(remove_broker_command(3))
    assert isinstance(early, UnavailableError)
    for topic, p, replicas, _ in moves:
        log.apply(reassign_partition_command(topic, p, replicas, [1, 2, 3, 4]))
        group_id = _part(log, p).group_id
        log.apply(complete_reassignment_command(topic, p, group_id, replicas))
    assert log.state.decommission_moves([1, 2, 3, 4]) == []
    assert log.apply(remove_broker_command(3)) == 3
    assert 3 in log.state.removed
    assert 3 not in log.state.brokers
    refused = log.apply(register_broker_command(3, "tcp://h:1", "tcp://h:2"))
    assert isinstance(refused, InvalidRequestError)
    assert "may not join again" in str(refused)
    # New topics avoid it; the state survives a snapshot.
    restored = ControllerState.restore(log.state.snapshot())
    assert restored.removed == {3}
    assert restored.snapshot() == log.state.snapshot()


def test_decommission_is_refused_when_the_rest_cannot_hold_a_partition() -> None:
    log = _cluster(3)
    log.apply(create_topic_command("t", 1, 3, {}, [1, 2, 3]))
    refused = log.apply(decommission_broker_command(2))
    assert isinstance(refused, UnavailableError)
    assert "cannot leave" in str(refused)
    assert isinstance(log.apply(decommission_broker_command(9)), InvalidRequestError)


def test_dead_brokers_are_replaced_only_when_enough_live_brokers_remain() -> None:
    log = _topic()  # partitions on 1-3, broker 4 idle
    moves = log.state.replacement_moves({2}, [1, 3, 4])
    assert [sorted(r) for _, _, r, _ in moves] == [[1, 3, 4], [1, 3, 4]]
    # Only three brokers alive counting the dead one's peers: 1 and 3 cannot hold RF 3.
    assert log.state.replacement_moves({2}, [1, 3]) == []
    # The dead broker is never its own replacement, even if listed live.
    assert all(2 not in r for _, _, r, _ in log.state.replacement_moves({2}, [1, 2, 3, 4]))


def test_a_move_towards_a_broker_that_died_is_retargeted() -> None:
    log = _cluster(5)
    log.apply(create_topic_command("t", 1, 3, {}, [1, 2, 3]))
    log.apply(reassign_partition_command("t", 0, (1, 2, 4), [1, 2, 3, 4, 5]))
    ((topic, p, replicas, override),) = log.state.replacement_moves({4}, [1, 2, 3, 5])
    assert override
    assert replicas == (1, 2, 5)
    # Without override another target is refused; with it the target is replaced.
    plain = log.apply(reassign_partition_command(topic, p, replicas, [1, 2, 3, 5]))
    assert isinstance(plain, InvalidRequestError)
    moved = log.apply(reassign_partition_command(topic, p, replicas, [1, 2, 3, 5], override=True))
    assert isinstance(moved, PartitionAssignment)
    assert moved.target == (1, 2, 5)
    # A decommissioning broker takes no new replica.
    log.apply(decommission_broker_command(3))
    other = log.apply(create_topic_command("u", 1, 1, {}, [1]))
    assert isinstance(other, TopicRecord)
    refused = log.apply(reassign_partition_command("u", 0, (3,), [1, 2, 3, 5]))
    assert isinstance(refused, InvalidRequestError)


# -- topic configs --------------------------------------------------------------------------


def test_alter_topic_configs_merges_validated_settings() -> None:
    log = _cluster(1)
    log.apply(create_topic_command("t", 1, 1, {"retention_ms": 5}, [1]))
    topic = log.apply(alter_topic_configs_command("t", {"retention_bytes": 1000}))
    assert isinstance(topic, TopicRecord)
    assert dict(topic.configs) == {"retention_ms": 5, "retention_bytes": 1000}
    assert log.state.topics["t"].configs == topic.configs
    for bad, error in (
        ({"nope": 1}, InvalidRequestError),
        ({"segment_bytes": 10}, InvalidRequestError),
        ({}, InvalidRequestError),
    ):
        assert isinstance(log.apply(alter_topic_configs_command("t", bad)), error), bad
    assert isinstance(
        log.apply(alter_topic_configs_command("u", {"retention_ms": 1})), UnknownTopicError
    )
    assert dict(log.state.topics["t"].configs) == {"retention_ms": 5, "retention_bytes": 1000}


def test_add_partitions_places_them_and_reassigns_subscribed_groups() -> None:
    log = _cluster(3)
    log.apply(create_topic_command("t", 2, 2, {}, [1, 2, 3]))
    log.apply(group_join_or_update_command("g", "m1", ["t"], 10_000, []))
    ids = [p.group_id for p in log.state.topics["t"].partitions]
    topic = log.apply(add_partitions_command("t", 5, [1, 2, 3]))
    assert isinstance(topic, TopicRecord)
    parts = topic.partitions
    assert [p.partition for p in parts] == [0, 1, 2, 3, 4]
    assert [p.group_id for p in parts[:2]] == ids  # the old ones untouched
    assert len({p.group_id for p in parts}) == 5
    assert all(len(set(p.replicas)) == 2 for p in parts)
    target = log.state.groups["g"].members["m1"].target
    assert {p for t, p in target if t == "t"} == {0, 1, 2, 3, 4}
    for count, error in ((5, InvalidRequestError), (3, InvalidRequestError)):
        assert isinstance(log.apply(add_partitions_command("t", count, [1, 2, 3])), error)
    assert isinstance(log.apply(add_partitions_command("t", 6, [1])), UnavailableError)
    assert isinstance(log.apply(add_partitions_command("u", 6, [1, 2, 3])), UnknownTopicError)
