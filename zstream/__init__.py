"""zstream: an event-streaming server in Python, and the client library for it.

What applications import lives here: ``Producer``, ``Consumer``, ``Admin``, the
records they exchange and the errors they raise::

    from zstream import Consumer, Producer

The server and its layers are subpackages: ``zstream.broker`` (the server process
and the ``zstream`` CLI), ``zstream.replication`` (Raft, ``DistributedLog``),
``zstream.storage`` (the segmented log) and ``zstream.clients`` (this surface plus
the wire protocol). ``zstream.testing`` starts real clusters for tests.
"""

from importlib import metadata as _metadata

from zstream.clients import (
    Acks,
    Admin,
    BlockingProducer,
    ConnectionLostError,
    Consumer,
    CorruptBatchError,
    DeserializationError,
    DuplicateSequenceError,
    ErrorCode,
    FencedMemberError,
    GroupNotEmptyError,
    InvalidRequestError,
    MessageTooLargeError,
    NotAuthorizedError,
    NotControllerError,
    NotLeaderError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    Producer,
    Record,
    RecordFuture,
    RecordMetadata,
    RequestTimedOutError,
    SerializationError,
    ThrottledError,
    TopicExistsError,
    TopicPartition,
    UnavailableError,
    UnknownGroupError,
    UnknownMemberError,
    UnknownPartitionError,
    UnknownServerError,
    UnknownTopicError,
    UnsupportedVersionError,
    ZStreamError,
    error_for_code,
    json_deserializer,
    json_serializer,
)

try:
    __version__ = _metadata.version("zstream")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Acks",
    "Admin",
    "BlockingProducer",
    "ConnectionLostError",
    "Consumer",
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
    "Producer",
    "Record",
    "RecordFuture",
    "RecordMetadata",
    "RequestTimedOutError",
    "SerializationError",
    "ThrottledError",
    "TopicExistsError",
    "TopicPartition",
    "UnavailableError",
    "UnknownGroupError",
    "UnknownMemberError",
    "UnknownPartitionError",
    "UnknownServerError",
    "UnknownTopicError",
    "UnsupportedVersionError",
    "ZStreamError",
    "__version__",
    "error_for_code",
    "json_deserializer",
    "json_serializer",
]
