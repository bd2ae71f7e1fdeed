"""DistributedLog through real lognode processes: appends/s, MB/s, failover time.

Three `tests.support.lognode` processes on loopback (fsync on unless --no-fsync); node 1
bootstraps and joins 2 and 3. A client sends ``append_many`` requests of ``--batch``
one-record appends (each append is its own Raft proposal; the node pipelines them) for
``--seconds`` per record size, then kills the leader with SIGKILL ``--failover-runs``
times (a fresh cluster each time) and measures the time to the first committed append
on a survivor.

    .venv/bin/python bench/dlog_bench.py [--quick]

Last line: ``dlog appends_per_s=X mb_per_s_64k=Y failover_p50_s=Z failover_max_s=W``
(X for 1 KiB records).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, write_results
from tests.support.lognode import LogNode, LogNodeError


def cluster(root: Path, extra: tuple[str, ...]) -> dict[int, LogNode]:
    nodes = {
        i: LogNode(i, root / f"d{i}", root / "logs", bootstrap=i == 1, extra_args=extra)
        for i in (1, 2, 3)
    }
    try:
        for n in nodes.values():
            n.start()
        nodes[1].client.wait_for_leader(10)
        nodes[1].client.join(2, nodes[2].bind_addr)
        nodes[1].client.join(3, nodes[3].bind_addr)
    except BaseException:
        for n in nodes.values():
            n.stop()
        raise
    return nodes


def throughput(
    root: Path, size: int, batch: int, seconds: float, extra: tuple[str, ...]
) -> dict[str, float]:
    nodes = cluster(root, extra)
    try:
        client = nodes[1].client
        records = [b"x" * size] * batch
        client.call("append_many", 120.0, records=records)  # warm up
        lat: list[float] = []
        total = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            reply = client.call("append_many", 120.0, records=records)
            lat.append(time.perf_counter() - t)
            failed = [e for e in reply["errors"] if e is not None]
            if failed:
                raise RuntimeError(f"appends failed: {failed[:3]}")
            total += batch
        elapsed = time.perf_counter() - start
        lat.sort()
        return {
            "size": size,
            "appends_per_s": total / elapsed,
            "mb_per_s": total * size / elapsed / 1e6,
            "request_p50_ms": lat[len(lat) // 2] * 1000,
            "request_max_ms": lat[-1] * 1000,
        }
    finally:
        for n in nodes.values():
            n.stop()


def failover(root: Path, extra: tuple[str, ...]) -> float:
    nodes = cluster(root, extra)
    try:
        for i in range(20):
            nodes[1].client.append(b"before %d" % i)
        killed = time.monotonic()
        nodes[1].kill()
        while time.monotonic() - killed < 30:
            for i in (2, 3):
                try:
                    nodes[i].client.call("append", 0.5, record=b"after")
                    return time.monotonic() - killed
                except (LogNodeError, TimeoutError):
                    pass
        raise RuntimeError("no new leader within 30 s")
    finally:
        for n in nodes.values():
            n.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (about 40 s in all)")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--failover-runs", type=int, default=20)
    p.add_argument("--no-fsync", action="store_true")
    args = p.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    runs = 3 if args.quick else args.failover_runs
    extra = ("--no-fsync",) if args.no_fsync else ()
    rows = []
    results: dict[int, dict[str, float]] = {}
    for size, batch in ((1024, 1000), (16 * 1024, 300), (64 * 1024, 100)):
        root = Path(tempfile.mkdtemp(prefix="dlog-bench-"))
        try:
            r = throughput(root, size, batch, seconds, extra)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        results[size] = r
        rows.append([size, batch, r["appends_per_s"], r["mb_per_s"], r["request_p50_ms"]])
    print_table(["record_bytes", "per_request", "appends/s", "MB/s", "request_p50_ms"], rows)
    times = []
    for _ in range(runs):
        root = Path(tempfile.mkdtemp(prefix="dlog-failover-"))
        try:
            times.append(failover(root, extra))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    p50, worst = statistics.median(times), max(times)
    print(f"failover over {runs} runs: p50 {p50:.3f} s, max {worst:.3f} s")
    write_results(
        "dlog",
        {"throughput": list(results.values()), "failover_s": times, "fsync": not args.no_fsync},
    )
    print(
        f"dlog appends_per_s={results[1024]['appends_per_s']:.0f} "
        f"mb_per_s_64k={results[65536]['mb_per_s']:.1f} "
        f"failover_p50_s={p50:.3f} failover_max_s={worst:.3f}"
    )


if __name__ == "__main__":
    main()
