"""Producer and consumer through real brokers: records/s, MB/s, end-to-end latency.

Clusters (fresh per replication factor, on free loopback ports, fsync on):

* RF 1: one broker;
* RF 3: three brokers with a static peer list (no etcd).

Workloads, for 100 B and 1 KiB records, one topic of ``--partitions`` partitions:

* produce: one asyncio ``Producer`` (acks=all, idempotent) feeding ``send_many``
  for ``--seconds``; records/s counts acknowledged records only;
* consume: one stream ``Consumer`` reading everything back from offset 0;
* latency (RF 3, 100 B): ``send`` at a fixed 1,000 records/s with ``linger_ms=0``;
  a stream consumer in the same process stamps arrival; p50/p99/p999 of
  (arrival - send time).

    .venv/bin/python bench/produce_consume.py [--quick]

Writes bench/results/produce_consume-<time>.json and a PNG chart of the same name
(throughput per case, latency percentiles). Progress goes to stderr.
Last line: ``e2e records_per_s=X nats_ratio=Y latency_p99_ms=Z`` for 100 B records at
RF 3 with acks=all. nats_ratio is always ``nan`` here: a ratio is only meaningful when
both systems ran on the same machine in the same run, which bench/peers.py does (it
runs these same functions against zstream, then NATS JetStream), so this script does
not borrow a figure from an older peers result.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    Panel,
    chart_next_to,
    latency_summary,
    paced,
    print_table,
    progress,
    write_chart,
    write_results,
)
from tests.support import wait_until_async
from zstream.clients import Admin, Consumer, Producer, TopicPartition
from zstream.testing import cluster as running_cluster


@contextmanager
def cluster(root: Path, rf: int) -> Iterator[str]:
    """``rf`` brokers (static peers; one runs embedded); yields their bootstrap."""
    with running_cluster(rf, path=root, log_level="WARNING", ready_timeout_s=60) as brokers:
        yield brokers.bootstrap


async def produce(bootstrap: str, topic: str, size: int, seconds: float) -> dict[str, Any]:
    value = bytes(size)
    chunk = max(1, (256 * 1024) // (size + 8))  # about one batch per send_many call
    sent = 0
    async with Producer(bootstrap, linger_ms=5, batch_bytes=256 * 1024) as producer:
        partitions = await producer.partitions_for(topic)
        pending: list[Any] = []
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for p in range(partitions):
                pending.extend(producer.send_many(topic, [value] * chunk, partition=p))
                sent += chunk
            # keep a bounded window: wait for the oldest batches
            while len(pending) > partitions * 10:
                await pending.pop(0)
            progress(f"produce {size} B", time.perf_counter() - started, seconds)
        await producer.flush()
        for f in pending:
            await f
        elapsed = time.perf_counter() - started
    progress(f"produce {size} B", seconds, seconds)
    return {
        "records": sent,
        "seconds": elapsed,
        "records_per_s": sent / elapsed,
        "mb_per_s": sent * size / elapsed / 1e6,
    }


async def consume(
    bootstrap: str, topic: str, partitions: int, total: int, *, batch: bool = False
) -> dict[str, Any]:
    """Read ``total`` records: one at a time (``async for``), or with ``batch`` through
    the batch interface (``getmany_values``: no object per record)."""
    label = "consume (getmany_values)" if batch else "consume"
    started = time.perf_counter()
    got = 0
    async with Consumer(bootstrap) as consumer:
        consumer.assign(TopicPartition(topic, p) for p in range(partitions))
        if batch:
            while got < total:
                for values in (await consumer.getmany_values(timeout_ms=1000)).values():
                    got += len(values)
                progress(label, got, total)
        else:
            async for _ in consumer:
                got += 1
                if got % 50_000 == 0:
                    progress(label, got, total)
                if got >= total:
                    break
    elapsed = time.perf_counter() - started
    progress(label, total, total)
    return {"records": got, "seconds": elapsed, "records_per_s": got / elapsed}


async def latency(bootstrap: str, topic: str, rate: int, seconds: float) -> dict[str, Any]:
    total = int(rate * seconds)
    sent_at: dict[int, float] = {}
    lat: list[float] = []
    async with (
        Producer(bootstrap, linger_ms=0) as producer,
        Consumer(bootstrap, auto_offset_reset="latest") as consumer,
    ):
        consumer.assign([TopicPartition(topic, 0)])

        async def positioned() -> bool:
            return consumer.position(TopicPartition(topic, 0)) is not None

        await wait_until_async(positioned, 10, "the consumer's start offset")

        async def reader() -> None:
            async for record in consumer:
                lat.append(time.perf_counter() - sent_at[int.from_bytes(record.value[:8], "big")])
                if len(lat) >= total:
                    return

        task = asyncio.create_task(reader())
        try:
            async for i in paced(total, rate):
                sent_at[i] = time.perf_counter()
                producer.send(topic, i.to_bytes(8, "big") + bytes(92), partition=0)
                if i % rate == 0:
                    progress("latency @1000/s", i, total)
            await asyncio.wait_for(task, 30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    progress("latency @1000/s", total, total)
    return latency_summary(lat)


async def run_rf(bootstrap: str, rf: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with Admin(bootstrap) as admin:
        for size in () if args.latency_only else (100, 1024):
            topic = f"bench-{size}"
            await admin.create_topic(topic, partitions=args.partitions, replication_factor=rf)
            await asyncio.sleep(0.5 if rf > 1 else 0.1)  # leaders elected
            p = await produce(bootstrap, topic, size, args.seconds)
            c = await consume(bootstrap, topic, args.partitions, p["records"])
            out[f"produce_{size}"] = p
            out[f"consume_{size}"] = c
            out[f"consume_batch_{size}"] = await consume(
                bootstrap, topic, args.partitions, p["records"], batch=True
            )
        if rf == 3:
            await admin.create_topic("bench-latency", partitions=1, replication_factor=rf)
            await asyncio.sleep(0.5)
            out["latency"] = await latency(bootstrap, "bench-latency", 1000, args.latency_seconds)
    return out


def chart(path: Path, results: dict[str, Any]) -> Path:
    """Throughput bars per (RF, size) case that ran; latency percentiles when RF 3 ran."""
    factors = sorted(int(key[2:]) for key in results if key.startswith("rf"))
    cases = [(rf, size) for rf in factors for size in (100, 1024)]
    labels = [f"RF {rf}, {'100 B' if size == 100 else '1 KiB'}" for rf, size in cases]
    produced = [results[f"rf{rf}"][f"produce_{size}"]["records_per_s"] for rf, size in cases]
    consumed = [results[f"rf{rf}"][f"consume_{size}"]["records_per_s"] for rf, size in cases]
    panels: list[Panel] = [
        ("throughput", "records/s", labels, {"produce": produced, "consume": consumed})
    ]
    if "latency" in results.get("rf3", {}):
        lat = results["rf3"]["latency"]
        panels.append(
            (
                "end-to-end latency at 1,000 records/s",
                "ms",
                ["p50", "p99", "p999"],
                {"RF 3, 100 B": [lat["p50_ms"], lat["p99_ms"], lat["p999_ms"]]},
            )
        )
    return write_chart(path, "zstream produce/consume (acks=all, fsync on)", panels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short runs (< 90 s)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--rf", default="1,3", help="replication factors to run, e.g. 3 (the last line needs 3)"
    )
    parser.add_argument(
        "--latency-only", action="store_true", help="only the RF 3 latency run (no last line)"
    )
    args = parser.parse_args()
    factors = [3] if args.latency_only else [int(x) for x in args.rf.split(",")]
    if args.quick:
        args.seconds, args.latency_seconds = 3.0, 5.0
    results: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="zstream-bench-"))
    try:
        for rf in factors:
            with cluster(root / f"rf{rf}", rf) as bootstrap:
                results[f"rf{rf}"] = asyncio.run(run_rf(bootstrap, rf, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    for rf in [] if args.latency_only else factors:
        for size in (100, 1024):
            p, c = results[f"rf{rf}"][f"produce_{size}"], results[f"rf{rf}"][f"consume_{size}"]
            b = results[f"rf{rf}"][f"consume_batch_{size}"]
            rows.append(
                [
                    rf,
                    size,
                    p["records_per_s"],
                    p["mb_per_s"],
                    c["records_per_s"],
                    b["records_per_s"],
                ]
            )
    print_table(
        ["rf", "bytes", "produce rec/s", "produce MB/s", "consume rec/s", "getmany_values rec/s"],
        rows,
    )
    path = write_results("produce_consume", results)
    print(f"results: {path}")
    if not args.latency_only:
        chart_next_to(path, lambda png: chart(png, results))
    if "rf3" not in results:
        return
    lat = results["rf3"]["latency"]
    print_table(
        ["latency @1000/s", "p50 ms", "p99 ms", "p999 ms"],
        [["rf3 100 B", lat["p50_ms"], lat["p99_ms"], lat["p999_ms"]]],
    )
    if args.latency_only:
        return
    x = results["rf3"]["produce_100"]["records_per_s"]
    print(f"e2e records_per_s={x:.0f} nats_ratio=nan latency_p99_ms={lat['p99_ms']:.2f}")


if __name__ == "__main__":
    main()
