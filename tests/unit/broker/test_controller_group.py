"""The controller on Raft group 0 of a real (single-node) host: commands commit,
rejections surface as errors, and a restart restores the snapshot and replays the
log after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from zstream import replication
from zstream.broker._controller import (
    TopicRecord,
    allocate_producer_id_command,
    commit_offsets_command,
    create_topic_command,
    group_delete_command,
    group_join_or_update_command,
    register_broker_command,
)
from zstream.broker._server import Controller
from zstream.clients import (
    FencedMemberError,
    GroupNotEmptyError,
    TopicExistsError,
    UnknownGroupError,
)


@asynccontextmanager
async def _running(data_dir: Path) -> AsyncIterator[Controller]:
    transport = replication.PeerTransport(1, "tcp://127.0.0.1:0")
    await transport.start()
    host = replication.RaftHost(1, transport, replication.HostConfig(tick_ms=10, fsync=False))
    task = asyncio.create_task(host.run())
    controller = Controller(1, data_dir)
    try:
        controller.start(host, replication.RaftConfig(id=1), frozenset({1}))
        assert controller.handle is not None
        deadline = asyncio.get_running_loop().time() + 10
        while not controller.is_leader:  # a one-voter group elects itself at once
            assert asyncio.get_running_loop().time() < deadline, "no leader"
            await asyncio.sleep(0.01)
        yield controller
    finally:
        await host.close()
        await task
        await controller.save_snapshot(force=True)
        controller.close()
        await transport.close()


async def test_commands_commit_and_survive_a_restart(tmp_path: Path) -> None:
    async with _running(tmp_path) as controller:
        await controller.propose(register_broker_command(1, "tcp://a:1", "tcp://a:2"))
        topic = await controller.propose(create_topic_command("t", 2, 1, {}, [1]))
        assert isinstance(topic, TopicRecord)
        with pytest.raises(TopicExistsError):
            await controller.propose(create_topic_command("t", 2, 1, {}, [1]))
        assert await controller.propose(allocate_producer_id_command()) == 1
        snapshot = controller.state.snapshot()
    async with _running(tmp_path) as controller:
        assert controller.state.snapshot() == snapshot
        assert await controller.propose(allocate_producer_id_command()) == 2


async def test_restart_replays_what_the_snapshot_lacks(tmp_path: Path) -> None:
    snapshot_file = tmp_path / "controller-state"
    async with _running(tmp_path) as controller:
        await controller.propose(register_broker_command(1, "tcp://a:1", "tcp://a:2"))
    older = snapshot_file.read_bytes()
    async with _running(tmp_path) as controller:
        await controller.propose(create_topic_command("later", 1, 1, {}, [1]))
    snapshot_file.write_bytes(older)  # a snapshot from before the topic existed
    async with _running(tmp_path) as controller:
        assert "later" in controller.state.topics  # replayed from the log
        assert 1 in controller.state.brokers
    snapshot_file.unlink()  # no snapshot at all: the whole log is replayed
    async with _running(tmp_path) as controller:
        assert "later" in controller.state.topics
        assert 1 in controller.state.brokers


async def test_every_proposer_gets_its_own_result_in_a_crowded_apply(tmp_path: Path) -> None:
    """Thousands of commands applied in few passes: each proposer still gets its own
    command's result, a rejection included (it once came back as None: "committed")."""
    async with _running(tmp_path) as controller:
        await controller.propose(register_broker_command(1, "tcp://a:1", "tcp://a:2"))
        await controller.propose(create_topic_command("t", 1, 1, {}, [1]))
        await controller.propose(group_join_or_update_command("g", "m", ["t"], 10_000, []))
        fenced = commit_offsets_command("g", "", [("t", 0, 5)])  # a non-member: FENCED
        ids = [allocate_producer_id_command() for _ in range(1500)]
        results = await asyncio.gather(
            *(controller.propose(c) for c in [fenced, *ids, fenced]), return_exceptions=True
        )
        assert isinstance(results[0], FencedMemberError)
        assert isinstance(results[-1], FencedMemberError)
        assert sorted(results[1:-1]) == list(range(1, 1501))  # type: ignore[type-var]
        assert controller.state.groups["g"].offsets == {}


async def test_group_delete_commits_and_survives_a_restart(tmp_path: Path) -> None:
    async with _running(tmp_path) as controller:
        await controller.propose(register_broker_command(1, "tcp://a:1", "tcp://a:2"))
        await controller.propose(create_topic_command("t", 1, 1, {}, [1]))
        await controller.propose(commit_offsets_command("gone", "", [("t", 0, 5)]))
        await controller.propose(commit_offsets_command("kept", "", [("t", 0, 6)]))
        await controller.propose(group_join_or_update_command("busy", "m", ["t"], 6000, []))
        with pytest.raises(GroupNotEmptyError):
            await controller.propose(group_delete_command("busy"))
        assert await controller.propose(group_delete_command("gone")) is None
        with pytest.raises(UnknownGroupError):
            await controller.propose(group_delete_command("gone"))
    async with _running(tmp_path) as controller:
        assert controller.state.list_groups() == ["busy", "kept"]
        assert controller.state.fetch_offsets("gone", None) == {"offsets": {}}
