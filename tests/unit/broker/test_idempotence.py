"""The leader's producer table: duplicates answered, gaps refused, epochs, window."""

from __future__ import annotations

import pytest

from zstream.broker._idempotence import KEEP, Duplicate, ProducerTable
from zstream.clients import OutOfOrderSequenceError


def _appended(table: ProducerTable, pid: int, seq: int, count: int, base: int) -> None:
    assert table.check(pid, 0, seq, count) is None
    table.observe(pid, 0, seq, count, base)


def test_unknown_producer_starts_anywhere_then_must_follow_on() -> None:
    table = ProducerTable()
    _appended(table, 1, 7, 3, 100)
    _appended(table, 1, 10, 1, 103)
    with pytest.raises(OutOfOrderSequenceError):
        table.check(1, 0, 12, 1)  # skips 11
    assert table.check(2, 0, 0, 1) is None  # another producer is independent


def test_a_retried_batch_gets_its_original_offset() -> None:
    table = ProducerTable()
    _appended(table, 1, 0, 2, 0)
    _appended(table, 1, 2, 2, 5)
    assert table.check(1, 0, 0, 2) == Duplicate(0, 2)
    assert table.check(1, 0, 2, 2) == Duplicate(5, 2)


def test_in_flight_batch_is_a_duplicate_without_offset_until_resolved() -> None:
    table = ProducerTable()
    table.observe(1, 0, 0, 4, -1)
    assert table.check(1, 0, 0, 4) == Duplicate(-1, 4)
    table.resolve(1, 0, 42)
    assert table.check(1, 0, 0, 4) == Duplicate(42, 4)


def test_only_the_last_five_batches_are_remembered() -> None:
    table = ProducerTable()
    for i in range(KEEP + 1):
        _appended(table, 1, i, 1, i)
    assert table.check(1, 0, KEEP, 1) == Duplicate(KEEP, 1)
    with pytest.raises(OutOfOrderSequenceError):
        table.check(1, 0, 0, 1)  # fell out of the window


def test_epochs_fence_old_and_reset_new() -> None:
    table = ProducerTable()
    table.observe(1, 3, 50, 1, 0)
    assert table.check(1, 4, 0, 1) is None  # a newer epoch starts over
    with pytest.raises(OutOfOrderSequenceError):
        table.check(1, 2, 51, 1)  # an older epoch is fenced
    table.observe(1, 4, 0, 1, 1)
    assert table.check(1, 4, 0, 1) == Duplicate(1, 1)


def test_clear_forgets_everything() -> None:
    table = ProducerTable()
    _appended(table, 1, 0, 1, 0)
    table.clear()
    assert table.check(1, 0, 9, 1) is None
