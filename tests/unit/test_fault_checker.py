"""The queue checker of the fault tests, on hand-made histories: it must catch each
anomaly, and only that anomaly."""

from __future__ import annotations

import pytest

from tests.support.checker import (
    Append,
    Divergence,
    LeaderClaim,
    QueueReport,
    Read,
    Watermark,
    check_election_safety,
    check_queue,
    check_reads,
    check_watermarks,
)


def history(*acked: tuple[bytes, int], unacked: tuple[bytes, ...] = ()) -> list[Append]:
    """Sequential appends (each completes before the next is invoked)."""
    ops = [
        Append(v, off, invoked=2.0 * i, completed=2.0 * i + 1) for i, (v, off) in enumerate(acked)
    ]
    ops += [Append(v, None, invoked=100.0, completed=101.0) for v in unacked]
    return ops


def only(report: QueueReport, kind: str) -> None:
    """``kind`` is the one anomaly the report holds."""
    assert not report.ok
    found = {
        name
        for name in ("lost", "duplicated", "reordered", "phantom")
        if any(getattr(report, name).values())
    }
    found |= {name for name in ("realtime", "divergent") if getattr(report, name)}
    assert found == {kind}, report.summary()


def test_a_clean_history_passes() -> None:
    ops = history((b"a", 0), (b"b", 1), (b"c", 2), unacked=(b"x", b"y"))
    # An unacknowledged append may have committed (b"x") or not (b"y"): both are fine.
    report = check_queue(ops, {"n1": [b"a", b"b", b"c", b"x"], "n2": [b"a", b"b", b"c"]})
    assert report.ok, report.summary()
    assert (report.acknowledged, report.attempted) == (3, 5)


def test_lost_acknowledged_value() -> None:
    ops = history((b"a", 0), (b"b", 1))
    report = check_queue(ops, {"n1": [b"a", b"b"], "n2": [b"a"]})
    only(report, "lost")
    assert report.lost == {"n1": [], "n2": [b"b"]}


def test_duplicated_value() -> None:
    ops = history((b"a", 0), (b"b", 1))
    report = check_queue(ops, {"n1": [b"a", b"b", b"b"]})
    only(report, "duplicated")
    assert report.duplicated["n1"] == [b"b"]


def test_phantom_value() -> None:
    ops = history((b"a", 0))
    report = check_queue(ops, {"n1": [b"a", b"ghost"]})
    only(report, "phantom")
    assert report.phantom["n1"] == [b"ghost"]


def test_value_at_another_offset_than_acknowledged() -> None:
    # Concurrent appends (no real-time order), stored swapped: offsets contradict acks.
    ops = [Append(b"a", 0, 0.0, 5.0), Append(b"b", 1, 0.0, 5.0)]
    report = check_queue(ops, {"n1": [b"b", b"a"]})
    only(report, "reordered")
    assert sorted(report.reordered["n1"]) == [(b"a", 0, 1), (b"b", 1, 0)]


def test_acknowledged_beyond_the_end_of_the_log_is_reordered_not_lost() -> None:
    ops = history((b"a", 0), (b"b", 5))
    report = check_queue(ops, {"n1": [b"a", b"b"]})
    only(report, "reordered")
    assert report.reordered["n1"] == [(b"b", 5, 1)]


def test_realtime_inversion_in_the_acknowledgements() -> None:
    # "late" was acknowledged before "early" was invoked, yet got the higher offset.
    ops = [Append(b"late", 1, 0.0, 1.0), Append(b"early", 0, 2.0, 3.0)]
    report = check_queue(ops, {"n1": [b"early", b"late"]})
    only(report, "realtime")
    assert report.realtime == [(b"late", b"early")]


def test_concurrent_appends_may_take_either_order() -> None:
    ops = [Append(b"a", 1, 0.0, 3.0), Append(b"b", 0, 1.0, 2.0)]
    assert check_queue(ops, {"n1": [b"b", b"a"]}).ok


def test_divergent_replicas() -> None:
    # Offset 2 was never acknowledged, but two replicas cannot both have committed it.
    ops = history((b"a", 0), (b"b", 1), unacked=(b"x", b"y"))
    report = check_queue(
        ops, {"n1": [b"a", b"b", b"x"], "n2": [b"a", b"b", b"y"], "n3": [b"a", b"b"]}
    )
    only(report, "divergent")
    assert report.divergent == [Divergence("n1", "n2", 2)]


def test_every_anomaly_at_once_is_summarized() -> None:
    ops = history((b"a", 0), (b"b", 1), (b"c", 2))
    report = check_queue(ops, {"n1": [b"a", b"c", b"zz", b"c"]})
    assert report.lost["n1"] == [b"b"]
    assert report.duplicated["n1"] == [b"c"]
    assert report.phantom["n1"] == [b"zz"]
    assert report.reordered["n1"] == [(b"c", 2, 1)]
    text = report.summary()
    for word in ("lost", "duplicated", "phantom", "reordered"):
        assert word in text


def test_a_value_attempted_twice_is_a_broken_history() -> None:
    with pytest.raises(ValueError, match="repeated"):
        check_queue([Append(b"a", 0), Append(b"a", None)], {})


def test_reads_that_match_the_final_log_pass() -> None:
    reads = [Read("n1", 0, b"a"), Read("n2", 1, b"b"), Read("n1", 1, b"b")]
    assert check_reads(reads, [b"a", b"b", b"c"]) == []


def test_dirty_read_of_a_replaced_record() -> None:
    # n3 served b"x" at offset 1 (it was never committed there: b"b" is).
    dirty = Read("n3", 1, b"x")
    assert check_reads([Read("n1", 0, b"a"), dirty], [b"a", b"b"]) == [(dirty, b"b")]


def test_read_beyond_the_final_log() -> None:
    ghost = Read("n1", 5, b"z")
    assert check_reads([ghost], [b"a"]) == [(ghost, None)]


def test_watermark_going_backwards_within_one_process() -> None:
    a, b, c = Watermark("n1", 10, 5), Watermark("n1", 10, 7), Watermark("n1", 10, 6)
    assert check_watermarks([a, b, c]) == [(b, c)]


def test_watermark_may_restart_lower_in_a_new_process() -> None:
    samples = [Watermark("n1", 10, 7), Watermark("n1", 11, 3), Watermark("n1", 11, 8)]
    assert check_watermarks(samples) == []
    assert check_watermarks([Watermark("n2", 1, 4), Watermark("n1", 1, 2)]) == []


def test_one_leader_per_term_passes() -> None:
    claims = [LeaderClaim("n1", 1), LeaderClaim("n1", 1), LeaderClaim("n2", 2)]
    assert check_election_safety(claims) == {}


def test_two_leaders_in_one_term() -> None:
    claims = [LeaderClaim("n1", 3), LeaderClaim("n2", 4), LeaderClaim("n3", 3)]
    assert check_election_safety(claims) == {3: {"n1", "n3"}}
