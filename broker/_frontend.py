"""The client front end: one ZeroMQ ROUTER socket, every client request.

Theory of operation
-------------------
The receive loop waits for the socket to become readable, then drains it until
EAGAIN before yielding, so that a burst of requests costs one wake-up. Each
message is ``[identity, envelope, *batch frames]`` (ROUTER prepends the identity).

For each message, in order:

1. size: more than ``max_message_bytes`` in total -> MESSAGE_TOO_LARGE. (ZeroMQ's
   own ZMQ_MAXMSGSIZE is set a little higher, as a memory ceiling: a frame past it
   makes ZeroMQ drop the connection, and no reply is possible.)
2. decode (`clients._protocol.decode_request`) -> INVALID_REQUEST /
   UNSUPPORTED_VERSION, under the correlation id when one can be read; a message
   with no readable id is answered with id 0.
3. in-flight limit per client identity -> THROTTLED.
4. with security on (the request has a principal, from the connection's CURVE key):
   the request's ACLs (`_authorize`) -> NOT_AUTHORIZED naming the operation and the
   resource, then the principal's produce/fetch byte quota -> THROTTLED with
   ``throttle_ms``; before both, a connection (routing identity) beyond the
   principal's ``max_connections_per_principal`` -> THROTTLED. Listings (metadata,
   topics, groups, offsets) are filtered to what the principal may describe, as Kafka
   does. With security off (no principal) none of this runs: the cost on the hot
   path is one ``is None`` test.
5. dispatch: quick operations are answered inline; produce, long-poll fetch,
   topic operations and consumer-group operations (they wait on the controller's
   Raft group) run as tasks owned by the front end (cancelled on close).
   Every handler's ZStreamError becomes its numbered error; anything else is a bug,
   answered UNKNOWN_SERVER_ERROR and logged with its traceback. The broker goes on.

Push streams (subscribe/credit/unsubscribe): each stream is a task owned by the
front end. It sends committed batches from its offset while credit remains, and
a heartbeat push (with the high watermark) when it has been idle for
``heartbeat_ms``. A stream that fails (the broker lost leadership, the topic was
deleted) sends a ``closed`` push carrying the error code and ends; the client
resubscribes on the new leader from its last offset.

Security: given a `ClientSecurity`, the socket is a CURVE server behind a ZAP
handler that accepts only the client keys of ``client_credentials_dir`` and sets
each connection's ZeroMQ User-Id to the key's principal name (``alice.key`` ->
``alice``). A client without CURVE or with an unknown key is refused during the
handshake and never reaches the steps above. Each request's principal is read
from its received envelope frame (``frame.get("User-Id")``; ``principal_of``
replaces that reader in tests) and checked in step 4; with security off the
principal is None and everything is allowed.

The partitions and metadata sit behind :class:`Backend`, a narrow interface with
a fake for tests and the real partition manager in the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import zmq
import zmq.asyncio

from zstream import replication, storage
from zstream.broker._acl import AclTable, Authorizer, not_authorized
from zstream.broker._config import ClientSecurity
from zstream.broker._quota import ConnectionLimit, Direction, Quotas
from zstream.clients import (
    Acks,
    AclAddRequest,
    AclEntry,
    AclListRequest,
    AclOperation,
    AclRemoveRequest,
    CommitOffsetsRequest,
    CorruptBatchError,
    CreateTopicRequest,
    CreditRequest,
    DeleteGroupRequest,
    DeleteTopicRequest,
    DescribeGroupRequest,
    DescribeTopicRequest,
    FetchOffsetsRequest,
    FetchRequest,
    GroupHeartbeatRequest,
    InitProducerRequest,
    InvalidRequestError,
    ListGroupsRequest,
    ListTopicsRequest,
    MessageTooLargeError,
    MetadataRequest,
    OffsetOutOfRangeError,
    OffsetsForTimeRequest,
    ProduceRequest,
    QuotaLimits,
    QuotaListRequest,
    QuotaSetRequest,
    RequestTimedOutError,
    ResourceType,
    SubscribeRequest,
    ThrottledError,
    UnknownServerError,
    UnsubscribeRequest,
    ZStreamError,
)
from zstream.clients._acl import CLUSTER_RESOURCE
from zstream.clients._protocol import (
    AddPartitionsRequest,
    AlterTopicRequest,
    Buffer,
    DecommissionBrokerRequest,
    ListReassignmentsRequest,
    ReassignPartitionRequest,
    RebalanceRequest,
    Request,
    RequestArgs,
    decode_request,
    encode_error_reply,
    encode_push,
    encode_reply,
    peek_correlation_id,
)

__all__ = [
    "CLIENT_ZAP_DOMAIN",
    "Backend",
    "Frontend",
    "FrontendStats",
    "PartitionBackend",
    "offset_for_time",
]

log = logging.getLogger("zstream.frontend")

# ZMQ_ZAP_DOMAIN of the client ROUTER (the peer ROUTER has its own).
CLIENT_ZAP_DOMAIN = "zstream-client"

# Answered from a task of their own: they wait on Raft or on new data.
_SLOW_OPS = (
    ProduceRequest,
    FetchRequest,
    CreateTopicRequest,
    DeleteTopicRequest,
    InitProducerRequest,
    GroupHeartbeatRequest,
    CommitOffsetsRequest,
    FetchOffsetsRequest,
    ListGroupsRequest,
    DescribeGroupRequest,
    DeleteGroupRequest,
    ReassignPartitionRequest,
    ListReassignmentsRequest,
    DecommissionBrokerRequest,
    RebalanceRequest,
    AlterTopicRequest,
    AddPartitionsRequest,
    AclListRequest,
    AclAddRequest,
    AclRemoveRequest,
    QuotaSetRequest,
    QuotaListRequest,
)

# The principal of a received message (the ZAP User-Id of its connection), or None
# with security off.
PrincipalOf = Callable[[Sequence[zmq.Frame]], str | None]

_PRODUCE = AclOperation.PRODUCE
_CONSUME = AclOperation.CONSUME
_DESCRIBE = AclOperation.DESCRIBE
_TOPIC = ResourceType.TOPIC
_GROUP = ResourceType.GROUP
_CLUSTER = ResourceType.CLUSTER


def _zap_principal(msg: Sequence[zmq.Frame]) -> str:
    """The principal the ZAP handler set at the handshake (the client key's name);
    read from the envelope frame, which ZeroMQ received (not the identity frame the
    ROUTER made up)."""
    return str(msg[1].get("User-Id"))


# ZeroMQ's hard ceiling sits above the application's limit, so that a message a
# little too large still gets a MESSAGE_TOO_LARGE reply instead of a dropped link.
_ZMQ_CEILING_FACTOR = 2


class PartitionBackend(Protocol):
    """One partition, as the front end needs it. Offsets are record offsets."""

    @property
    def high_watermark(self) -> int:
        """The next offset after the last committed record."""
        ...

    @property
    def log_start_offset(self) -> int: ...

    @property
    def log_end_offset(self) -> int:
        """The next offset after the last record written here (committed or not)."""
        ...

    def check_leader(self) -> None:
        """Raise NotLeaderError (with a leader hint) unless this broker leads."""
        ...

    async def produce(self, batch: Buffer, acks: Acks, timeout_s: float) -> int:
        """Append one verified batch; return its base offset once ``acks`` holds."""
        ...

    def read(self, offset: int, max_bytes: int) -> list[memoryview]:
        """Committed batches from the one holding ``offset``, at least one if any,
        stopping before ``max_bytes``; raises OffsetOutOfRangeError."""
        ...

    async def wait_beyond(self, offset: int, timeout_s: float) -> bool:
        """Wait until the high watermark passes ``offset``; False on timeout."""
        ...


class Backend(Protocol):
    """The broker as the front end sees it."""

    def partition(self, topic: str, partition: int) -> PartitionBackend:
        """Raise UnknownTopicError, UnknownPartitionError or NotLeaderError."""
        ...

    def metadata(self, topics: Sequence[str] | None) -> dict[str, Any]: ...

    def list_topics(self) -> list[str]: ...

    def describe_topic(self, name: str) -> dict[str, Any]: ...

    async def create_topic(self, request: CreateTopicRequest) -> dict[str, Any]: ...

    async def delete_topic(self, name: str) -> None: ...

    async def init_producer(self) -> dict[str, Any]: ...

    # Consumer groups: the controller leader answers; others raise NotControllerError.

    async def group_heartbeat(self, request: GroupHeartbeatRequest) -> dict[str, Any]: ...

    async def commit_offsets(self, request: CommitOffsetsRequest) -> None: ...

    async def fetch_offsets(self, request: FetchOffsetsRequest) -> dict[str, Any]: ...

    async def list_groups(self) -> list[str]: ...

    async def describe_group(self, name: str) -> dict[str, Any]: ...

    async def delete_group(self, name: str) -> None: ...

    # Cluster operations: the controller leader answers; others raise NotControllerError.

    async def reassign_partition(self, request: ReassignPartitionRequest) -> dict[str, Any]: ...

    async def list_reassignments(self) -> list[dict[str, Any]]: ...

    async def decommission_broker(self, request: DecommissionBrokerRequest) -> dict[str, Any]: ...

    async def rebalance(self, request: RebalanceRequest) -> dict[str, Any]: ...

    async def alter_topic(self, request: AlterTopicRequest) -> dict[str, Any]: ...

    async def add_partitions(self, request: AddPartitionsRequest) -> dict[str, Any]: ...

    # ACLs and quotas: the state every broker holds (for its checks), and the
    # controller leader's operations on it (others raise NotControllerError).

    @property
    def acls(self) -> AclTable: ...

    @property
    def quotas(self) -> Mapping[str, QuotaLimits]: ...

    async def list_acls(self) -> list[AclEntry]: ...

    async def add_acls(self, entries: Sequence[AclEntry]) -> int: ...

    async def remove_acls(self, entries: Sequence[AclEntry]) -> int: ...

    async def set_quota(self, quota: QuotaLimits) -> None: ...

    async def list_quotas(self) -> list[QuotaLimits]: ...


@dataclasses.dataclass
class FrontendStats:
    """Counters the metrics endpoint reads."""

    requests: dict[str, int] = dataclasses.field(default_factory=dict)
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    latency_s: dict[str, float] = dataclasses.field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0

    def count(self, op: str, error: ZStreamError | None, started: float, now: float) -> None:
        self.requests[op] = self.requests.get(op, 0) + 1
        self.latency_s[op] = self.latency_s.get(op, 0.0) + (now - started)
        if error is not None:
            name = error.code.name
            self.errors[name] = self.errors.get(name, 0) + 1


@dataclasses.dataclass
class _Stream:
    id: int
    identity: bytes
    topic: str
    partition: int
    offset: int
    credit_bytes: int
    credit: asyncio.Event
    principal: str | None = None
    task: asyncio.Task[None] | None = None


class Frontend:
    """Serves clients on ``bind_addr`` until `close`. Owns every task it starts."""

    def __init__(
        self,
        backend: Backend,
        bind_addr: str,
        *,
        max_message_bytes: int = 8 * 1024 * 1024,
        max_in_flight_per_client: int = 1024,
        heartbeat_ms: int = 1000,
        context: zmq.asyncio.Context | None = None,
        on_request: Callable[[str, float, ZStreamError | None], None] | None = None,
        security: ClientSecurity | None = None,
        principal_of: PrincipalOf | None = None,
        super_users: Iterable[str] = (),
        max_connections_per_principal: int = 1000,
        connection_idle_ms: int = 600_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._authz = Authorizer(lambda: backend.acls, super_users)
        self._quotas = Quotas(lambda: backend.quotas)
        self._connections = ConnectionLimit(
            max_connections_per_principal, connection_idle_ms / 1000
        )
        self._clock = clock
        self._max_bytes = max_message_bytes
        self._max_in_flight = max_in_flight_per_client
        self._heartbeat_s = heartbeat_ms / 1000
        self._own_ctx = context is None
        self._ctx = context or zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes * _ZMQ_CEILING_FACTOR)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._auth: replication.KeyAuthenticator | None = None
        if security is not None:
            # The ZAP handler first: a CURVE server without one accepts every key.
            keys = replication.KeySet(security.credentials_dir)
            self._auth = replication.KeyAuthenticator(self._ctx, keys, CLIENT_ZAP_DOMAIN)
            self._auth.start()
            self._sock.setsockopt(zmq.ZAP_DOMAIN, CLIENT_ZAP_DOMAIN.encode())
            self._sock.setsockopt(zmq.CURVE_SERVER, 1)
            self._sock.setsockopt(zmq.CURVE_PUBLICKEY, security.public_key)
            self._sock.setsockopt(zmq.CURVE_SECRETKEY, security.secret_key)
        if security is not None and principal_of is None:
            principal_of = _zap_principal
        # Security: None (off) means no request has a principal and nothing is checked.
        self._principal_of = principal_of
        self._sock.bind(bind_addr)
        self.addr: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._in_flight: dict[bytes, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: dict[int, _Stream] = {}
        self._next_stream = 1
        self._on_request = on_request
        self.stats = FrontendStats()
        self._closed = False

    # -- the receive loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled (then `close` to release the socket)."""
        while True:
            await self._sock.poll()  # POLLIN, no timeout
            while True:  # drain until EAGAIN, then yield once
                try:
                    msg = await self._sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                try:
                    await self._handle_message(msg)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug in a handler must not stop the broker
                    log.exception("frontend: internal error while handling a message")
            await asyncio.sleep(0)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sock.close(linger=0)
        if self._auth is not None:
            await self._auth.aclose()
        if self._own_ctx:
            self._ctx.term()

    async def _handle_message(self, msg: Sequence[zmq.Frame]) -> None:
        started = time.monotonic()
        if len(msg) < 2:
            return  # no envelope: nothing can be answered (ROUTER always adds identity)
        identity = msg[0].bytes
        principal: str | None = None
        if self._principal_of is not None:
            try:
                principal = self._principal_of(msg)
            except zmq.ZMQError:
                return  # cannot happen on a CURVE socket; nothing to trust, no answer
        frames: list[Buffer] = [f.buffer for f in msg[1:]]
        size = sum(len(f) for f in frames)
        self.stats.bytes_in += size
        if size > self._max_bytes:
            corr = peek_correlation_id(frames[:1]) or 0
            too_large = MessageTooLargeError(
                f"message of {size} bytes exceeds max_message_bytes {self._max_bytes}"
            )
            await self._send_error(identity, corr, too_large, "?", started)
            return
        try:
            request = decode_request(frames)
        except ZStreamError as exc:
            await self._send_error(identity, peek_correlation_id(frames) or 0, exc, "?", started)
            return
        if self._in_flight.get(identity, 0) >= self._max_in_flight:
            error = ThrottledError(f"more than {self._max_in_flight} requests in flight")
            await self._send_error(identity, request.corr_id, error, request.op, started)
            return
        if principal is not None and not self._connections.admit(
            principal, identity, self._clock()
        ):
            error = ThrottledError(
                f"principal {principal!r} has {self._connections.max_per_principal} "
                "connections to this broker already (max_connections_per_principal)"
            )
            await self._send_error(identity, request.corr_id, error, request.op, started)
            return
        self._in_flight[identity] = self._in_flight.get(identity, 0) + 1
        if isinstance(request.args, _SLOW_OPS):
            task = asyncio.create_task(self._serve(identity, request, started, principal))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            await self._serve(identity, request, started, principal)

    async def _serve(
        self, identity: bytes, request: Request, started: float, principal: str | None = None
    ) -> None:
        try:
            if principal is not None:
                self._authorize(principal, request.args)
            result, frames = await self._dispatch(identity, request, principal)
        except ZStreamError as exc:
            await self._send_error(identity, request.corr_id, exc, request.op, started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("frontend: internal error in %s", request.op)
            error = UnknownServerError(f"internal error in {request.op}: {type(exc).__name__}")
            await self._send_error(identity, request.corr_id, error, request.op, started)
        else:
            await self._send(identity, encode_reply(request.corr_id, result, frames))
            self._record(request.op, started, None)
        finally:
            self._release(identity)

    def _release(self, identity: bytes) -> None:
        left = self._in_flight.get(identity, 1) - 1
        if left <= 0:
            self._in_flight.pop(identity, None)
        else:
            self._in_flight[identity] = left

    def _record(self, op: str, started: float, error: ZStreamError | None) -> None:
        now = time.monotonic()
        self.stats.count(op, error, started, now)
        if self._on_request is not None:
            self._on_request(op, now - started, error)

    async def _send(self, identity: bytes, frames: Sequence[Buffer]) -> None:
        self.stats.bytes_out += sum(len(f) for f in frames)
        # ROUTER never blocks: a message for a vanished or slow client is dropped.
        await self._sock.send_multipart([identity, *frames], copy=False)

    async def _send_error(
        self, identity: bytes, corr: int, error: ZStreamError, op: str, started: float
    ) -> None:
        await self._send(identity, encode_error_reply(corr, error))
        self._record(op, started, error)

    # -- handlers --------------------------------------------------------------------------

    def _authorize(self, principal: str, args: RequestArgs) -> None:
        """Raise NotAuthorizedError unless ``principal`` may make this request. Listings
        (metadata of every topic, topics, groups) are not refused but filtered
        (`_dispatch`); credit and unsubscribe act on the client's own streams, whose
        subscribe was checked."""
        authz = self._authz
        match args:
            case ProduceRequest():
                authz.check(principal, _PRODUCE, _TOPIC, args.topic)
            case FetchRequest() | SubscribeRequest():
                authz.check(principal, _CONSUME, _TOPIC, args.topic)
            case DescribeTopicRequest():
                authz.check(principal, _DESCRIBE, _TOPIC, args.name)
            case MetadataRequest(topics=list() as topics):
                # Named topics, as Kafka's per-topic TOPIC_AUTHORIZATION_FAILED: a
                # producer learns at once why a topic is not in its metadata.
                for topic in topics:
                    authz.check(principal, _DESCRIBE, _TOPIC, topic)
            case CreateTopicRequest():
                if not authz.allowed(principal, AclOperation.CREATE, _CLUSTER, CLUSTER_RESOURCE):
                    authz.check(principal, AclOperation.CREATE, _TOPIC, args.name)
            case DeleteTopicRequest():
                authz.check(principal, AclOperation.DELETE, _TOPIC, args.name)
            case InitProducerRequest():
                # A producer id is for writing: it takes produce on some topic.
                if not authz.allows_any(principal, _PRODUCE, _TOPIC):
                    raise not_authorized(principal, _PRODUCE, _TOPIC, "*")
            case GroupHeartbeatRequest():
                authz.check(principal, _CONSUME, _GROUP, args.group)
                for topic in args.topics or ():
                    authz.check(principal, _CONSUME, _TOPIC, topic)
            case CommitOffsetsRequest():
                authz.check(principal, _CONSUME, _GROUP, args.group)
                for topic in args.offsets:
                    authz.check(principal, _CONSUME, _TOPIC, topic)
            case FetchOffsetsRequest() | DescribeGroupRequest():
                authz.check(principal, _DESCRIBE, _GROUP, args.group)
            case DeleteGroupRequest():
                authz.check(principal, AclOperation.DELETE, _GROUP, args.group)
            case OffsetsForTimeRequest():
                # Kafka's ListOffsets: describe on the topic.
                authz.check(principal, _DESCRIBE, _TOPIC, args.topic)
            case AlterTopicRequest() | AddPartitionsRequest():
                authz.check(principal, AclOperation.ALTER, _TOPIC, args.name)
            case ReassignPartitionRequest() | DecommissionBrokerRequest() | RebalanceRequest():
                authz.check(principal, AclOperation.ALTER, _CLUSTER, CLUSTER_RESOURCE)
            case ListReassignmentsRequest():
                authz.check(principal, _DESCRIBE, _CLUSTER, CLUSTER_RESOURCE)
            case AclListRequest() | QuotaListRequest():
                authz.check(principal, _DESCRIBE, _CLUSTER, CLUSTER_RESOURCE)
            case AclAddRequest() | AclRemoveRequest() | QuotaSetRequest():
                authz.check(principal, AclOperation.ALTER, _CLUSTER, CLUSTER_RESOURCE)

    def _describable(self, principal: str | None, rtype: ResourceType, name: str) -> bool:
        return principal is None or self._authz.allowed(principal, _DESCRIBE, rtype, name)

    def _admit(self, principal: str, direction: Direction) -> None:
        """Raise ThrottledError (with ``throttle_ms``) while the principal's bucket is
        in debt."""
        wait_s = self._quotas.throttle_s(principal, direction, self._clock())
        if wait_s > 0:
            throttle_ms = max(1, int(wait_s * 1000 + 0.999))
            raise ThrottledError(
                f"principal {principal!r} is over its {direction} quota of "
                f"{self._quotas.rate(principal, direction)} bytes/s: retry in {throttle_ms} ms",
                throttle_ms=throttle_ms,
            )

    async def _dispatch(
        self, identity: bytes, request: Request, principal: str | None = None
    ) -> tuple[dict[str, Any], Sequence[Buffer]]:
        args = request.args
        backend = self._backend
        match args:
            case ProduceRequest():
                return await self._produce(args, request.frames[0], principal), ()
            case FetchRequest():
                return await self._fetch(args, principal)
            case MetadataRequest():
                doc = backend.metadata(args.topics)
                if principal is not None:
                    doc["topics"] = [
                        t for t in doc["topics"] if self._describable(principal, _TOPIC, t["name"])
                    ]
                return doc, ()
            case ListTopicsRequest():
                names = backend.list_topics()
                if principal is not None:
                    names = [t for t in names if self._describable(principal, _TOPIC, t)]
                return {"topics": names}, ()
            case DescribeTopicRequest():
                return backend.describe_topic(args.name), ()
            case CreateTopicRequest():
                return await backend.create_topic(args), ()
            case DeleteTopicRequest():
                await backend.delete_topic(args.name)
                return {}, ()
            case InitProducerRequest():
                return await backend.init_producer(), ()
            case GroupHeartbeatRequest():
                return await backend.group_heartbeat(args), ()
            case CommitOffsetsRequest():
                await backend.commit_offsets(args)
                return {}, ()
            case FetchOffsetsRequest():
                offsets = await backend.fetch_offsets(args)
                if principal is not None:
                    offsets["offsets"] = {
                        t: rows
                        for t, rows in offsets["offsets"].items()
                        if self._describable(principal, _TOPIC, t)
                    }
                return offsets, ()
            case ListGroupsRequest():
                groups = await backend.list_groups()
                if principal is not None:
                    groups = [g for g in groups if self._describable(principal, _GROUP, g)]
                return {"groups": groups}, ()
            case DescribeGroupRequest():
                return await backend.describe_group(args.group), ()
            case DeleteGroupRequest():
                await backend.delete_group(args.group)
                return {}, ()
            case OffsetsForTimeRequest():
                partition = backend.partition(args.topic, args.partition)
                partition.check_leader()
                return offset_for_time(partition, args.timestamp_ms), ()
            case ReassignPartitionRequest():
                return await backend.reassign_partition(args), ()
            case ListReassignmentsRequest():
                return {"reassignments": await backend.list_reassignments()}, ()
            case DecommissionBrokerRequest():
                return await backend.decommission_broker(args), ()
            case RebalanceRequest():
                return await backend.rebalance(args), ()
            case AlterTopicRequest():
                return await backend.alter_topic(args), ()
            case AddPartitionsRequest():
                return await backend.add_partitions(args), ()
            case SubscribeRequest():
                return self._subscribe(identity, args, principal), ()
            case AclListRequest():
                acls = [
                    e.to_wire()
                    for e in await backend.list_acls()
                    if args.principal in (None, e.principal)
                    and args.resource_type in (None, e.resource_type)
                ]
                return {"acls": acls}, ()
            case AclAddRequest():
                return {"added": await backend.add_acls(args.acl_entries())}, ()
            case AclRemoveRequest():
                return {"removed": await backend.remove_acls(args.acl_entries())}, ()
            case QuotaSetRequest():
                await backend.set_quota(args.limits())
                return {}, ()
            case QuotaListRequest():
                return {"quotas": [q.to_wire() for q in await backend.list_quotas()]}, ()
            case CreditRequest():
                stream = self._own_stream(identity, args.stream)
                stream.credit_bytes += args.credit_bytes
                stream.credit.set()
                return {"credit_bytes": stream.credit_bytes}, ()
            case UnsubscribeRequest():
                stream = self._own_stream(identity, args.stream)
                await self._end_stream(stream)
                return {}, ()
        raise InvalidRequestError(f"unsupported operation {request.op}")  # pragma: no cover

    async def _produce(
        self, args: ProduceRequest, batch: Buffer, principal: str | None = None
    ) -> dict[str, Any]:
        partition = self._backend.partition(args.topic, args.partition)
        partition.check_leader()
        if principal is not None:
            self._admit(principal, Direction.PRODUCE)
        try:
            storage.verify_batch(batch)
        except storage.CorruptBatchError as exc:
            raise CorruptBatchError(str(exc)) from exc
        if principal is not None:
            self._quotas.charge(principal, Direction.PRODUCE, len(batch), self._clock())
        try:
            base = await asyncio.wait_for(
                partition.produce(batch, args.acks, args.timeout_ms / 1000), args.timeout_ms / 1000
            )
        except TimeoutError as exc:
            raise RequestTimedOutError(
                f"produce not acknowledged within {args.timeout_ms} ms; it may still commit"
            ) from exc
        return {"base_offset": base}

    async def _fetch(
        self, args: FetchRequest, principal: str | None = None
    ) -> tuple[dict[str, Any], Sequence[Buffer]]:
        partition = self._backend.partition(args.topic, args.partition)
        partition.check_leader()
        if principal is not None:
            self._admit(principal, Direction.FETCH)
        hwm = partition.high_watermark
        if args.offset < partition.log_start_offset or args.offset > max(
            hwm, partition.log_end_offset
        ):
            raise OffsetOutOfRangeError(
                f"offset {args.offset} is outside [{partition.log_start_offset}, {hwm}]",
                start=partition.log_start_offset,
                end=hwm,
            )
        if args.offset >= hwm and args.max_wait_ms > 0:
            await partition.wait_beyond(args.offset, args.max_wait_ms / 1000)
            partition.check_leader()
        hwm = partition.high_watermark
        batches = partition.read(args.offset, args.max_bytes) if args.offset < hwm else []
        if principal is not None and batches:
            size = sum(len(b) for b in batches)
            self._quotas.charge(principal, Direction.FETCH, size, self._clock())
        result = {"hwm": hwm, "log_start": partition.log_start_offset}
        return result, batches

    # -- push streams ----------------------------------------------------------------------

    def _subscribe(
        self, identity: bytes, args: SubscribeRequest, principal: str | None = None
    ) -> dict[str, Any]:
        partition = self._backend.partition(args.topic, args.partition)
        partition.check_leader()
        if not partition.log_start_offset <= args.offset <= partition.high_watermark:
            raise OffsetOutOfRangeError(
                f"offset {args.offset} is outside "
                f"[{partition.log_start_offset}, {partition.high_watermark}]",
                start=partition.log_start_offset,
                end=partition.high_watermark,
            )
        owned = sum(1 for s in self._streams.values() if s.identity == identity)
        if owned >= self._max_in_flight:
            raise ThrottledError(f"more than {self._max_in_flight} streams for this client")
        sid = self._next_stream
        self._next_stream += 1
        stream = _Stream(
            sid,
            identity,
            args.topic,
            args.partition,
            args.offset,
            args.credit_bytes,
            asyncio.Event(),
            principal,
        )
        stream.credit.set()
        self._streams[sid] = stream
        stream.task = asyncio.create_task(self._pump(stream))
        self._tasks.add(stream.task)
        stream.task.add_done_callback(self._tasks.discard)
        return {"stream": sid}

    def _own_stream(self, identity: bytes, sid: int) -> _Stream:
        stream = self._streams.get(sid)
        if stream is None or stream.identity != identity:
            raise InvalidRequestError(f"no stream {sid} for this client")
        return stream

    async def _end_stream(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
        task = stream.task
        if task is not None and task is not asyncio.current_task():
            # Not awaited: Python 3.11's wait_for can swallow a cancel that races with
            # its inner future completing, and awaiting here would then block the
            # receive loop forever. The pump also stops once its stream is gone; the
            # task stays owned by the front end (cancelled again by `close`).
            task.cancel()

    async def _pump(self, stream: _Stream) -> None:
        """Push committed batches while credit lasts; heartbeat when idle."""
        try:
            while self._streams.get(stream.id) is stream:
                partition = self._backend.partition(stream.topic, stream.partition)
                partition.check_leader()
                if stream.principal is not None:  # an ACL removed meanwhile ends it
                    self._authz.check(stream.principal, _CONSUME, _TOPIC, stream.topic)
                if stream.credit_bytes <= 0:
                    stream.credit.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stream.credit.wait(), self._heartbeat_s)
                    if stream.credit_bytes <= 0:
                        await self._heartbeat(stream, partition)
                    continue
                if stream.offset >= partition.high_watermark:
                    if not await partition.wait_beyond(stream.offset, self._heartbeat_s):
                        await self._heartbeat(stream, partition)
                    continue
                if stream.principal is not None:
                    # Over the fetch quota a stream just waits: the broker paces it.
                    wait_s = self._quotas.throttle_s(
                        stream.principal, Direction.FETCH, self._clock()
                    )
                    if wait_s > 0:
                        await asyncio.sleep(min(wait_s, self._heartbeat_s))
                        if wait_s >= self._heartbeat_s:  # a long wait: show we are alive
                            await self._heartbeat(stream, partition)
                        continue
                batches = partition.read(stream.offset, stream.credit_bytes)
                if not batches:
                    continue
                size = sum(len(b) for b in batches)
                if stream.principal is not None:
                    self._quotas.charge(stream.principal, Direction.FETCH, size, self._clock())
                first = storage.decode_batch_header(batches[0]).base_offset
                last = storage.decode_batch_header(batches[-1]).next_offset
                stream.credit_bytes -= size
                stream.offset = last
                result = {"offset": first, "next_offset": last, "hwm": partition.high_watermark}
                await self._send(stream.identity, encode_push(stream.id, "data", result, batches))
        except asyncio.CancelledError:
            raise
        except ZStreamError as exc:
            await self._close_stream(stream, exc)
        except Exception as exc:
            log.exception("frontend: internal error in stream %d", stream.id)
            await self._close_stream(stream, UnknownServerError(f"stream failed: {exc!r}"))

    async def _heartbeat(self, stream: _Stream, partition: PartitionBackend) -> None:
        result = {"hwm": partition.high_watermark, "next_offset": stream.offset}
        await self._send(stream.identity, encode_push(stream.id, "heartbeat", result))

    async def _close_stream(self, stream: _Stream, error: ZStreamError) -> None:
        self._streams.pop(stream.id, None)
        result = {"err": int(error.code), "msg": error.message, **error.details}
        result["next_offset"] = stream.offset
        await self._send(stream.identity, encode_push(stream.id, "closed", result))


def offset_for_time(partition: PartitionBackend, timestamp_ms: int) -> dict[str, Any]:
    """The OffsetsForTimeRequest reply (see clients/_protocol.py): a binary search over
    the committed batches by their header's ``max_timestamp_ms`` (one small read per
    step, headers only), then the records of the one batch found. The search keeps
    ``lo <= answer's batch <= hi``: a batch reaching ``timestamp_ms`` moves ``hi`` to
    its base offset, one that does not moves ``lo`` past it; ``hi`` left at the high
    watermark means no record is that recent."""
    start, hwm = partition.log_start_offset, partition.high_watermark
    lo, hi = start, hwm
    try:
        while lo < hi:
            batches = partition.read((lo + hi) // 2, 1)
            if not batches:
                break
            header = storage.decode_batch_header(batches[0])
            if header.max_timestamp_ms >= timestamp_ms:
                hi = header.base_offset
            else:
                lo = header.next_offset
        if hi < hwm:
            for record in storage.decode_records(partition.read(hi, 1)[0]):
                if record.timestamp_ms >= timestamp_ms:
                    return {
                        "offset": record.offset,
                        "timestamp_ms": record.timestamp_ms,
                        "log_start": start,
                        "hwm": hwm,
                    }
    except storage.CorruptBatchError as exc:
        raise CorruptBatchError(f"offsets_for_time: stored batch is corrupt: {exc}") from exc
    return {"offset": hwm, "timestamp_ms": None, "log_start": start, "hwm": hwm}
