"""Fault injection on real lognode processes on loopback: kill -9 and SIGSTOP of the
leader during continuous appends, and a whole-cluster kill -9 and restart.

Each test runs a client workload against whichever node leads, injects the fault, and
then checks the history with the Jepsen-style queue checker against every replica's
committed records, plus byte equality of the replicas' logs (the ``digest`` of every
committed entry: index, term, kind, payload; and the segment files themselves once the
processes are down).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until
from tests.support.checker import (
    Append,
    check_election_safety,
    check_queue,
    check_reads,
    check_watermarks,
)
from tests.support.cluster import AppendWorkload, Cluster, ClusterNode, ReadMonitor
from tests.support.lognode import LogNodeError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The lognode defaults: 50 ms ticks, elections after a randomized 0.5-1 s.
ELECTION_TIMEOUT_S = 0.5


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, 3) as c:
        c.start()
        yield c


def assert_no_anomaly(
    cluster: Cluster, history: list[Append], monitor: ReadMonitor | None = None
) -> None:
    logs = {f"n{n.node_id}": n.records() for n in cluster.running()}
    report = check_queue(history, logs)
    assert report.ok, report.summary()
    assert report.acknowledged > 0
    if monitor is not None:
        reads, watermarks = monitor.reads, monitor.watermarks
        assert reads, "the monitor read nothing"
        assert check_reads(reads, next(iter(logs.values()))) == [], "served uncommitted"
        assert check_watermarks(watermarks) == [], "a committed end offset went backwards"
        assert check_election_safety(monitor.leaders) == {}, "two leaders in a term"


def test_kill9_leader_during_appends(cluster: Cluster) -> None:
    workload = AppendWorkload(cluster).start()
    monitor = ReadMonitor(cluster).start()  # watches the restarted node catch up, too
    try:
        try:
            workload.wait_acked(30, timeout_s=15)
            old, old_status = cluster.wait_leader()
            old.kill()
            killed_at = time.monotonic()
            new, new_status = cluster.wait_leader(timeout_s=10, exclude=[old.node_id])
            assert new_status["term"] > old_status["term"]
            # The new leader keeps committing what the clients send.
            workload.wait_acked(30, timeout_s=15, since=killed_at)
        finally:
            history = workload.stop()
        old.start()
        converged = cluster.wait_converged(timeout_s=20)
    finally:
        monitor.stop()
    assert converged["commit_offset"] >= sum(op.offset is not None for op in history)
    assert_no_anomaly(cluster, history, monitor)

    # Byte equality on disk too: every replica's segment files hold the same entries.
    for node in cluster.nodes.values():
        node.stop()
    disks = {n.node_id: n.disk_entries() for n in cluster.nodes.values()}
    assert disks[old.node_id] == disks[new.node_id]
    assert len({len(d) for d in disks.values()}) == 1
    assert all(d == disks[1] for d in disks.values())


def test_sigstop_leader_steps_down_without_divergence(cluster: Cluster) -> None:
    workload = AppendWorkload(cluster).start()
    monitor = ReadMonitor(cluster).start()
    try:
        workload.wait_acked(20, timeout_s=15)
        old, old_status = cluster.wait_leader()
        old.pause()
        paused_at = time.monotonic()
        try:
            _new, new_status = cluster.wait_leader(timeout_s=10, exclude=[old.node_id])
            assert new_status["term"] > old_status["term"]
            workload.wait_acked(20, timeout_s=15, since=paused_at)
            assert time.monotonic() - paused_at > ELECTION_TIMEOUT_S
        finally:
            old.resume()
        # The paused leader wakes up believing it leads; it must learn the new term
        # and step down.
        wait_until(
            lambda: (
                (st := old.status()) is not None
                and not st["is_leader"]
                and st["term"] >= new_status["term"]
            ),
            10,
            "the old leader to step down",
        )
        workload.wait_acked(10, timeout_s=15, since=time.monotonic())
    finally:
        history = workload.stop()
        monitor.stop()
    cluster.wait_converged(timeout_s=20)
    assert_no_anomaly(cluster, history, monitor)
    leaders = [st for n in cluster.nodes.values() if (st := n.status()) and st["is_leader"]]
    assert len(leaders) == 1


def test_whole_cluster_kill9_and_restart_keeps_every_entry_and_term(cluster: Cluster) -> None:
    workload = AppendWorkload(cluster).start()
    try:
        workload.wait_acked(40, timeout_s=15)
    finally:
        history = workload.stop()
    end_before = cluster.wait_converged(timeout_s=20)["commit_offset"]
    terms = {n.node_id: st["term"] for n in cluster.nodes.values() if (st := n.status())}
    assert len(terms) == 3

    for node in cluster.nodes.values():  # all at once: no clean shutdown anywhere
        node.kill()
    before = {n.node_id: n.disk_entries() for n in cluster.nodes.values()}
    assert all(d == before[1] for d in before.values())

    for node in cluster.nodes.values():
        node.start()
    leader, _ = cluster.wait_leader(timeout_s=15)
    invoked = time.monotonic()
    after_offset = leader.client.append(b"after the restart")
    after = Append(b"after the restart", after_offset, invoked, time.monotonic())
    assert after_offset == end_before  # no committed record was lost or added
    cluster.wait_converged(timeout_s=20)
    for node in cluster.nodes.values():
        st = node.status()
        assert st is not None
        assert st["term"] >= terms[node.node_id]
    assert_no_anomaly(cluster, [*history, after])

    for node in cluster.nodes.values():
        node.stop()
    for node_id, entries in before.items():
        now = cluster.node(node_id).disk_entries()
        assert now[: len(entries)] == entries, f"node {node_id} lost or changed entries"
        assert len(now) > len(entries)


def test_follower_killed_behind_a_snapshot_catches_up_by_installing_it(cluster: Cluster) -> None:
    leader, _ = cluster.wait_leader()
    lagging = next(n for n in cluster.nodes.values() if n is not leader)
    other = next(n for n in cluster.nodes.values() if n not in (leader, lagging))
    history = [append(leader, b"early-%d" % i) for i in range(10)]
    cluster.wait_converged()
    lagging.kill()
    history += [append(leader, b"while-down-%d" % i) for i in range(30)]
    cluster.wait_converged(nodes=[leader, other])
    # Both live replicas move their log start past everything the lagging one holds.
    starts = {n.client.call("snapshot")["start_offset"] for n in (leader, other)}
    assert starts == {40}

    lagging.start()
    history += [append(leader, b"after-%d" % i) for i in range(10)]
    converged = cluster.wait_converged(timeout_s=20)
    assert converged["commit_offset"] == 50
    st = lagging.status()
    assert st is not None
    assert st["start_offset"] == 40
    with pytest.raises(LogNodeError) as info:
        lagging.client.read(39)
    assert info.value.error == "OffsetOutOfRange"
    for node in cluster.nodes.values():
        assert node.records(start=40) == [op.value for op in history[40:]]
    assert [op.offset for op in history] == list(range(50))


def append(node: ClusterNode, value: bytes) -> Append:
    invoked = time.monotonic()
    offset = node.client.append(value)
    return Append(value, offset, invoked, time.monotonic())
