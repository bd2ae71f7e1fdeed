"""Idempotent produce: the partition leader's table of recent batch sequences per
producer. A pure state machine: no I/O, no asyncio.

Theory of operation
-------------------
An idempotent producer stamps each batch with (producer id, epoch, base sequence);
sequences count records per partition from 0. For each producer the leader remembers
the last ``KEEP`` batches it appended: (epoch, first sequence, record count, base
offset). A new batch is checked with `check`:

* same epoch and a remembered first sequence with the same count -> a duplicate:
  answer with the remembered base offset, append nothing;
* same epoch and first sequence == last remembered sequence + 1 -> in order: append;
* same epoch and anything else -> OUT_OF_ORDER_SEQUENCE (a gap, or a duplicate older
  than the kept window);
* an unknown producer, or a newer epoch -> accepted as the start of its sequence.

The table is rebuilt from the log tail (`observe` every batch of the tail in order)
after a restart or a leader change, and whenever a proposal failed with an unknown
outcome, so it always describes what the log holds.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from zstream.clients import OutOfOrderSequenceError

__all__ = ["KEEP", "Duplicate", "ProducerTable"]

KEEP = 5  # as Kafka: five batches in flight per partition are safe to retry
_SEQ_MOD = 2**31


@dataclasses.dataclass(frozen=True, slots=True)
class Duplicate:
    """A batch the log already holds, at ``base_offset``."""

    base_offset: int
    record_count: int


@dataclasses.dataclass(slots=True)
class _Entry:
    epoch: int
    first_seq: int
    count: int
    base_offset: int  # -1 while the proposal is in flight


class ProducerTable:
    def __init__(self) -> None:
        self._by_pid: dict[int, deque[_Entry]] = {}

    def clear(self) -> None:
        self._by_pid.clear()

    def check(self, pid: int, epoch: int, seq: int, count: int) -> Duplicate | None:
        """None if the batch should be appended; a Duplicate if the log has it already
        (its base offset is -1 while the original is still in flight); raises
        OutOfOrderSequenceError for a gap."""
        entries = self._by_pid.get(pid)
        if not entries or epoch > entries[-1].epoch:
            return None
        if epoch < entries[-1].epoch:
            raise OutOfOrderSequenceError(
                f"producer {pid} epoch {epoch} is older than {entries[-1].epoch}"
            )
        for e in entries:
            if e.first_seq == seq and e.count == count:
                return Duplicate(e.base_offset, count)
        last = entries[-1]
        expected = (last.first_seq + last.count) % _SEQ_MOD
        if seq != expected:
            raise OutOfOrderSequenceError(
                f"producer {pid}: sequence {seq} where {expected} was expected",
                expected=expected,
            )
        return None

    def observe(self, pid: int, epoch: int, seq: int, count: int, base_offset: int) -> None:
        """Remember a batch appended (``base_offset`` -1 while not yet known)."""
        entries = self._by_pid.get(pid)
        if entries is None or (entries and epoch > entries[-1].epoch):
            entries = self._by_pid[pid] = deque(maxlen=KEEP)
        entries.append(_Entry(epoch, seq, count, base_offset))

    def resolve(self, pid: int, seq: int, base_offset: int) -> None:
        """The in-flight batch starting at ``seq`` got ``base_offset``."""
        for e in self._by_pid.get(pid, ()):
            if e.first_seq == seq:
                e.base_offset = base_offset
