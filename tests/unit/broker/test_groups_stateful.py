"""Hypothesis stateful test of consumer groups in the controller state machine.

Two replicas apply the same random commands (joins, subscription changes, leaves,
expiries, owned reports, commits, topic creation and deletion). Members behave as
the consumer does: a member only ever owns what it owned before or what its
assignment gives it. After every step: no partition is in two assignments or
owned by two members; every partition of a subscribed topic is in exactly one
target; homogeneous groups are balanced within one; no member holds two more
than another that could take one of its partitions; a snapshot restores to an
equal state; both replicas agree. Commit results match the fencing rule.
"""

from __future__ import annotations

import copy
from collections import Counter

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zstream.broker._controller import (
    BrokerRecord,
    ControllerState,
    TopicRecord,
    commit_offsets_command,
    create_topic_command,
    delete_topic_command,
    expire_offsets_command,
    group_expire_command,
    group_join_or_update_command,
    group_leave_command,
    register_broker_command,
)
from zstream.clients import FencedMemberError, UnknownMemberError, ZStreamError

TP = tuple[str, int]
GROUP = "g"
MEMBERS = ("m1", "m2", "m3", "m4", "m5")
TOPICS = ("t", "u", "v")


class GroupMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.replicas = [ControllerState(), ControllerState()]
        self.index = 0
        # What each live member's client believes it owns.
        self.client_owned: dict[str, set[TP]] = {}
        self.apply(register_broker_command(1, "tcp://h:1", "tcp://h:2"))

    @property
    def state(self) -> ControllerState:
        return self.replicas[0]

    def apply(self, command: bytes) -> object:
        self.index += 1
        results = [r.apply(self.index, command) for r in self.replicas]
        assert repr(results[0]) == repr(results[1])
        return results[0]

    def assignment(self, member: str) -> set[TP]:
        reply = self.state.heartbeat_reply(GROUP, member)
        return {(t, p) for t, ps in reply["assignment"].items() for p in ps}

    def members(self) -> list[str]:
        group = self.state.groups.get(GROUP)
        return sorted(group.members) if group is not None else []

    # -- rules ------------------------------------------------------------------------

    @rule(member=st.sampled_from(MEMBERS), topics=st.sets(st.sampled_from(TOPICS), min_size=1))
    def join_or_resubscribe(self, member: str, topics: set[str]) -> None:
        owned = self.client_owned.get(member, set())
        result = self.apply(
            group_join_or_update_command(GROUP, member, sorted(topics), 6000, owned)
        )
        assert isinstance(result, dict)
        self.client_owned[member] = owned

    @rule(data=st.data())
    @precondition(lambda self: bool(self.client_owned))
    def report_owned(self, data: st.DataObject) -> None:
        """The member drops some of what it owns and takes some of what it may."""
        member = data.draw(st.sampled_from(sorted(self.client_owned)))
        may = sorted(self.client_owned[member] | self.assignment(member))
        owned = set(data.draw(st.lists(st.sampled_from(may), unique=True))) if may else set()
        result = self.apply(group_join_or_update_command(GROUP, member, None, 6000, owned))
        assert isinstance(result, dict)
        self.client_owned[member] = owned

    @rule(member=st.sampled_from(MEMBERS), expire=st.booleans(), now_ms=st.integers(0, 100))
    def leave_or_expire(self, member: str, expire: bool, now_ms: int) -> None:
        make = group_expire_command if expire else group_leave_command
        result = self.apply(make(GROUP, member, now_ms))
        if member in self.client_owned:
            assert result is None
            del self.client_owned[member]
        else:
            assert isinstance(result, UnknownMemberError)

    @rule(now_ms=st.integers(1, 200), retention_ms=st.integers(0, 100))
    def expire_offsets(self, now_ms: int, retention_ms: int) -> None:
        before = copy.deepcopy(self.state.groups)
        would = self.state.expired_offsets(now_ms, retention_ms)
        dropped = self.apply(expire_offsets_command(now_ms, retention_ms))
        assert isinstance(dropped, list)
        for name in dropped:  # only idle groups, past retention, go
            assert not before[name].members
            assert 0 < before[name].active_ms < now_ms - retention_ms
        for name, group in before.items():
            if name not in dropped:
                assert self.state.groups[name].members == group.members
                assert self.state.groups[name].offsets == group.offsets
        assert would or not dropped
        assert not self.state.expired_offsets(now_ms, retention_ms)

    @rule(data=st.data(), member=st.sampled_from(("", *MEMBERS)))
    def commit(self, data: st.DataObject, member: str) -> None:
        existing = sorted(
            (name, p)
            for name, topic in self.state.topics.items()
            for p in range(len(topic.partitions))
        )
        if not existing:
            return
        tps = data.draw(st.lists(st.sampled_from(existing), unique=True, max_size=4))
        offsets = [(t, p, data.draw(st.integers(0, 1000))) for t, p in tps]
        before = dict(self.state.groups[GROUP].offsets) if GROUP in self.state.groups else {}
        group = self.state.groups.get(GROUP)
        if member == "":
            allowed: bool | None = group is None or not group.members
        elif group is None or member not in group.members:
            allowed = None  # unknown member
        else:
            mine = group.members[member].owned
            others = group.owned_by_others(member)
            allowed = all(tp in mine and tp not in others for tp in tps)
        now_ms = data.draw(st.integers(0, 100))
        result = self.apply(commit_offsets_command(GROUP, member, offsets, now_ms))
        if allowed is None:
            assert isinstance(result, UnknownMemberError)
        elif allowed:
            assert result is None
            got = self.state.fetch_offsets(GROUP, None)["offsets"]
            for t, p, o in offsets:
                assert [p, o] in got[t]
        else:
            assert isinstance(result, FencedMemberError)
            after = dict(self.state.groups[GROUP].offsets) if GROUP in self.state.groups else {}
            assert after == before

    @rule(name=st.sampled_from(TOPICS), partitions=st.integers(1, 6))
    def create_topic(self, name: str, partitions: int) -> None:
        self.apply(create_topic_command(name, partitions, 1, {}, [1]))

    @rule(name=st.sampled_from(TOPICS))
    def delete_topic(self, name: str) -> None:
        if isinstance(self.apply(delete_topic_command(name)), ZStreamError):
            return
        for owned in self.client_owned.values():  # its readers fail: gone
            owned -= {tp for tp in owned if tp[0] == name}

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def replicas_agree_and_snapshots_restore(self) -> None:
        snap = self.state.snapshot()
        assert self.replicas[1].snapshot() == snap
        restored = ControllerState.restore(snap)
        assert restored.groups == self.state.groups
        assert restored.snapshot() == snap

    @invariant()
    def no_partition_is_assigned_or_owned_twice(self) -> None:
        group = self.state.groups.get(GROUP)
        if group is None:
            return
        assigned = Counter(tp for mid in group.members for tp in self.assignment(mid))
        owned = Counter(tp for m in group.members.values() for tp in m.owned)
        assert all(n == 1 for n in assigned.values()), assigned
        assert all(n == 1 for n in owned.values()), owned

    @invariant()
    def every_subscribed_partition_has_one_target(self) -> None:
        group = self.state.groups.get(GROUP)
        if group is None:
            return
        targets = Counter(tp for m in group.members.values() for tp in m.target)
        subscribed = {t for m in group.members.values() for t in m.topics}
        expected = {
            (t, p)
            for t in subscribed
            if t in self.state.topics
            for p in range(len(self.state.topics[t].partitions))
        }
        assert set(targets) == expected
        assert all(n == 1 for n in targets.values())
        for m in group.members.values():
            assert all(t in m.topics for t, _ in m.target)

    @invariant()
    def targets_are_balanced(self) -> None:
        group = self.state.groups.get(GROUP)
        if group is None:
            return
        members = list(group.members.values())
        for x in members:
            for y in members:
                if len(x.target) - len(y.target) >= 2:
                    assert not any(t in y.topics for t, _ in x.target)
        if len({m.topics for m in members}) == 1:
            counts = [len(m.target) for m in members]
            assert max(counts) - min(counts) <= 1

    @invariant()
    def client_view_matches_the_state(self) -> None:
        group = self.state.groups.get(GROUP)
        live = set(group.members) if group is not None else set()
        assert live == set(self.client_owned)


