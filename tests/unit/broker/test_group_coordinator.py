"""The controller leader's group service on a real single-node controller: which
heartbeats go through Raft, leaving, expiry by session clocks, and NOT_CONTROLLER
once the controller is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.broker.test_controller_group import _running
from zstream.broker._controller import create_topic_command, register_broker_command
from zstream.broker._server import Controller, GroupCoordinator
from zstream.clients import (
    CommitOffsetsRequest,
    FetchOffsetsRequest,
    GroupHeartbeatRequest,
    UnavailableError,
    UnknownGroupError,
    UnknownMemberError,
)


def _hb(member: str, **kwargs: object) -> GroupHeartbeatRequest:
    return GroupHeartbeatRequest("g", member, session_timeout_ms=1000, **kwargs)  # type: ignore[arg-type]


async def _setup(controller: Controller) -> GroupCoordinator:
    await controller.propose(register_broker_command(1, "tcp://a:1", "tcp://a:2"))
    await controller.propose(create_topic_command("t", 2, 1, {}, [1]))
    return GroupCoordinator(controller)


async def test_only_changes_go_through_raft(tmp_path: Path) -> None:
    async with _running(tmp_path) as controller:
        groups = await _setup(controller)
        reply = await groups.heartbeat(_hb("m1", topics=["t"]), now=0.0)
        assert reply["assignment"] == {"t": [0, 1]}
        assert reply["heartbeat_interval_ms"] == 333
        applied = controller.state.applied_index
        await groups.heartbeat(_hb("m1"), now=0.1)  # nothing changed: no proposal
        await groups.heartbeat(_hb("m1", topics=["t"]), now=0.2)
        assert controller.state.applied_index == applied
        await groups.heartbeat(_hb("m1", owned={"t": [0, 1]}), now=0.3)  # a change
        assert controller.state.applied_index == applied + 1
        with pytest.raises(UnknownMemberError):  # an unknown id without topics
            await groups.heartbeat(_hb("ghost"), now=0.4)
        assert controller.state.applied_index == applied + 1
        await groups.commit_offsets(CommitOffsetsRequest("g", {"t": [[1, 9]]}, member_id="m1"))
        fetched = await groups.fetch_offsets(FetchOffsetsRequest("g"))
        assert fetched == {"offsets": {"t": [[1, 9]]}}
        assert await groups.list_groups() == ["g"]


async def test_leave_and_expiry(tmp_path: Path) -> None:
    async with _running(tmp_path) as controller:
        groups = await _setup(controller)
        await groups.heartbeat(_hb("m1", topics=["t"]), now=10.0)
        await groups.heartbeat(_hb("m2", topics=["t"]), now=10.0)
        await groups.heartbeat(_hb("m3", topics=["t"]), now=10.0)
        assert await groups.expire_silent(now=10.5) == []
        await groups.heartbeat(_hb("m1"), now=10.8)
        assert await groups.expire_silent(now=11.2) == [("g", "m2"), ("g", "m3")]
        with pytest.raises(UnknownMemberError):
            await groups.heartbeat(_hb("m2"), now=11.3)
        desc = await groups.describe_group("g")
        assert [m["member_id"] for m in desc["members"]] == ["m1"]
        assert desc["members"][0]["target"] == {"t": [0, 1]}
        left = await groups.heartbeat(_hb("m1", leave=True), now=11.4)
        assert left["member_epoch"] == -1
        assert left["assignment"] == {}
        again = await groups.heartbeat(_hb("m1", leave=True), now=11.5)  # idempotent
        assert again["assignment"] == {}
        with pytest.raises(UnknownGroupError):
            await groups.describe_group("g")


async def test_nothing_is_served_before_the_controller_starts(tmp_path: Path) -> None:
    groups = GroupCoordinator(Controller(1, tmp_path))
    with pytest.raises(UnavailableError):
        await groups.list_groups()
    with pytest.raises(UnavailableError):
        await groups.heartbeat(_hb("m1", topics=["t"]), now=0.0)
    assert await groups.expire_silent(now=100.0) == []


async def test_offsets_retention_proposes_only_when_a_group_is_due(tmp_path: Path) -> None:
    async with _running(tmp_path) as controller:
        groups = await _setup(controller)
        await groups.commit_offsets(CommitOffsetsRequest("idle", {"t": [[0, 4]]}))
        applied = controller.state.applied_index
        stamped = controller.state.groups["idle"].active_ms
        assert stamped > 0  # the proposer's wall clock travelled in the command
        assert await groups.expire_offsets(stamped + 50, retention_ms=100) == []
        assert controller.state.applied_index == applied  # nothing due: no entry
        assert await groups.expire_offsets(stamped + 101, retention_ms=100) == ["idle"]
        assert await groups.list_groups() == []
