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
from typing import cast

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

_REFUSED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_WATCHED = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | _REFUSED
# Loop passes the reader may take to read the replies left in the socket (one a pass)
# before the requests still waiting fail.
_DRAIN_PASSES = 100
# Past this without a reconnection reported (RECONNECT_IVL_MAX is 2 s), the socket is
# replaced instead of failing requests at once.
_DOWN_FOR_S = 5.0


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
        self._monitor: zmq.asyncio.Socket | None = None
        # When the broker closed its end, if ZeroMQ has not connected again since: a
        # request now would wait for a process that is gone, so it fails at once.
        self._down_since: float | None = None
        # A handshake was refused (CURVE key, not a ZeroMQ peer): libzmq does not retry
        # those, so requests wait out their timeout, which replaces the socket.
        self._refused = False
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
            monitor = self._monitor = sock.get_monitor_socket(_WATCHED)
            sock.connect(self.addr)
            self._sock = sock
            self._reader = asyncio.create_task(self._read(sock))
            self._watcher = asyncio.create_task(self._watch(sock, monitor))
        return self._sock

    async def _watch(self, sock: zmq.asyncio.Socket, monitor: zmq.asyncio.Socket) -> None:
        """The broker's end of the TCP connection closed (its process died or was
        stopped): nothing sent before will be answered, so every request waiting
        fails now with ConnectionLostError (retriable), and every push stream is told
        it closed, instead of waiting out their timeouts; until ZeroMQ has connected
        again (it retries by itself), new requests fail at once too, so a client moves
        on to another broker. (A silent peer, such as a host that vanished, still shows
        only as a timeout.)"""
        loop = asyncio.get_running_loop()
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())["event"]
            if event & _REFUSED:
                self._refused = True
            elif event == zmq.EVENT_DISCONNECTED and not self._refused:
                self._down_since = loop.time()
                await self._lost(sock, f"broker at {self.addr} closed the connection")
            elif event & (zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED):
                self._down_since = None

    async def _lost(self, sock: zmq.asyncio.Socket, why: str) -> None:
        # Replies the broker sent before it closed may still wait in the socket: let
        # the reader take them first (briefly), so a request that was answered is not
        # failed and sent again.
        for _ in range(_DRAIN_PASSES):  # no event says "the reader took them"
            if not cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                break
            await asyncio.sleep(0)
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
        monitor, self._monitor = self._monitor, None
        self._sock, self._reader, self._watcher = None, None, None
        self._down_since, self._refused = None, False
        for task in (reader, watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, zmq.ZMQError):
                    await task
        if sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            sock.close(linger=0)
        if monitor is not None:
            monitor.close(linger=0)
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
        down_since = self._down_since
        if down_since is not None:
            if asyncio.get_running_loop().time() - down_since < _DOWN_FOR_S:
                raise ConnectionLostError(f"broker at {self.addr} closed the connection")
            # No reconnection reported for a while: start afresh rather than trust it.
            await self._reset()
            sock = self._ensure_open()
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
