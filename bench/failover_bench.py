"""Failover time: kill -9 the leader of a three-node lognode cluster and time until the
first append committed by the new leader.

Default timeouts (lognode's: 50 ms heartbeat tick, 500 ms election timeout, randomized
to 0.5-1 s), fsync on, loopback. Each run: find the leader, SIGKILL it (t0), then try an
append on the surviving nodes (following NotLeader hints, a 10 ms pause when nobody
leads yet) until one commits (t1); failover = t1 - t0. The killed node is restarted and
the replicas converge before the next run. Also reported: when a NotLeader reply first
named a surviving node as leader (a bound on the election time, not exact).

Usage: ``python bench/failover_bench.py [--quick] [--runs N]``. Prints a table, writes
JSON under bench/results/, and ends with ``failover p50_ms=X max_ms=Y runs=N``.
Target: p50 <= 1 s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile, print_table, write_results
from tests.support.cluster import Cluster, ClusterNode
from tests.support.lognode import LogNodeError

RETRY_PAUSE_S = 0.01
GIVE_UP_S = 30.0


def one_failover(cluster: Cluster, run: int) -> dict[str, Any]:
    old, status = cluster.wait_leader(timeout_s=20)
    survivors = [n for n in cluster.nodes.values() if n is not old]
    t0 = time.perf_counter()
    old.kill()
    elected_s: float | None = None
    attempts = 0
    target: ClusterNode | None = survivors[0]
    while True:
        now = time.perf_counter()
        if now - t0 > GIVE_UP_S:
            raise TimeoutError(f"run {run}: no committed append {GIVE_UP_S} s after the kill")
        if target is None:
            time.sleep(RETRY_PAUSE_S)
            target = survivors[attempts % len(survivors)]
        attempts += 1
        try:
            target.client.append(b"failover-%d" % run, 2.0)
            break
        except LogNodeError as exc:
            hint = int(exc.details.get("leader_hint", 0))
            if elected_s is None and hint not in (0, old.node_id):
                elected_s = time.perf_counter() - t0
            target = cluster.nodes.get(hint) if hint != old.node_id else None
        except TimeoutError:
            target = None
    done = time.perf_counter() - t0
    new_leader = target.node_id if target is not None else 0
    old.start()
    cluster.wait_converged(timeout_s=30)
    return {
        "run": run,
        "old_leader": old.node_id,
        "old_term": status["term"],
        "new_leader": new_leader,
        "failover_ms": done * 1000,
        "leader_known_ms": (elected_s or done) * 1000,
        "attempts": attempts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 runs instead of 20")
    parser.add_argument("--runs", type=int, help="number of failovers (default 20, quick 5)")
    args = parser.parse_args()
    runs = args.runs or (5 if args.quick else 20)

    root = Path(tempfile.mkdtemp(prefix="zs-failover-"))
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        with Cluster(root, 3) as cluster:
            cluster.start()
            for n in range(5):  # something to replicate before the first kill
                cluster.node(1).client.append(b"warm-%d" % n)
            for run in range(runs):
                results.append(one_failover(cluster, run))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print_table(
        ("run", "killed", "new leader", "failover ms", "leader hinted ms", "attempts"),
        [
            (
                r["run"],
                r["old_leader"],
                r["new_leader"],
                r["failover_ms"],
                r["leader_known_ms"],
                r["attempts"],
            )
            for r in results
        ],
    )
    times = [r["failover_ms"] for r in results]
    p50, worst = percentile(times, 0.5), max(times)
    path = write_results(
        "failover",
        {
            "runs": results,
            "p50_ms": p50,
            "max_ms": worst,
            "seconds": time.monotonic() - started,
        },
    )
    print(f"results: {path}")
    print(f"failover p50_ms={p50:.0f} max_ms={worst:.0f} runs={len(results)}")


if __name__ == "__main__":
    main()
