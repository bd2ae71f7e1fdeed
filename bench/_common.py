"""Small helpers shared by the benchmark scripts: child processes, tables, JSON results."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class Child:
    """A child Python process speaking line-delimited JSON on stdin/stdout.

    Torn down by its PID (kill + wait) when closed; use as a context manager.
    """

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.proc.pid} exited with {self.proc.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def wait_exit(self, timeout_s: float) -> None:
        """Wait for the child to exit by itself (it was told to); `close` kills it after."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def reply(obj: dict[str, Any]) -> None:
    """Child side of ``Child``: one JSON line on stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def read_request() -> dict[str, Any]:
    """Child side of ``Child``: one JSON line from stdin."""
    line = sys.stdin.readline()
    if not line:
        raise SystemExit(0)
    result: dict[str, Any] = json.loads(line)
    return result


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` plus machine facts to bench/results/<name>-<time>.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "argv": sys.argv,
    }
    path.write_text(json.dumps({"meta": meta, **data}, indent=2) + "\n")
    return path


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far, all threads included
    (so libzmq's I/O thread and pyzmq's zero-copy gc thread count too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------- Raft bench nodes
#
# A bench-only multi-group node: lognode runs one group (the seed's DistributedLog), so
# the replication and idle benchmarks run this instead: one RaftHost with G groups of
# partition logs (records=True), all bootstrapped with the voters {1, 2, 3}, node 1
# campaigning for every group so the load generator runs beside the leaders (no client
# hop: the figure is the replication path's own). It speaks line JSON with the parent
# (`Child`):
#
#   child -> {"addr": peer address, "pid": int}                        once bound
#   parent -> {"peers": {id: addr}}        child -> {"ok": true}       groups up, running
#   parent -> {"op": "wait_leaders", "timeout_s": s} -> {"leaders": n} (node 1)
#   parent -> {"op": "handoff", "to": id} -> {"transferred": n}  (groups led here move)
#   parent -> {"op": "load", "size": bytes, "count": n, "depth": d}
#            -> {"seconds", "entries", "payload_bytes", "p50_ms", "p99_ms", "errors"}
#   parent -> {"op": "load_led", "size": bytes} -> {"committed": n}  (one entry per group
#            led here, all at once)
#   parent -> {"op": "stats"} -> {"active", "quiesced", "leaders", "passes", "fsyncs", ...}
#   parent -> {"op": "exit"}  -> {"ok": true}, then the child closes and exits.

VOTERS = (1, 2, 3)


def add_broker_env_arg(parser: argparse.ArgumentParser) -> None:
    """``--broker-env KEY=VALUE`` (repeatable): a broker setting to compare in one run.
    (zstream.testing.cluster drops this process's own ZSTREAM_* variables.)"""
    parser.add_argument(
        "--broker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a broker setting for this run, e.g. ZSTREAM_INLINE_SYNC_US=0 (repeatable)",
    )


def broker_env(args: argparse.Namespace) -> dict[str, str]:
    """The ``--broker-env`` settings as an environment for zstream.testing.cluster."""
    env = {}
    for item in args.broker_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("ZSTREAM_"):
            raise SystemExit(f"--broker-env wants ZSTREAM_KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def raft_node_argv(
    script: str,
    node_id: int,
    data_dir: Path,
    groups: int,
    *,
    fsync: bool = True,
    segment_bytes: int = 64 * 1024 * 1024,
) -> list[str]:
    """argv (for `Child`) of a bench node run through ``script --child node ...``."""
    return [
        script,
        "--child",
        "node",
        "--node-id",
        str(node_id),
        "--data-dir",
        str(data_dir),
        "--groups",
        str(groups),
        "--segment-bytes",
        str(segment_bytes),
        *(() if fsync else ("--no-fsync",)),
    ]


def add_node_args(parser: argparse.ArgumentParser) -> None:
    """The child-side flags of `raft_node_argv` (hidden from --help)."""
    hide = argparse.SUPPRESS
    parser.add_argument("--node-id", type=int, default=0, help=hide)
    parser.add_argument("--data-dir", default="", help=hide)
    parser.add_argument("--groups", type=int, default=1, help=hide)
    parser.add_argument("--segment-bytes", type=int, default=64 * 1024 * 1024, help=hide)
    parser.add_argument("--no-fsync", action="store_true", help=hide)


def run_raft_node(args: argparse.Namespace) -> None:
    """Child side: serve the protocol above until "exit" (under uvloop). With
    ZS_BENCH_PROFILE=<prefix> set, every node runs under cProfile (main thread only) and
    writes its stats to <prefix>.n<id> (read them with ``python -m pstats``)."""
    import uvloop

    profile_path = os.environ.get("ZS_BENCH_PROFILE")
    if not profile_path:
        uvloop.run(_raft_node(args))
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        uvloop.run(_raft_node(args))
    finally:
        profiler.disable()
        profiler.dump_stats(f"{profile_path}.n{args.node_id}")


async def _raft_node(args: argparse.Namespace) -> None:
    import asyncio

    from zstream.replication import (
        ConfState,
        HostConfig,
        PeerTransport,
        RaftConfig,
        RaftHost,
        RaftLog,
    )
    from zstream.storage import LogConfig, encode_batch

    loop = asyncio.get_running_loop()

    async def request() -> dict[str, Any]:
        return await loop.run_in_executor(None, read_request)

    node_id = int(args.node_id)
    transport = PeerTransport(node_id, "tcp://127.0.0.1:0")
    addr = await transport.start()
    reply({"addr": addr, "pid": os.getpid()})
    peers = (await request())["peers"]
    for nid, peer_addr in peers.items():
        if int(nid) != node_id:
            transport.add_peer(int(nid), peer_addr)
    host = RaftHost(node_id, transport, HostConfig(fsync=not args.no_fsync))
    log_config = LogConfig(segment_bytes=args.segment_bytes)
    handles = []
    for gid in range(1, args.groups + 1):
        log = RaftLog.open(Path(args.data_dir) / f"g{gid}", log_config, records=True)
        log.bootstrap(ConfState(voters=frozenset(VOTERS)))
        handles.append(host.add_group(gid, log, RaftConfig(id=node_id)))
    task = asyncio.create_task(host.run(), name=f"bench-host-{node_id}")
    if node_id == 1:
        for h in handles:
            h.campaign()
    reply({"ok": True})
    try:
        while True:
            req = await request()
            op = req.get("op")
            if op == "wait_leaders":
                deadline = loop.time() + float(req["timeout_s"])
                # Polls the handles' state: elections finish on their own schedule.
                while loop.time() < deadline and not all(h.is_leader for h in handles):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                reply({"leaders": sum(h.is_leader for h in handles)})
            elif op == "handoff":
                target = int(req["to"])
                moved = [h for h in handles if h.is_leader and target != node_id]
                for h in moved:
                    h.transfer_leader(target)
                reply({"transferred": len(moved)})
            elif op == "load":
                size, count, depth = int(req["size"]), int(req["count"]), int(req["depth"])
                batch = encode_batch([(None, os.urandom(size))])
                reply(await _load(handles, batch, size, count, depth))
            elif op == "load_led":
                batch = encode_batch([(None, os.urandom(int(req["size"])))])
                led = [h.propose(batch) for h in handles if h.is_leader]
                done = await asyncio.gather(*led, return_exceptions=True)
                reply({"committed": sum(not isinstance(d, BaseException) for d in done)})
            elif op == "stats":
                st = host.stats
                reply(
                    {
                        "active": host.active_group_count(),
                        "quiesced": sum(h.quiesced for h in handles),
                        "leaders": sum(h.is_leader for h in handles),
                        "passes": st.passes,
                        "fsyncs": st.fsyncs,
                        "messages_sent": st.messages_sent,
                    }
                )
            elif op == "exit":
                break
            else:
                reply({"error": f"unknown op {op!r}"})
    finally:
        await host.close()
        await task
        await transport.close()
        for h in handles:
            h.log.close()
    reply({"ok": True})


async def _load(
    handles: list[Any], batch: bytes, size: int, count: int, depth: int
) -> dict[str, Any]:
    """Propose ``count`` entries round-robin over the groups, ``depth`` in flight."""
    import asyncio

    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    error_kinds: dict[str, int] = {}
    window = asyncio.Semaphore(depth)
    done_all = loop.create_future()
    outstanding = count

    def finished(fut: asyncio.Future[int], started: float) -> None:
        nonlocal errors, outstanding
        window.release()
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            errors += 1
            kind = type(exc).__name__ if exc is not None else "cancelled"
            error_kinds[kind] = error_kinds.get(kind, 0) + 1
        else:
            latencies.append(time.perf_counter() - started)
        outstanding -= 1
        if outstanding == 0 and not done_all.done():
            done_all.set_result(None)

    start = time.perf_counter()
    groups = len(handles)
    for i in range(count):
        await window.acquire()
        started = time.perf_counter()
        fut = handles[i % groups].propose(batch)
        fut.add_done_callback(lambda f, s=started: finished(f, s))
    await done_all
    seconds = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)
    return {
        "seconds": seconds,
        "entries": n,
        "payload_bytes": n * size,
        "errors": errors,
        "error_kinds": error_kinds,
        "p50_ms": latencies[n // 2] * 1000 if n else float("nan"),
        "p99_ms": latencies[min(n - 1, (n * 99) // 100)] * 1000 if n else float("nan"),
    }


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` from /proc/PID/stat, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Records, p50, p99 and p999 in ms of per-record latencies given in seconds."""
    ms = sorted(x * 1000 for x in seconds)
    return {
        "records": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[int(len(ms) * 0.99) - 1],
        "p999_ms": ms[int(len(ms) * 0.999) - 1],
    }


async def paced(total: int, rate: float) -> AsyncIterator[int]:
    """Yield 0..total-1, the i-th at ``i / rate`` seconds after the start (a fixed
    send rate that catches up after a stall instead of drifting)."""
    import asyncio

    started = time.perf_counter()
    for i in range(total):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield i


def progress(label: str, done: float, total: float) -> None:
    """A one-line progress bar on stderr, redrawn in place; ends the line when done."""
    width = 30
    filled = int(width * min(done / total, 1.0)) if total else width
    sys.stderr.write(f"\r{label:<28} [{'#' * filled}{'.' * (width - filled)}] {done:,.0f}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


# A panel of a chart: its title, the y-axis label, the category labels on the x axis, and
# one series of values per category for each legend entry (bars side by side).
Panel = tuple[str, str, Sequence[str], dict[str, Sequence[float]]]


def write_chart(path: Path, title: str, panels: Sequence[Panel], *, log_y: bool = False) -> Path:
    """Grouped bar charts, one panel per entry of ``panels``, saved as a PNG at ``path``
    (matplotlib's Agg backend: no display needed). Each bar carries its value; with
    ``log_y`` the first panel (throughput, where series differ by orders of magnitude)
    gets a log scale. Raises ImportError when matplotlib is missing (`make bench`
    installs the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for n, (ax, (panel_title, ylabel, categories, series)) in enumerate(
        zip(axes[0], panels, strict=True)
    ):
        width = 0.8 / max(1, len(series))
        for k, (name, values) in enumerate(series.items()):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(categories))]
            bars = ax.bar(xs, values, width, label=name)
            ax.bar_label(bars, labels=[_short(v) for v in values], fontsize=7, padding=2)
        ax.set_xticks(range(len(categories)), list(categories), fontsize=8)
        ax.set_title(panel_title, fontsize=10)
        ax.set_ylabel(ylabel)
        if log_y and n == 0:
            ax.set_yscale("log")
        ax.margins(y=0.15)
        if len(series) > 1:
            ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(value: float) -> str:
    if value != value:  # NaN: a figure that was not measured
        return "n/a"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}"


def chart_next_to(results_path: Path, write: Callable[[Path], Path]) -> None:
    """Write the PNG beside a results JSON (same name, .png) and say where; a missing
    matplotlib only skips the chart, it does not lose the run's figures."""
    try:
        png = write(results_path.with_suffix(".png"))
    except ImportError as exc:
        print(f"chart skipped ({exc}; `make bench` installs the bench extra)")
        return
    print(f"chart: {png}")
