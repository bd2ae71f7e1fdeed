"""The client wire protocol, shared by the client library and the broker.

Pure functions: bytes in, typed values out, and the reverse. No sockets here.

Transport: ZeroMQ. A client holds a DEALER socket; the broker a ROUTER. Every
message is multipart::

    frame 0      envelope: one msgpack map (below)
    frame 1..N   raw record batches, opaque to the broker (storage's batch format)

Envelopes (msgpack maps with string keys; unknown keys are ignored so that
newer peers can add fields)::

    request  {"v": 1, "id": corr, "op": name, "args": {...}}
    reply    {"v": 1, "id": corr, "err": code, "msg": text, "res": {...}}
    push     {"v": 1, "stream": sid, "op": kind, "res": {...}}

    v       int     protocol version; a broker answers an unknown one with
                    UNSUPPORTED_VERSION
    id      int     correlation id chosen by the client, 0 <= id < 2**63;
                    echoed in the reply. Many requests may be in flight.
    op      str     operation name (see ``_REQUEST_TYPES``), or for a push the
                    kind of stream event ("data", "heartbeat", "closed")
    args    map     the operation's arguments; validated into a frozen dataclass
    err     int     an ErrorCode; 0 (or absent) means success
    msg     str     human-readable error text (absent on success)
    res     map     the result, or on error structured details such as
                    {"leader": 2} for NOT_LEADER or {"start": 0, "end": 9}
                    for OFFSET_OUT_OF_RANGE
    stream  int     a subscription id the broker assigned (push messages only)

Bad input anywhere raises :class:`InvalidRequestError` (or
:class:`UnsupportedVersionError`), which the broker turns into a reply; it never
raises anything else.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias, Union, get_args, get_origin, get_type_hints

import msgpack

from zstream.clients._acl import AclEntry, QuotaLimits, ResourceType, validate_principal
from zstream.clients._errors import (
    ErrorCode,
    InvalidRequestError,
    UnsupportedVersionError,
    ZStreamError,
    error_for_code,
)

__all__ = [
    "MAX_CORRELATION_ID",
    "PROTOCOL_VERSION",
    "Acks",
    "AclAddRequest",
    "AclListRequest",
    "AclRemoveRequest",
    "AddPartitionsRequest",
    "AlterTopicRequest",
    "Buffer",
    "CommitOffsetsRequest",
    "CreateTopicRequest",
    "CreditRequest",
    "DecommissionBrokerRequest",
    "DeleteGroupRequest",
    "DeleteTopicRequest",
    "DescribeGroupRequest",
    "DescribeTopicRequest",
    "FetchOffsetsRequest",
    "FetchRequest",
    "GroupHeartbeatRequest",
    "InitProducerRequest",
    "ListGroupsRequest",
    "ListReassignmentsRequest",
    "ListTopicsRequest",
    "MetadataRequest",
    "OffsetsForTimeRequest",
    "ProduceRequest",
    "Push",
    "QuotaListRequest",
    "QuotaSetRequest",
    "ReassignPartitionRequest",
    "RebalanceRequest",
    "Reply",
    "Request",
    "RequestArgs",
    "SubscribeRequest",
    "UnsubscribeRequest",
    "decode_incoming",
    "decode_push",
    "decode_reply",
    "decode_request",
    "encode_error_reply",
    "encode_push",
    "encode_reply",
    "encode_request",
    "peek_correlation_id",
    "validate_group_name",
    "validate_topic_name",
]

PROTOCOL_VERSION = 1
MAX_CORRELATION_ID = 2**63 - 1
# An envelope is small metadata; batches travel in their own frames. A bound here
# keeps a hostile client from making the broker unpack a huge map.
MAX_ENVELOPE_BYTES = 64 * 1024
MAX_TOPIC_NAME_CHARS = 249  # Kafka's limit, so names port both ways

Buffer: TypeAlias = bytes | bytearray | memoryview

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")


def validate_topic_name(name: str) -> str:
    if not 0 < len(name) <= MAX_TOPIC_NAME_CHARS or not _TOPIC_NAME.fullmatch(name):
        raise InvalidRequestError(
            f"invalid topic name {name[:64]!r}: use 1-{MAX_TOPIC_NAME_CHARS} of [A-Za-z0-9._-]"
        )
    if name in (".", ".."):
        raise InvalidRequestError(f"invalid topic name {name!r}")
    return name


class Acks(StrEnum):
    """When a produce is acknowledged: ``all`` once committed on a majority of
    replicas (durable), ``leader`` once durable on the leader alone."""

    ALL = "all"
    LEADER = "leader"


# --------------------------------------------------------------------------
# Request argument types. Each is a frozen dataclass named by its ``op``; the
# generic validator below checks field types, and __post_init__ checks meaning.


def _non_negative(name: str, value: int) -> None:
    if value < 0:
        raise InvalidRequestError(f"{name} must be >= 0, got {value}")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise InvalidRequestError(f"{name} must be > 0, got {value}")


@dataclasses.dataclass(frozen=True, slots=True)
class MetadataRequest:
    op: ClassVar[str] = "metadata"
    topics: list[str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CreateTopicRequest:
    op: ClassVar[str] = "create_topic"
    name: str
    partitions: int
    replication_factor: int
    # Per-topic settings such as retention_bytes, retention_ms, segment_bytes.
    configs: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_topic_name(self.name)
        _positive("partitions", self.partitions)
        _positive("replication_factor", self.replication_factor)


@dataclasses.dataclass(frozen=True, slots=True)
class DeleteTopicRequest:
    op: ClassVar[str] = "delete_topic"
    name: str

    def __post_init__(self) -> None:
        validate_topic_name(self.name)


@dataclasses.dataclass(frozen=True, slots=True)
class ListTopicsRequest:
    op: ClassVar[str] = "list_topics"


@dataclasses.dataclass(frozen=True, slots=True)
class DescribeTopicRequest:
    op: ClassVar[str] = "describe_topic"
    name: str

    def __post_init__(self) -> None:
        validate_topic_name(self.name)


@dataclasses.dataclass(frozen=True, slots=True)
class ProduceRequest:
    """Append one record batch (frame 1) to a partition."""

    op: ClassVar[str] = "produce"
    frames_min: ClassVar[int] = 1
    frames_max: ClassVar[int] = 1
    topic: str
    partition: int
    acks: Acks = Acks.ALL
    timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        validate_topic_name(self.topic)
        _non_negative("partition", self.partition)
        _positive("timeout_ms", self.timeout_ms)


@dataclasses.dataclass(frozen=True, slots=True)
class FetchRequest:
    """Read committed batches from ``offset``; long-poll up to ``max_wait_ms``."""

    op: ClassVar[str] = "fetch"
    topic: str
    partition: int
    offset: int
    max_bytes: int = 1024 * 1024
    max_wait_ms: int = 500

    def __post_init__(self) -> None:
        validate_topic_name(self.topic)
        _non_negative("partition", self.partition)
        _non_negative("offset", self.offset)
        _positive("max_bytes", self.max_bytes)
        _non_negative("max_wait_ms", self.max_wait_ms)


@dataclasses.dataclass(frozen=True, slots=True)
class OffsetsForTimeRequest:
    """The first offset of a partition whose record timestamp is >= ``timestamp_ms``
    (Kafka's ListOffsets by timestamp), answered by the partition leader from the
    committed log. Reply ``res``::

        {"offset": int, "timestamp_ms": int | None, "log_start": int, "hwm": int}

    ``timestamp_ms`` is the found record's timestamp; when no committed record is
    that recent, ``offset`` is the high watermark and ``timestamp_ms`` None. The
    leader searches by each batch's ``max_timestamp_ms``, assuming that timestamps
    grow with offsets, as they do when producers stamp the time of sending (the
    default); with timestamps out of order the answer is an offset whose batch
    reaches ``timestamp_ms``, not necessarily the first such."""

    op: ClassVar[str] = "offsets_for_time"
    topic: str
    partition: int
    timestamp_ms: int

    def __post_init__(self) -> None:
        validate_topic_name(self.topic)
        _non_negative("partition", self.partition)
        _non_negative("timestamp_ms", self.timestamp_ms)


@dataclasses.dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """Open a push stream of committed batches from ``offset``, with a byte credit."""

    op: ClassVar[str] = "subscribe"
    topic: str
    partition: int
    offset: int
    credit_bytes: int

    def __post_init__(self) -> None:
        validate_topic_name(self.topic)
        _non_negative("partition", self.partition)
        _non_negative("offset", self.offset)
        _positive("credit_bytes", self.credit_bytes)


@dataclasses.dataclass(frozen=True, slots=True)
class CreditRequest:
    op: ClassVar[str] = "credit"
    stream: int
    credit_bytes: int

    def __post_init__(self) -> None:
        _positive("stream", self.stream)
        _positive("credit_bytes", self.credit_bytes)


@dataclasses.dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    op: ClassVar[str] = "unsubscribe"
    stream: int

    def __post_init__(self) -> None:
        _positive("stream", self.stream)


@dataclasses.dataclass(frozen=True, slots=True)
class InitProducerRequest:
    """Ask the controller for a producer id and epoch (idempotent producer)."""

    op: ClassVar[str] = "init_producer"


# -- consumer groups (served by the controller leader; others answer NOT_CONTROLLER) --

MAX_MEMBER_ID_CHARS = 64
MIN_SESSION_TIMEOUT_MS = 500
MAX_SESSION_TIMEOUT_MS = 30 * 60 * 1000


def validate_group_name(name: str) -> str:
    """Group names follow the topic name rules."""
    try:
        return validate_topic_name(name)
    except InvalidRequestError:
        raise InvalidRequestError(
            f"invalid group name {name[:64]!r}: use 1-{MAX_TOPIC_NAME_CHARS} of [A-Za-z0-9._-]"
        ) from None


def _validate_member_id(member_id: str, *, allow_empty: bool) -> None:
    if member_id == "" and allow_empty:
        return
    if not 0 < len(member_id) <= MAX_MEMBER_ID_CHARS or not _TOPIC_NAME.fullmatch(member_id):
        raise InvalidRequestError(
            f"invalid member id {member_id[:64]!r}: use 1-{MAX_MEMBER_ID_CHARS} of [A-Za-z0-9._-]"
        )


def _validate_partition_map(name: str, value: dict[str, list[int]]) -> None:
    for topic, partitions in value.items():
        validate_topic_name(topic)
        for p in partitions:
            _non_negative(f"{name}[{topic!r}] partition", p)


@dataclasses.dataclass(frozen=True, slots=True)
class GroupHeartbeatRequest:
    """Join, stay in, or leave a consumer group (KIP-848 style: the member sends
    its state, the controller answers with the member's assignment).

    The client picks ``member_id`` (a random token) and keeps it. The first
    heartbeat of an id the group does not know must carry ``topics`` (it joins);
    without ``topics`` an unknown id gets UNKNOWN_MEMBER (it was removed: the
    client drops its partitions and joins again with ``topics``). ``topics`` on a
    later heartbeat replaces the subscription. ``owned`` is every partition the
    member consumes or has claimed. A newly assigned partition must be claimed
    (a heartbeat with it in ``owned``) and consumed only once the reply to that
    heartbeat still assigns it; a claimed partition missing from that reply is
    dropped from ``owned`` unread (another member claimed it first). A partition
    taken out of its assignment counts as released only once a heartbeat omits it
    from ``owned``. ``leave`` removes the member at once, freeing its partitions.

    Reply ``res``::

        {"member_id": str, "member_epoch": int, "heartbeat_interval_ms": int,
         "assignment": {topic: [partition, ...]}}

    ``assignment`` is what the member may consume now (after claiming it). An
    owned partition missing from it must be released: stop reading it, commit,
    then heartbeat without it. A partition the assignor moved to this member is
    only included once its previous owner released it, and never while another
    member has it in ``owned``; replies are computed in Raft order, so of two
    members claiming one partition only the first keeps it in its assignment.
    ``member_epoch`` grows whenever this member's target assignment changes.
    """

    op: ClassVar[str] = "group_heartbeat"
    group: str
    member_id: str
    topics: list[str] | None = None
    owned: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    session_timeout_ms: int = 10_000
    leave: bool = False

    def __post_init__(self) -> None:
        validate_group_name(self.group)
        _validate_member_id(self.member_id, allow_empty=False)
        for topic in self.topics or ():
            validate_topic_name(topic)
        _validate_partition_map("owned", self.owned)
        if not MIN_SESSION_TIMEOUT_MS <= self.session_timeout_ms <= MAX_SESSION_TIMEOUT_MS:
            raise InvalidRequestError(
                f"session_timeout_ms must be within {MIN_SESSION_TIMEOUT_MS}.."
                f"{MAX_SESSION_TIMEOUT_MS}, got {self.session_timeout_ms}"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class CommitOffsetsRequest:
    """Commit ``offsets`` ({topic: [[partition, next_offset], ...]}) for a group,
    replicated by the controller before the reply. A member (``member_id``) may
    commit only partitions in its ``owned`` that no other member owns; with
    ``member_id`` empty the
    commit is accepted only while the group has no members (a consumer that uses
    ``assign`` and a group only to store its offsets). Otherwise FENCED_MEMBER or
    UNKNOWN_MEMBER, and nothing is committed."""

    op: ClassVar[str] = "commit_offsets"
    group: str
    offsets: dict[str, list[list[int]]]
    member_id: str = ""

    def __post_init__(self) -> None:
        validate_group_name(self.group)
        _validate_member_id(self.member_id, allow_empty=True)
        for topic, pairs in self.offsets.items():
            validate_topic_name(topic)
            for pair in pairs:
                if len(pair) != 2:
                    raise InvalidRequestError(
                        f"offsets[{topic!r}] entries must be [partition, offset] pairs"
                    )
                _non_negative("partition", pair[0])
                _non_negative("offset", pair[1])


@dataclasses.dataclass(frozen=True, slots=True)
class FetchOffsetsRequest:
    """The group's committed offsets, for ``topics`` (all when None). Reply ``res``:
    ``{"offsets": {topic: [[partition, next_offset], ...]}}``; a partition with no
    commit is absent. An unknown group answers with no offsets, not an error."""

    op: ClassVar[str] = "fetch_offsets"
    group: str
    topics: list[str] | None = None

    def __post_init__(self) -> None:
        validate_group_name(self.group)
        for topic in self.topics or ():
            validate_topic_name(topic)


@dataclasses.dataclass(frozen=True, slots=True)
class ListGroupsRequest:
    """Reply ``res``: ``{"groups": [name, ...]}``, sorted: every group with members
    or committed offsets."""

    op: ClassVar[str] = "list_groups"


@dataclasses.dataclass(frozen=True, slots=True)
class DescribeGroupRequest:
    """Reply ``res``::

        {"group": str, "epoch": int,
         "members": [{"member_id": str, "member_epoch": int, "topics": [str],
                      "session_timeout_ms": int,
                      "assignment": {topic: [p]},   # what it may consume now
                      "target": {topic: [p]},       # where the assignor wants it
                      "owned": {topic: [p]}}],      # what it last reported
         "offsets": {topic: [[partition, next_offset], ...]}}

    UNKNOWN_GROUP if the group has neither members nor offsets. Lag is not in the
    reply: the controller does not know every partition's high watermark; the
    Admin client adds it from the partition leaders."""

    op: ClassVar[str] = "describe_group"
    group: str

    def __post_init__(self) -> None:
        validate_group_name(self.group)


@dataclasses.dataclass(frozen=True, slots=True)
class DeleteGroupRequest:
    """Delete a consumer group with no members, and with it its committed offsets
    (Kafka's DeleteGroups). GROUP_NOT_EMPTY while it has members, UNKNOWN_GROUP if it
    has neither members nor offsets. Reply ``res``: ``{}``."""

    op: ClassVar[str] = "delete_group"
    group: str

    def __post_init__(self) -> None:
        validate_group_name(self.group)


# -- cluster operations (the controller leader answers; others: NOT_CONTROLLER) --


@dataclasses.dataclass(frozen=True, slots=True)
class AddPartitionsRequest:
    """Grow a topic to ``count`` partitions (more than it has; partitions are never
    removed). The new ones are placed like a new topic's; consumer groups that
    subscribe to it are reassigned. Reply ``res``: the ``topic``."""

    op: ClassVar[str] = "add_partitions"
    name: str
    count: int

    def __post_init__(self) -> None:
        validate_topic_name(self.name)
        _positive("count", self.count)


@dataclasses.dataclass(frozen=True, slots=True)
class AlterTopicRequest:
    """Change a topic's configs (``retention_bytes``, ``retention_ms``,
    ``segment_bytes``: merged into the ones it has). Every replica applies them:
    retention from its next check, segment_bytes from its next segment. Reply ``res``:
    the ``topic`` as describe_topic gives it."""

    op: ClassVar[str] = "alter_topic"
    name: str
    configs: dict[str, int]

    def __post_init__(self) -> None:
        validate_topic_name(self.name)
        if not self.configs:
            raise InvalidRequestError("configs must name at least one setting")


# Replicas of one partition: far above any real replication factor.
MAX_REPLICAS = 16


@dataclasses.dataclass(frozen=True, slots=True)
class ReassignPartitionRequest:
    """Move a partition to the replica set ``replicas`` (broker ids, distinct, the
    first the preferred leader). The controller records it as the partition's target
    and its leader walks the Raft group there (learners catch up, then a joint
    configuration promotes them and removes the old voters). Reply ``res``::

        {"topic": str, "partition": int, "replicas": [int], "target": [int] | None}

    ``target`` is None when nothing has to move (the same brokers: only the preferred
    leader changes). INVALID_REQUEST when the partition is being reassigned to another
    target already or a broker is unknown; UNAVAILABLE (retriable) when a new replica's
    broker is not live or receives too many reassignments already."""

    op: ClassVar[str] = "reassign_partition"
    topic: str
    partition: int
    replicas: list[int]

    def __post_init__(self) -> None:
        validate_topic_name(self.topic)
        _non_negative("partition", self.partition)
        if not 0 < len(self.replicas) <= MAX_REPLICAS:
            raise InvalidRequestError(f"replicas must name 1-{MAX_REPLICAS} brokers")
        for b in self.replicas:
            _positive("replicas broker id", b)
        if len(set(self.replicas)) != len(self.replicas):
            raise InvalidRequestError("replicas must be distinct brokers")


@dataclasses.dataclass(frozen=True, slots=True)
class DecommissionBrokerRequest:
    """Move every replica off ``broker_id`` (and it out of the controller group), then
    remove it for good: a removed broker is refused registration. Returns at once,
    ``res`` ``{"decommissioning": [id, ...]}`` (every broker leaving); progress shows in
    metadata (each broker's ``state`` and ``replicas``) and in ListReassignments.
    UNAVAILABLE when the other brokers could not hold the widest partition."""

    op: ClassVar[str] = "decommission_broker"
    broker_id: int

    def __post_init__(self) -> None:
        _positive("broker_id", self.broker_id)


@dataclasses.dataclass(frozen=True, slots=True)
class ListReassignmentsRequest:
    """Reassignments in progress. Reply ``res``::

    {"reassignments": [{"topic": str, "partition": int, "group_id": int,
                        "replicas": [int], "target": [int],
                        "adding": [int], "removing": [int]}, ...]}"""

    op: ClassVar[str] = "list_reassignments"


@dataclasses.dataclass(frozen=True, slots=True)
class RebalanceRequest:
    """Even out replica counts and preferred leaders over the live brokers that may
    take replicas (broker/_balance.py plans it), then move leadership back to the
    preferred replicas. Returns at once with the plan; unless ``dry_run``, the
    controller records it and carries it out through reassignments (bounded per
    broker; watch them with ListReassignments), then leader transfers. Reply ``res``::

        {"dry_run": bool, "phase": "" | "moving" | "electing",
         "moves": [{"topic": str, "partition": int, "replicas": [int], "target": [int]}],
         "preferred_leaders": [{"topic": str, "partition": int, "preferred": int}]}

    A move whose ``target`` holds the same brokers only reorders the replicas (a new
    preferred leader, no data copied). ``preferred_leaders`` lists every partition."""

    op: ClassVar[str] = "rebalance"
    dry_run: bool = False


# -- ACLs and quotas (served by the controller leader; see clients/_acl.py) ----------

MAX_ACLS_PER_REQUEST = 1_000


def _acl_entries(entries: list[dict[str, str]]) -> list[AclEntry]:
    if not 0 < len(entries) <= MAX_ACLS_PER_REQUEST:
        raise InvalidRequestError(f"entries: give 1-{MAX_ACLS_PER_REQUEST} ACL entries")
    return [AclEntry.from_wire(e) for e in entries]


@dataclasses.dataclass(frozen=True, slots=True)
class AclListRequest:
    """Reply ``res``: ``{"acls": [entry, ...]}``, sorted; only those of ``principal``
    and of ``resource_type`` when given. Needs ``describe`` on the cluster."""

    op: ClassVar[str] = "acl_list"
    principal: str | None = None
    resource_type: str | None = None

    def __post_init__(self) -> None:
        if self.principal is not None:
            validate_principal(self.principal)
        if self.resource_type is not None and self.resource_type not in set(ResourceType):
            raise InvalidRequestError(
                f"resource_type must be one of: {', '.join(r.value for r in ResourceType)}"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class AclAddRequest:
    """Add ACL entries (wire form: clients/_acl.py), replicated by the controller.
    Reply ``res``: ``{"added": n}`` (entries already present are not counted). Needs
    ``alter`` on the cluster."""

    op: ClassVar[str] = "acl_add"
    entries: list[dict[str, str]]

    def __post_init__(self) -> None:
        _acl_entries(self.entries)

    def acl_entries(self) -> list[AclEntry]:
        return _acl_entries(self.entries)


@dataclasses.dataclass(frozen=True, slots=True)
class AclRemoveRequest:
    """Remove ACL entries (exact matches). Reply ``res``: ``{"removed": n}``. Needs
    ``alter`` on the cluster."""

    op: ClassVar[str] = "acl_remove"
    entries: list[dict[str, str]]

    def __post_init__(self) -> None:
        _acl_entries(self.entries)

    def acl_entries(self) -> list[AclEntry]:
        return _acl_entries(self.entries)


@dataclasses.dataclass(frozen=True, slots=True)
class QuotaSetRequest:
    """Set ``principal``'s byte rates (``*``: the default quota); None is no limit, and
    both None removes the quota. Needs ``alter`` on the cluster."""

    op: ClassVar[str] = "quota_set"
    principal: str
    produce_bytes_per_s: int | None = None
    fetch_bytes_per_s: int | None = None

    def __post_init__(self) -> None:
        self.limits()

    def limits(self) -> QuotaLimits:
        return QuotaLimits(self.principal, self.produce_bytes_per_s, self.fetch_bytes_per_s)


@dataclasses.dataclass(frozen=True, slots=True)
class QuotaListRequest:
    """Reply ``res``: ``{"quotas": [{"principal", "produce_bytes_per_s",
    "fetch_bytes_per_s"}, ...]}`` sorted by principal. Needs ``describe`` on the
    cluster."""

    op: ClassVar[str] = "quota_list"


RequestArgs: TypeAlias = (
    MetadataRequest
    | CreateTopicRequest
    | DeleteTopicRequest
    | ListTopicsRequest
    | DescribeTopicRequest
    | ProduceRequest
    | FetchRequest
    | SubscribeRequest
    | CreditRequest
    | UnsubscribeRequest
    | InitProducerRequest
    | GroupHeartbeatRequest
    | CommitOffsetsRequest
    | FetchOffsetsRequest
    | ListGroupsRequest
    | DescribeGroupRequest
    | DeleteGroupRequest
    | OffsetsForTimeRequest
    | ReassignPartitionRequest
    | ListReassignmentsRequest
    | DecommissionBrokerRequest
    | RebalanceRequest
    | AlterTopicRequest
    | AddPartitionsRequest
    | AclListRequest
    | AclAddRequest
    | AclRemoveRequest
    | QuotaSetRequest
    | QuotaListRequest
)

_REQUEST_TYPES: dict[str, type[Any]] = {
    cls.op: cls
    for cls in (
        MetadataRequest,
        CreateTopicRequest,
        DeleteTopicRequest,
        ListTopicsRequest,
        DescribeTopicRequest,
        ProduceRequest,
        FetchRequest,
        SubscribeRequest,
        CreditRequest,
        UnsubscribeRequest,
        InitProducerRequest,
        GroupHeartbeatRequest,
        CommitOffsetsRequest,
        FetchOffsetsRequest,
        ListGroupsRequest,
        DescribeGroupRequest,
        DeleteGroupRequest,
        OffsetsForTimeRequest,
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
}


# --------------------------------------------------------------------------
# A small type checker for msgpack-decoded values, compiled once per field.

_Check = Callable[[str, object], object]


def _type_name(value: object) -> str:
    return type(value).__name__


def _check_int(name: str, value: object) -> object:
    # bool is an int subclass; a client sending true for a partition is a bug.
    if type(value) is not int:
        raise InvalidRequestError(f"{name} must be an integer, got {_type_name(value)}")
    return value


def _check_str(name: str, value: object) -> object:
    if type(value) is not str:
        raise InvalidRequestError(f"{name} must be a string, got {_type_name(value)}")
    return value


def _check_bool(name: str, value: object) -> object:
    if type(value) is not bool:
        raise InvalidRequestError(f"{name} must be a boolean, got {_type_name(value)}")
    return value


def _compile_check(hint: Any) -> _Check:
    origin = get_origin(hint)
    if hint is int:
        return _check_int
    if hint is str:
        return _check_str
    if hint is bool:
        return _check_bool
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        enum_type = hint
        allowed = ", ".join(m.value for m in enum_type)

        def check_enum(name: str, value: object) -> object:
            if type(value) is not str:
                raise InvalidRequestError(f"{name} must be one of: {allowed}")
            try:
                return enum_type(value)
            except ValueError:
                raise InvalidRequestError(f"{name} must be one of: {allowed}") from None

        return check_enum
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(hint) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"unsupported union {hint!r}")
        inner = _compile_check(members[0])

        def check_optional(name: str, value: object) -> object:
            return None if value is None else inner(name, value)

        return check_optional
    if origin is list:
        (item_hint,) = get_args(hint)
        item = _compile_check(item_hint)

        def check_list(name: str, value: object) -> object:
            if type(value) is not list:
                raise InvalidRequestError(f"{name} must be a list, got {_type_name(value)}")
            return [item(f"{name}[{i}]", v) for i, v in enumerate(value)]

        return check_list
    if origin is dict:
        key_hint, value_hint = get_args(hint)
        key_check, value_check = _compile_check(key_hint), _compile_check(value_hint)

        def check_dict(name: str, value: object) -> object:
            if type(value) is not dict:
                raise InvalidRequestError(f"{name} must be a map, got {_type_name(value)}")
            return {
                key_check(f"{name} key", k): value_check(f"{name}[{k!r}]", v)
                for k, v in value.items()
            }

        return check_dict
    raise TypeError(f"unsupported field type {hint!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    check: _Check
    required: bool


def _compile_fields(cls: type[Any]) -> tuple[_FieldSpec, ...]:
    hints = get_type_hints(cls)
    return tuple(
        _FieldSpec(
            f.name,
            _compile_check(hints[f.name]),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
    )


_FIELDS: dict[str, tuple[_FieldSpec, ...]] = {
    op: _compile_fields(cls) for op, cls in _REQUEST_TYPES.items()
}


def _build_args(op: str, raw: object) -> RequestArgs:
    if type(raw) is not dict:
        raise InvalidRequestError(f"args must be a map, got {_type_name(raw)}")
    values: dict[str, object] = {}
    for spec in _FIELDS[op]:
        if spec.name in raw:
            values[spec.name] = spec.check(spec.name, raw[spec.name])
        elif spec.required:
            raise InvalidRequestError(f"{op}: missing argument {spec.name!r}")
    args: RequestArgs = _REQUEST_TYPES[op](**values)
    return args


def _args_to_wire(args: RequestArgs) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}


# --------------------------------------------------------------------------
# Envelopes


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    corr_id: int
    args: RequestArgs
    frames: tuple[Buffer, ...] = ()

    @property
    def op(self) -> str:
        return self.args.op


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    corr_id: int
    error: ErrorCode = ErrorCode.NONE
    message: str = ""
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    frames: tuple[Buffer, ...] = ()

    def raise_for_error(self) -> None:
        """Raise the matching :class:`ZStreamError` if this reply is an error."""
        if self.error != ErrorCode.NONE:
            raise error_for_code(self.error)(self.message, **self.result)


@dataclasses.dataclass(frozen=True, slots=True)
class Push:
    stream: int
    kind: str
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    frames: tuple[Buffer, ...] = ()


def _pack(envelope: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(envelope, use_bin_type=True)
    return packed


def _load_map(frames: Sequence[Buffer]) -> dict[Any, Any]:
    if not frames:
        raise InvalidRequestError("empty message: no envelope frame")
    head = frames[0]
    if len(head) > MAX_ENVELOPE_BYTES:
        raise InvalidRequestError(f"envelope of {len(head)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    try:
        # unpackb bounds every string, array and map by the input's length.
        envelope = msgpack.unpackb(head, raw=False, strict_map_key=True)
    except ValueError as exc:
        # msgpack's own errors (ExtraData, FormatError, StackError, OutOfData)
        # and UnicodeDecodeError are all ValueErrors.
        raise InvalidRequestError(f"envelope is not valid msgpack: {exc}") from exc
    if type(envelope) is not dict:
        raise InvalidRequestError(f"envelope must be a map, got {_type_name(envelope)}")
    return envelope


def _unpack_envelope(frames: Sequence[Buffer]) -> dict[Any, Any]:
    envelope = _load_map(frames)
    version = envelope.get("v")
    if type(version) is not int:
        raise InvalidRequestError("envelope has no integer version 'v'")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersionError(
            f"protocol version {version} is not supported (this side speaks {PROTOCOL_VERSION})"
        )
    return envelope


def _corr_id(envelope: dict[Any, Any]) -> int:
    corr = envelope.get("id")
    if type(corr) is not int or not 0 <= corr <= MAX_CORRELATION_ID:
        raise InvalidRequestError("envelope needs an integer correlation id 'id' >= 0")
    return corr


def peek_correlation_id(frames: Sequence[Buffer]) -> int | None:
    """The correlation id of a request that failed to decode, if one can be read,
    so that the error reply reaches the caller that is waiting for it."""
    try:
        return _corr_id(_load_map(frames))
    except ZStreamError:
        return None


def encode_request(corr_id: int, args: RequestArgs, frames: Sequence[Buffer] = ()) -> list[Buffer]:
    envelope = {"v": PROTOCOL_VERSION, "id": corr_id, "op": args.op, "args": _args_to_wire(args)}
    return [_pack(envelope), *frames]


def decode_request(frames: Sequence[Buffer]) -> Request:
    """Decode and validate a request; raises InvalidRequestError or
    UnsupportedVersionError, and nothing else."""
    envelope = _unpack_envelope(frames)
    corr = _corr_id(envelope)
    op = envelope.get("op")
    if type(op) is not str or op not in _REQUEST_TYPES:
        shown = op[:64] if isinstance(op, str) else _type_name(op)
        raise InvalidRequestError(f"unknown operation {shown!r}")
    args = _build_args(op, envelope.get("args", {}))
    body = tuple(frames[1:])
    want_min: int = getattr(args, "frames_min", 0)
    want_max: int = getattr(args, "frames_max", 0)
    if not want_min <= len(body) <= want_max:
        raise InvalidRequestError(f"{op} takes {want_min}..{want_max} data frames, got {len(body)}")
    return Request(corr, args, body)


def encode_reply(
    corr_id: int, result: dict[str, Any] | None = None, frames: Sequence[Buffer] = ()
) -> list[Buffer]:
    envelope: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": corr_id, "err": 0}
    if result:
        envelope["res"] = result
    return [_pack(envelope), *frames]


def encode_error_reply(corr_id: int, error: ZStreamError) -> list[Buffer]:
    envelope: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "id": corr_id,
        "err": int(error.code),
        "msg": error.message,
    }
    if error.details:
        envelope["res"] = error.details
    return [_pack(envelope)]


def _result_map(envelope: dict[Any, Any]) -> dict[str, Any]:
    result = envelope.get("res", {})
    if type(result) is not dict:
        raise InvalidRequestError(f"'res' must be a map, got {_type_name(result)}")
    return result


def decode_reply(frames: Sequence[Buffer]) -> Reply:
    """Decode a broker's reply. A malformed one raises InvalidRequestError (the
    client reports it as a broken broker, it never crashes on it)."""
    return _reply_from(_unpack_envelope(frames), frames)


def _reply_from(envelope: dict[Any, Any], frames: Sequence[Buffer]) -> Reply:
    corr = _corr_id(envelope)
    code = envelope.get("err", 0)
    if type(code) is not int:
        raise InvalidRequestError("reply error code 'err' must be an integer")
    try:
        error = ErrorCode(code)
    except ValueError:
        error = ErrorCode.UNKNOWN_SERVER_ERROR
    message = envelope.get("msg", "")
    if type(message) is not str:
        raise InvalidRequestError("reply message 'msg' must be a string")
    return Reply(corr, error, message, _result_map(envelope), tuple(frames[1:]))


def encode_push(
    stream: int, kind: str, result: dict[str, Any] | None = None, frames: Sequence[Buffer] = ()
) -> list[Buffer]:
    envelope: dict[str, Any] = {"v": PROTOCOL_VERSION, "stream": stream, "op": kind}
    if result:
        envelope["res"] = result
    return [_pack(envelope), *frames]


def decode_push(frames: Sequence[Buffer]) -> Push:
    return _push_from(_unpack_envelope(frames), frames)


def _push_from(envelope: dict[Any, Any], frames: Sequence[Buffer]) -> Push:
    stream = envelope.get("stream")
    if type(stream) is not int or stream <= 0:
        raise InvalidRequestError("push needs a positive integer 'stream'")
    kind = envelope.get("op")
    if type(kind) is not str:
        raise InvalidRequestError("push needs a string 'op'")
    return Push(stream, kind, _result_map(envelope), tuple(frames[1:]))


def decode_incoming(frames: Sequence[Buffer]) -> Reply | Push:
    """What a client receives: pushes carry 'stream', replies carry 'id'."""
    envelope = _unpack_envelope(frames)
    if "stream" in envelope and "id" not in envelope:
        return _push_from(envelope, frames)
    return _reply_from(envelope, frames)
