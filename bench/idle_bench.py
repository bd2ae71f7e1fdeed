"""Idle cost: 1,000 Raft groups replicated three ways across three processes, CPU per
process once every group is idle.

Three bench nodes (bench/_common.py: one RaftHost each, default HostConfig: 50 ms ticks,
fsync on), every group bootstrapped with the voters {1, 2, 3}; node 1 campaigns for all
of them. Once every group has a leader, each leader commits one entry, then the run
waits until the hosts report no ticking group (quiesced) or a deadline, and measures
utime + stime from /proc/PID/stat of each process over a window.

Usage: ``python bench/idle_bench.py [--quick] [--groups N] [--window-s S]``. Prints a
table, writes JSON under bench/results/, and ends with
``idle groups=N cpu_pct_max=X`` (percent of one core, the busiest process).
Target: <= 5 %.
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

from bench._common import (
    VOTERS,
    Child,
    add_node_args,
    print_table,
    process_cpu_seconds,
    raft_node_argv,
    run_raft_node,
    write_results,
)

SEGMENT_BYTES = 1024 * 1024  # small: 3,000 logs on one disk


def stats(children: list[Child]) -> list[dict[str, Any]]:
    out = []
    for c in children:
        c.send({"op": "stats"})
        out.append(c.recv())
    return out


def wait_for(children: list[Child], what: str, ok: Any, timeout_s: float) -> list[dict[str, Any]]:
    """Poll the nodes' stats until ``ok(stats)`` holds; returns the last stats."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = stats(children)
        if ok(st):
            return st
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout_s} s; stats {st}")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 5 s window instead of 20 s")
    parser.add_argument("--group-count", type=int, default=1000, help="groups (default 1000)")
    parser.add_argument("--window-s", type=float, help="measurement window (default 20 s)")
    parser.add_argument("--child", choices=("node",), help=argparse.SUPPRESS)
    add_node_args(parser)
    args = parser.parse_args()
    if args.child == "node":
        run_raft_node(args)
        return
    groups = args.group_count
    window_s = args.window_s or (5.0 if args.quick else 20.0)

    script = str(Path(__file__).resolve())
    work = Path(tempfile.mkdtemp(prefix="zs-idle-bench-"))
    started = time.monotonic()
    children: list[Child] = []
    try:
        children = [
            Child(
                raft_node_argv(script, nid, work / f"n{nid}", groups, segment_bytes=SEGMENT_BYTES)
            )
            for nid in VOTERS
        ]
        hello = [c.recv() for c in children]
        pids = [int(h["pid"]) for h in hello]
        peers = {str(nid): h["addr"] for nid, h in zip(VOTERS, hello, strict=True)}
        for c in children:
            c.send({"peers": peers})
        for c in children:
            c.recv()
        wait_for(
            children,
            "every group has a leader",
            lambda st: sum(s["leaders"] for s in st) == groups,
            120,
        )
        setup_s = time.monotonic() - started
        # One committed entry in every group (on whichever node leads it).
        for c in children:
            c.send({"op": "load_led", "size": 100})
        for c in children:
            c.recv()
        t_quiet = time.monotonic()
        quiet = wait_for(
            children, "every group quiesced", lambda st: all(s["active"] == 0 for s in st), 60
        )
        quiesce_s = time.monotonic() - t_quiet
        cpu0 = [process_cpu_seconds(p) for p in pids]
        passes0 = [s["passes"] for s in quiet]
        t0 = time.monotonic()
        time.sleep(window_s)  # the measurement window itself
        elapsed = time.monotonic() - t0
        cpu1 = [process_cpu_seconds(p) for p in pids]
        end = stats(children)
        for c in children:
            c.send({"op": "exit"})
        for c in children:
            c.recv()
            c.wait_exit(10.0)
    finally:
        for c in children:
            c.close()
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        {
            "node": nid,
            "pid": pid,
            "leaders": s["leaders"],
            "active_groups": s["active"],
            "quiesced_groups": s["quiesced"],
            "cpu_pct": (c1 - c0) / elapsed * 100,
            "passes_per_s": (s["passes"] - p0) / elapsed,
        }
        for nid, pid, s, c0, c1, p0 in zip(VOTERS, pids, end, cpu0, cpu1, passes0, strict=True)
    ]
    print(
        f"{groups} groups x 3 nodes; setup {setup_s:.1f} s, quiesced in {quiesce_s:.1f} s, "
        f"window {elapsed:.1f} s"
    )
    print_table(
        ("node", "leaders", "active", "quiesced", "CPU % of a core", "passes/s"),
        [
            (
                r["node"],
                r["leaders"],
                r["active_groups"],
                r["quiesced_groups"],
                f"{r['cpu_pct']:.2f}",
                r["passes_per_s"],
            )
            for r in rows
        ],
    )
    worst = max(r["cpu_pct"] for r in rows)
    path = write_results(
        "idle",
        {
            "groups": groups,
            "window_s": elapsed,
            "setup_s": setup_s,
            "quiesce_s": quiesce_s,
            "rows": rows,
            "cpu_pct_max": worst,
        },
    )
    print(f"results: {path}")
    print(f"idle groups={groups} cpu_pct_max={worst:.2f}")


if __name__ == "__main__":
    main()
