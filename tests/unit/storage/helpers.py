"""Shared builders for the storage tests: deterministic entries and their payloads."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from zstream.storage import EntryKind, LogEntry, SegmentedLog


def payload_for(index: int, size: int) -> bytes:
    """A payload that depends only on (index, size), so any mix-up is visible."""
    seed = hashlib.sha256(f"{index}:{size}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def make_entries(
    log: SegmentedLog,
    count: int,
    *,
    term: int = 1,
    size: int = 100,
    kinds: Sequence[EntryKind] = (EntryKind.DATA,),
    records: int = 2,
) -> list[LogEntry]:
    """Entries that continue ``log``: kinds cycle through ``kinds``."""
    out: list[LogEntry] = []
    index = log.last_index + 1
    offset = log.next_offset
    for i in range(count):
        kind = kinds[i % len(kinds)]
        n = records if kind == EntryKind.DATA else 0
        out.append(LogEntry(index + i, term, kind, offset, n, payload_for(index + i, size)))
        offset += n
    return out


def as_tuples(entries: Sequence[LogEntry]) -> list[tuple[int, int, int, int, int, bytes]]:
    return [
        (e.index, e.term, int(e.kind), e.base_offset, e.record_count, bytes(e.payload))
        for e in entries
    ]


def read_all(log: SegmentedLog) -> list[LogEntry]:
    if log.last_index < log.first_index:
        return []
    return log.read(log.first_index, log.last_index + 1, 1 << 40)
