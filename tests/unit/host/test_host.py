"""RaftHost: three hosts in one event loop over real PeerTransports on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest

from zstream.replication import (
    ConfState,
    Entry,
    EntryType,
    GroupHandle,
    HostConfig,
    HostStoppedError,
    Message,
    MessageType,
    NotLeaderError,
    PeerTransport,
    ProposalTimeoutError,
    RaftConfig,
    RaftHost,
    RaftLog,
    Role,
    Snapshot,
    message_to_wire,
)
from zstream.replication._host import MAX_APP_MESSAGE_BYTES
from zstream.storage import LogConfig, encode_batch

IDS = (1, 2, 3)


def batch(value: bytes) -> bytes:
    return encode_batch([(None, value)], timestamp_ms=1)


async def until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


class Node:
    def __init__(self, node_id: int, root: Path, config: HostConfig) -> None:
        self.id = node_id
        self.root = root / f"n{node_id}"
        self.config = config
        self.transport = PeerTransport(node_id, "tcp://127.0.0.1:0")
        self.host: RaftHost | None = None
        self.task: asyncio.Task[None] | None = None
        self.logs: dict[int, RaftLog] = {}
        self.groups: dict[int, GroupHandle] = {}

    async def start(self) -> None:
        await self.transport.start()
        self.host = RaftHost(self.id, self.transport, self.config)
        self.task = asyncio.create_task(self.host.run())

    def add_group(
        self, gid: int, voters: tuple[int, ...] = IDS, log_config: LogConfig | None = None
    ) -> GroupHandle:
        assert self.host is not None
        log = RaftLog.open(self.root / f"g{gid}", log_config or LogConfig(), records=True)
        log.bootstrap(ConfState(voters=frozenset(voters)))
        self.logs[gid] = log
        rc = RaftConfig(id=self.id, election_tick=self.config.election_tick)
        self.groups[gid] = self.host.add_group(gid, log, rc)
        return self.groups[gid]

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.close()
        if self.task is not None:
            await self.task
        await self.transport.close()
        for log in self.logs.values():
            log.close()
        self.logs.clear()
        self.host = None
        self.task = None


@asynccontextmanager
async def cluster(
    tmp_path: Path, groups: int = 1, log_config: LogConfig | None = None, **config: int | bool
) -> AsyncIterator[dict[int, Node]]:
    cfg = HostConfig(**{"tick_ms": 20, "quiesce_after_ticks": 10, **config})  # type: ignore[arg-type]
    nodes = {i: Node(i, tmp_path, cfg) for i in IDS}
    try:
        for n in nodes.values():
            await n.start()
        for n in nodes.values():
            for m in nodes.values():
                if m is not n:
                    n.transport.add_peer(m.id, m.transport.address)
            for gid in range(1, groups + 1):
                n.add_group(gid, log_config=log_config)
        yield nodes
    finally:
        for n in nodes.values():
            await n.stop()


def leader_of(nodes: dict[int, Node], gid: int) -> Node | None:
    for n in nodes.values():
        if n.host is not None and n.groups[gid].is_leader:
            return n
    return None


async def elect(nodes: dict[int, Node], gid: int = 1, who: int = 1) -> Node:
    nodes[who].groups[gid].campaign()
    await until(lambda: leader_of(nodes, gid) is not None, 10, "a leader")
    leader = leader_of(nodes, gid)
    assert leader is not None
    return leader


async def test_election_proposals_and_identical_logs(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await elect(nodes)
        g = leader.groups[1]
        indexes = [await g.propose(batch(b"v%d" % i)) for i in range(5)]
        assert indexes == sorted(indexes)
        last = indexes[-1]
        for n in nodes.values():
            await asyncio.wait_for(n.groups[1].wait_committed(last), 5)
        logs = [n.logs[1] for n in nodes.values()]
        want = logs[0].entries(1, last + 1, 1 << 30)
        for log in logs[1:]:
            assert log.entries(1, last + 1, 1 << 30) == want
        # Every replica agrees on record offsets: five single-record batches.
        assert {log.offset_after(last) for log in logs} == {5}
        for n in nodes.values():
            assert n.groups[1].leader == leader.id


async def test_follower_refuses_with_a_leader_hint(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await elect(nodes)
        follower = next(n for n in nodes.values() if n is not leader)
        await until(lambda: follower.groups[1].leader == leader.id, 5, "follower knows")
        with pytest.raises(NotLeaderError) as info:
            await follower.groups[1].propose(batch(b"x"))
        assert info.value.leader_hint == leader.id


async def test_group_commit_many_proposals_few_fsyncs(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await elect(nodes)
        assert leader.host is not None
        before = leader.host.stats.fsyncs
        futs = [leader.groups[1].propose(batch(b"%d" % i)) for i in range(300)]
        got = await asyncio.wait_for(asyncio.gather(*futs), 20)
        assert got == sorted(got)
        assert len(set(got)) == 300
        fsyncs = leader.host.stats.fsyncs - before
        assert 1 <= fsyncs < 100, fsyncs


async def test_leader_that_loses_its_quorum_fails_pending_proposals(tmp_path: Path) -> None:
    async with cluster(tmp_path, proposal_timeout_ms=60_000) as nodes:
        leader = await elect(nodes)
        await leader.groups[1].propose(batch(b"first"))
        for n in nodes.values():
            if n is not leader:
                await n.stop()
        fut = leader.groups[1].propose(batch(b"never"))
        with pytest.raises(NotLeaderError):
            await asyncio.wait_for(fut, 10)
        assert leader.groups[1].role != Role.LEADER


async def test_proposal_timeout(tmp_path: Path) -> None:
    async with cluster(tmp_path, proposal_timeout_ms=100, election_tick=200) as nodes:
        leader = await elect(nodes)
        for n in nodes.values():
            if n is not leader:
                await n.stop()
        with pytest.raises(ProposalTimeoutError):
            await asyncio.wait_for(leader.groups[1].propose(batch(b"late")), 10)


async def test_close_fails_pending_requests(tmp_path: Path) -> None:
    async with cluster(tmp_path, proposal_timeout_ms=60_000) as nodes:
        leader = await elect(nodes)
        for n in nodes.values():
            if n is not leader:
                await n.stop()
        fut = leader.groups[1].propose(batch(b"pending"))
        waiter = asyncio.ensure_future(leader.groups[1].wait_committed(10_000))
        await leader.stop()
        with pytest.raises(HostStoppedError):
            await fut
        with pytest.raises(HostStoppedError):
            await waiter
        handle = leader.groups[1]
        with pytest.raises(HostStoppedError):
            handle.propose(batch(b"after"))


async def test_many_groups_elect_commit_and_quiesce(tmp_path: Path) -> None:
    groups = 12
    async with cluster(tmp_path, groups=groups) as nodes:
        for gid in range(1, groups + 1):
            nodes[1 + gid % 3].groups[gid].campaign()
        await until(
            lambda: all(leader_of(nodes, gid) for gid in range(1, groups + 1)), 10, "leaders"
        )
        futs = []
        for gid in range(1, groups + 1):
            leader = leader_of(nodes, gid)
            assert leader is not None
            futs += [leader.groups[gid].propose(batch(b"g%d-%d" % (gid, i))) for i in range(3)]
        await asyncio.wait_for(asyncio.gather(*futs), 20)
        # Idle groups stop ticking on every node.
        await until(
            lambda: all(
                n.host is not None and n.host.active_group_count() == 0 for n in nodes.values()
            ),
            10,
            "quiescence",
        )
        # A proposal wakes its group, and it commits.
        leader = leader_of(nodes, 1)
        assert leader is not None
        await asyncio.wait_for(leader.groups[1].propose(batch(b"wake")), 5)


async def test_quiesced_followers_wake_and_elect_when_the_leader_dies(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await elect(nodes)
        await leader.groups[1].propose(batch(b"before"))
        await until(
            lambda: all(
                n.host is not None and n.host.active_group_count() == 0 for n in nodes.values()
            ),
            10,
            "quiescence",
        )
        await leader.stop()
        rest = {i: n for i, n in nodes.items() if n is not leader}
        await until(lambda: leader_of(rest, 1) is not None, 10, "a new leader")
        new = leader_of(rest, 1)
        assert new is not None
        index = await asyncio.wait_for(new.groups[1].propose(batch(b"after")), 10)
        for n in rest.values():
            await asyncio.wait_for(n.groups[1].wait_committed(index), 5)


async def test_restart_keeps_term_vote_and_entries(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await elect(nodes)
        last = await leader.groups[1].propose(batch(b"durable"))
        term = leader.groups[1].term
        for n in nodes.values():
            await asyncio.wait_for(n.groups[1].wait_committed(last), 5)
        for n in nodes.values():
            await n.stop()
        for n in nodes.values():
            n.transport = PeerTransport(n.id, "tcp://127.0.0.1:0")
            await n.start()
        for n in nodes.values():
            for m in nodes.values():
                if m is not n:
                    n.transport.add_peer(m.id, m.transport.address)
            g = n.add_group(1)
            assert g.term == term
            assert g.last_index >= last
        leader = await elect(nodes, who=2)
        index = await asyncio.wait_for(leader.groups[1].propose(batch(b"again")), 10)
        assert index > last


async def test_removed_group_fails_its_requests_and_ignores_messages(tmp_path: Path) -> None:
    async with cluster(tmp_path, groups=2, proposal_timeout_ms=60_000) as nodes:
        leader = await elect(nodes, gid=2)
        handle = leader.groups[2]
        for n in nodes.values():
            if n is not leader:
                await n.stop()
        fut = handle.propose(batch(b"pending"))
        assert leader.host is not None
        leader.host.remove_group(2)
        with pytest.raises(HostStoppedError):
            await fut
        with pytest.raises(HostStoppedError):
            handle.propose(batch(b"gone"))
        assert leader.host.group(2) is None


async def test_garbage_from_a_peer_is_dropped_and_the_group_keeps_working(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await elect(nodes)
        assert leader.host is not None
        rogue = PeerTransport(9, "tcp://127.0.0.1:0")
        await rogue.start()
        try:
            rogue.add_peer(leader.id, leader.transport.address)
            garbage = [
                b"\xc1not msgpack",
                msgpack.packb([1]),
                msgpack.packb([1, "junk"]),
                msgpack.packb([1, [1, 2, 3]]),
                msgpack.packb([-1, 7]),
                msgpack.packb([-1, 1, "x", "y"]),
                msgpack.packb([-1, 2, "not bytes"]),
                msgpack.packb([-1, 2, b"x" * (MAX_APP_MESSAGE_BYTES + 1)]),
                msgpack.packb([99, []]),
                msgpack.packb({"a": 1}),
            ]
            # A well-formed message claiming to come from node 2 is a spoof: dropped.
            hdr, _ = message_to_wire(Message(MessageType.APPEND_RESP, leader.id, 2, 99))
            garbage.append(msgpack.packb([1, hdr]))
            deadline = time.monotonic() + 5
            while leader.host.stats.items_dropped < len(garbage) and time.monotonic() < deadline:
                for g in garbage:
                    rogue.send(leader.id, g)
                rogue.flush()
                await asyncio.sleep(0.05)
            assert leader.host.stats.items_dropped >= len(garbage)
            assert leader.groups[1].term < 99
            assert leader.groups[1].is_leader
            await asyncio.wait_for(leader.groups[1].propose(batch(b"still fine")), 5)
        finally:
            await rogue.close()


async def test_app_messages_reach_the_peer_callbacks(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        got: list[tuple[int, bytes]] = []
        assert nodes[2].host is not None
        assert nodes[1].host is not None
        nodes[2].host.on_app_message(lambda frm, data: got.append((frm, data)))
        assert nodes[1].host.send_app(2, b"report")
        assert not nodes[1].host.send_app(9, b"nobody")  # unknown peer: not queued
        assert not nodes[1].host.send_app(2, b"x" * (MAX_APP_MESSAGE_BYTES + 1))
        await until(lambda: got == [(1, b"report")], 5, "the app message")
        assert nodes[1].host.down_peers() == frozenset()


async def test_read_index_transfer_and_leader_callbacks(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        seen: list[tuple[int, int]] = []
        nodes[2].groups[1].on_leader_change(lambda leader, term: seen.append((leader, term)))
        leader = await elect(nodes)
        index = await leader.groups[1].propose(batch(b"x"))
        read_at = await asyncio.wait_for(leader.groups[1].read_index(), 5)
        assert read_at >= index
        follower = nodes[2] if leader.id != 2 else nodes[3]
        with pytest.raises(NotLeaderError):
            await follower.groups[1].read_index()
        await until(lambda: follower.groups[1].applied_index >= index, 5, "follower applied")
        target = follower.id
        leader.groups[1].transfer_leader(target)
        await until(lambda: follower.groups[1].is_leader, 10, "the transfer")
        assert not leader.groups[1].is_leader
        await until(lambda: any(lead == target for lead, _ in seen), 5, "the callback")
        assert seen[0][0] == leader.id
        terms = [t for _, t in seen]
        assert terms == sorted(terms)


async def test_follower_that_cut_a_corrupt_segment_catches_up_from_an_idle_leader(
    tmp_path: Path,
) -> None:
    small = LogConfig(segment_bytes=2048, index_interval_bytes=256)
    async with cluster(tmp_path, log_config=small) as nodes:
        leader = await elect(nodes)
        last = 0
        for i in range(60):
            last = await leader.groups[1].propose(batch(b"record %d" % i))
        victim = next(n for n in nodes.values() if n is not leader)
        await asyncio.wait_for(victim.groups[1].wait_committed(last), 5)
        await until(
            lambda: all(
                n.host is not None and n.host.active_group_count() == 0 for n in nodes.values()
            ),
            10,
            "quiescence",
        )
        await victim.stop()
        segments = sorted((victim.root / "g1" / "log").glob("*.log"))
        assert len(segments) > 2
        raw = bytearray(segments[0].read_bytes())
        raw[-3] ^= 0x01  # the tail of a sealed segment: found on open
        segments[0].write_bytes(bytes(raw))
        victim.transport = PeerTransport(victim.id, "tcp://127.0.0.1:0")
        await victim.start()
        for n in nodes.values():
            if n is not victim:
                victim.transport.add_peer(n.id, n.transport.address)
                n.transport.add_peer(victim.id, victim.transport.address)
        g = victim.add_group(1, log_config=small)
        assert g.last_index < last
        assert victim.logs[1].recovering_until >= last
        # No new proposals: the idle, quiesced leader must still bring it back.
        await until(lambda: g.last_index >= last and g.commit_index >= last, 15, "catch-up")
        want = leader.logs[1].entries(1, last + 1, 1 << 30)
        assert victim.logs[1].entries(1, last + 1, 1 << 30) == want
        assert victim.logs[1].recovering_until == 0


async def test_short_fsyncs_run_on_the_loop_unless_disabled(tmp_path: Path) -> None:
    for inline_us, expect_inline in ((1_000_000, True), (0, False)):
        async with cluster(tmp_path / str(inline_us), inline_sync_us=inline_us) as nodes:
            leader = await elect(nodes)
            for i in range(5):
                await asyncio.wait_for(leader.groups[1].propose(batch(b"x%d" % i)), 5)
            stats = [n.host.stats for n in nodes.values() if n.host is not None]
            assert all(s.fsyncs > 0 for s in stats)
            inline = sum(s.inline_fsyncs for s in stats)
            assert (inline > 0) is expect_inline, stats


async def test_followers_acknowledge_only_after_their_fsync(tmp_path: Path) -> None:
    import threading

    # The held fsync blocks its thread: it must be a worker's, not the shared loop's.
    async with cluster(tmp_path, inline_sync_us=0) as nodes:
        leader = await elect(nodes)
        followers = [n for n in nodes.values() if n is not leader]
        for n in followers:
            await until(lambda n=n: n.groups[1].leader == leader.id, 5, "followers know")
        gates = []
        for n in followers:
            gate = threading.Event()
            gates.append(gate)
            log = n.logs[1]
            real_sync = log.sync

            def held_sync(
                real_sync: Callable[[], int] = real_sync, gate: threading.Event = gate
            ) -> int:
                gate.wait(10)
                return real_sync()

            log.sync = held_sync  # type: ignore[method-assign]
        index = leader.groups[1].last_index + 1
        fut = leader.groups[1].propose(batch(b"held"))
        await until(lambda: all(n.groups[1].last_index >= index for n in followers), 5, "written")
        # Written but not synced on the followers: no acknowledgement, no commit.
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            for f in followers:
                progress = leader.groups[1].progress()
                assert progress[f.id][0] < index
            assert not fut.done()
            await asyncio.sleep(0.02)
        for gate in gates:
            gate.set()
        assert await asyncio.wait_for(fut, 5) == index


async def test_a_state_machine_behind_the_log_start_gets_on_snapshot(tmp_path: Path) -> None:
    """A records=False group (a state machine): the leader compacts its log with the
    machine's state; a follower that was away receives it through ``on_snapshot``
    before the entries after it reach ``on_apply``."""
    applied: dict[int, list[bytes]] = {i: [] for i in IDS}
    installed: dict[int, list[int]] = {i: [] for i in IDS}

    def add_machine(n: Node) -> GroupHandle:
        assert n.host is not None
        log = RaftLog.open(n.root / "machine", LogConfig(), records=False)
        log.bootstrap(ConfState(voters=frozenset(IDS)))
        n.logs[9] = log

        def on_apply(entries: list[Entry]) -> None:
            applied[n.id].extend(e.data for e in entries if e.data and e.type == EntryType.NORMAL)

        def on_snapshot(snap: Snapshot) -> None:
            installed[n.id].append(snap.metadata.index)
            applied[n.id][:] = msgpack.unpackb(snap.data)

        rc = RaftConfig(id=n.id, election_tick=n.config.election_tick)
        n.groups[9] = n.host.add_group(9, log, rc, on_apply=on_apply, on_snapshot=on_snapshot)
        return n.groups[9]

    async with cluster(tmp_path, groups=0) as nodes:
        for n in nodes.values():
            add_machine(n)
        leader = await elect(nodes, gid=9)
        away = next(n for n in nodes.values() if n is not leader)
        await away.stop()
        last = 0
        for i in range(10):
            last = await leader.groups[9].propose(b"cmd%d" % i)
        await until(lambda: leader.groups[9].applied_index >= last, 5, "the leader to apply")
        assert leader.host is not None
        async with leader.host.exclusive():
            leader.logs[9].sync()
            leader.logs[9].compact(last, msgpack.packb(applied[leader.id]))
        away.transport = PeerTransport(away.id, "tcp://127.0.0.1:0")
        await away.start()
        for n in nodes.values():
            if n is not away:
                away.transport.add_peer(n.id, n.transport.address)
                n.transport.add_peer(away.id, away.transport.address)
        applied[away.id].clear()
        add_machine(away)
        after = await leader.groups[9].propose(b"after")
        await until(lambda: away.groups[9].applied_index >= after, 10, "the follower to catch up")
        assert installed[away.id] == [last]
        assert applied[away.id] == [b"cmd%d" % i for i in range(10)] + [b"after"]


async def test_a_slow_leader_fsync_holds_back_neither_sends_nor_durable_commits(
    tmp_path: Path,
) -> None:
    """While the leader's fsync of C hangs, the leader still steps its followers'
    acknowledgements and answers B, committed and already on its own disk; C (not
    yet durable on the leader) is answered only once that fsync ends."""
    import threading

    async with cluster(tmp_path) as nodes:
        leader = await elect(nodes)
        followers = [n for n in nodes.values() if n is not leader]
        for n in followers:
            await until(lambda n=n: n.groups[1].leader == leader.id, 5, "followers know")
        follower_gate = threading.Event()
        for n in followers:
            real = n.logs[1].sync

            def follower_sync(real: Callable[[], int] = real) -> int:
                follower_gate.wait(10)
                return real()

            n.logs[1].sync = follower_sync  # type: ignore[method-assign]
        leader_gate = threading.Event()
        hold_leader = threading.Event()
        leader_synced = [0]
        real_leader_sync = leader.logs[1].sync

        def leader_sync() -> int:
            if hold_leader.is_set():
                leader_gate.wait(10)
            index = real_leader_sync()
            leader_synced[0] = max(leader_synced[0], index)
            return index

        leader.logs[1].sync = leader_sync  # type: ignore[method-assign]
        try:
            b_index = leader.groups[1].last_index + 1
            b = leader.groups[1].propose(batch(b"B"))
            await until(lambda: leader_synced[0] >= b_index, 5, "B durable on the leader")
            hold_leader.set()
            c = leader.groups[1].propose(batch(b"C"))
            c_index = b_index + 1
            await until(lambda: leader.groups[1].last_index >= c_index, 5, "C written")
            follower_gate.set()  # the followers acknowledge B and C: both commit
            assert await asyncio.wait_for(b, 5) == b_index
            d = leader.groups[1].propose(batch(b"D"))  # appended and sent meanwhile
            d_index = c_index + 1
            await until(
                lambda: all(f.groups[1].last_index >= d_index for f in followers), 5, "D sent"
            )
            # Not durable on the leader yet: not answered.
            assert not c.done()
            assert not d.done()
            leader_gate.set()
            assert await asyncio.wait_for(c, 5) == c_index
            assert await asyncio.wait_for(d, 5) == d_index
        finally:
            follower_gate.set()
            leader_gate.set()
