"""One asynchronous connection to one broker: a DEALER socket, many requests in
flight, each matched to its reply by correlation id, plus push streams.

A reader task (owned by the connection, ended by `close`) routes every incoming
message: replies resolve the waiting request's future, pushes go to their stream's
queue. A request that gets no reply in time fails with ``RequestTimedOutError``,
or with ``ConnectionLostError`` when nothing was ever heard from the broker. After
a timeout the socket is replaced (fresh identity), so that stale replies and a
dead peer's queue are dropped; ZeroMQ reconnects underneath on its own.

With `Credentials` the socket is a CURVE client. A broker that refuses the key
closes the connection at the handshake without an answer (and libzmq does not
retry it): the request fails with ``ConnectionLostError`` after its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from zstream.clients._credentials import Credentials
from zstream.clients._errors import ConnectionLostError, RequestTimedOutError, ZStreamError
from zstream.clients._protocol import (
    Buffer,
    Push,
    Reply,
    RequestArgs,
    decode_incoming,
    encode_request,
)

__all__ = ["Connection", "normalize_address"]

_WATCHED = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED


def normalize_address(addr: str) -> str:
    """``host:port`` or ``tcp://host:port`` to ``tcp://host:port``."""
    addr = addr.strip()
    return addr if "://" in addr else f"tcp://{addr}"


class Connection:
    def __init__(
        self,
        addr: str,
        *,
        timeout_s: float = 10.0,
        context: zmq.asyncio.Context | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.addr = normalize_address(addr)
        self._credentials = credentials
        self.timeout_s = timeout_s
        self._own_ctx = context is None
        self._ctx = context or zmq.asyncio.Context()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._streams: dict[int, asyncio.Queue[Push]] = {}
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        # The broker closed its end and ZeroMQ has not connected again since: a request
        # now would wait for a process that is gone, so it fails at once instead.
        self._down = False
        self._heard = False
        self._closed = False

    def _ensure_open(self) -> zmq.asyncio.Socket:
        if self._closed:
            raise ConnectionLostError(f"connection to {self.addr} is closed")
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            if self._credentials is not None:
                sock.setsockopt(zmq.CURVE_SERVERKEY, self._credentials.server_key)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, self._credentials.public_key)
                sock.setsockopt(zmq.CURVE_SECRETKEY, self._credentials.secret_key)
            monitor = sock.get_monitor_socket(_WATCHED)
            sock.connect(self.addr)
            self._sock = sock
            self._reader = asyncio.create_task(self._read(sock))
            self._watcher = asyncio.create_task(self._watch(monitor))
        return self._sock

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        """The broker's end of the TCP connection closed (its process died or was
        stopped): nothing sent before will be answered, so every request waiting
        fails now with ConnectionLostError (retriable), and every push stream is told
        it closed, instead of waiting out their timeouts; until ZeroMQ has connected
        again (it retries by itself), new requests fail at once too, so a client moves
        on to another broker. (A silent peer, such as a host that vanished, still shows
        only as a timeout.)"""
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                if event["event"] == zmq.EVENT_DISCONNECTED:
                    self._down = True
                    self._lost(f"broker at {self.addr} closed the connection")
                else:  # connected (again)
                    self._down = False
        finally:
            monitor.close(linger=0)

    def _lost(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLostError(why))
        closed = {"err": int(ConnectionLostError.code), "msg": why}
        for stream, queue in self._streams.items():
            queue.put_nowait(Push(stream, "closed", dict(closed)))

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart(copy=False)
            try:
                message = decode_incoming([f.buffer for f in frames])
            except ZStreamError:
                continue  # a broken message from the broker: nobody is waiting for it
            self._heard = True
            if isinstance(message, Push):
                self._streams.setdefault(message.stream, asyncio.Queue()).put_nowait(message)
                continue
            future = self._pending.pop(message.corr_id, None)
            if future is not None and not future.done():
                future.set_result(message)

    async def _reset(self) -> None:
        """Drop the socket and fail everything waiting on it."""
        sock, reader, watcher = self._sock, self._reader, self._watcher
        self._sock, self._reader, self._watcher = None, None, None
        self._down = False
        for task in (reader, watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, zmq.ZMQError):
                    await task
        if sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            sock.close(linger=0)
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLostError(f"connection to {self.addr} was reset"))

    async def call(
        self, args: RequestArgs, frames: Sequence[Buffer] = (), *, timeout_s: float | None = None
    ) -> Reply:
        """Send one request and return its successful reply; errors raise."""
        reply = await self.call_raw(args, frames, timeout_s=timeout_s)
        reply.raise_for_error()
        return reply

    async def call_raw(
        self, args: RequestArgs, frames: Sequence[Buffer] = (), *, timeout_s: float | None = None
    ) -> Reply:
        sock = self._ensure_open()
        if self._down:
            raise ConnectionLostError(f"broker at {self.addr} closed the connection")
        corr = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[corr] = future
        try:
            await sock.send_multipart(encode_request(corr, args, frames), copy=False)
            return await asyncio.wait_for(
                future, self.timeout_s if timeout_s is None else timeout_s
            )
        except TimeoutError:
            heard = self._heard
            await self._reset()
            if not heard:
                hint = (
                    " (CURVE: is this client's key in the broker's client_credentials_dir, "
                    "and the server key the cluster's?)"
                    if self._credentials is not None
                    else ""
                )
                raise ConnectionLostError(f"no answer from broker at {self.addr}{hint}") from None
            raise RequestTimedOutError(f"{args.op} to {self.addr} got no reply in time") from None
        except zmq.ZMQError as exc:
            await self._reset()
            raise ConnectionLostError(f"{self.addr}: {exc}") from exc
        finally:
            self._pending.pop(corr, None)

    def stream_queue(self, stream: int) -> asyncio.Queue[Push]:
        """Where the pushes of ``stream`` arrive."""
        return self._streams.setdefault(stream, asyncio.Queue())

    def forget_stream(self, stream: int) -> None:
        self._streams.pop(stream, None)

    async def close(self) -> None:
        if self._closed:
            return
        await self._reset()
        self._closed = True
        if self._own_ctx:
            self._ctx.term()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
