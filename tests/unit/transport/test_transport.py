"""PeerTransport on real ZeroMQ sockets over loopback, in one event loop
(run on asyncio's loop and on uvloop, see conftest.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq

from zstream.replication import (
    PeerTransport,
    TransportClosedError,
    TransportConfig,
    TransportError,
    decode_peer_frames,
    encode_peer_frames,
)

from .helpers import (
    LOOPBACK,
    PROBE,
    as_tuples,
    mesh,
    recv_items,
    send_until_received,
    wait_connected,
    wait_for,
)

MiB = 1024 * 1024


async def test_two_nodes_exchange_items() -> None:
    async with mesh(2) as (a, b):
        a.send(2, b"to-b", [b"p1", b"p2"])
        a.flush()
        b.send(1, b"to-a")
        b.flush()
        assert as_tuples(await recv_items(b, 1)) == [(1, b"to-b", [b"p1", b"p2"])]
        assert as_tuples(await recv_items(a, 1)) == [(2, b"to-a", [])]


async def test_three_nodes_each_hear_both_others() -> None:
    async with mesh(3) as nodes:
        for t in nodes:
            for peer in nodes:
                if peer is not t:
                    t.send(peer.local_id, b"from %d" % t.local_id, [bytes([t.local_id])])
            t.flush()
        for t in nodes:
            got = sorted(as_tuples(await recv_items(t, 2)))
            others = sorted(p.local_id for p in nodes if p is not t)
            assert got == [(o, b"from %d" % o, [bytes([o])]) for o in others]


async def test_many_sends_one_flush_arrive_as_one_multipart_in_order() -> None:
    async with mesh(2) as (a, b):
        sent_before = a.stats.sent_multiparts
        expected = [(1, b"h%d" % i, [b"x%d-%d" % (i, j) for j in range(i % 4)]) for i in range(300)]
        for _, header, payloads in expected:
            a.send(2, header, payloads)
        a.flush()
        assert a.stats.sent_multiparts == sent_before + 1
        # A multipart message arrives whole, so the first batch holding any of
        # the items holds all of them (probes from the mesh setup aside).
        async with asyncio.timeout(10):
            while not (got := [m for m in await b.recv_batch() if m.header != PROBE]):
                pass
        assert as_tuples(got) == expected


async def test_wire_format_seen_by_a_raw_router() -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        async with PeerTransport(7, LOOPBACK) as t:
            t.add_peer(9, f"tcp://127.0.0.1:{port}")
            await wait_connected(t, 9)
            assert router.poll(5000)
            assert router.recv_multipart()[0] == b"7"  # the probe
            items = [(b"a", [b"1", b"2"]), (b"b", []), (b"c", [b"3" * 100_000])]
            for header, payloads in items:
                t.send(9, header, payloads)
            t.flush()
            assert router.poll(5000)
            frames = router.recv_multipart()
            assert frames[0] == b"7"
            assert frames[1:] == encode_peer_frames(7, items)
            assert router.poll(0) == 0  # exactly one multipart message
            decoded = decode_peer_frames(frames[0], frames[1:])
            assert [(m.header, [bytes(p) for p in m.payloads]) for m in decoded] == items
    finally:
        router.close()
        ctx.term()


async def test_restarted_peer_is_reconnected_and_receives_again() -> None:
    async with mesh(2) as (a, b):
        addr = b.address
        a.send(2, b"before")
        a.flush()
        assert as_tuples(await recv_items(b, 1)) == [(1, b"before", [])]
        await b.close()
        async with PeerTransport(2, addr) as b2:
            b2.add_peer(1, a.address)
            # Items sent while b was down or the old connection was not yet
            # seen as closed are lost: resend until received, as Raft does.
            got = await send_until_received(a, b2, b"after", [b"x"])
            assert as_tuples([got]) == [(1, b"after", [b"x"])]
            got = await send_until_received(b2, a, b"hello again", [])
            assert as_tuples([got]) == [(2, b"hello again", [])]
            assert b2.stats.decode_errors == 0


async def test_dead_peer_drops_without_blocking() -> None:
    async with mesh(2) as (a, b):
        await b.close()
        slowest = 0.0

        def flush_once() -> bool:
            nonlocal slowest
            a.send(2, b"x", [b"y" * 1000])
            start = time.perf_counter()
            a.flush()
            slowest = max(slowest, time.perf_counter() - start)
            return a.stats.dropped_msgs > 0

        await wait_for(flush_once, "a drop to the dead peer")
        assert (
            slowest < 5.0
        )  # a blocking send would hang; one stall of a loaded CI host must not fail


async def test_unconnected_peer_drops_at_once() -> None:
    # Nothing listens on the peer address: IMMEDIATE refuses to queue.
    probe: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    async with PeerTransport(1, LOOPBACK) as a:
        a.add_peer(2, f"tcp://127.0.0.1:{port}")
        a.send(2, b"x", [b"abc"])
        a.flush()
        assert a.stats.dropped_msgs == 1
        assert a.stats.dropped_bytes == 4
        assert a.stats.sent_msgs == 0


async def test_flood_to_a_peer_that_does_not_read_drops_and_counts() -> None:
    small = TransportConfig(send_hwm_msgs=2, recv_hwm_msgs=2)
    async with mesh(2, small) as (a, _b):
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        payload = [memoryview(bytes(256 * 1024))]
        before = a.stats
        async with asyncio.TaskGroup() as tg:
            tg.create_task(ticker())
            slowest = 0.0
            end = time.monotonic() + 20
            while a.stats.dropped_msgs - before.dropped_msgs < 10 and time.monotonic() < end:
                a.send(2, b"flood", payload)
                start = time.perf_counter()
                a.flush()
                slowest = max(slowest, time.perf_counter() - start)
                await asyncio.sleep(0)
            stop.set()
        after = a.stats
        assert after.dropped_msgs - before.dropped_msgs >= 10
        assert after.dropped_bytes - before.dropped_bytes >= 10 * (256 * 1024 + len(b"flood"))
        assert (
            slowest < 5.0
        )  # a blocking send would hang; one stall of a loaded CI host must not fail
        assert ticks > 10


async def test_large_zero_copy_payload_arrives_intact() -> None:
    data = bytes(range(256)) * (4 * 1024)  # 1 MiB
    view = memoryview(data)[1:-1]
    async with mesh(2) as (a, b):
        a.send(2, b"big", [view, b"small"])
        a.flush()
        (item,) = await recv_items(b, 1)
        assert item.payloads[0] == view
        assert bytes(item.payloads[1]) == b"small"
        assert b.stats.received_bytes >= len(view)


async def test_send_to_unknown_peer_is_dropped_and_counted() -> None:
    async with PeerTransport(1, LOOPBACK) as a:
        a.send(5, b"hdr", [b"12345"])
        a.flush()
        assert a.stats.dropped_msgs == 1
        assert a.stats.dropped_bytes == 8


async def test_removed_peer_drops_what_was_queued() -> None:
    async with mesh(2) as (a, _b):
        before = a.stats.dropped_msgs
        a.send(2, b"queued")
        a.remove_peer(2)
        assert a.peers() == {}
        a.flush()
        assert a.stats.dropped_msgs == before + 1
        a.remove_peer(2)  # unknown ids are ignored


async def test_oversized_frames_are_refused_locally() -> None:
    cfg = TransportConfig(max_frame_bytes=4096)
    async with mesh(2, cfg) as (a, _b):
        with pytest.raises(TransportError, match="payload"):
            a.send(2, b"h", [bytes(4097)])
        with pytest.raises(TransportError, match="header"):
            a.send(2, bytes(4096))


async def test_many_headers_are_split_so_no_envelope_exceeds_the_frame_limit() -> None:
    cfg = TransportConfig(max_frame_bytes=4096)
    async with mesh(2, cfg) as (a, b):
        before = a.stats.sent_multiparts
        expected: list[tuple[int, bytes, list[bytes]]] = [
            (1, b"%04d" % i + bytes(500), []) for i in range(40)
        ]
        for _, header, _payloads in expected:
            a.send(2, header)
        a.flush()
        assert as_tuples(await recv_items(b, len(expected))) == expected
        assert a.stats.sent_multiparts - before > 1
        assert b.stats.decode_errors == 0


async def test_peer_bookkeeping() -> None:
    async with PeerTransport(1, LOOPBACK) as a:
        with pytest.raises(ValueError, match="own peer"):
            a.add_peer(1, "tcp://127.0.0.1:1")
        with pytest.raises(ValueError, match="node_id"):
            a.add_peer(0, "tcp://127.0.0.1:1")
        with pytest.raises(TransportError, match="cannot connect"):
            a.add_peer(2, "bogus://nowhere")
        a.add_peer(2, "tcp://127.0.0.1:1")
        a.add_peer(2, "tcp://127.0.0.1:1")
        a.add_peer(3, "tcp://127.0.0.1:2")
        a.add_peer(2, "tcp://127.0.0.1:3")
        assert a.peers() == {2: "tcp://127.0.0.1:3", 3: "tcp://127.0.0.1:2"}


async def test_bind_failure_is_a_transport_error() -> None:
    async with PeerTransport(1, LOOPBACK) as a:
        with pytest.raises(TransportError, match="cannot bind"):
            await PeerTransport(2, a.address).start()


async def test_lifecycle_errors() -> None:
    t = PeerTransport(1, LOOPBACK)
    with pytest.raises(TransportClosedError):
        _ = t.address
    with pytest.raises(TransportClosedError):
        t.add_peer(2, "tcp://127.0.0.1:1")
    await t.start()
    with pytest.raises(TransportError, match="already started"):
        await t.start()
    await t.close()
    await t.close()  # idempotent
    with pytest.raises(TransportClosedError):
        t.send(2, b"x")
    with pytest.raises(TransportClosedError):
        t.flush()
    with pytest.raises(TransportClosedError):
        await t.recv_batch()
    with pytest.raises(TransportClosedError):
        await t.start()


async def test_close_wakes_a_waiting_receiver() -> None:
    t = PeerTransport(1, LOOPBACK)
    await t.start()
    waiter = asyncio.create_task(t.recv_batch())
    await asyncio.sleep(0)  # let it start waiting
    assert not waiter.done()
    await t.close()
    with pytest.raises(TransportClosedError):
        await waiter


async def test_cancelling_a_receiver_is_plain_cancellation() -> None:
    async with PeerTransport(1, LOOPBACK) as t:
        waiter = asyncio.create_task(t.recv_batch())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert t.recv_batch_nowait() == []


async def test_one_recv_batch_drains_at_most_recv_drain_max_msgs() -> None:
    cfg = TransportConfig(recv_drain_max_msgs=3)
    async with mesh(2, cfg) as (a, b):
        await wait_for(lambda: b.recv_batch_nowait() == [], "probes drained")
        for i in range(10):
            a.send(2, b"m%d" % i)
            a.flush()  # one multipart message each
        got: list[bytes] = []
        sizes: list[int] = []
        # On loopback the ten messages are all queued at b almost at once, so
        # an unbounded drain would return them together.
        async with asyncio.timeout(10):
            while len(got) < 10:
                batch = [m.header for m in await b.recv_batch() if m.header != PROBE]
                sizes.append(len(batch))
                got.extend(batch)
        assert got == [b"m%d" % i for i in range(10)]
        assert max(sizes) <= 3


async def test_stats_are_a_snapshot() -> None:
    async with PeerTransport(1, LOOPBACK) as a:
        snapshot = a.stats
        a.send(9, b"x")
        assert snapshot.dropped_msgs == 0
        assert a.stats.dropped_msgs == 1
