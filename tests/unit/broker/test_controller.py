"""The controller state machine: placement, deterministic apply, snapshots."""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zstream.broker._controller import (
    BrokerRecord,
    ControllerState,
    TopicRecord,
    allocate_producer_id_command,
    create_topic_command,
    delete_topic_command,
    register_broker_command,
)
from zstream.clients import (
    InvalidRequestError,
    TopicExistsError,
    UnavailableError,
    UnknownTopicError,
    ZStreamError,
)


class Log:
    """Applies commands at consecutive indexes, as the Raft group would."""

    def __init__(self, state: ControllerState | None = None) -> None:
        self.state = state or ControllerState()
        self.index = self.state.applied_index

    def apply(self, command: bytes) -> object:
        self.index += 1
        return self.state.apply(self.index, command)


def _cluster(n: int) -> Log:
    log = Log()
    for b in range(1, n + 1):
        log.apply(register_broker_command(b, f"tcp://h:{7100 + b}", f"tcp://h:{7200 + b}"))
    return log


def test_placement_spreads_leaders_and_replicas_evenly() -> None:
    log = _cluster(3)
    topic = log.apply(create_topic_command("t", 6, 3, {}, [1, 2, 3]))
    assert not isinstance(topic, Exception)
    parts = log.state.topics["t"].partitions
    assert Counter(p.replicas[0] for p in parts) == {1: 2, 2: 2, 3: 2}
    assert all(sorted(p.replicas) == [1, 2, 3] for p in parts)
    # A second topic keeps the balance across topics.
    log.apply(create_topic_command("u", 3, 1, {}, [1, 2, 3]))
    leaders = Counter(p.replicas[0] for t in log.state.topics.values() for p in t.partitions)
    assert leaders == {1: 3, 2: 3, 3: 3}
    group_ids = [p.group_id for t in log.state.topics.values() for p in t.partitions]
    assert len(set(group_ids)) == 9
    assert 0 not in group_ids


def test_placement_uses_only_live_registered_brokers() -> None:
    log = _cluster(3)
    log.apply(create_topic_command("t", 4, 2, {}, [2, 3, 99]))
    assert all(set(p.replicas) == {2, 3} for p in log.state.topics["t"].partitions)
    result = log.apply(create_topic_command("u", 1, 3, {}, [1, 2]))
    assert isinstance(result, UnavailableError)
    assert "u" not in log.state.topics


def test_rejections_are_results_not_exceptions() -> None:
    log = _cluster(1)
    assert not isinstance(log.apply(create_topic_command("t", 1, 1, {}, [1])), Exception)
    assert isinstance(log.apply(create_topic_command("t", 1, 1, {}, [1])), TopicExistsError)
    assert isinstance(log.apply(delete_topic_command("nope")), UnknownTopicError)
    bad_config = create_topic_command("v", 1, 1, {"colour": 3}, [1])
    assert isinstance(log.apply(bad_config), InvalidRequestError)
    assert isinstance(log.apply(b"\xc1"), InvalidRequestError)
    assert isinstance(log.apply(b"\x91\x01"), InvalidRequestError)


def test_delete_then_create_gets_fresh_groups() -> None:
    log = _cluster(1)
    log.apply(create_topic_command("t", 2, 1, {"retention_ms": 1000}, [1]))
    old = {p.group_id for p in log.state.topics["t"].partitions}
    log.apply(delete_topic_command("t"))
    assert "t" not in log.state.topics
    log.apply(create_topic_command("t", 2, 1, {}, [1]))
    assert not old & {p.group_id for p in log.state.topics["t"].partitions}


def test_producer_ids_are_unique_and_replays_are_ignored() -> None:
    log = _cluster(1)
    assert [log.apply(allocate_producer_id_command()) for _ in range(3)] == [1, 2, 3]
    # An entry at or below the applied index (replay after a snapshot) changes nothing.
    assert log.state.apply(1, allocate_producer_id_command()) is None
    assert log.apply(allocate_producer_id_command()) == 4


def test_snapshot_round_trip_and_two_replicas_agree() -> None:
    commands = [
        register_broker_command(1, "tcp://a:1", "tcp://a:2"),
        register_broker_command(2, "tcp://b:1", "tcp://b:2"),
        create_topic_command("t", 3, 2, {"segment_bytes": 1 << 20}, [1, 2]),
        allocate_producer_id_command(),
        create_topic_command("u", 1, 1, {}, [2]),
        delete_topic_command("t"),
    ]
    a, b = Log(), Log()
    for c in commands:
        a.apply(c)
        b.apply(c)
    assert a.state.snapshot() == b.state.snapshot()
    restored = ControllerState.restore(a.state.snapshot())
    assert restored.snapshot() == a.state.snapshot()
    assert restored.topics == a.state.topics
    assert restored.partitions_of(2) == a.state.partitions_of(2)


@given(st.binary(max_size=200))
def test_fuzz_apply_never_raises(data: bytes) -> None:
    result = ControllerState().apply(1, data)
    assert isinstance(result, (ZStreamError, int, dict, BrokerRecord, TopicRecord, type(None)))


@given(st.binary(max_size=200))
def test_fuzz_restore_raises_only_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        ControllerState.restore(data)


def test_restore_rejects_other_versions() -> None:
    with pytest.raises(ValueError, match="version"):
        ControllerState.restore(b"\x81\xa1v\x07")
