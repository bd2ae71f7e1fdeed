"""Errors shared by the client library and the broker.

Every error is a subclass of :class:`ZStreamError`. Each error that can travel on
the wire has a stable number (:class:`ErrorCode`) and a ``retriable`` flag that
says whether sending the same request again may succeed. Look an error class up
from its number with :func:`error_for_code`.

The split follows who is at fault:

* the cluster is (for now) unable to serve, and a retry helps: ``NotLeaderError``,
  ``RequestTimedOutError``, ``ThrottledError``, ``UnavailableError``,
  ``ConnectionLostError``;
* the request is wrong, and the same request will fail again:
  ``InvalidRequestError``, ``CorruptBatchError``, ``MessageTooLargeError``,
  ``UnsupportedVersionError``, ``NotAuthorizedError``, ...
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar

__all__ = [
    "ConnectionLostError",
    "CorruptBatchError",
    "DeserializationError",
    "DuplicateSequenceError",
    "ErrorCode",
    "FencedMemberError",
    "GroupNotEmptyError",
    "InvalidRequestError",
    "MessageTooLargeError",
    "NotAuthorizedError",
    "NotControllerError",
    "NotLeaderError",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "RequestTimedOutError",
    "SerializationError",
    "ThrottledError",
    "TopicExistsError",
    "UnavailableError",
    "UnknownGroupError",
    "UnknownMemberError",
    "UnknownPartitionError",
    "UnknownServerError",
    "UnknownTopicError",
    "UnsupportedVersionError",
    "ZStreamError",
    "error_for_code",
]


class ErrorCode(IntEnum):
    """Wire numbers of errors. Never renumber: clients and brokers of different
    versions must agree on them."""

    NONE = 0
    UNKNOWN_SERVER_ERROR = 1
    INVALID_REQUEST = 2
    UNSUPPORTED_VERSION = 3
    NOT_LEADER = 4
    UNKNOWN_TOPIC = 5
    UNKNOWN_PARTITION = 6
    OFFSET_OUT_OF_RANGE = 7
    CORRUPT_BATCH = 8
    MESSAGE_TOO_LARGE = 9
    NOT_AUTHORIZED = 10
    TIMEOUT = 11
    DUPLICATE_SEQUENCE = 12
    OUT_OF_ORDER_SEQUENCE = 13
    THROTTLED = 14
    TOPIC_EXISTS = 15
    NOT_CONTROLLER = 16
    UNAVAILABLE = 17
    UNKNOWN_GROUP = 18
    UNKNOWN_MEMBER = 19
    FENCED_MEMBER = 20
    GROUP_NOT_EMPTY = 21
    # Never sent by a broker: raised by the client when the connection fails.
    CONNECTION_LOST = 100
    # Never sent by a broker: raised by the client around the application's
    # serializers (Producer.send) and deserializers (Consumer delivery).
    SERIALIZATION = 101
    DESERIALIZATION = 102


class ZStreamError(Exception):
    """Root of every zstream error."""

    code: ClassVar[ErrorCode] = ErrorCode.UNKNOWN_SERVER_ERROR
    retriable: ClassVar[bool] = False

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code.name.lower().replace("_", " "))
        self.message = str(self.args[0])
        # Structured extras that travel with the error (a leader hint, a log range).
        self.details: dict[str, Any] = details

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.details.items())
        return f"{type(self).__name__}({self.message!r}{extra})"


class UnknownServerError(ZStreamError):
    code = ErrorCode.UNKNOWN_SERVER_ERROR


class InvalidRequestError(ZStreamError):
    """The request is malformed: bad envelope, wrong types, unknown operation."""

    code = ErrorCode.INVALID_REQUEST


class UnsupportedVersionError(ZStreamError):
    code = ErrorCode.UNSUPPORTED_VERSION


class NotLeaderError(ZStreamError):
    """This broker does not lead the partition; ``leader`` names the one that does
    (``None`` when unknown, for instance during an election)."""

    code = ErrorCode.NOT_LEADER
    retriable = True

    @property
    def leader(self) -> int | None:
        hint = self.details.get("leader")
        return hint if isinstance(hint, int) and hint > 0 else None


class UnknownTopicError(ZStreamError):
    code = ErrorCode.UNKNOWN_TOPIC


class UnknownPartitionError(ZStreamError):
    code = ErrorCode.UNKNOWN_PARTITION


class OffsetOutOfRangeError(ZStreamError):
    """``details`` carry the log's ``start`` and ``end`` offsets."""

    code = ErrorCode.OFFSET_OUT_OF_RANGE


class CorruptBatchError(ZStreamError):
    code = ErrorCode.CORRUPT_BATCH


