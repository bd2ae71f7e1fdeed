"""ACLs and quotas in the controller state machine: commands, snapshot version 5
(older versions restore with none), and a fuzz of the new commands."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.broker.test_controller import _cluster
from zstream.broker._controller import (
    MAX_ACLS,
    BrokerRecord,
    ControllerState,
    TopicRecord,
    acl_add_command,
    acl_remove_command,
    create_topic_command,
    decommission_broker_command,
    quota_set_command,
    reassign_partition_command,
)
from zstream.clients import (
    AclEntry,
    AclOperation,
    AclPermission,
    InvalidRequestError,
    PatternType,
    QuotaLimits,
    ResourceType,
    ZStreamError,
)

ORDERS = AclEntry("alice", ResourceType.TOPIC, PatternType.LITERAL, "orders", AclOperation.PRODUCE)
TEAM = AclEntry(
    "*",
    ResourceType.GROUP,
    PatternType.PREFIXED,
    "team.",
    AclOperation.CONSUME,
    AclPermission.DENY,
)


class Log:
    def __init__(self, state: ControllerState | None = None) -> None:
        self.state = state or ControllerState()
        self.index = self.state.applied_index

    def apply(self, command: bytes) -> object:
        self.index += 1
        return self.state.apply(self.index, command)


def test_acl_add_remove_and_their_results() -> None:
    log = Log()
    assert log.apply(acl_add_command([ORDERS, TEAM])) == 2
    assert log.apply(acl_add_command([ORDERS])) == 0  # already there
    assert log.state.acls.entries() == sorted([ORDERS, TEAM])
    assert log.state.acls.allowed("alice", AclOperation.PRODUCE, ResourceType.TOPIC, "orders")
    assert log.apply(acl_remove_command([ORDERS])) == 1
    assert log.apply(acl_remove_command([ORDERS])) == 0
    assert not log.state.acls.allowed("alice", AclOperation.PRODUCE, ResourceType.TOPIC, "orders")


def test_bad_acl_commands_are_rejected_whole() -> None:
    log = Log()
    bad = msgpack.packb(
        {"op": "acl_add", "entries": [ORDERS.to_wire(), {**ORDERS.to_wire(), "operation": "x"}]}
    )
    assert isinstance(log.apply(bad), InvalidRequestError)
    assert len(log.state.acls) == 0  # the good entry did not go in either
    assert isinstance(log.apply(msgpack.packb({"op": "acl_add", "entries": "x"})), ZStreamError)


def test_the_acl_count_is_bounded() -> None:
    log = Log()
    for start in range(0, MAX_ACLS, 1000):
        batch = [
            AclEntry("p", ResourceType.TOPIC, PatternType.LITERAL, f"t{i}", AclOperation.PRODUCE)
            for i in range(start, start + 1000)
        ]
        assert log.apply(acl_add_command(batch)) == 1000
    result = log.apply(acl_add_command([ORDERS]))
    assert isinstance(result, InvalidRequestError)
    assert "at most" in str(result)
    assert log.apply(acl_add_command([])) == 0


def test_quota_set_replaces_and_removes() -> None:
    log = Log()
    assert log.apply(quota_set_command(QuotaLimits("alice", produce_bytes_per_s=1000))) is None
    log.apply(quota_set_command(QuotaLimits("alice", fetch_bytes_per_s=5)))
    assert log.state.quotas == {"alice": QuotaLimits("alice", None, 5)}
    log.apply(quota_set_command(QuotaLimits("alice")))
    assert log.state.quotas == {}
    bad = msgpack.packb({"op": "quota_set", "principal": "alice", "fetch_bytes_per_s": -1})
    assert isinstance(log.apply(bad), InvalidRequestError)


def test_snapshot_v5_round_trip_and_v4_restores_with_none() -> None:
    log = Log()
    log.apply(acl_add_command([ORDERS, TEAM]))
    log.apply(quota_set_command(QuotaLimits("*", 100, 200)))
    restored = ControllerState.restore(log.state.snapshot())
    assert restored.acls.entries() == log.state.acls.entries()
    assert restored.quotas == log.state.quotas
    assert restored.snapshot() == log.state.snapshot()
    doc = msgpack.unpackb(log.state.snapshot())
    assert doc["v"] == 6  # 6: the rebalance phase (tests/unit/broker/test_balance.py)
    old = {k: v for k, v in doc.items() if k not in ("acls", "quotas", "rebalance")}
    old["v"] = 4
    older = ControllerState.restore(msgpack.packb(old))
    assert len(older.acls) == 0
    assert older.quotas == {}


def test_snapshot_v5_carries_reassignments_and_acls_and_v4_restores_its_part() -> None:
    """Version 5 is main's version 4 (reassignment targets, decommissioning, removed)
    plus ACLs and quotas: a v4 snapshot keeps all of its own state."""
    log = _cluster(4)
    log.apply(create_topic_command("t", 2, 3, {}, [1, 2, 3, 4]))
    current = log.state.topics["t"].partitions[1].replicas
    target = (*current[:2], next(b for b in (1, 2, 3, 4) if b not in current))
    assert not isinstance(
        log.apply(reassign_partition_command("t", 1, target, [1, 2, 3, 4])), Exception
    )
    leaving = current[2]
    assert not isinstance(log.apply(decommission_broker_command(leaving)), Exception)
    log.apply(acl_add_command([ORDERS, TEAM]))
    log.apply(quota_set_command(QuotaLimits("bob", 10, None)))
    state = log.state
    assert state.topics["t"].partitions[1].target == target
    restored = ControllerState.restore(state.snapshot())
    assert restored.topics == state.topics
    assert restored.decommissioning == state.decommissioning == {leaving}
    assert restored.acls.entries() == state.acls.entries()
    assert restored.quotas == state.quotas
    assert restored.snapshot() == state.snapshot()
    doc = msgpack.unpackb(state.snapshot(), raw=False)
    assert doc["v"] == 6
    v4 = {k: v for k, v in doc.items() if k not in ("acls", "quotas", "rebalance")}
    v4["v"] = 4
    older = ControllerState.restore(msgpack.packb(v4))
    assert older.topics == state.topics  # targets kept
    assert older.decommissioning == {leaving}
    assert len(older.acls) == 0
    assert older.quotas == {}


def test_a_snapshot_with_a_bad_entry_raises_value_error() -> None:
    doc = msgpack.unpackb(Log().state.snapshot())
    doc["acls"] = [["alice", "topic", "literal", "a b", "produce", "allow"]]
    with pytest.raises(ValueError, match="bad controller snapshot"):
        ControllerState.restore(msgpack.packb(doc))


_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_PLAUSIBLE = st.sampled_from(
    [
        "alice",
        "*",
        "topic",
        "group",
        "cluster",
        "literal",
        "prefixed",
        "produce",
        "admin",
        "deny",
        100,
        None,
        [ORDERS.to_wire()],
        [TEAM.to_wire(), {"principal": "x"}],
    ]
)
_ENTRY_KEYS = ("principal", "resource_type", "pattern", "name", "operation", "permission")


@st.composite
def _acl_commands(draw: st.DrawFn) -> bytes:
    op = draw(st.sampled_from(["acl_add", "acl_remove", "quota_set"]))
    cmd: dict[str, object] = {"op": op}
    if op == "quota_set":
        for key in ("principal", "produce_bytes_per_s", "fetch_bytes_per_s"):
            if draw(st.booleans()):
                cmd[key] = draw(_PLAUSIBLE | _value)
    elif draw(st.booleans()):
        entries = []
        for _ in range(draw(st.integers(0, 3))):
            entry = {k: draw(_PLAUSIBLE | _value) for k in _ENTRY_KEYS if draw(st.booleans())}
            entries.append(entry if draw(st.booleans()) else ORDERS.to_wire())
        cmd["entries"] = entries
    else:
        cmd["entries"] = draw(_PLAUSIBLE | _value)
    packed: bytes = msgpack.packb(cmd, use_bin_type=True)
    return packed


_RESULT_TYPES = (ZStreamError, int, dict, BrokerRecord, TopicRecord, type(None))


@settings(max_examples=300, deadline=None)
@given(st.lists(_acl_commands() | st.binary(max_size=64), max_size=5))
def test_fuzz_acl_commands_never_raise(commands: list[bytes]) -> None:
    state = ControllerState()
    for i, command in enumerate(commands, start=1):
        assert isinstance(state.apply(i, command), _RESULT_TYPES)
        # Whatever was applied, the state still snapshots and restores the same.
        restored = ControllerState.restore(state.snapshot())
        assert restored.acls.entries() == state.acls.entries()
        assert restored.quotas == state.quotas
