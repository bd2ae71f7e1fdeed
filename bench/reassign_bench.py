"""Reassignment: how fast a new replica catches up, against the replication limit
measured in the same run, and what produce latency does meanwhile.

Setup: four brokers on loopback (fsync on, static peers), one topic with one
partition, replication factor 3 on brokers 1-3. The partition is filled with a known
volume (16 KiB records), then one follower is replaced by broker 4
(`Admin.reassign_partition`) while a paced producer (one 1 KiB record every 5 ms,
acks=all) keeps writing. Figures:

- ``mb_per_s``: the rate at which the new replica caught up: the bytes of broker 4's
  copy of the partition (its segment files once the move completed) over the time
  from broker 4's first record to its log reaching the end the fill left, as broker
  4 itself reports its log end (``local_end``, sampled every 5 ms);
- ``move_s``: the whole move, from the reassignment request to the controller
  recording it as done (the target committed, the learner added, the catch-up, the
  joint configuration and the old replica removed), and ``move_mb_per_s``, the copy
  over that;
- ``limit_ratio``: that over the replication limit as bench/replication_bench.py
  measures it for 64 KiB entries: min(raw ZeroMQ MB/s between two processes, raw
  disk write+fdatasync MB/s / 3);
- ``produce_p99_ms_during``: p99 of the paced producer's acknowledgement latency
  while the move ran.

Usage: ``python bench/reassign_bench.py [--quick]``; ends with
``reassign mb_per_s=X limit_ratio=Y produce_p99_ms_during=Z`` and writes JSON under
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import latency_summary, write_results
from bench.replication_bench import raw_disk_mb_per_s, raw_zmq_mb_per_s
from tests.support import bootstrap_of, running_brokers
from zstream.clients import Admin, ClusterClient, DescribeTopicRequest, Producer, ZStreamError

MB = 1024 * 1024
TOPIC = "reassign-bench"
RECORD_BYTES = 16 * 1024
PACE_S = 0.005


async def _fill(bootstrap: str, total_bytes: int) -> None:
    value = b"x" * RECORD_BYTES
    async with Producer(bootstrap, linger_ms=5, batch_bytes=256 * 1024) as producer:
        pending = []
        for _ in range(total_bytes // RECORD_BYTES):
            pending.append(producer.send(TOPIC, value, partition=0))
            if len(pending) >= 256:
                for fut in pending:
                    await fut
                pending.clear()
        for fut in pending:
            await fut


async def _paced(bootstrap: str, stop: asyncio.Event, latencies: list[float]) -> None:
    async with Producer(bootstrap, linger_ms=0) as producer:
        while not stop.is_set():
            started = time.monotonic()
            await producer.send(TOPIC, b"p" * 1024, partition=0)
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(PACE_S)


async def _until_done(admin: Admin) -> None:
    """Poll (every 50 ms: the figure's resolution) until no reassignment is left."""
    moving = True
    while moving:
        moving = bool(await admin.list_reassignments())
        await asyncio.sleep(0.05 if moving else 0)


async def _watch_end(addr: str, stop: asyncio.Event, seen: list[tuple[float, int]]) -> None:
    """Broker 4's own log end for the partition, every 5 ms, as (time, end)."""
    async with ClusterClient(addr, timeout_s=2) as client:
        conn = client.connection(addr)
        while not stop.is_set():
            try:
                reply = await conn.call(DescribeTopicRequest(TOPIC), timeout_s=2)
            except ZStreamError:
                pass
            else:
                end = reply.result["partitions"][0].get("local_end")
                seen.append((time.monotonic(), end or 0))
            await asyncio.sleep(0.005)


def _catch_up_s(seen: list[tuple[float, int]], fill_end: int) -> float:
    """From the first sample with records to the first at or past ``fill_end``."""
    first = next(t for t, end in seen if end > 0)
    caught = next(t for t, end in seen if end >= fill_end)
    return max(caught - first, 0.005)  # the sampling's resolution


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def _move(work: Path, fill_bytes: int) -> dict[str, Any]:
    with running_brokers(work, 4, extra=["--log-level=WARNING"]) as brokers:
        bootstrap = bootstrap_of(brokers)
        async with Admin(bootstrap) as admin:
            await admin.create_topic(TOPIC, partitions=1, replication_factor=3)
            await _fill(bootstrap, fill_bytes)
            part = (await admin.describe_topic(TOPIC))["partitions"][0]
            fill_end = (await admin.partition_bounds(TOPIC))[0][1]
            target = [*part["replicas"][:2], 4]
            stop, latencies, seen = asyncio.Event(), [], []
            load = asyncio.create_task(_paced(bootstrap, stop, latencies))
            watch = asyncio.create_task(_watch_end(brokers[3].client_addr, stop, seen))
            try:
                await asyncio.sleep(0.5)  # the producer is connected and pacing
                latencies.clear()
                started = time.monotonic()
                await admin.reassign_partition(TOPIC, 0, target)
                await _until_done(admin)
                seconds = time.monotonic() - started
            finally:
                stop.set()
                await asyncio.gather(load, watch)
        copied = _dir_bytes(brokers[3].data_dir / "groups" / str(part["group_id"]))
    catch_up = _catch_up_s(seen, fill_end)
    return {
        "fill_bytes": fill_bytes,
        "copied_bytes": copied,
        "catch_up_s": catch_up,
        "mb_per_s": copied / catch_up / MB,
        "move_s": seconds,
        "move_mb_per_s": copied / seconds / MB,
        "produce_during": latency_summary(latencies) if latencies else {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 32 MiB partition")
    args = parser.parse_args()
    fill = (32 if args.quick else 256) * MB
    work = Path(tempfile.mkdtemp(prefix="zs-reassign-bench-"))
    try:
        result = asyncio.run(_move(work, fill))
        zmq = raw_zmq_mb_per_s(64 * 1024, args.quick)
        disk = max(raw_disk_mb_per_s(64 * 1024, args.quick, work) for _ in range(3)) / 3
    finally:
        shutil.rmtree(work, ignore_errors=True)
    limit = min(zmq, disk)
    result.update(limit_mb_per_s=limit, zmq_mb_per_s=zmq, disk_mb_per_s_per_replica=disk)
    result["limit_ratio"] = result["mb_per_s"] / limit
    path = write_results("reassign", result)
    p99 = result["produce_during"].get("p99_ms", float("nan"))
    print(
        f"copied {result['copied_bytes'] / MB:.1f} MiB: caught up in "
        f"{result['catch_up_s']:.2f} s, whole move {result['move_s']:.2f} s "
        f"({result['move_mb_per_s']:.1f} MB/s); "
        f"limit {limit:.1f} MB/s (zmq {zmq:.1f}, disk/3 {disk:.1f}); results in {path}"
    )
    print(
        f"reassign mb_per_s={result['mb_per_s']:.1f} limit_ratio={result['limit_ratio']:.2f} "
        f"produce_p99_ms_during={p99:.1f}"
    )


if __name__ == "__main__":
    main()