class MessageTooLargeError(ZStreamError):
    code = ErrorCode.MESSAGE_TOO_LARGE


class NotAuthorizedError(ZStreamError):
    code = ErrorCode.NOT_AUTHORIZED


class RequestTimedOutError(ZStreamError):
    """The request did not complete in time. For a produce this means the outcome
    is unknown: the batch may still commit (an idempotent retry is safe)."""

    code = ErrorCode.TIMEOUT
    retriable = True


class DuplicateSequenceError(ZStreamError):
    code = ErrorCode.DUPLICATE_SEQUENCE


class OutOfOrderSequenceError(ZStreamError):
    code = ErrorCode.OUT_OF_ORDER_SEQUENCE


class ThrottledError(ZStreamError):
    code = ErrorCode.THROTTLED
    retriable = True


class TopicExistsError(ZStreamError):
    code = ErrorCode.TOPIC_EXISTS


class NotControllerError(ZStreamError):
    code = ErrorCode.NOT_CONTROLLER
    retriable = True


class UnavailableError(ZStreamError):
    """Not enough replicas or brokers are reachable right now."""

    code = ErrorCode.UNAVAILABLE
    retriable = True


class UnknownGroupError(ZStreamError):
    code = ErrorCode.UNKNOWN_GROUP


class UnknownMemberError(ZStreamError):
    """The group has no member with this id: it left, or missed its session
    timeout and was removed. Its partitions may already be someone else's; the
    consumer drops them and joins again."""

    code = ErrorCode.UNKNOWN_MEMBER


class FencedMemberError(ZStreamError):
    """A member committed offsets for a partition it does not own (any more),
    or a non-member committed into a group that has members."""

    code = ErrorCode.FENCED_MEMBER


class GroupNotEmptyError(ZStreamError):
    """An operation that needs a group with no members (delete it, or reset its
    offsets) met a group that has some: stop its consumers first."""

    code = ErrorCode.GROUP_NOT_EMPTY


class ConnectionLostError(ZStreamError):
    """The client could not reach the broker, or lost the connection mid-request."""

    code = ErrorCode.CONNECTION_LOST
    retriable = True


class SerializationError(ZStreamError):
    """A producer's key or value serializer raised, or returned something other than
    bytes. Raised by ``send`` itself, for that record only: nothing was queued, and
    the records around it in the same batch are unaffected."""

    code = ErrorCode.SERIALIZATION


class DeserializationError(ZStreamError):
    """A consumer's key or value deserializer raised for the record at ``topic`` /
    ``partition`` / ``offset``. The consumer's position stays at that record, so the
    next delivery call raises again; ``seek(tp, offset + 1)`` skips it. ``record`` is
    the record as it was stored (key and value as bytes), e.g. for a dead-letter topic."""

    code = ErrorCode.DESERIALIZATION

    def __init__(self, message: str = "", *, record: Any = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.record = record
        self.topic: str = getattr(record, "topic", "")
        self.partition: int = getattr(record, "partition", -1)
        self.offset: int = getattr(record, "offset", -1)


_BY_CODE: dict[int, type[ZStreamError]] = {}
for _cls in (
    UnknownServerError,
    InvalidRequestError,
    UnsupportedVersionError,
    NotLeaderError,
    UnknownTopicError,
    UnknownPartitionError,
    OffsetOutOfRangeError,
    CorruptBatchError,
    MessageTooLargeError,
    NotAuthorizedError,
    RequestTimedOutError,
    DuplicateSequenceError,
    OutOfOrderSequenceError,
    ThrottledError,
    TopicExistsError,
    NotControllerError,
    UnavailableError,
    UnknownGroupError,
    UnknownMemberError,
    FencedMemberError,
    GroupNotEmptyError,
    ConnectionLostError,
    SerializationError,
    DeserializationError,
):
    _BY_CODE[int(_cls.code)] = _cls


def throttle_time_s(error: ZStreamError) -> float:
    """How long a THROTTLED reply asked the client to wait before it sends again (a
    quota's ``throttle_ms``, as Kafka's ``throttle_time_ms``); 0 for any other error."""
    if not isinstance(error, ThrottledError):
        return 0.0
    throttle_ms = error.details.get("throttle_ms")
    if type(throttle_ms) is not int or throttle_ms <= 0:
        return 0.0
    return min(throttle_ms, 60_000) / 1000


def error_for_code(code: int) -> type[ZStreamError]:
    """The error class for a wire number; unknown numbers map to UnknownServerError,
    so that a newer broker's error still surfaces as a ZStreamError."""
    return _BY_CODE.get(code, UnknownServerError)
