"""The storage package's exceptions: one root, split by who is at fault.

- Data on disk or on the wire is damaged: `CorruptSegmentError`, `CorruptBatchError`,
  `CorruptChunkError`. Retrying does not help; a replica repairs itself from the leader.
- The caller asked for something the log does not hold: `OffsetOutOfRange`,
  `IndexOutOfRange`. Retriable after the caller refreshes its view of the log.
- The caller broke the log's contract: `InvalidAppendError`, `TruncateBelowFloorError`,
  `LogClosedError`, `ConfigError`. These are bugs in the caller, not I/O problems.
- Any `OSError` from the disk is translated at the boundary into `StorageIOError`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ConfigError",
    "CorruptBatchError",
    "CorruptChunkError",
    "CorruptSegmentError",
    "IndexOutOfRange",
    "InvalidAppendError",
    "LogClosedError",
    "OffsetOutOfRange",
    "StorageError",
    "StorageIOError",
    "TruncateBelowFloorError",
]


class StorageError(Exception):
    """Root of every error raised by the storage package."""

    retriable: bool = False


class CorruptSegmentError(StorageError):
    """A segment file holds bytes that fail validation where data must be intact."""

    def __init__(self, path: Path | str, position: int, reason: str = "") -> None:
        self.path = Path(path)
        self.position = position
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"corrupt segment {self.path} at byte {position}{detail}")


class CorruptBatchError(StorageError):
    """A record batch fails its length, magic, structure or CRC32C check."""


class CorruptChunkError(StorageError):
    """Entries of a raw chunk (`SegmentedLog.read_raw`) fail a check in the reader.

    Raised by `iter_raw_entries`, which has no file to name: the chunk was read without
    per-entry checks, so the reader verifies it, and a reader that sees this error
    refetches (from another replica, if the leader's copy stays damaged).
    """


class OffsetOutOfRange(StorageError):
    """A record offset outside [start, end) of the log, where end is the next offset."""

    retriable = True

    def __init__(self, offset: int, start: int, end: int) -> None:
        self.offset = offset
        self.start = start
        self.end = end
        super().__init__(f"offset {offset} out of range [{start}, {end})")


class IndexOutOfRange(StorageError):
    """A Raft index outside [first, last] of the log.

    Deliberately not an `OffsetOutOfRange`: Raft indexes and record offsets are
    different number spaces, and a caller that maps `OffsetOutOfRange` onto the
    client error OFFSET_OUT_OF_RANGE must not report an index as an offset.
    """

    retriable = True

    def __init__(self, index: int, first: int, last: int) -> None:
        self.index = index
        self.first = first
        self.last = last
        super().__init__(f"raft index {index} out of range [{first}, {last}]")


class InvalidAppendError(StorageError):
    """Entries that do not continue the log (index, offset, term or kind rules)."""


class TruncateBelowFloorError(StorageError):
    """`truncate_suffix` asked to cut at or below the floor the caller gave."""


class LogClosedError(StorageError):
    """The log was used after `close()`."""


class ConfigError(StorageError, ValueError):
    """An invalid `LogConfig` value."""


class StorageIOError(StorageError):
    """The operating system refused a file operation (wraps the `OSError`)."""
