"""RaftLog: the durable Raft log on top of storage.SegmentedLog."""

from __future__ import annotations

from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zstream.replication import (
    CompactedError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    RaftLog,
    RaftLogError,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)
from zstream.storage import (
    LogConfig,
    OffsetOutOfRange,
    decode_batch_header,
    decode_records,
    encode_batch,
    verify_batch,
)

CFG = LogConfig()
SMALL = LogConfig(segment_bytes=600, index_interval_bytes=64)
CS3 = ConfState(voters=frozenset({1, 2, 3}))


def batch(*values: bytes) -> bytes:
    return encode_batch([(None, v) for v in values], timestamp_ms=1000)


def normal(term: int, index: int, data: bytes) -> Entry:
    return Entry(term, index, EntryType.NORMAL, data)


def entries_of(log: RaftLog) -> list[Entry]:
    first, last = log.first_index(), log.last_index()
    return log.entries(first, last + 1, 1 << 40) if last >= first else []


def test_fresh_log_bootstrap_and_hard_state_survive_reopen(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path, CFG, records=True)
    assert log.initial_state() == (HardState(), ConfState(voters=frozenset()))
    assert (log.first_index(), log.last_index(), log.term(0)) == (1, 0, 0)
    log.bootstrap(CS3)
    log.save_hard_state(HardState(term=3, vote=2, commit=0))
    log.close()
    log = RaftLog.open(tmp_path, CFG, records=True)
    assert log.initial_state() == (HardState(3, 2, 0), CS3)
    log.bootstrap(ConfState(voters=frozenset({9})))  # not fresh any more: ignored
    assert log.initial_state()[1] == CS3
    log.close()


