"""A seeded nemesis: a random sequence of faults against a three-node cluster under a
continuous append workload, then the queue checker over every replica.

Each round picks a fault (kill -9 or SIGSTOP of the leader or of a follower, or, where
network namespaces can be made, isolating a node), holds it until the cluster has shown
what it must show under that fault (a new leader elected when the leader is gone, and
more appends acknowledged by the surviving majority), then ends it (restart, SIGCONT,
heal) and waits until every node answers again. The seed is printed on failure; replay
with ``ZS_NEMESIS_SEED=<seed>``. ``ZS_NEMESIS_ROUNDS=<n>`` makes a longer soak (a
script-like run outside `make test`, e.g. ``ZS_NEMESIS_ROUNDS=40 pytest -k nemesis``).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until
from tests.support.checker import check_election_safety, check_queue, check_reads, check_watermarks
from tests.support.cluster import AppendWorkload, Cluster, ReadMonitor
from tests.support.netns import Network, NetworkUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUNDS = int(os.environ.get("ZS_NEMESIS_ROUNDS", "5"))
ACKS_PER_ROUND = 15


@pytest.fixture
def network() -> Iterator[Network | None]:
    """Namespaces when this machine allows them (then partitions are in the mix)."""
    net = Network(3)
    try:
        net.create()
    except NetworkUnavailable:
        yield None
        return
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def cluster(tmp_path: Path, network: Network | None) -> Iterator[Cluster]:
    with Cluster(tmp_path, 3, network=network) as c:
        c.start()
        yield c


def test_random_faults_lose_nothing_acknowledged(cluster: Cluster, network: Network | None) -> None:
    seed = int(os.environ.get("ZS_NEMESIS_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    faults = ["kill", "pause"] + (["isolate"] if network is not None else [])
    done: list[str] = []
    workload = AppendWorkload(cluster).start()
    monitor = ReadMonitor(cluster).start()
    try:
        workload.wait_acked(ACKS_PER_ROUND, timeout_s=15)
        for _ in range(ROUNDS):
            fault = rng.choice(faults)
            leader, status = cluster.wait_leader(timeout_s=15)
            on_leader = rng.random() < 0.6
            victim = (
                leader
                if on_leader
                else rng.choice([n for n in cluster.nodes.values() if n is not leader])
            )
            done.append(f"{fault} {'leader' if on_leader else 'follower'} {victim.node_id}")
            start = time.monotonic()
            if fault == "kill":
                victim.kill()
            elif fault == "pause":
                victim.pause()
            else:
                assert network is not None
                network.isolate(victim.node_id)
            try:
                if on_leader:
                    _, new = cluster.wait_leader(timeout_s=15, exclude=[victim.node_id])
                    assert new["term"] > status["term"]
                workload.wait_acked(ACKS_PER_ROUND, timeout_s=15, since=start)
            finally:
                if fault == "kill":
                    victim.start()
                elif fault == "pause":
                    victim.resume()
                else:
                    assert network is not None
                    network.heal(victim.node_id)
            wait_until(
                lambda: all(n.status() is not None for n in cluster.nodes.values()),
                15,
                "every node to answer again",
            )
    except BaseException as exc:
        exc.add_note(f"nemesis seed {seed} (ZS_NEMESIS_SEED={seed}); faults so far: {done}")
        raise
    finally:
        history = workload.stop()
        reads, watermarks = monitor.stop()

    try:
        cluster.wait_converged(timeout_s=30)
        logs = {f"n{n.node_id}": n.records() for n in cluster.nodes.values()}
        report = check_queue(history, logs)
        assert report.ok, report.summary()
        assert report.acknowledged >= ACKS_PER_ROUND * (ROUNDS + 1)
        assert reads, "the monitor read nothing"
        assert check_reads(reads, logs["n1"]) == [], "a replica served a record not committed"
        assert check_watermarks(watermarks) == [], "a committed end offset went backwards"
        assert check_election_safety(monitor.leaders) == {}, "two leaders in a term"
    except BaseException as exc:
        exc.add_note(f"nemesis seed {seed} (ZS_NEMESIS_SEED={seed}); faults: {done}")
        raise
