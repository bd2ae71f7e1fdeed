"""Hypothesis throws malformed frames at a live front end on a real socket: each
gets an error reply or is dropped, and a valid client is served after each one."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import given, settings

from broker._frontend import Frontend
from clients import ErrorCode, MetadataRequest
from clients._protocol import decode_reply, encode_request
from tests.support.malformed import malformed_messages
from tests.unit.broker.fakes import FakeBackend, FakePartition

MAX_BYTES = 64 * 1024


class LiveFrontend:
    """A front end serving from its own thread and event loop."""

    def __init__(self) -> None:
        self.addr = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()))

    async def _main(self) -> None:
        backend = FakeBackend()
        backend.topics["t"] = [FakePartition()]
        frontend = Frontend(backend, "tcp://127.0.0.1:*", max_message_bytes=MAX_BYTES)
        self.addr = frontend.addr
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        task = asyncio.create_task(frontend.run())
        self._ready.set()
        await self._stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await frontend.close()

    def __enter__(self) -> LiveFrontend:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.fixture(scope="module")
def client() -> Iterator[zmq.Socket[bytes]]:
    with LiveFrontend() as live:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.connect(live.addr)
        try:
            yield sock
        finally:
            sock.close()
            ctx.term()


_probe_ids = itertools.count(1_000_000)

_messages = malformed_messages("t", MAX_BYTES + 1)


@settings(max_examples=300)
@given(_messages)
def test_malformed_frames_never_stop_the_broker(
    client: zmq.Socket[bytes], frames: list[bytes]
) -> None:
    client.send_multipart(frames)
    probe = next(_probe_ids)
    client.send_multipart(encode_request(probe, MetadataRequest()))
    while True:
        reply = decode_reply(client.recv_multipart())
        if reply.corr_id == probe:
            assert reply.error == ErrorCode.NONE
            return
        assert reply.error != ErrorCode.NONE
        assert reply.error != ErrorCode.UNKNOWN_SERVER_ERROR, reply.message
