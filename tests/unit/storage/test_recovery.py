"""Recovery: torn writes at every byte, bit flips, damaged indexes, fuzzed files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.storage.helpers import as_tuples, make_entries, read_all
from zstream.storage import CorruptSegmentError, EntryKind, LogConfig, SegmentedLog

SMALL = LogConfig(segment_bytes=1024, index_interval_bytes=200)
SEGMENT_HEADER_BYTES = 32
MIXED = (EntryKind.DATA, EntryKind.NOOP, EntryKind.DATA, EntryKind.CONFIG)


def _files(directory: Path, suffix: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == suffix)


def _build(directory: Path, count: int, config: LogConfig = SMALL) -> list:  # type: ignore[type-arg]
    with SegmentedLog.open(directory, config) as log:
        entries = make_entries(log, count, kinds=MIXED, size=60)
        log.append(entries)
        log.sync()
    return entries


def test_torn_last_entry_at_every_byte(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with SegmentedLog.open(src, SMALL) as log:
        entries = make_entries(log, 12, kinds=MIXED, size=70)
        log.append(entries[:-1])
        active = _files(src, ".log")[-1]
        start = active.stat().st_size
        log.append(entries[-1:])
        end = active.stat().st_size
        log.sync()
    assert _files(src, ".log")[-1] == active
    assert end - start == 45 + 70
    work = tmp_path / "work"
    for cut in range(start, end):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        os.truncate(work / active.name, cut)
        with SegmentedLog.open(work, SMALL) as log:
            assert as_tuples(read_all(log)) == as_tuples(entries[:-1]), cut
            assert log.synced_index == log.last_index == entries[-2].index
            assert (work / active.name).stat().st_size == start
            log.append(make_entries(log, 1, term=4))  # the log goes on from the cut
        with SegmentedLog.open(work, SMALL) as log:
            assert log.last_index == entries[-1].index


def test_bit_flip_in_the_active_tail_is_cut_away(tmp_path: Path) -> None:
    entries = _build(tmp_path, 12)
    active = _files(tmp_path, ".log")[-1]
    with SegmentedLog.open(tmp_path, SMALL) as log:
        first_active = log.read(log.last_index, log.last_index + 1, 0)[0].index
        kept_before = first_active - 1
    size = active.stat().st_size
    data = bytearray(active.read_bytes())
    data[size - 3] ^= 0x10  # inside the last entry's payload
    active.write_bytes(data)
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert log.last_index == entries[-1].index - 1 >= kept_before
        assert as_tuples(read_all(log)) == as_tuples(entries[:-1])


@pytest.mark.parametrize("where", ["header", "payload", "middle"])
def test_bit_flip_in_a_sealed_segment_is_reported(tmp_path: Path, where: str) -> None:
    _build(tmp_path, 30)
    sealed = _files(tmp_path, ".log")
    assert len(sealed) >= 3
    target = sealed[1]
    data = bytearray(target.read_bytes())
    position = {"header": len(data) - 105 + 10, "payload": len(data) - 2, "middle": 100}[where]
    if where == "middle":
        (target.with_suffix(".index")).unlink()  # force the full verifying rebuild
    data[position] ^= 0x04  # the last entry is 105 bytes: 45 header + 60 payload
    target.write_bytes(data)
    with pytest.raises(CorruptSegmentError) as info:
        SegmentedLog.open(tmp_path, SMALL)
    assert info.value.path == target
    assert 0 < info.value.position <= position


def test_corruption_read_later_in_a_sealed_segment_is_reported(tmp_path: Path) -> None:
    entries = _build(tmp_path, 30)
    target = _files(tmp_path, ".log")[0]
    with SegmentedLog.open(tmp_path, SMALL) as log:
        data = bytearray(target.read_bytes())
        data[SEGMENT_HEADER_BYTES + 50] ^= 0x01  # first entry's payload, not a tail entry
        target.write_bytes(data)
        with pytest.raises(CorruptSegmentError) as info:
            log.read(1, 2, 1000)
        assert info.value.path == target
        assert as_tuples(log.read(3, 4, 1000)) == as_tuples(entries[2:3])


def test_damaged_sealed_header_is_reported(tmp_path: Path) -> None:
    _build(tmp_path, 30)
    target = _files(tmp_path, ".log")[1]
    data = bytearray(target.read_bytes())
    data[9] ^= 0x01
    target.write_bytes(data)
    with pytest.raises(CorruptSegmentError, match="header"):
        SegmentedLog.open(tmp_path, SMALL)


def test_missing_middle_segment_is_reported(tmp_path: Path) -> None:
    _build(tmp_path, 30)
    _files(tmp_path, ".log")[1].unlink()
    with pytest.raises(CorruptSegmentError, match="previous segment ends"):
        SegmentedLog.open(tmp_path, SMALL)


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "garbage", "shifted"])
def test_damaged_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    entries = _build(tmp_path, 30)
    indexes = _files(tmp_path, ".index")
    assert indexes
    for index in indexes:
        data = index.read_bytes()
        if damage == "missing":
            index.unlink()
            continue
        changed = {
            "empty": b"",
            "truncated": data[:-5],
            "garbage": os.urandom(len(data)),
            "shifted": data[:16]
            + (int.from_bytes(data[16:24], "big") + 1).to_bytes(8, "big")
            + data[24:],
        }[damage]
        index.write_bytes(changed)
    with SegmentedLog.open(tmp_path, SMALL) as log:
        assert as_tuples(read_all(log)) == as_tuples(entries)
        for entry in entries:
            if entry.kind == EntryKind.DATA:
                assert log.entry_for_offset(entry.base_offset).index == entry.index
    rebuilt = _files(tmp_path, ".index")
    assert [p.name for p in rebuilt] == [p.name for p in indexes]
    assert all(p.stat().st_size % 24 == 0 and p.stat().st_size > 0 for p in rebuilt)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300))
def test_fuzz_index_file_never_breaks_an_intact_log(tmp_path: Path, data: bytes) -> None:
    directory = tmp_path / "idx"
    if not directory.exists():
        _build(directory, 30)
    with SegmentedLog.open(directory, SMALL) as log:
        expected = as_tuples(read_all(log))
    for index in _files(directory, ".index"):
        index.write_bytes(data)
    with SegmentedLog.open(directory, SMALL) as log:
        assert as_tuples(read_all(log)) == expected


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tail=st.binary(max_size=400), sealed=st.booleans())
def test_fuzz_segment_scanner(tmp_path: Path, tail: bytes, sealed: bool) -> None:
    """Arbitrary bytes after a segment header: the log opens (an active segment is cut
    where the bytes stop making sense) or, for a sealed one, raises CorruptSegmentError."""
    directory = tmp_path / "seg"
    shutil.rmtree(directory, ignore_errors=True)
    entries = _build(directory, 30 if sealed else 3)
    logs = _files(directory, ".log")
    target = logs[0]
    with target.open("r+b") as f:
        f.truncate(SEGMENT_HEADER_BYTES + 40)
        f.seek(0, os.SEEK_END)
        f.write(tail)
    error: CorruptSegmentError | None = None
    try:
        with SegmentedLog.open(directory, SMALL) as log:
            got = read_all(log)
    except CorruptSegmentError as exc:
        error = exc
    if error is not None:
        assert sealed
        assert error.path == target
    else:
        # Whatever survived is a prefix of what was written... or of what the fuzzer
        # forged, which would need a valid CRC32C: either way indexes stay contiguous.
        assert [e.index for e in got] == list(range(1, len(got) + 1))
        if not sealed:
            assert len(got) <= len(entries)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_active_segment_damage_leaves_an_intact_prefix(
    tmp_path: Path, data: st.DataObject
) -> None:
    """Flip bytes anywhere after the header of the active segment: what the log returns
    is always a prefix of what was written, never a changed entry."""
    source = tmp_path / "source"
    if not source.exists():
        _build(source, 8, LogConfig(index_interval_bytes=100))
    work = tmp_path / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work)
    with SegmentedLog.open(source, LogConfig()) as log:
        original = as_tuples(read_all(log))
    (segment,) = _files(work, ".log")
    content = bytearray(segment.read_bytes())
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(SEGMENT_HEADER_BYTES, len(content) - 1), st.integers(1, 255)),
            min_size=1,
            max_size=3,
            unique_by=lambda flip: flip[0],
        )
    )
    for position, mask in flips:
        content[position] ^= mask
    segment.write_bytes(content)
    with SegmentedLog.open(work, LogConfig()) as log:
        got = as_tuples(read_all(log))
    assert got == original[: len(got)]
    first_damaged = min(p for p, _ in flips)
    assert segment.stat().st_size <= first_damaged
