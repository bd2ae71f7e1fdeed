"""Produce-ack and end-to-end latency at fixed rates, a per-stage breakdown, and the floor.

Workload: 100 B records, one partition, RF 3, acks=all, fsync on, ``linger_ms=0``, sent
at a fixed rate (1,000 records/s by default, then 10,000 and 50,000 so that the cost of
load shows). The producer runs in this process; the consumer (a stream subscription on
the same partition) runs in a child process, so the two client loops do not share a
core's time slice. Every timestamp is CLOCK_MONOTONIC (``time.monotonic_ns``), which is
one clock for all the processes of this machine.

- produce-ack latency: ``send`` to the completion of its future, per record;
- end-to-end: ``send`` to the consumer application receiving the record;
- stages (at the first rate): the brokers run with ``ZSTREAM_TRACE_DIR`` set
  (replication/_trace.py), so each writes when an entry was queued, proposed,
  appended, fsynced, received by a follower, acknowledged, committed and applied. A
  record is matched to its Raft index through the leader's ``offset`` rows. Per stage
  the p50 and p99 over records; the follower is the one whose acknowledgement came
  first (the one that made the majority).
- the floor, in the same run: a raw ZeroMQ DEALER/ROUTER round trip of 100 B between two
  processes, and a raw 4 KiB ``pwrite`` + ``fdatasync`` in the data directory's file
  system; ``floor = rtt + max(fsync, rtt + fsync)`` (the producer's round trip, and the
  leader's fsync in parallel with the follower's round trip plus its fsync).

Usage: ``python bench/latency.py [--quick] [--rates 1000,10000,50000]``. Prints tables,
writes JSON to bench/results/, and ends with
``latency produce_p50_ms=A produce_p99_ms=B e2e_p99_ms=C floor_ms=D`` (first rate).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import uvloop
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    Child,
    add_broker_env_arg,
    broker_env,
    paced,
    percentile,
    print_table,
    progress,
    read_request,
    reply,
    write_results,
)
from tests.support import wait_until_async
from zstream.clients import Admin, Consumer, Producer, RecordFuture, TopicPartition
from zstream.testing import cluster

TOPIC = "bench-latency"
SIZE = 100
_T = TypeVar("_T")
_NS = 1e-6  # ns -> ms


def _run(main: Coroutine[Any, Any, _T]) -> _T:
    """The clients' loop: the standard one, as in the other benchmarks and most
    applications; ``BENCH_CLIENT_LOOP=uvloop`` for uvloop (the brokers' own choice is
    ``ZSTREAM_EVENT_LOOP``, uvloop by default)."""
    if os.environ.get("BENCH_CLIENT_LOOP", "asyncio") == "uvloop":
        return uvloop.run(main)
    return asyncio.run(main)


# ----------------------------------------------------------------------------- floor


def echo_child() -> None:
    """A ROUTER that sends every message straight back (the raw round-trip peer)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind("tcp://127.0.0.1:0")
    reply({"addr": sock.getsockopt_string(zmq.LAST_ENDPOINT)})
    while True:
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)


def raw_rtt_ms(count: int) -> list[float]:
    with Child([__file__, "--child", "echo"]) as child:
        addr = child.recv()["addr"]
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(addr)
        payload = os.urandom(SIZE)
        out = []
        for i in range(count + 100):
            t0 = time.monotonic_ns()
            sock.send(payload)
            sock.recv()
            if i >= 100:  # the first round trips include the connection's setup
                out.append((time.monotonic_ns() - t0) * _NS)
        sock.close()
    return out


def raw_fsync_ms(directory: Path, count: int) -> list[float]:
    path = directory / "fsync-probe"
    block = os.urandom(4096)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    out = []
    try:
        for i in range(count):
            t0 = time.monotonic_ns()
            os.pwrite(fd, block, i * 4096)
            os.fdatasync(fd)
            out.append((time.monotonic_ns() - t0) * _NS)
    finally:
        os.close(fd)
        path.unlink()
    return out


# -------------------------------------------------------------------------- consumer


def consumer_child() -> None:
    _run(_consumer_child())


async def _consumer_child() -> None:
    req = read_request()
    got: dict[int, int] = {}
    total = int(req["total"])
    async with Consumer(req["bootstrap"], auto_offset_reset="latest") as consumer:
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])

        async def positioned() -> bool:
            return consumer.position(tp) is not None

        await wait_until_async(positioned, 20, "the consumer's start offset")
        reply({"ready": True})
        deadline = time.monotonic() + float(req["timeout_s"])
        while len(got) < total and time.monotonic() < deadline:
            try:
                record = await asyncio.wait_for(consumer.getone(), deadline - time.monotonic())
            except TimeoutError:
                break
            got[record.offset] = time.monotonic_ns()
    reply({"received": got})


# -------------------------------------------------------------------------- produce