def test_append_reopen_and_terms_from_runs(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path, SMALL, records=True)
    ents = [Entry(1, 1, EntryType.NOOP, b"")]
    ents += [normal(1 + i // 4, i, batch(b"v%d" % i, b"w")) for i in range(2, 12)]
    log.append(ents)
    log.sync()
    assert [(e.term, e.index) for e in entries_of(log)] == [(e.term, e.index) for e in ents]
    log.close()
    log = RaftLog.open(tmp_path, SMALL, records=True)
    assert [log.term(i) for i in range(0, 12)] == [0] + [e.term for e in ents]
    with pytest.raises(UnavailableError):
        log.term(12)
    with pytest.raises(UnavailableError):
        log.entries(1, 13, 100)
    # Offsets: NOOP takes none, each batch two.
    assert log.offset_after(1) == 0
    assert log.offset_after(11) == 20
    assert log.next_offset == 20
    log.close()


def test_conflicting_suffix_is_truncated_but_never_below_commit(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path, CFG, records=True)
    log.append([normal(1, i, batch(b"a%d" % i)) for i in range(1, 6)])
    log.set_commit(2)
    log.append([normal(2, 4, batch(b"b4")), normal(2, 5, batch(b"b5")), normal(2, 6, batch(b"b6"))])
    got = entries_of(log)
    assert [(e.index, e.term) for e in got] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    assert [log.term(i) for i in range(1, 7)] == [1, 1, 1, 2, 2, 2]
    # The new entries got their own offsets: 3, 4, 5.
    assert decode_batch_header(got[3].data).base_offset == 3
    with pytest.raises(RaftLogError):
        log.append([normal(3, 2, batch(b"x"))])
    cached = [log.offset_after(i) for i in range(0, 7)]
    assert cached == [0, 1, 2, 3, 4, 5, 6]
    log.close()
    log = RaftLog.open(tmp_path, CFG, records=True)
    assert [log.offset_after(i) for i in range(0, 7)] == cached  # from the disk now
    log.close()


def test_batches_are_stamped_with_this_replicas_offsets(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path, CFG, records=True)
    b = batch(b"x", b"y", b"z")  # stamped 0: correct for the first, wrong after
    log.append([normal(1, 1, b), Entry(1, 2, EntryType.CONF_CHANGE, b"cc"), normal(1, 3, b)])
    got = entries_of(log)
    assert got[0].data == b  # no copy needed
    hdr = verify_batch(got[2].data)  # the CRC still holds after stamping
    assert hdr.base_offset == 3
    assert [r.offset for r in decode_records(got[2].data)] == [3, 4, 5]
    base, view = log.batch_at(4)
    assert base == 3
    assert bytes(view) == got[2].data
    with pytest.raises(RaftLogError):
        log.append([normal(1, 4, b"short")])
    log.close()


def test_opaque_commands_when_not_records(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path, CFG, records=False)
    log.append([normal(1, 1, b""), normal(1, 2, b"cmd")])
    assert [e.data for e in entries_of(log)] == [b"", b"cmd"]
    log.close()


def test_compaction_is_the_log_start_and_survives_reopen(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path, SMALL, records=True)
    log.bootstrap(CS3)
    log.append([normal(1 + i // 5, i, batch(b"r%d" % i)) for i in range(1, 21)])
    log.sync()
    cs4 = ConfState(voters=frozenset({1, 2, 3, 4}))
    log.record_conf_state(5, cs4)
    log.set_commit(20)
    log.set_applied(20)
    log.compact(12)
    snap = log.snapshot()
    assert snap.metadata == SnapshotMetadata(12, 3, cs4)
    assert msgpack.unpackb(snap.data) == {"next_offset": 12}
    assert log.first_index() == 13
    assert log.log_start_offset == 12
    with pytest.raises(CompactedError):
        log.entries(12, 14, 100)
    with pytest.raises(CompactedError):
        log.term(11)
    assert log.term(12) == 3
    log.close()
    log = RaftLog.open(tmp_path, SMALL, records=True)
    assert log.first_index() == 13
    assert log.snapshot().metadata == SnapshotMetadata(12, 3, cs4)
    assert [e.index for e in entries_of(log)] == list(range(13, 21))
    assert log.initial_state()[1] == cs4
    with pytest.raises(RaftLogError):
        log.compact(25)  # not applied
    log.close()


def test_retention_index_follows_the_log_config_within_applied_entries(tmp_path: Path) -> None:
    cfg = LogConfig(segment_bytes=600, index_interval_bytes=64, retention_bytes=1200)
    log = RaftLog.open(tmp_path, cfg, records=True)
    log.bootstrap(CS3)
    log.append([normal(1, i, batch(b"r%d" % i)) for i in range(1, 41)])
    log.sync()
    log.set_commit(40)
    assert log.retention_index(0) == 0, "nothing applied yet: nothing may go"
    log.set_applied(5)
    assert 0 < log.retention_index(0) <= 5
    log.set_applied(40)
    cut = log.retention_index(0)
    assert cut > 5
    log.compact(cut)
    assert log.first_index() == cut + 1
    assert log.retention_index(0) == 0, "the log is within its retention again"
    assert [e.index for e in entries_of(log)] == list(range(cut + 1, 41))
    log.close()


def test_install_snapshot_restarts_the_log(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path, CFG, records=True)
    log.append([normal(1, i, batch(b"old")) for i in range(1, 4)])
    data = msgpack.packb({"next_offset": 40})
    log.apply_snapshot(Snapshot(SnapshotMetadata(30, 4, CS3), data))
    assert (log.first_index(), log.last_index(), log.term(30)) == (31, 30, 4)
    assert log.next_offset == 40
    log.append([normal(4, 31, batch(b"new"))])
    assert decode_batch_header(entries_of(log)[0].data).base_offset == 40
    log.close()
    log = RaftLog.open(tmp_path, CFG, records=True)
    assert (log.first_index(), log.last_index(), log.term(30), log.term(31)) == (31, 31, 4, 4)
    assert log.initial_state() == (HardState(0, 0, 30), CS3)
    assert log.applied_index == 30
    log.close()


def test_corrupt_sealed_segment_is_cut_and_votes_blocked_until_caught_up(
    tmp_path: Path,
) -> None:
    log = RaftLog.open(tmp_path, SMALL, records=True)
    log.append([normal(1, i, batch(b"%03d" % i)) for i in range(1, 31)])
    log.sync()
    log.save_hard_state(HardState(1, 1, 10))
    log.close()
    segments = sorted((tmp_path / "log").glob("*.log"))
    assert len(segments) >= 3
    victim = segments[1]
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0x01  # in the tail, which open verifies
    victim.write_bytes(bytes(raw))
    log = RaftLog.open(tmp_path, SMALL, records=True)
    cut = int(victim.stem)
    assert log.last_index() == cut - 1
    assert log.recovering_until == 30
    hs, _ = log.initial_state()
    assert hs.commit == min(10, cut - 1)
    assert not (tmp_path / "log.quarantine").exists()
    log.close()
    log = RaftLog.open(tmp_path, SMALL, records=True)  # the block is durable
    assert log.recovering_until == 30
    log.append([normal(1, i, batch(b"%03d" % i)) for i in range(cut, 31)])
    assert log.recovering_until == 0
    log.close()


def test_corruption_found_by_a_read_is_cut_on_the_next_open(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path, SMALL, records=True)
    log.append([normal(1, i, batch(b"%03d" % i)) for i in range(1, 31)])
    log.sync()
    log.close()
    victim = sorted((tmp_path / "log").glob("*.log"))[0]
    raw = bytearray(victim.read_bytes())
    raw[170] ^= 0x01  # the second entry: open does not verify it
    victim.write_bytes(bytes(raw))
    log = RaftLog.open(tmp_path, SMALL, records=True)
    assert log.last_index() == 30
    with pytest.raises(RaftLogError):
        log.entries(1, 3, 1000)
    log.close()
    log = RaftLog.open(tmp_path, SMALL, records=True)
    assert log.last_index() == 0
    assert log.recovering_until == 30
    log.close()


def test_read_batches_walks_segments_within_budget_and_high_watermark(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path, SMALL, records=True)
    log.append([normal(1, i, batch(b"%03d" % i, b"x")) for i in range(1, 31)])
    log.sync()
    assert len(list((tmp_path / "log").glob("*.log"))) > 1  # crosses segments
    got = log.read_batches(0, 1 << 20)
    assert [base for base, _ in got] == list(range(0, 60, 2))
    assert [decode_records(b)[0].value for _, b in got] == [b"%03d" % i for i in range(1, 31)]
    # An offset inside a batch starts at that batch; the commit index bounds the end.
    assert [base for base, _ in log.read_batches(7, 1 << 20, max_index=5)] == [6, 8]
    # A tiny budget still returns one batch; a moderate one stops early.
    assert len(log.read_batches(0, 1)) == 1
    assert 1 < len(log.read_batches(0, 200)) < 30
    with pytest.raises(OffsetOutOfRange):
        log.read_batches(60, 100)
    log.close()


def test_read_batches_names_corruption_and_cuts_it_on_the_next_open(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path, SMALL, records=True)
    log.append([normal(1, i, batch(b"%03d" % i)) for i in range(1, 31)])
    log.sync()
    log.close()
    victim = sorted((tmp_path / "log").glob("*.log"))[0]
    raw = bytearray(victim.read_bytes())
    raw[170] ^= 0x01  # the second entry: open does not verify it
    victim.write_bytes(bytes(raw))
    log = RaftLog.open(tmp_path, SMALL, records=True)
    with pytest.raises(RaftLogError, match=victim.name):
        log.read_batches(0, 1 << 20)
    log.close()
    log = RaftLog.open(tmp_path, SMALL, records=True)
    assert log.last_index() == 0
    log.close()


# -- model test: RaftLog against MemoryStorage ---------------------------------------------

ops = st.lists(
    st.tuples(
        st.integers(0, 6),  # how far back from the end the append starts
        st.integers(1, 5),  # how many entries
        st.booleans(),  # new term?
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40)
@given(ops)
def test_model_against_memory_storage(tmp_path_factory: pytest.TempPathFactory, plan: list) -> None:  # type: ignore[type-arg]
    path = tmp_path_factory.mktemp("model")
    log = RaftLog.open(path, SMALL, records=False)
    model = MemoryStorage()
    term = 1
    for back, n, bump in plan:
        if bump:
            term += 1
        start = max(1, model.last_index() + 1 - back)
        ents = [
            Entry(term, i, EntryType.NORMAL, b"%d/%d" % (i, term)) for i in range(start, start + n)
        ]
        log.append(ents)
        model.append(ents)
        assert log.last_index() == model.last_index()
        assert entries_of(log) == model.entries(1, model.last_index() + 1, 1 << 40)
        for i in range(0, model.last_index() + 1):
            assert log.term(i) == model.term(i)
    log.close()
    log = RaftLog.open(path, SMALL, records=False)
    assert entries_of(log) == model.entries(1, model.last_index() + 1, 1 << 40)
    assert [log.term(i) for i in range(model.last_index() + 1)] == [
        model.term(i) for i in range(model.last_index() + 1)
    ]
    log.close()


@settings(max_examples=60)
@given(st.binary(max_size=200))
def test_fuzz_raft_state_bytes_open_or_raise_raft_log_error(
    tmp_path_factory: pytest.TempPathFactory, junk: bytes
) -> None:
    path = tmp_path_factory.mktemp("junk")
    (path / "raft-state").write_bytes(junk)
    try:
        log = RaftLog.open(path, CFG, records=True)
    except RaftLogError:
        return
    log.close()


@settings(max_examples=40)
@given(
    st.fixed_dictionaries(
        {
            "v": st.just(1),
            "term": st.integers(-2, 5) | st.text(max_size=2),
            "vote": st.integers(0, 3),
            "commit": st.integers(0, 3),
            "applied": st.integers(0, 3),
            "snap": st.lists(st.integers(0, 3) | st.binary(max_size=4), max_size=5),
            "conf": st.lists(st.lists(st.integers(0, 3) | st.binary(max_size=8), max_size=3)),
            "recover": st.integers(0, 3) | st.none(),
        }
    )
)
def test_fuzz_raft_state_maps_of_the_wrong_shape(
    tmp_path_factory: pytest.TempPathFactory,
    m: dict,  # type: ignore[type-arg]
) -> None:
    path = tmp_path_factory.mktemp("shape")
    (path / "raft-state").write_bytes(msgpack.packb(m))
    try:
        log = RaftLog.open(path, CFG, records=True)
    except RaftLogError:
        return
    log.close()
