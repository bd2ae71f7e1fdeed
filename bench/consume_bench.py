"""Consume speed of one Python consumer: batch values, batch records, per-record iteration.

One run: three brokers (static peers, fsync on) on free loopback ports, one topic of
``--partitions`` partitions at RF 3, filled with ``--records`` 100 B records by one
``Producer`` (``send_many``). Then three fresh stream consumers in this process read
everything back from offset 0, each timed from ``assign`` to the last record:

* ``getmany_values``: ``getmany_values(timeout_ms=...)`` in a loop: values only, no
  object per record (the batch interface's fast path);
* ``getmany``: ``getmany(...)`` in a loop: one ``Record`` per record, per partition;
* ``iter``: ``async for record in consumer``.

CRC32C verification is on in every case (it always is). Besides wall-clock records/s
each case reports records per CPU second of this process (libzmq's I/O thread
included), which moves less when other processes share the cores.

    .venv/bin/python bench/consume_bench.py [--quick] [--records N] [--partitions P]

Writes bench/results/consume_bench-<time>.json. Last line:
``consume batch_records_per_s=X getmany_records_per_s=Y iter_records_per_s=Z`` where
X is the getmany_values case. Targets (issue 12): X >= 1,000,000 and Z >= 500,000.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import cpu_seconds, print_table, progress, write_results
from tests.support import bootstrap_of, running_brokers
from zstream import Admin, Consumer, Producer, TopicPartition

SIZE = 100
TOPIC = "consume-bench"


async def fill(bootstrap: str, partitions: int, total: int) -> float:
    """``total`` 100 B records spread evenly over the partitions; returns seconds."""
    value = bytes(SIZE)
    chunk = (256 * 1024) // (SIZE + 8)  # about one batch per send_many call
    started = time.perf_counter()
    sent = 0
    async with Producer(bootstrap, linger_ms=5) as producer:
        pending: list[Awaitable[int]] = []
        while sent < total:
            for p in range(partitions):
                n = min(chunk, total - sent)
                if n <= 0:
                    break
                pending.extend(producer.send_many(TOPIC, [value] * n, partition=p))
                sent += n
            while len(pending) > partitions * 10:
                await pending.pop(0)
            progress("fill", sent, total)
        await producer.flush()
        for f in pending:
            await f
    return time.perf_counter() - started


async def _values(consumer: Consumer) -> int:
    batch = await consumer.getmany_values(timeout_ms=1000)
    return sum(map(len, batch.values()))


async def _records(consumer: Consumer) -> int:
    batch = await consumer.getmany(timeout_ms=1000)
    return sum(map(len, batch.values()))


async def read(
    bootstrap: str, partitions: int, total: int, how: str, step: Callable[[Consumer], Any] | None
) -> dict[str, Any]:
    """Read ``total`` records from offset 0 with a fresh consumer, one way."""
    got = 0
    async with Consumer(bootstrap) as consumer:
        cpu0, started = cpu_seconds(), time.perf_counter()
        consumer.assign(TopicPartition(TOPIC, p) for p in range(partitions))
        if step is None:
            async for _ in consumer:
                got += 1
                if got >= total:
                    break
        else:
            while got < total:
                got += await step(consumer)
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu0
    progress(how, total, total)
    return {
        "records": got,
        "seconds": elapsed,
        "records_per_s": got / elapsed,
        "cpu_seconds": cpu,
        "records_per_cpu_s": got / cpu if cpu > 0 else float("nan"),
    }


async def run(bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    async with Admin(bootstrap) as admin:
        await admin.create_topic(TOPIC, partitions=args.partitions, replication_factor=3)
    fill_s = await fill(bootstrap, args.partitions, args.records)
    out: dict[str, Any] = {"fill_seconds": fill_s, "records": args.records}
    cases: list[tuple[str, Callable[[Consumer], Any] | None]] = [
        ("getmany_values", _values),
        ("getmany", _records),
        ("iter", None),
    ]
    for how, step in cases:
        out[how] = await read(bootstrap, args.partitions, args.records, how, step)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="200,000 records (< 60 s)")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.records = min(args.records, 200_000)
    root = Path(tempfile.mkdtemp(prefix="zstream-consume-bench-"))
    try:
        with running_brokers(root, 3, extra=["--log-level=WARNING"], ready_timeout_s=60) as brokers:
            results = asyncio.run(run(bootstrap_of(brokers), args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [
        [how, r["records"], r["seconds"], r["records_per_s"], r["records_per_cpu_s"]]
        for how in ("getmany_values", "getmany", "iter")
        for r in [results[how]]
    ]
    print(f"filled {args.records:,} x {SIZE} B records, RF 3, in {results['fill_seconds']:.1f} s")
    print_table(["case", "records", "seconds", "records/s", "records/cpu-s"], rows)
    print(f"results: {write_results('consume_bench', results)}")
    print(
        f"consume batch_records_per_s={results['getmany_values']['records_per_s']:.0f} "
        f"getmany_records_per_s={results['getmany']['records_per_s']:.0f} "
        f"iter_records_per_s={results['iter']['records_per_s']:.0f}"
    )


if __name__ == "__main__":
    main()
