"""RaftReplica's idempotence on a real one-node Raft host: a retry that arrives while
its original is still queued in the host, just as the producer table is rebuilt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from zstream import storage
from zstream.broker._partitions import RaftReplica
from zstream.clients import Acks
from zstream.replication import ConfState, HostConfig, PeerTransport, RaftConfig, RaftHost, RaftLog


async def _until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


class OneNode:
    def __init__(self, host: RaftHost, replica: RaftReplica) -> None:
        self.host, self.replica = host, replica


@pytest.fixture
async def one_node(tmp_path: Path) -> AsyncIterator[OneNode]:
    transport = PeerTransport(1, "tcp://127.0.0.1:0")
    await transport.start()
    host = RaftHost(1, transport, HostConfig(tick_ms=20))
    task = asyncio.create_task(host.run())
    log = RaftLog.open(tmp_path / "g1", storage.LogConfig(), records=True)
    log.bootstrap(ConfState(voters=frozenset({1})))
    try:
        handle = host.add_group(1, log, RaftConfig(id=1))
        replica = RaftReplica(handle, log)
        handle.campaign()
        await _until(lambda: replica.is_leader, 10, "leadership")
        yield OneNode(host, replica)
    finally:
        await host.close()
        await task
        await transport.close()
        log.close()


def _batch(seq: int, value: bytes) -> bytes:
    return storage.encode_batch([(None, value)], producer_id=7, producer_epoch=0, base_sequence=seq)


async def test_a_retry_of_a_batch_still_queued_in_the_host_is_not_written_twice(
    one_node: OneNode,
) -> None:
    replica = one_node.replica
    assert await replica.produce(_batch(0, b"a"), Acks.ALL, 5) == 0
    async with one_node.host.exclusive():  # passes held: proposals stay queued
        original = asyncio.create_task(replica.produce(_batch(1, b"b"), Acks.ALL, 5))
        await asyncio.sleep(0)  # one turn: the original runs up to its proposal
        assert replica.log_end_offset == 1  # queued in the host, not in the log
        replica.leadership_changed()  # the table is rebuilt from the log on next use
        retry = asyncio.create_task(replica.produce(_batch(1, b"b"), Acks.ALL, 5))
        await asyncio.sleep(0)  # one turn: the retry is checked against the table
        assert not original.done()
    assert await asyncio.wait_for(original, 10) == 1
    assert await asyncio.wait_for(retry, 10) == 1  # the original's offset
    assert replica.log_end_offset == 2  # "b" once
    assert await replica.produce(_batch(2, b"c"), Acks.ALL, 5) == 2
