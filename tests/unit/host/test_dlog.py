"""DistributedLog (async, in one loop) and BlockingDistributedLog, on real transports."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from zstream.replication import (
    BlockingDistributedLog,
    ConfigError,
    DistributedLog,
    DistributedLogConfig,
    NotLeaderError,
    RaftLogError,
    Server,
)
from zstream.storage import LogConfig, OffsetOutOfRange

ANY = "tcp://127.0.0.1:0"


def config(node_id: int, *, bootstrap: bool = False) -> DistributedLogConfig:
    return DistributedLogConfig(
        local_id=node_id,
        bind_addr=ANY,
        bootstrap=bootstrap,
        heartbeat_timeout_ms=20,
        election_timeout_ms=200,
    )


async def eventually(cond, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        DistributedLogConfig(local_id=0, bind_addr=ANY)
    with pytest.raises(ConfigError):
        DistributedLogConfig(local_id=1, bind_addr="ipc://x")
    with pytest.raises(ConfigError):
        DistributedLogConfig(
            local_id=1, bind_addr=ANY, heartbeat_timeout_ms=100, election_timeout_ms=150
        )
    assert DistributedLogConfig(local_id=1, bind_addr=ANY).election_tick == 10


async def test_two_nodes_async(tmp_path: Path) -> None:
    async with (
        DistributedLog(tmp_path / "a", config(1, bootstrap=True)) as a,
        DistributedLog(tmp_path / "b", config(2)) as b,
    ):
        assert await a.wait_for_leader(5) == 1
        assert [await a.append(b"r%d" % i) for i in range(3)] == [0, 1, 2]
        await a.join(2, b.address)
        assert a.get_servers() == [Server(1, a.address, True), Server(2, b.address, False)]

        async def b_has_all() -> bool:
            return b.commit_offset() == 3

        await eventually(b_has_all)
        assert await b.read_range(0, 10) == [b"r0", b"r1", b"r2"]
        assert await b.read_range(3, 10) == []
        with pytest.raises(OffsetOutOfRange):
            await b.read(3)
        with pytest.raises(NotLeaderError) as info:
            await b.append(b"no")
        assert info.value.leader_hint == 1
        assert [s.id for s in b.get_servers()] == [1, 2]
        assert await a.snapshot() == 3
        with pytest.raises(OffsetOutOfRange):
            await a.read(2)


def test_blocking_form(tmp_path: Path) -> None:
    with BlockingDistributedLog(tmp_path, config(1, bootstrap=True)) as dlog:
        assert dlog.wait_for_leader(5) == 1
        assert dlog.append(b"hello") == 0
        assert dlog.read(0) == b"hello"
        assert dlog.get_servers() == [Server(1, dlog.address, True)]
        with pytest.raises(OffsetOutOfRange):
            dlog.read(1)
    # Reopen: the record is still there.
    with BlockingDistributedLog(tmp_path, config(1, bootstrap=True)) as dlog:
        assert dlog.wait_for_leader(5) == 1
        assert dlog.read(0) == b"hello"
        assert dlog.append(b"again") == 1


def test_wait_for_leader_timeout(tmp_path: Path) -> None:
    with BlockingDistributedLog(tmp_path, config(5)) as dlog, pytest.raises(TimeoutError):
        dlog.wait_for_leader(0.2)


async def test_corrupt_segment_met_by_a_read_fail_stops_and_is_cut_on_reopen(
    tmp_path: Path,
) -> None:
    small = dataclasses.replace(
        config(1, bootstrap=True),
        log_config=LogConfig(segment_bytes=1024, index_interval_bytes=128),
    )
    async with DistributedLog(tmp_path, small) as dlog:
        await dlog.wait_for_leader(5)
        for i in range(40):
            await dlog.append(b"record %d" % i)
        last = dlog.raft_log.last_index()
    first_segment = sorted((tmp_path / "group" / "log").glob("*.log"))[0]
    raw = bytearray(first_segment.read_bytes())
    raw[200] ^= 0x01  # inside the segment, where open does not verify
    first_segment.write_bytes(bytes(raw))
    async with DistributedLog(tmp_path, small) as dlog:
        with pytest.raises(RaftLogError):
            await dlog.read(0)
        assert dlog.failed.is_set()
    async with DistributedLog(tmp_path, small) as dlog:
        assert dlog.raft_log.last_index() == 0
        assert dlog.raft_log.recovering_until == last
        # Alone, it may not elect itself with a log it knows is short.
        with pytest.raises(TimeoutError):
            await dlog.wait_for_leader(0.5)