TestGroupMachine = GroupMachine.TestCase
TestGroupMachine.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_OPS = ("group_join_or_update", "group_leave", "group_expire", "commit_offsets")
_KEYS = ("group", "member_id", "topics", "session_timeout_ms", "owned", "offsets")
_PLAUSIBLE = st.sampled_from(["g", "t", "m1", "", 6000, ["t"], [["t", 0]], [["t", 0, 1]]])


@st.composite
def _group_commands(draw: st.DrawFn) -> bytes:
    """Group commands with the right op and random (often plausible) fields."""
    cmd: dict[str, object] = {"op": draw(st.sampled_from(_OPS))}
    for key in _KEYS:
        if draw(st.booleans()):
            cmd[key] = draw(_PLAUSIBLE | _value)
    packed: bytes = msgpack.packb(cmd, use_bin_type=True)
    return packed


def _fuzz_state() -> ControllerState:
    state = ControllerState()
    state.apply(1, register_broker_command(1, "tcp://h:1", "tcp://h:2"))
    state.apply(2, create_topic_command("t", 2, 1, {}, [1]))
    state.apply(3, group_join_or_update_command("g", "m1", ["t"], 6000, []))
    return state


_RESULT_TYPES = (ZStreamError, int, dict, BrokerRecord, TopicRecord, type(None))


@settings(max_examples=300, deadline=None)
@given(st.lists(_group_commands() | st.binary(max_size=64), max_size=4))
def test_fuzz_group_commands_never_raise(commands: list[bytes]) -> None:
    state = _fuzz_state()
    for i, command in enumerate(commands, start=4):
        assert isinstance(state.apply(i, command), _RESULT_TYPES)
        # Whatever was applied, the state still snapshots and restores.
        assert ControllerState.restore(state.snapshot()).groups == state.groups
