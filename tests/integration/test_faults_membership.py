"""Membership changes under faults: the leader is killed right after removing a member,
and the removed member, with its stale log, is joined back later."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.checker import check_election_safety, check_queue, check_reads, check_watermarks
from tests.support.cluster import AppendWorkload, Cluster, ReadMonitor

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, 4) as c:
        c.start()
        yield c


def test_leader_killed_after_a_removal_and_the_removed_node_rejoins(cluster: Cluster) -> None:
    workload = AppendWorkload(cluster).start()
    monitor = ReadMonitor(cluster).start()
    try:
        try:
            workload.wait_acked(20, timeout_s=15)
            leader, _ = cluster.wait_leader()
            removed = next(n for n in cluster.nodes.values() if n is not leader)
            leader.client.leave(removed.node_id)
            leader.kill()  # the removal is committed; nothing else is known to survive
            killed_at = time.monotonic()
            # Two of the remaining three voters elect a leader without the removed node.
            new, status = cluster.wait_leader(timeout_s=15, exclude=[leader.node_id])
            assert new is not removed
            assert removed.node_id not in status["voters"]
            workload.wait_acked(20, timeout_s=15, since=killed_at)

            leader.start()
            current, _ = cluster.wait_leader(timeout_s=15)
            current.client.join(removed.node_id, removed.bind_addr)
            workload.wait_acked(20, timeout_s=15, since=time.monotonic())
        finally:
            history = workload.stop()
        converged = cluster.wait_converged(timeout_s=30)
    finally:
        reads, watermarks = monitor.stop()

    logs = {f"n{n.node_id}": n.records() for n in cluster.nodes.values()}
    report = check_queue(history, logs)
    assert report.ok, report.summary()
    assert check_reads(reads, logs["n1"]) == []
    assert check_watermarks(watermarks) == []
    assert check_election_safety(monitor.leaders) == {}, "two leaders in a term"
    assert converged["commit_offset"] == len(logs["n1"])
    for node in cluster.nodes.values():
        st = node.status()
        assert st is not None
        assert st["voters"] == [1, 2, 3, 4]
