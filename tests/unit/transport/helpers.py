"""Wiring for transport tests: meshes of real transports on free loopback ports,
and waits on conditions with deadlines (never fixed sleeps)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from zstream.replication import PeerMessage, PeerTransport, TransportConfig

LOOPBACK = "tcp://127.0.0.1:0"
PROBE = b"probe"
DEADLINE_S = 10.0
POLL_S = 0.005


@asynccontextmanager
async def mesh(n: int, config: TransportConfig | None = None) -> AsyncIterator[list[PeerTransport]]:
    """Nodes 1..n, each peered with all others, closed on exit."""
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(PeerTransport(i, LOOPBACK, config))
            for i in range(1, n + 1)
        ]
        for a in nodes:
            for b in nodes:
                if a is not b:
                    a.add_peer(b.local_id, b.address)
        for a in nodes:
            for b in nodes:
                if a is not b:
                    await wait_connected(a, b.local_id)
        yield nodes


async def wait_for(cond: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)


async def wait_connected(t: PeerTransport, peer: int, deadline_s: float = DEADLINE_S) -> None:
    """Send probes until one is accepted: with ZMQ_IMMEDIATE that means connected.

    Receivers skip probes (``recv_items`` drops them).
    """

    def probe_accepted() -> bool:
        before = t.stats.sent_msgs
        t.send(peer, PROBE)
        t.flush()
        return t.stats.sent_msgs > before

    await wait_for(probe_accepted, f"node {t.local_id} connected to {peer}", deadline_s)


async def recv_items(
    t: PeerTransport, count: int, deadline_s: float = DEADLINE_S
) -> list[PeerMessage]:
    """Receive exactly ``count`` non-probe items (fails if more arrive in the same batch)."""
    got: list[PeerMessage] = []
    async with asyncio.timeout(deadline_s):
        while len(got) < count:
            got.extend(m for m in await t.recv_batch() if m.header != PROBE)
    assert len(got) == count, f"expected {count} items, got {len(got)}"
    return got


def as_tuples(items: list[PeerMessage]) -> list[tuple[int, bytes, list[bytes]]]:
    return [(m.from_node, m.header, [bytes(p) for p in m.payloads]) for m in items]


async def send_until_received(
    src: PeerTransport,
    dst: PeerTransport,
    header: bytes,
    payloads: list[bytes],
    deadline_s: float = DEADLINE_S,
) -> PeerMessage:
    """Resend an item until ``dst`` gets it, as Raft would across a reconnect
    (items sent while a peer restarts may be lost); returns the received item."""
    async with asyncio.timeout(deadline_s):
        while True:
            src.send(dst.local_id, header, payloads)
            src.flush()
            try:
                async with asyncio.timeout(0.05):
                    batch = await dst.recv_batch()
            except TimeoutError:
                continue
            for m in batch:
                if m.header == header:
                    return m
