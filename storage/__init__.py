"""Segmented log storage: record batches, Raft entries on disk, recovery, retention.

This package imports no other zstream package.
"""

from zstream.storage._batch import (
    BATCH_HEADER_SIZE,
    BatchHeader,
    NewRecord,
    Record,
    decode_batch_header,
    decode_records,
    encode_batch,
    iter_batches,
    stamp_base_offset,
    verify_batch,
)
from zstream.storage._entry import EntryKind, LogEntry, RawChunk, iter_raw_entries
from zstream.storage._errors import (
    ConfigError,
    CorruptBatchError,
    CorruptChunkError,
    CorruptSegmentError,
    IndexOutOfRange,
    InvalidAppendError,
    LogClosedError,
    OffsetOutOfRange,
    StorageError,
    StorageIOError,
    TruncateBelowFloorError,
)
from zstream.storage._files import atomic_write, read_file_if_exists
from zstream.storage._log import LogConfig, SegmentedLog

__all__ = [
    "BATCH_HEADER_SIZE",
    "BatchHeader",
    "ConfigError",
    "CorruptBatchError",
    "CorruptChunkError",
    "CorruptSegmentError",
    "EntryKind",
    "IndexOutOfRange",
    "InvalidAppendError",
    "LogClosedError",
    "LogConfig",
    "LogEntry",
    "NewRecord",
    "OffsetOutOfRange",
    "RawChunk",
    "Record",
    "SegmentedLog",
    "StorageError",
    "StorageIOError",
    "TruncateBelowFloorError",
    "atomic_write",
    "decode_batch_header",
    "decode_records",
    "encode_batch",
    "iter_batches",
    "iter_raw_entries",
    "read_file_if_exists",
    "stamp_base_offset",
    "verify_batch",
]
