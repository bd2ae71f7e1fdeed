"""The ZeroMQ peer transport: moves opaque (header, payloads) items between Raft nodes.

Theory of operation
===================

Each node binds one ROUTER socket on its peer address and connects one DEALER
socket per peer. A DEALER's routing id is the *local* node id, so the ROUTER on
the other side learns who sent every message from ZeroMQ itself and checks it
against the envelope. Traffic is one-way per socket: a node sends on its
DEALERs and receives on its ROUTER; the ROUTER never sends.

The transport is codec-agnostic. An *item* is one ``header`` (bytes, e.g. a
msgpack-encoded Raft message) plus zero or more *payload* buffers (e.g. entry
payloads), which travel as their own ZeroMQ frames so large ones are never
copied into a bigger buffer.

- ``send()`` only queues an item for a peer; it does no I/O.
- ``flush()`` sends everything queued for each peer as ONE multipart ZeroMQ
  message (coalescing), non-blocking. If the peer is not connected
  (``ZMQ_IMMEDIATE``) or its queue is at the high-water mark, the whole batch is
  dropped and counted: Raft retries, and a stale queued message is worth less
  than a fresh retry.
- ``recv_batch()`` waits until the ROUTER is readable, then drains it without
  yielding until EAGAIN (bounded by ``recv_drain_max_msgs``) and returns the
  decoded items in arrival order. Items from one peer keep their send order.

Wire format
===========

Routing id (set on the DEALER, seen by the ROUTER as frame 0 of each message):
    the node id in ASCII decimal, no sign, no leading zeros (``b"7"``). It never
    starts with a zero byte, which ZeroMQ reserves for ids it generates.

One coalesced multipart message (what the DEALER sends), frames in order:

    frame 0      envelope: msgpack array of exactly 3 elements
                   [0] version      int, currently 1
                   [1] sender       int, the sender's node id, 1..2**64-1; must
                                    equal the routing id the ROUTER reports
                   [2] items        non-empty array; item i is an array of 2:
                                      [0] header         bin (bytes), opaque
                                      [1] payload_count  int >= 0
    frames 1..N  payloads of item 0, then of item 1, ..., in item order;
                 N == sum of all payload_count values, exactly.

There is no checksum: TCP protects the bytes, and the Raft codec above checks
what it needs. Limits: ``ZMQ_MAXMSGSIZE`` (``max_frame_bytes``) applies to
each frame separately in libzmq, so it bounds every payload and the envelope;
a peer that sends a bigger frame is disconnected by libzmq and reconnects.

Security (CURVE)
================

Given a ``PeerSecurity``, every ROUTER is a CURVE server and every DEALER a CURVE
client presenting this node's key pair, with the target's public key (from the
peer key set, ``<peer_keys_dir>/<id>.key``) as the server key. A ZAP handler
(`KeyAuthenticator`, started on the transport's own context before the bind)
accepts only keys in the peer key set and sets each connection's User-Id to the
node id the key is named by. The node id is then bound to the key, not chosen by
the peer: DEALERs set no routing id (ZeroMQ generates one per connection), the
ROUTER keeps ROUTER_HANDOVER off, so no connection can take over another's, and
the sender of every message is its User-Id, which the envelope's sender must
equal. A valid key of node 2 claiming to be node 3 is refused (logged,
rate-limited, counted in ``decode_errors``); the real node 3 is not disturbed.

Anything that does not match this layout exactly raises ``TransportDecodeError``
in the decoder; the transport logs it (rate-limited), counts it and ignores the
whole multipart message. A misbehaving peer never crashes the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Final, NamedTuple, TypeAlias, cast

import msgpack
import zmq
import zmq.asyncio

from zstream.replication._security import KeyAuthenticator, KeyFileError, KeySet, PeerSecurity

__all__ = [
    "PEER_ZAP_DOMAIN",
    "NodeId",
    "PeerMessage",
    "PeerTransport",
    "TransportClosedError",
    "TransportConfig",
    "TransportDecodeError",
    "TransportError",
    "TransportStats",
    "decode_peer_frames",
    "encode_peer_frames",
    "node_routing_id",
]

NodeId: TypeAlias = int
"""A Raft node id: an int in 1..2**64-1 (0 is invalid)."""

Buffer: TypeAlias = bytes | bytearray | memoryview
"""What a payload may be. It is sent by reference when large: do not mutate it
after ``send()``; libzmq may still be reading it."""

WIRE_VERSION: Final = 1
MAX_NODE_ID: Final = 2**64 - 1
_MAX_ROUTING_ID_LEN: Final = len(str(MAX_NODE_ID))
# msgpack framing added per item on top of the header bytes: array header (1),
# bin header (<= 5) and the payload count (<= 9).
_ITEM_OVERHEAD_BYTES: Final = 16
# msgpack framing of the envelope around its items: array headers and ints.
_ENVELOPE_OVERHEAD_BYTES: Final = 32

# Plain ints: pyzmq's flag enums cost an Enum.__or__ per frame.
_NOBLOCK: Final = int(zmq.NOBLOCK)
_MORE_NOBLOCK: Final = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
# What a secure DEALER's monitor reports: a handshake that failed. AUTH: the peer
# refused our key; PROTOCOL / NO_DETAIL: among others, the peer has another key
# than the one we hold for it (it cannot read our HELLO and hangs up).
_HANDSHAKE_FAILED_EVENTS: Final = (
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    | int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    | int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
)

_log = logging.getLogger(__name__)
_monitor_ids = itertools.count(1)

# ZMQ_ZAP_DOMAIN of the peer ROUTER (the client ROUTER uses its own domain).
PEER_ZAP_DOMAIN: Final = "zstream-peer"


# --------------------------------------------------------------------------- errors


class TransportError(Exception):
    """Root of every error raised by the peer transport."""


class TransportClosedError(TransportError):
    """The transport was closed (or never started); local, a retry will not help."""


class TransportDecodeError(TransportError):
    """A received multipart message does not follow the wire format (the peer's fault)."""


# --------------------------------------------------------------------------- values


class PeerMessage(NamedTuple):
    """One received item: who sent it, its header and its payload frames.

    ``payloads`` are read-only views of the received ZeroMQ frames (no copy);
    each keeps its frame alive for as long as it is referenced.
    """

    from_node: NodeId
    header: bytes
    payloads: list[memoryview]


@dataclass(slots=True)
class TransportStats:
    """Counters since start. ``msgs`` count items, ``multiparts`` ZeroMQ messages,
    ``bytes`` count header plus payload bytes (not the envelope framing)."""

    sent_msgs: int = 0
    sent_bytes: int = 0
    sent_multiparts: int = 0
    dropped_msgs: int = 0
    dropped_bytes: int = 0
    received_msgs: int = 0
    received_bytes: int = 0
    received_multiparts: int = 0
    decode_errors: int = 0


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Settings of one ``PeerTransport``; validated on construction."""

    # Queue bound per peer DEALER, in multipart messages (one per flush). A peer
    # that stops reading costs at most this many flushes of memory; 128 passes of
    # backlog is far more than a reading peer ever needs, and Raft bounds the
    # bytes of one pass with its in-flight window.
    send_hwm_msgs: int = 128
    # Inbound queue bound on the ROUTER, in multipart messages, for the same reason.
    recv_hwm_msgs: int = 1024
    # ZMQ_MAXMSGSIZE: the largest frame (payload or envelope) accepted. libzmq
    # applies it per frame and disconnects a peer that exceeds it. 64 MiB leaves
    # room for the largest batch a client may produce plus entry headers.
    max_frame_bytes: int = 64 * 1024 * 1024
    # First reconnect delay after a lost connection: short, so a restarted peer
    # is back within a few Raft heartbeats.
    reconnect_ivl_ms: int = 10
    # Reconnect backoff cap: a dead peer costs one connect attempt a second.
    reconnect_ivl_max_ms: int = 1000
    # A TCP connect that gets no answer (peer host down or partitioned away)
    # is abandoned after this and retried on the reconnect schedule; left at
    # 0, Linux keeps retrying SYNs with backoff for about two minutes, so a
    # healed partition could wait tens of seconds for the next attempt.
    connect_timeout_ms: int = 1000
    # ZMTP heartbeats: a silent connection (peer paused, cable pulled) is closed
    # after the timeout, so IMMEDIATE drops messages instead of queueing them.
    heartbeat_ivl_ms: int = 1000
    # Three missed heartbeats, shorter than a typical election timeout x 3.
    heartbeat_timeout_ms: int = 3000
    # Payload frames of at least this size are sent zero-copy (copy=False);
    # smaller ones are copied, which is cheaper than tracking the reference.
    # pyzmq's own default; bench/zmq_baseline.py measures the trade-off.
    copy_threshold_bytes: int = 64 * 1024
    # recv_batch() returns after draining this many multipart messages, so a
    # flooding peer cannot starve the rest of the event loop.
    recv_drain_max_msgs: int = 1024
    # At most one warning per interval about garbage from peers.
    garbage_log_interval_ms: int = 5000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int:
                raise TypeError(f"TransportConfig.{f.name} must be an int, got {value!r}")
        positive = (
            "send_hwm_msgs",
            "recv_hwm_msgs",
            "max_frame_bytes",
            "reconnect_ivl_ms",
            "reconnect_ivl_max_ms",
            "recv_drain_max_msgs",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"TransportConfig.{name} must be > 0")
        non_negative = (
            "connect_timeout_ms",
            "heartbeat_ivl_ms",
            "heartbeat_timeout_ms",
            "copy_threshold_bytes",
            "garbage_log_interval_ms",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"TransportConfig.{name} must be >= 0")
        if self.reconnect_ivl_max_ms < self.reconnect_ivl_ms:
            raise ValueError("TransportConfig.reconnect_ivl_max_ms must be >= reconnect_ivl_ms")
        if self.heartbeat_ivl_ms and self.heartbeat_timeout_ms <= self.heartbeat_ivl_ms:
            raise ValueError("TransportConfig.heartbeat_timeout_ms must be > heartbeat_ivl_ms")
        if self.max_frame_bytes < 1024:
            raise ValueError("TransportConfig.max_frame_bytes must be >= 1024")
        if self.max_frame_bytes > 2**31 - 1:
            raise ValueError("TransportConfig.max_frame_bytes must fit in 31 bits")


# --------------------------------------------------------------------------- codec


def _check_node_id(node_id: object, what: str) -> NodeId:
    if type(node_id) is not int or not 1 <= node_id <= MAX_NODE_ID:
        raise ValueError(f"{what} must be an int in 1..2**64-1, got {node_id!r}")
    return node_id


def node_routing_id(node_id: NodeId) -> bytes:
    """The ZeroMQ routing id a node's DEALERs carry (see the wire format above)."""
    return str(_check_node_id(node_id, "node id")).encode("ascii")


def _parse_routing_id(routing_id: bytes) -> NodeId:
    if (
        not 1 <= len(routing_id) <= _MAX_ROUTING_ID_LEN
        or not routing_id.isdigit()
        or routing_id[0] == 0x30  # "0": no leading zeros, and 0 is not a node id
    ):
        raise TransportDecodeError(f"bad routing id {routing_id[:32]!r}")
    node_id = int(routing_id)
    if node_id > MAX_NODE_ID:
        raise TransportDecodeError(f"routing id out of range: {routing_id!r}")
    return node_id


def _pack_envelope(sender: NodeId, items: list[tuple[bytes, int]]) -> bytes:
    packed: bytes = msgpack.packb((WIRE_VERSION, sender, items))
    return packed


def encode_peer_frames(
    sender: NodeId, items: Sequence[tuple[bytes, Sequence[Buffer]]]
) -> list[Buffer]:
    """Encode items as the frames of one multipart message (envelope first).

    This is exactly what ``PeerTransport.flush()`` sends for one peer; it is
    public for tests and tools that speak the wire format directly.
    """
    _check_node_id(sender, "sender")
    if not items:
        raise ValueError("a multipart message carries at least one item")
    pairs: list[tuple[bytes, int]] = []
    frames: list[Buffer] = [b""]
    for header, payloads in items:
        if not isinstance(header, bytes):
            raise TypeError(f"header must be bytes, got {type(header).__name__}")
        pairs.append((header, len(payloads)))
        frames.extend(payloads)
    frames[0] = _pack_envelope(sender, pairs)
    return frames


def decode_peer_frames(routing_id: bytes, frames: Sequence[Buffer]) -> list[PeerMessage]:
    """Decode one received multipart message (without the routing-id frame).

    ``routing_id`` is the id the ROUTER reported for the sending connection.
    Returns the items in order, or raises ``TransportDecodeError`` if anything
    about the message is off; it never raises anything else.
    """
    sender = _parse_routing_id(routing_id)
    if not frames:
        raise TransportDecodeError("empty multipart message")
    try:
        envelope: Any = msgpack.unpackb(frames[0], raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise TransportDecodeError(f"envelope is not valid msgpack: {e}") from e
    if type(envelope) is not list or len(envelope) != 3:
        raise TransportDecodeError("envelope must be an array of 3")
    version, claimed_sender, items = envelope
    if type(version) is not int or version != WIRE_VERSION:
        raise TransportDecodeError(f"unsupported envelope version {version!r}")
    if type(claimed_sender) is not int or claimed_sender != sender:
        raise TransportDecodeError(
            f"envelope sender {claimed_sender!r} does not match routing id {sender}"
        )
    if type(items) is not list or not items:
        raise TransportDecodeError("envelope items must be a non-empty array")
    nframes = len(frames)
    available = nframes - 1
    # Views made once per message; each item then takes a slice of the list.
    views = [f if type(f) is memoryview else memoryview(f) for f in frames]
    out: list[PeerMessage] = []
    append = out.append
    new_message = tuple.__new__  # PeerMessage(...) without its Python-level __new__
    next_frame = 1
    for item in items:
        if type(item) is not list or len(item) != 2:
            raise TransportDecodeError("an item must be an array of 2")
        header, count = item
        if type(header) is not bytes:
            raise TransportDecodeError("an item header must be bin")
        if type(count) is not int or count < 0:
            raise TransportDecodeError("an item payload count must be an int >= 0")
        end = next_frame + count
        if end > nframes:
            raise TransportDecodeError(
                f"items name more payload frames than the {available} present"
            )
        append(new_message(PeerMessage, (sender, header, views[next_frame:end])))
        next_frame = end
    if next_frame != nframes:
        raise TransportDecodeError(
            f"items name {next_frame - 1} payload frames but {available} are present"
        )
    return out


# --------------------------------------------------------------------------- transport


class _Batch(NamedTuple):
    """Items queued for one multipart send; frames[0] is the envelope's slot."""

    items: list[tuple[bytes, int]]
    frames: list[Buffer]
    nbytes: int


class _Peer:
    """One connected peer: its DEALER and what is queued for it until flush()."""

    __slots__ = (
        "addr",
        "batches",
        "envelope_bytes",
        "frames",
        "items",
        "monitor",
        "nbytes",
        "node_id",
        "refused",
        "retry_at",
        "server_key",
        "socket",
    )

    socket: zmq.Socket[bytes]

    def __init__(self, node_id: NodeId, addr: str, server_key: bytes | None) -> None:
        self.node_id = node_id
        self.addr = addr
        self.server_key = server_key  # the peer's CURVE public key; None without security
        self.monitor: zmq.Socket[bytes] | None = None
        self.refused = False  # a CURVE handshake failed since the socket was made
        self.retry_at = 0.0  # monotonic time before which the socket is not remade
        # The open batch: envelope items and its frames; frames[0] is a
        # placeholder for the envelope, filled in at flush().
        self.items: list[tuple[bytes, int]] = []
        self.frames: list[Buffer] = [b""]
        self.envelope_bytes = _ENVELOPE_OVERHEAD_BYTES
        self.nbytes = 0  # header and payload bytes of the open batch, for stats
        # Batches sealed because the envelope would have outgrown max_frame_bytes.
        self.batches: list[_Batch] = []

    def seal(self) -> None:
        if self.items:
            self.batches.append(_Batch(self.items, self.frames, self.nbytes))
            self.items = []
            self.frames = [b""]
            self.envelope_bytes = _ENVELOPE_OVERHEAD_BYTES
            self.nbytes = 0

    def take(self) -> list[_Batch]:
        self.seal()
        batches, self.batches = self.batches, []
        return batches


class _RateLimitedLog:
    """Logs at most one warning per interval and says how many it suppressed."""

    def __init__(self, interval_ms: int) -> None:
        self._interval_s = interval_ms / 1000
        self._next_at = 0.0
        self._suppressed = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            return
        self._next_at = now + self._interval_s
        suppressed, self._suppressed = self._suppressed, 0
        _log.warning(msg + " (%d similar suppressed)", *args, suppressed)


class PeerTransport:
    """Raft peer transport over ZeroMQ (see the module docstring).

    Lifecycle: construct, ``await start()`` (binds), ``add_peer()`` for each
    peer, then ``send()``/``flush()`` and ``recv_batch()`` from one event loop,
    and finally ``await close()``. It is also an async context manager.
    Not thread-safe: use it from the loop that started it.
    """

    def __init__(
        self,
        local_id: NodeId,
        bind_addr: str,
        config: TransportConfig | None = None,
        *,
        context: zmq.asyncio.Context | None = None,
        security: PeerSecurity | None = None,
    ) -> None:
        self._local_id = _check_node_id(local_id, "local_id")
        self._security = security
        self._keys: KeySet | None = None
        self._auth: KeyAuthenticator | None = None
        self._routing_id = node_routing_id(local_id)
        self._bind_addr = bind_addr
        self._config = config if config is not None else TransportConfig()
        self._own_context = context is None
        self._context = context
        self._router: zmq.asyncio.Socket | None = None
        self._router_sync: zmq.Socket[bytes] | None = None
        self._address: str | None = None
        self._peers: dict[NodeId, _Peer] = {}
        self._dirty: list[_Peer] = []
        self._stats = TransportStats()
        self._garbage_log = _RateLimitedLog(self._config.garbage_log_interval_ms)
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    @property
    def local_id(self) -> NodeId:
        return self._local_id

    @property
    def config(self) -> TransportConfig:
        return self._config

    @property
    def secure(self) -> bool:
        """Whether the peer sockets run CURVE (see the module docstring)."""
        return self._security is not None

    @property
    def address(self) -> str:
        """The bound endpoint, with the real port when bound to port 0."""
        if self._address is None:
            raise TransportClosedError("transport not started")
        return self._address

    async def start(self) -> str:
        """Bind the ROUTER and return the bound endpoint (e.g. ``tcp://127.0.0.1:40123``).

        Bind to port 0 (``tcp://127.0.0.1:0``) for a free port.
        """
        if self._closed:
            raise TransportClosedError("transport is closed")
        if self._router is not None:
            raise TransportError("transport already started")
        if self._context is None:
            self._context = zmq.asyncio.Context()
        cfg = self._config
        if self._security is not None:
            try:
                self._start_auth(self._security)
            except TransportError:
                if self._own_context:
                    self._context.term()
                    self._context = None
                raise
        router = self._context.socket(zmq.ROUTER)
        try:
            router.setsockopt(zmq.LINGER, 0)
            if self._security is None:
                router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            else:
                # Node ids come from keys: no connection may take over another's.
                router.setsockopt(zmq.ROUTER_HANDOVER, 0)
                router.setsockopt(zmq.ZAP_DOMAIN, PEER_ZAP_DOMAIN.encode())
                router.setsockopt(zmq.CURVE_SERVER, 1)
                router.setsockopt(zmq.CURVE_PUBLICKEY, self._security.public_key)
                router.setsockopt(zmq.CURVE_SECRETKEY, self._security.secret_key)
            router.setsockopt(zmq.RCVHWM, cfg.recv_hwm_msgs)
            router.setsockopt(zmq.MAXMSGSIZE, cfg.max_frame_bytes)
            self._set_heartbeats(router)
            router.bind(self._bind_addr)
            endpoint = router.getsockopt(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as e:
            router.close(linger=0)
            await self._stop_auth()
            if self._own_context:
                self._context.term()
                self._context = None
            raise TransportError(f"cannot bind {self._bind_addr!r}: {e}") from e
        assert isinstance(endpoint, bytes)
        self._router = router
        # A plain socket over the same libzmq socket, for the non-blocking
        # drain: no Future per message.
        self._router_sync = zmq.Socket.shadow(router.underlying)
        self._address = endpoint.decode()
        return self._address

    async def close(self) -> None:
        """Close every socket (linger 0: queued messages are dropped). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for peer in list(self._peers.values()):
            self._close_peer(peer)
        self._peers.clear()
        self._dirty.clear()
        if self._router is not None:
            self._router.close(linger=0)
        self._router = None
        self._router_sync = None
        await self._stop_auth()
        if self._own_context and self._context is not None:
            self._context.term()
        self._context = None

    def _start_auth(self, security: PeerSecurity) -> None:
        assert self._context is not None
        try:
            keys = security.key_set()
            own = keys.key_of(str(self._local_id))
        except KeyFileError as e:
            raise TransportError(f"peer security: {e}") from e
        if own != security.public_key:
            raise TransportError(
                f"peer security: {security.peer_keys_dir}/{self._local_id}.key is not "
                f"this node's public key"
            )
        auth = KeyAuthenticator(self._context, keys, PEER_ZAP_DOMAIN)
        try:
            auth.start()
        except zmq.ZMQError as e:
            raise TransportError(f"cannot start the ZAP handler: {e}") from e
        self._keys, self._auth = keys, auth

    async def _stop_auth(self) -> None:
        auth, self._auth = self._auth, None
        if auth is not None:
            await auth.aclose()

    async def __aenter__(self) -> PeerTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- peers

    def add_peer(self, node_id: NodeId, addr: str) -> None:
        """Connect a DEALER to a peer's ROUTER. Re-adding with a new address
        replaces the connection (dropping what was queued); with the same
        address it does nothing. The connection is made in the background and
        re-made after every loss."""
        _check_node_id(node_id, "node_id")
        if node_id == self._local_id:
            raise ValueError("a node is not its own peer")
        if self._closed or self._router is None or self._context is None:
            raise TransportClosedError("transport is closed or not started")
        old = self._peers.get(node_id)
        if old is not None:
            if old.addr == addr:
                return
            self.remove_peer(node_id)
        server_key = None
        if self._security is not None:
            assert self._keys is not None
            try:
                server_key = self._keys.key_of(str(node_id))
            except KeyFileError as e:
                raise TransportError(f"peer {node_id}: {e}") from e
            if server_key is None:
                raise TransportError(
                    f"no public key for peer {node_id} in {self._keys.directory} "
                    f"(expected {node_id}.key)"
                )
        peer = _Peer(node_id, addr, server_key)
        self._connect(peer)
        self._peers[node_id] = peer

    def _connect(self, peer: _Peer) -> None:
        """Give ``peer`` a fresh DEALER connecting to its address."""
        assert self._context is not None
        cfg = self._config
        sock: zmq.Socket[bytes] = zmq.Socket(self._context, zmq.DEALER)
        monitor: zmq.Socket[bytes] | None = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            if self._security is None:
                sock.setsockopt(zmq.ROUTING_ID, self._routing_id)
            else:
                assert peer.server_key is not None
                sock.setsockopt(zmq.CURVE_SERVERKEY, peer.server_key)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, self._security.public_key)
                sock.setsockopt(zmq.CURVE_SECRETKEY, self._security.secret_key)
                # libzmq never reconnects after a refused handshake; the monitor
                # tells flush() when to make a new socket (see _retry_refused).
                monitor = self._monitor(sock)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.SNDHWM, cfg.send_hwm_msgs)
            # The ROUTER side never sends, so nothing is ever received here.
            sock.setsockopt(zmq.RCVHWM, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_frame_bytes)
            sock.setsockopt(zmq.RECONNECT_IVL, cfg.reconnect_ivl_ms)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, cfg.reconnect_ivl_max_ms)
            sock.setsockopt(zmq.CONNECT_TIMEOUT, cfg.connect_timeout_ms)
            self._set_heartbeats(sock)
            sock.copy_threshold = cfg.copy_threshold_bytes
            sock.connect(peer.addr)
        except zmq.ZMQError as e:
            _close_dealer(sock, monitor)
            raise TransportError(
                f"cannot connect to peer {peer.node_id} at {peer.addr!r}: {e}"
            ) from e
        peer.socket, peer.monitor = sock, monitor
        peer.retry_at = time.monotonic() + cfg.reconnect_ivl_max_ms / 1000

    def _monitor(self, sock: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
        """A plain PAIR socket receiving ``sock``'s handshake failures (pyzmq's
        get_monitor_socket would make an asyncio socket on this context)."""
        addr = f"inproc://zstream-peer-monitor-{next(_monitor_ids)}"
        sock.monitor(addr, _HANDSHAKE_FAILED_EVENTS)
        assert self._context is not None
        monitor: zmq.Socket[bytes] = zmq.Socket(self._context, zmq.PAIR)
        monitor.connect(addr)
        return monitor

    def _retry_refused(self, peer: _Peer) -> None:
        """After a dropped batch on a secure link: if the peer refused the CURVE
        handshake (it did not know our key yet, or we had its old key), make a new
        DEALER, at most once per ``reconnect_ivl_max_ms``."""
        monitor = peer.monitor
        if monitor is None:
            return
        while True:
            try:
                monitor.recv(_NOBLOCK)  # event frame; the endpoint frame follows
                if monitor.getsockopt(zmq.RCVMORE):
                    monitor.recv(_NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                return
            peer.refused = True
        if not peer.refused or time.monotonic() < peer.retry_at:
            return
        self._garbage_log.warning(
            "peer %d at %s refused the CURVE handshake; connecting again", peer.node_id, peer.addr
        )
        peer.refused = False
        # The peer may have a new key (rotated): take the key set's current one.
        if self._keys is not None:
            with contextlib.suppress(KeyFileError):
                peer.server_key = self._keys.key_of(str(peer.node_id)) or peer.server_key
        old_socket, old_monitor = peer.socket, peer.monitor
        try:
            self._connect(peer)  # replaces peer.socket only once the new one is up
        except TransportError as e:
            self._garbage_log.warning("peer %d: %s", peer.node_id, e)
            peer.retry_at = time.monotonic() + self._config.reconnect_ivl_max_ms / 1000
            return
        _close_dealer(old_socket, old_monitor)

    def remove_peer(self, node_id: NodeId) -> None:
        """Disconnect from a peer; what is queued for it is dropped. Unknown ids are ignored."""
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            self._close_peer(peer)
            if peer in self._dirty:
                self._dirty.remove(peer)

    def peers(self) -> dict[NodeId, str]:
        """The current peers and their addresses."""
        return {node_id: peer.addr for node_id, peer in self._peers.items()}

    # ---------------------------------------------------------------- sending

    def send(self, node_id: NodeId, header: bytes, payloads: Sequence[Buffer] = ()) -> None:
        """Queue one item for a peer; nothing is sent before ``flush()``.

        An item for an unknown peer is dropped and counted (membership may have
        just changed; Raft copes). Payloads are kept by reference: do not mutate
        them afterwards. A header or payload larger than ``max_frame_bytes``
        raises ``TransportError``: the peer would refuse it.
        """
        if self._closed:
            raise TransportClosedError("transport is closed")
        peer = self._peers.get(node_id)
        size = len(header)
        max_frame = self._config.max_frame_bytes
        for p in payloads:
            n = p.nbytes if isinstance(p, memoryview) else len(p)
            if n > max_frame:
                raise TransportError(f"payload of {n} bytes exceeds max_frame_bytes {max_frame}")
            size += n
        item_envelope_bytes = len(header) + _ITEM_OVERHEAD_BYTES
        if item_envelope_bytes + _ENVELOPE_OVERHEAD_BYTES > max_frame:
            raise TransportError(f"header of {len(header)} bytes exceeds max_frame_bytes")
        if peer is None:
            self._stats.dropped_msgs += 1
            self._stats.dropped_bytes += size
            return
        if peer.envelope_bytes + item_envelope_bytes > max_frame:
            peer.seal()
        if not peer.items and not peer.batches:
            self._dirty.append(peer)
        peer.items.append((header, len(payloads)))
        peer.frames.extend(payloads)
        peer.envelope_bytes += item_envelope_bytes
        peer.nbytes += size

    def flush(self) -> None:
        """Send what ``send()`` queued: one multipart message per peer, never blocking.

        A batch the peer cannot take now (not connected, or at the high-water
        mark) is dropped whole and counted in ``stats``.
        """
        if self._closed:
            raise TransportClosedError("transport is closed")
        dirty, self._dirty = self._dirty, []
        stats = self._stats
        for peer in dirty:
            for items, frames, nbytes in peer.take():
                frames[0] = _pack_envelope(self._local_id, items)
                if _send_frames(peer.socket, frames):
                    stats.sent_msgs += len(items)
                    stats.sent_bytes += nbytes
                    stats.sent_multiparts += 1
                else:
                    stats.dropped_msgs += len(items)
                    stats.dropped_bytes += nbytes
                    if peer.monitor is not None:
                        self._retry_refused(peer)

    # ---------------------------------------------------------------- receiving

    async def recv_batch(self) -> list[PeerMessage]:
        """Wait for at least one valid item, then drain the ROUTER without
        yielding (until EAGAIN or ``recv_drain_max_msgs``) and return every item
        in arrival order. Garbage is logged, counted and skipped.

        Raises ``TransportClosedError`` once the transport is closed, including
        when ``close()`` is called while this is waiting. One receiver at a
        time. Cancelling it is safe, except that a message whose first frame
        was taken in the very pass the cancellation lands in is lost (and the
        rest of it is counted as a decode error): Raft retries.
        """
        out = self.recv_batch_nowait()
        while not out:
            router = self._router
            if router is None:
                raise TransportClosedError("transport is closed or not started")
            try:
                # Only the first frame goes through an asyncio Future; the rest
                # of this message and everything behind it is drained below.
                # (A multipart message is delivered whole, so its remaining
                # frames are already there.)
                first = await router.recv(copy=False)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed and (task is None or not task.cancelling()):
                    # close() cancels pyzmq's pending Future under us.
                    raise TransportClosedError("transport closed while receiving") from None
                raise
            except zmq.ZMQError as e:
                if self._closed:
                    raise TransportClosedError("transport closed while receiving") from e
                raise TransportError(f"receive failed: {e}") from e
            self._drain(out, self._config.recv_drain_max_msgs, first)
        return out

    def recv_batch_nowait(self) -> list[PeerMessage]:
        """Drain what is waiting right now, without waiting; may return []."""
        if self._closed or self._router_sync is None:
            raise TransportClosedError("transport is closed or not started")
        out: list[PeerMessage] = []
        self._drain(out, self._config.recv_drain_max_msgs)
        return out

    def _drain(self, out: list[PeerMessage], limit: int, first: zmq.Frame | None = None) -> None:
        """Receive up to ``limit`` messages without waiting; ``first``, when
        given, is the already received first frame of the first one."""
        sock = self._router_sync
        if sock is None:
            return
        # pyzmq's recv_multipart asks getsockopt(RCVMORE) per frame; the
        # received Frame already knows whether more follow.
        recv = sock.recv
        for _ in range(limit):
            try:
                if first is None:
                    frame = recv(_NOBLOCK, copy=False)
                else:
                    frame, first = first, None
                frames = [frame]
                while frame.more:
                    frame = recv(_NOBLOCK, copy=False)
                    frames.append(frame)
            except zmq.Again:
                return
            except zmq.ZMQError as e:
                raise TransportError(f"receive failed: {e}") from e
            self._accept(frames, out)

    def _accept(self, frames: list[zmq.Frame], out: list[PeerMessage]) -> None:
        stats = self._stats
        if self._security is None:
            routing_id = frames[0].bytes
        else:
            # The sender is who its key says (the ZAP handler's User-Id), never
            # what the connection claims.
            try:
                routing_id = str(frames[-1].get("User-Id")).encode()
            except zmq.ZMQError:
                routing_id = b""
        # memoryview(frame), not frame.buffer: the property also builds a weakref.
        # (pyzmq's stubs do not declare that Frame exports the buffer protocol.)
        bufs = [memoryview(f) for f in cast("list[Any]", frames[1:])]
        try:
            items = decode_peer_frames(routing_id, bufs)
        except TransportDecodeError as e:
            stats.decode_errors += 1
            if self._security is None:
                self._garbage_log.warning("ignoring bad message from %r: %s", routing_id[:32], e)
            else:
                self._garbage_log.warning(
                    "refusing a message from the peer key of node %s: %s", routing_id.decode(), e
                )
            return
        if items[0].from_node == self._local_id:
            stats.decode_errors += 1
            self._garbage_log.warning("ignoring message claiming to come from this node")
            return
        stats.received_multiparts += 1
        stats.received_msgs += len(items)
        # Frame buffers are 1-D unsigned bytes, so len() is the byte count.
        stats.received_bytes += sum(map(len, bufs)) - len(bufs[0])
        stats.received_bytes += sum(len(item.header) for item in items)
        out.extend(items)

    # ---------------------------------------------------------------- misc

    @property
    def stats(self) -> TransportStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    def _set_heartbeats(self, sock: zmq.Socket[Any]) -> None:
        cfg = self._config
        if cfg.heartbeat_ivl_ms:
            sock.setsockopt(zmq.HEARTBEAT_IVL, cfg.heartbeat_ivl_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, cfg.heartbeat_timeout_ms)

    def _close_peer(self, peer: _Peer) -> None:
        for batch in peer.take():
            self._stats.dropped_msgs += len(batch.items)
            self._stats.dropped_bytes += batch.nbytes
        _close_dealer(peer.socket, peer.monitor)


def _close_dealer(sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes] | None) -> None:
    if monitor is not None:
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()
        monitor.close(linger=0)
    sock.close(linger=0)


def _send_frames(sock: zmq.Socket[bytes], frames: list[Buffer]) -> bool:
    """Send frames as one multipart message without blocking; False if dropped.

    pyzmq's send_multipart gives up at the first failing frame. libzmq only
    refuses the first frame of a message at the high-water mark; a later frame
    fails only when the connection died mid-message, and libzmq then drops the
    rest of that message itself, so the remaining frames must still be handed
    over for the next message to start clean.
    """
    send = sock.send
    last = len(frames) - 1
    try:
        send(frames[0], _MORE_NOBLOCK if last else _NOBLOCK, copy=False)
    except zmq.Again:
        return False
    except zmq.ZMQError as e:
        raise TransportError(f"send failed: {e}") from e
    delivered = True
    for i in range(1, last + 1):
        try:
            send(frames[i], _MORE_NOBLOCK if i < last else _NOBLOCK, copy=False)
        except zmq.Again:
            delivered = False
        except zmq.ZMQError as e:
            raise TransportError(f"send failed: {e}") from e
    return delivered
