"""Replication throughput: three Raft nodes on loopback with fsync on, against the limits
measured in the same run.

Setup: three processes (bench nodes from bench/_common.py: one RaftHost each, G groups of
partition logs, node 1 leads every group and generates the load beside the leaders), for
G = 1 and G = 64; entries of 1 KiB, 16 KiB and 64 KiB (one record per entry), proposed
round-robin over the groups through a deep pipeline (16 MiB in flight, at most 4,096
entries). Figures: committed MB/s and entries/s (payload bytes, committed on a majority
and applied on the leader), commit latency p50/p99 (propose -> committed; with a deep
pipeline mostly queueing, so one more run with one 1 KiB entry in flight gives the
unloaded commit latency).

Limits, same run, same sizes:

- raw ZeroMQ: DEALER -> ROUTER MB/s between two processes (bench/zmq_baseline.py's raw
  mode: one blocking send per message, default socket options);
- raw disk: os.write of 1 MiB of entries (45-byte header + payload each, the bytes a
  segment holds) then os.fdatasync, in a file on the disk the nodes use, best of three
  runs; divided by 3, since the three replicas share that disk.

Usage: ``python bench/replication_bench.py [--quick]``. Prints a table, writes JSON under
bench/results/, and ends with ``replication mb_per_s=X limit_ratio=Y`` for 64 KiB
entries, X the best of the two group counts and Y = X / min(raw ZeroMQ, raw disk / 3).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    VOTERS,
    Child,
    add_node_args,
    print_table,
    raft_node_argv,
    run_raft_node,
    write_results,
)
from bench.zmq_baseline import run_raw

SIZES = (1024, 16 * 1024, 64 * 1024)
GROUP_COUNTS = (1, 64)
MB = 1_000_000  # MB/s in decimal megabytes, as zmq_baseline
HEADER_BYTES = 45  # storage._entry: the entry header a segment stores before each payload
IN_FLIGHT_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 4096
SYNC_BYTES = 1024 * 1024


def _count(size: int, quick: bool) -> int:
    """Entries per run: about 24 MB quick, 256 MB otherwise (at least 2,000)."""
    target = (24 if quick else 256) * MB
    return max(2000, target // size)


def _depth(size: int) -> int:
    return max(64, min(MAX_DEPTH, IN_FLIGHT_BYTES // size))


# --------------------------------------------------------------------- replication


def run_cluster(groups: int, quick: bool, work: Path) -> list[dict[str, Any]]:
    """Start three nodes with ``groups`` groups and load them with every size."""
    script = str(Path(__file__).resolve())
    data = work / f"groups-{groups}"
    children = [
        Child(raft_node_argv(script, nid, data / f"n{nid}", groups, fsync=True)) for nid in VOTERS
    ]
    try:
        hello = [c.recv() for c in children]
        peers = {str(nid): h["addr"] for nid, h in zip(VOTERS, hello, strict=True)}
        for c in children:
            c.send({"peers": peers})
        for c in children:
            c.recv()
        leader = lead_every_group(children, groups)
        rows = []
        runs = [(size, _depth(size), _count(size, quick)) for size in SIZES]
        if groups == 1:
            # Unloaded commit latency: one entry in flight at a time.
            runs.append((1024, 1, 200 if quick else 1000))
        for size, depth, count in runs:
            leader.send({"op": "load", "size": size, "count": min(depth * 4, 2000), "depth": depth})
            leader.recv()  # warm-up: connections, page cache, segment files
            leader.send({"op": "load", "size": size, "count": count, "depth": depth})
            r = leader.recv()
            rows.append(
                {
                    "groups": groups,
                    "size_bytes": size,
                    "depth": depth,
                    "entries": r["entries"],
                    "errors": r["errors"],
                    "error_kinds": r["error_kinds"],
                    "seconds": r["seconds"],
                    "mb_per_s": r["payload_bytes"] / r["seconds"] / MB,
                    "entries_per_s": r["entries"] / r["seconds"],
                    "p50_ms": r["p50_ms"],
                    "p99_ms": r["p99_ms"],
                }
            )
        for c in children:
            c.send({"op": "exit"})
        for c in children:
            c.recv()
            c.wait_exit(10.0)
        return rows
    finally:
        for c in children:
            c.close()


def lead_every_group(children: list[Child], groups: int) -> Child:
    """Wait until node 1 leads every group (the others hand theirs over); return it."""
    leader = children[0]
    deadline = time.monotonic() + 60
    while True:
        leader.send({"op": "wait_leaders", "timeout_s": 3})
        got = leader.recv()["leaders"]
        if got == groups:
            return leader
        if time.monotonic() > deadline:
            raise RuntimeError(f"node 1 leads {got} of {groups} groups")
        # A follower that timed out first won some elections: hand them over.
        for c in children[1:]:
            c.send({"op": "handoff", "to": 1})
            c.recv()


# --------------------------------------------------------------------- limits


def raw_zmq_mb_per_s(size: int, quick: bool) -> float:
    script = str(Path(__file__).resolve().parent / "zmq_baseline.py")
    count = max(2000, (200 if quick else 800) * MB // 1000 // size)
    with Child([script, "--child", "raw"]) as child:
        addr = child.recv()["addr"]
        result = run_raw(child, addr, size, count)
    return float(result["bytes"]) / float(result["seconds"]) / MB


def raw_disk_mb_per_s(size: int, quick: bool, work: Path) -> float:
    """Payload MB/s of os.write(1 MiB of entries) + os.fdatasync on the nodes' disk."""
    per_sync = max(1, SYNC_BYTES // (size + HEADER_BYTES))
    chunk = os.urandom((size + HEADER_BYTES) * per_sync)
    total = (16 if quick else 64) * MB
    syncs = max(8, total // len(chunk))
    path = work / f"raw-{size}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        for _ in range(syncs):
            os.write(fd, chunk)
            os.fdatasync(fd)
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return syncs * per_sync * size / seconds / MB


# --------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, under 60 s")
    parser.add_argument(
        "--group-count", type=int, action="append", help="group counts to run (default 1, 64)"
    )
    parser.add_argument("--child", choices=("node",), help=argparse.SUPPRESS)
    add_node_args(parser)
    args = parser.parse_args()
    if args.child == "node":
        run_raft_node(args)
        return

    work = Path(tempfile.mkdtemp(prefix="zs-repl-bench-"))
    try:
        started = time.monotonic()
        rows: list[dict[str, Any]] = []
        for groups in args.group_count or GROUP_COUNTS:
            rows += run_cluster(groups, args.quick, work)
        limits = {
            size: {
                "zmq_mb_per_s": raw_zmq_mb_per_s(size, args.quick),
                # Best of three: the disk is shared with other work, and the best run
                # is the strictest limit.
                "disk_mb_per_s_per_replica": max(
                    raw_disk_mb_per_s(size, args.quick, work) for _ in range(3)
                )
                / 3,
            }
            for size in SIZES
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        lim = limits[r["size_bytes"]]
        r["limit_mb_per_s"] = min(lim["zmq_mb_per_s"], lim["disk_mb_per_s_per_replica"])
        r["limit_ratio"] = r["mb_per_s"] / r["limit_mb_per_s"]

    print_table(
        (
            "groups",
            "size",
            "depth",
            "entries",
            "MB/s",
            "entries/s",
            "p50 ms",
            "p99 ms",
            "limit MB/s",
            "ratio",
        ),
        [
            (
                r["groups"],
                r["size_bytes"],
                r["depth"],
                r["entries"],
                r["mb_per_s"],
                r["entries_per_s"],
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                r["limit_mb_per_s"],
                f"{r['limit_ratio']:.2f}",
            )
            for r in rows
        ],
    )
    print()
    print_table(
        ("size", "raw zmq MB/s", "raw disk MB/s / 3"),
        [
            (size, lim["zmq_mb_per_s"], lim["disk_mb_per_s_per_replica"])
            for size, lim in limits.items()
        ],
    )
    best = max(
        (r for r in rows if r["size_bytes"] == 64 * 1024 and r["depth"] > 1),
        key=lambda r: r["mb_per_s"],
    )
    path = write_results(
        "replication",
        {
            "quick": args.quick,
            "seconds": time.monotonic() - started,
            "rows": rows,
            "limits": {str(k): v for k, v in limits.items()},
            "headline": best,
        },
    )
    print(f"results: {path} ({time.monotonic() - started:.0f} s)")
    print(f"headline: 64 KiB, {best['groups']} group(s)")
    print(f"replication mb_per_s={best['mb_per_s']:.1f} limit_ratio={best['limit_ratio']:.2f}")


if __name__ == "__main__":
    main()
