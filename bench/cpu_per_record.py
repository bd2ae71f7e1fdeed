"""What one produced record costs the machine: CPU and scheduler waits per record.

Three brokers (static peers, fsync on) and one topic partition at RF 3; a producer in
this process sends 100 B records one request each (``linger_ms=0``) at ``--rate`` for
``--seconds``. Before and after, every thread of every broker and of this process is
read from ``/proc/<pid>/task/<tid>/schedstat`` (CPU time, time spent runnable but
waiting for a core, timeslices). Per process and per thread name it prints, per record:
CPU ms (and how much of it in the kernel), run-queue wait ms and timeslices (a timeslice
is roughly one wake-up), plus the produce-ack p50/p99 of the run. ``loop`` is the main
thread (the asyncio loop), ``python`` every other Python thread together (the fsync
workers: CPython 3.11 does not name OS threads); ``ZMQbg/IO/0`` is libzmq's I/O
thread.

Why: at 1,000 records/s the produce latency here is milliseconds while a ZeroMQ round
trip is 0.1 ms and an fdatasync 0.2 ms. This shows how much of that is CPU and
scheduling on a 2-core machine shared by three brokers and a client.

    .venv/bin/python bench/cpu_per_record.py [--rate 1000] [--seconds 3] [--broker-env K=V]

Last line: ``cpu leader_ms=A follower_ms=B client_ms=C wait_ms=D slices=E p50_ms=F
p99_ms=G`` (per record; wait and slices summed over every process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import add_broker_env_arg, broker_env, paced, percentile
from zstream.clients import Admin, Producer
from zstream.testing import cluster

TOPIC = "bench-cpu"


_TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> dict[str, tuple[str, int, int, int, int]]:
    """Per thread id: (name, cpu ns, run-queue wait ns, timeslices, kernel cpu ns).
    The main thread is named ``loop``, other Python threads ``python`` (fsync
    workers). Kernel time comes from ``stat`` in clock ticks (10 ms): coarse per
    thread, fair summed over a run."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            cpu, wait, slices = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        stime_ticks = int(stat.rpartition(")")[2].split()[12])  # field 15 of stat(5)
        if tid == str(pid):
            name = "loop"
        out[tid] = (name, int(cpu), int(wait), int(slices), int(stime_ticks * _TICK_NS))
    return out


def per_record(before: dict, after: dict, n: int) -> dict[str, list[float]]:
    """Per thread name (ThreadPoolExecutor workers together): [cpu ms, wait ms, slices,
    kernel cpu ms]."""
    agg: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for tid, (name, cpu, wait, slices, sys_ns) in after.items():
        _, cpu0, wait0, slices0, sys0 = before.get(tid, (name, 0, 0, 0, 0))
        key = name.split("_")[0]
        agg[key][0] += (cpu - cpu0) / 1e6 / n
        agg[key][1] += (wait - wait0) / 1e6 / n
        agg[key][2] += (slices - slices0) / n
        agg[key][3] += (sys_ns - sys0) / 1e6 / n
    return dict(agg)


async def run(bootstrap: str, pids: list[int], rate: int, seconds: float) -> None:
    async with Admin(bootstrap) as admin:
        await admin.create_topic(TOPIC, partitions=1, replication_factor=3)
    async with Producer(bootstrap, linger_ms=0) as producer:
        for _ in range(200):  # warm: connections up, leader known
            await producer.send(TOPIC, bytes(100), partition=0)
        async with Admin(bootstrap) as admin:
            leader = (await admin.describe_topic(TOPIC))["partitions"][0]["leader"]
        total = int(rate * seconds)
        procs = {**{f"broker {i + 1}": pid for i, pid in enumerate(pids)}, "client": os.getpid()}
        before = {name: threads(pid) for name, pid in procs.items()}
        latencies: list[float] = []

        async def ack(fut: object, t0: int) -> None:
            await fut  # type: ignore[misc]
            latencies.append((time.monotonic_ns() - t0) / 1e6)

        pending = []
        async for _ in paced(total, rate):
            t0 = time.monotonic_ns()
            fut = producer.send(TOPIC, bytes(100), partition=0)
            pending.append(asyncio.ensure_future(ack(fut, t0)))
        await asyncio.gather(*pending)
        after = {name: threads(pid) for name, pid in procs.items()}
    rows = {name: per_record(before[name], after[name], total) for name in procs}
    for name, agg in rows.items():
        role = " (leader)" if name == f"broker {leader}" else ""
        print(f"{name}{role}:")
        for thread, (cpu, wait, slices, sys_ms) in sorted(agg.items()):
            if slices >= 0.05:
                print(
                    f"  {thread:<12} cpu {cpu:.3f} ms (kernel {sys_ms:.3f})"
                    f"  wait {wait:.3f} ms  slices {slices:.2f}"
                )
    cpu_of = {name: sum(v[0] for v in agg.values()) for name, agg in rows.items()}
    followers = [
        c for name, c in cpu_of.items() if name.startswith("broker") and name != f"broker {leader}"
    ]
    wait = sum(v[1] for agg in rows.values() for v in agg.values())
    slices = sum(v[2] for agg in rows.values() for v in agg.values())
    print(
        f"cpu leader_ms={cpu_of[f'broker {leader}']:.3f}"
        f" follower_ms={statistics.mean(followers):.3f} client_ms={cpu_of['client']:.3f}"
        f" wait_ms={wait:.3f} slices={slices:.1f}"
        f" p50_ms={statistics.median(latencies):.2f} p99_ms={percentile(latencies, 0.99):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    add_broker_env_arg(parser)
    args = parser.parse_args()
    with cluster(3, log_level="WARNING", env=broker_env(args)) as brokers:
        pids = [b.pid for b in brokers.brokers if b.pid is not None]
        asyncio.run(run(brokers.bootstrap, pids, args.rate, args.seconds))


if __name__ == "__main__":
    main()