async def run_rate(bootstrap: str, rate: int, seconds: float) -> dict[str, Any]:
    """Records sent at ``rate`` for ``seconds``: per record (send, ack, offset) in ns,
    and the consumer child's receive times by offset."""
    total = int(rate * seconds)
    sent: list[int] = [0] * total
    acked: list[int] = [0] * total
    offsets: list[int] = [-1] * total
    with Child([__file__, "--child", "consumer"]) as consumer:
        consumer.send({"bootstrap": bootstrap, "total": total, "timeout_s": seconds + 30})
        consumer.recv()  # ready
        async with Producer(bootstrap, linger_ms=0) as producer:
            futures = []
            async for i in paced(total, rate):
                sent[i] = time.monotonic_ns()
                fut = producer.send(TOPIC, i.to_bytes(8, "big") + bytes(SIZE - 8), partition=0)
                futures.append(asyncio.ensure_future(_ack(fut, i, acked, offsets)))
                if i % max(1, rate // 2) == 0:
                    progress(f"latency @{rate}/s", i, total)
            await asyncio.gather(*futures)
        progress(f"latency @{rate}/s", total, total)
        received = {int(k): v for k, v in consumer.recv()["received"].items()}
    return {"sent": sent, "acked": acked, "offsets": offsets, "received": received}


async def _ack(fut: RecordFuture, i: int, acked: list[int], offsets: list[int]) -> None:
    metadata = await fut
    acked[i] = time.monotonic_ns()
    offsets[i] = metadata.offset


def summary(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "p999_ms": float("nan")}
    return {
        "n": len(values_ms),
        "p50_ms": statistics.median(values_ms),
        "p99_ms": percentile(values_ms, 0.99),
        "p999_ms": percentile(values_ms, 0.999),
    }


def latencies(run: dict[str, Any]) -> tuple[list[float], list[float]]:
    produce = [(a - s) * _NS for s, a in zip(run["sent"], run["acked"], strict=True) if a]
    e2e = []
    for s, off in zip(run["sent"], run["offsets"], strict=True):
        t = run["received"].get(off)
        if t is not None:
            e2e.append((t - s) * _NS)
    return produce, e2e


# --------------------------------------------------------------------------- stages

STAGES = [
    ("client send -> leader host", "send", "queued"),
    ("host queue -> proposed", "queued", "proposed"),
    ("proposed -> leader appended", "proposed", "appended"),
    ("leader fsync", "appended", "synced"),
    ("leader appended -> follower received", "appended", "f_received"),
    ("follower append + fsync", "f_received", "f_synced"),
    ("follower fsync -> ack sent", "f_synced", "f_acked"),
    ("ack sent -> leader commit", "f_acked", "committed"),
    ("commit -> applied", "committed", "applied"),
    ("applied -> client ack (response)", "applied", "ack"),
    ("applied -> consumer application", "applied", "consumed"),
]
_RANGE = {"queued", "proposed", "appended", "received"}  # one row per index
_MARK = {"synced", "acked", "committed", "applied"}  # a watermark: first row >= index


def load_traces(directory: Path) -> list[dict[str, dict[int, list[tuple[int, int]]]]]:
    """Per trace file (one broker process): stage -> group -> [(index, t_ns)] in order."""
    out = []
    for path in sorted(directory.glob("trace-*.txt")):
        rows: dict[str, dict[int, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
        with path.open() as f:
            for line in f:
                parts = line.split()
                if len(parts) == 4:
                    rows[parts[0]][int(parts[1])].append((int(parts[2]), int(parts[3])))
        out.append(rows)
    return out


def _first_at_or_after(marks: list[tuple[int, int]], index: int, pos: list[int]) -> int | None:
    """Time of the first watermark row >= index (marks in time order; ``pos`` is a cursor
    that only moves forward, as indexes are asked in increasing order)."""
    i = pos[0]
    while i < len(marks) and marks[i][0] < index:
        i += 1
    pos[0] = i
    return marks[i][1] if i < len(marks) else None


def stage_breakdown(traces: list[Any], run: dict[str, Any]) -> dict[str, dict[str, float]]:
    leader = next((t for t in traces if t["offset"]), None)
    if leader is None:
        return {}
    (gid, offset_rows), *_ = leader["offset"].items()
    # A batch of several records is one entry: an offset belongs to the entry with the
    # greatest base offset at or below it.
    entries = sorted((base, index) for index, base in offset_rows)
    bases = [base for base, _ in entries]

    def index_of(offset: int) -> int | None:
        at = bisect.bisect_right(bases, offset) - 1
        return entries[at][1] if at >= 0 and offset >= 0 else None

    followers = [t for t in traces if t is not leader and t["received"].get(gid)]

    def ranges(t: Any, stage: str) -> dict[int, int]:
        return dict(t[stage].get(gid, []))

    lead = {s: ranges(leader, s) for s in ("queued", "proposed", "appended")}
    fol = [{"received": ranges(f, "received")} for f in followers]
    times: dict[str, list[float]] = defaultdict(list)
    pairs = sorted(
        (index, s, a, run["received"].get(off))
        for s, a, off in zip(run["sent"], run["acked"], run["offsets"], strict=True)
        if (index := index_of(off)) is not None
    )
    cursors: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0])
    for index, sent, ack, consumed in pairs:
        t: dict[str, int | None] = {"send": sent, "ack": ack or None, "consumed": consumed}
        for s in ("queued", "proposed", "appended"):
            t[s] = lead[s].get(index)
        for s in ("synced", "committed", "applied"):
            t[s] = _first_at_or_after(leader[s].get(gid, []), index, cursors[(-1, s)])
        best: tuple[int, int, int, int] | None = None
        for n, (f, fr) in enumerate(zip(followers, fol, strict=True)):
            received = fr["received"].get(index)
            synced = _first_at_or_after(f["synced"].get(gid, []), index, cursors[(n, "s")])
            acked = _first_at_or_after(f["acked"].get(gid, []), index, cursors[(n, "a")])
            if received is None or synced is None or acked is None:
                continue
            if best is None or acked < best[2]:
                best = (received, synced, acked, n)
        if best is not None:
            t["f_received"], t["f_synced"], t["f_acked"] = best[0], best[1], best[2]
        for name, a, b in STAGES:
            ta, tb = t.get(a), t.get(b)
            if ta is not None and tb is not None:
                times[name].append((tb - ta) * _NS)
    return {name: summary(times[name]) for name, _, _ in STAGES}


# ----------------------------------------------------------------------------- main


async def prepare(bootstrap: str) -> None:
    async with Admin(bootstrap) as admin:
        await admin.create_topic(TOPIC, partitions=1, replication_factor=3)
    async with Producer(bootstrap, linger_ms=0) as producer:  # leader elected, warm
        for _ in range(200):
            await producer.send(TOPIC, bytes(SIZE), partition=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--child", choices=["echo", "consumer"], help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="short runs (under 60 s)")
    parser.add_argument("--rates", default="1000,10000,50000")
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate")
    add_broker_env_arg(parser)
    args = parser.parse_args()
    if args.child == "echo":
        return echo_child()
    if args.child == "consumer":
        return consumer_child()
    rates = [int(r) for r in args.rates.split(",")]
    seconds = [5.0, 2.0, 1.0] if args.quick else [args.seconds] * len(rates)
    seconds += [seconds[-1]] * (len(rates) - len(seconds))
    probes = 1000 if args.quick else 5000
    root = Path(tempfile.mkdtemp(prefix="zstream-latency-"))
    results: dict[str, Any] = {"rates": {}}
    try:
        rtt = raw_rtt_ms(probes)
        fsync = raw_fsync_ms(root, probes // 2)
        trace_dir = root / "trace"
        for n, rate in enumerate(rates):
            # The first rate runs traced (the tracing costs a little).
            env = broker_env(args)
            if n == 0:
                env["ZSTREAM_TRACE_DIR"] = str(trace_dir)
            with cluster(
                3, path=root / f"r{rate}", log_level="WARNING", ready_timeout_s=60, env=env
            ) as brokers:
                _run(prepare(brokers.bootstrap))
                run = _run(run_rate(brokers.bootstrap, rate, seconds[n]))
            produce, e2e = latencies(run)
            entry: dict[str, Any] = {"produce": summary(produce), "e2e": summary(e2e)}
            if n == 0:
                entry["stages"] = stage_breakdown(load_traces(trace_dir), run)
            results["rates"][rate] = entry
    finally:
        shutil.rmtree(root, ignore_errors=True)
    r, f = summary(rtt), summary(fsync)
    floor50 = r["p50_ms"] + max(f["p50_ms"], r["p50_ms"] + f["p50_ms"])
    floor99 = r["p99_ms"] + max(f["p99_ms"], r["p99_ms"] + f["p99_ms"])
    results["floor"] = {"rtt": r, "fsync_4k": f, "floor_p50_ms": floor50, "floor_p99_ms": floor99}
    print_table(
        ["floor", "p50 ms", "p99 ms"],
        [
            ["zmq round trip 100 B", r["p50_ms"], r["p99_ms"]],
            ["4 KiB pwrite + fdatasync", f["p50_ms"], f["p99_ms"]],
            ["floor = rtt + max(fsync, rtt + fsync)", floor50, floor99],
        ],
    )
    rows = []
    for rate, entry in results["rates"].items():
        for kind in ("produce", "e2e"):
            s = entry[kind]
            rows.append([f"{rate}/s {kind}", s["n"], s["p50_ms"], s["p99_ms"], s["p999_ms"]])
    print_table(["latency", "records", "p50 ms", "p99 ms", "p999 ms"], rows)
    first = results["rates"][rates[0]]
    stages = first.get("stages", {})
    if stages:
        print_table(
            [f"stages @{rates[0]}/s", "records", "p50 ms", "p99 ms"],
            [[name, s["n"], s["p50_ms"], s["p99_ms"]] for name, s in stages.items()],
        )
    path = write_results("latency", results)
    print(f"results: {path}")
    print(
        f"latency produce_p50_ms={first['produce']['p50_ms']:.2f} "
        f"produce_p99_ms={first['produce']['p99_ms']:.2f} "
        f"e2e_p99_ms={first['e2e']['p99_ms']:.2f} floor_ms={floor50:.2f}"
    )


if __name__ == "__main__":
    main()
