"""PeerTransport between real processes on loopback: a peer killed with SIGKILL
and restarted on the same address is reconnected; meanwhile flush never blocks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from zstream.replication import PeerMessage, PeerTransport

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 10.0

pytestmark = pytest.mark.integration


@contextmanager
def echo_node(
    node_id: int, bind_addr: str, peer_id: int, peer_addr: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start the echo node; yield (process, bound address); kill it by PID on exit."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration._transport_echo_node",
            str(node_id),
            bind_addr,
            str(peer_id),
            peer_addr,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        addr = proc.stdout.readline().strip()  # the readiness line
        assert addr.startswith("tcp://"), f"echo node {proc.pid} did not start"
        yield proc, addr
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def echo_round_trip(t: PeerTransport, peer: int, header: bytes) -> PeerMessage:
    """Send until the echo comes back (items sent across a restart may be lost)."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            t.send(peer, header, [header * 100])
            t.flush()
            try:
                async with asyncio.timeout(0.05):
                    batch = await t.recv_batch()
            except TimeoutError:
                continue
            for m in batch:
                if m.header == b"echo:" + header:
                    return m


async def test_killed_peer_process_is_reconnected_after_restart() -> None:
    async with PeerTransport(1, "tcp://127.0.0.1:0") as t:
        with echo_node(2, "tcp://127.0.0.1:0", 1, t.address) as (proc, addr):
            t.add_peer(2, addr)
            got = await echo_round_trip(t, 2, b"one")
            assert (got.from_node, [bytes(p) for p in got.payloads]) == (2, [b"one" * 100])
            proc.kill()
            proc.wait()

            # The peer is gone: flushes keep returning at once, and drop.
            dropped_before = t.stats.dropped_msgs
            end = time.monotonic() + DEADLINE_S
            slowest = 0.0
            while t.stats.dropped_msgs == dropped_before and time.monotonic() < end:
                t.send(2, b"into the void")
                start = time.perf_counter()
                t.flush()
                slowest = max(slowest, time.perf_counter() - start)
                await asyncio.sleep(0.001)
            assert t.stats.dropped_msgs > dropped_before
            assert (
                slowest < 5.0
            )  # a blocking send would hang; one stall of a loaded CI host must not fail

        # Same node id, same address: a restart.
        with echo_node(2, addr, 1, t.address) as (_proc2, addr2):
            assert addr2 == addr
            got = await echo_round_trip(t, 2, b"two")
            assert (got.from_node, [bytes(p) for p in got.payloads]) == (2, [b"two" * 100])
