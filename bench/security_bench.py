"""What CURVE costs: the same produce workload with security off and on, in one run.

For each mode, a fresh three-broker cluster (static peers, fsync on, loopback):
off, then CURVE on every client and peer socket (tests/support ClusterKeys). One
topic of ``--partitions`` partitions, replication factor 3, 100 B records:

* throughput: one asyncio ``Producer`` (acks=all, idempotent, linger 5 ms) feeding
  ``send_many`` for ``--seconds``; records/s counts acknowledged records;
* latency: ``send`` at a fixed ``--rate`` records/s with ``linger_ms=0``; the
  latency of a record is from ``send`` to its acknowledgement (acks=all).

    .venv/bin/python bench/security_bench.py [--quick]

Writes bench/results/security_bench-<time>.json. Last line:
``security curve_ratio=X latency_p99_ratio=Y``: X is secured records/s over
plaintext records/s (target >= 0.8), Y the secured produce p99 over the plaintext one.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import latency_summary, paced, print_table, progress, write_results
from tests.support import running_brokers
from tests.support.security import ClusterKeys, secure_brokers
from zstream.clients import Admin, Credentials, Producer

SIZE = 100
TOPIC = "bench"


async def throughput(
    bootstrap: str, credentials: Credentials | None, seconds: float
) -> dict[str, Any]:
    value = bytes(SIZE)
    chunk = (256 * 1024) // (SIZE + 8)  # about one batch per send_many call
    sent = 0
    async with Producer(
        bootstrap, linger_ms=5, batch_bytes=256 * 1024, credentials=credentials
    ) as producer:
        partitions = await producer.partitions_for(TOPIC)
        pending: list[Any] = []
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for p in range(partitions):
                pending.extend(producer.send_many(TOPIC, [value] * chunk, partition=p))
                sent += chunk
            while len(pending) > partitions * 10:  # a bounded window
                await pending.pop(0)
            progress("produce", time.perf_counter() - started, seconds)
        await producer.flush()
        for f in pending:
            await f
        elapsed = time.perf_counter() - started
    progress("produce", seconds, seconds)
    return {"records": sent, "seconds": elapsed, "records_per_s": sent / elapsed}


async def latency(
    bootstrap: str, credentials: Credentials | None, rate: int, seconds: float
) -> dict[str, Any]:
    total = int(rate * seconds)
    lat: list[float] = []
    async with Producer(bootstrap, linger_ms=0, credentials=credentials) as producer:
        waiting: list[asyncio.Task[None]] = []

        async def one(i: int) -> None:
            started = time.perf_counter()
            await producer.send(TOPIC, bytes(SIZE), partition=i % 3)
            lat.append(time.perf_counter() - started)

        async for i in paced(total, rate):
            waiting.append(asyncio.create_task(one(i)))
            if i % 200 == 0:
                progress("latency", i, total)
        await asyncio.gather(*waiting)
    progress("latency", total, total)
    return latency_summary(lat)


async def run_mode(
    root: Path, keys: ClusterKeys | None, partitions: int, seconds: float, rate: int
) -> dict[str, Any]:
    credentials = keys.credentials("admin") if keys is not None else None
    extra = ["--log-level=WARNING"]
    with (
        running_brokers(root, 3, extra=extra, ready_timeout_s=60)
        if keys is None
        else secure_brokers(root, keys, 3, extra=extra, ready_timeout_s=60)
    ) as brokers:
        bootstrap = ",".join(b.bootstrap for b in brokers)
        async with Admin(bootstrap, credentials=credentials) as admin:
            await admin.create_topic(TOPIC, partitions=partitions, replication_factor=3)
        produced = await throughput(bootstrap, credentials, seconds)
        timed = await latency(bootstrap, credentials, rate, seconds)
    return {"throughput": produced, "latency": timed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=1000, help="latency run, records/s")
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rate = 3.0, 300
    root = Path(tempfile.mkdtemp(prefix="zstream-security-bench-"))
    try:
        keys = ClusterKeys.make(root / "keys", (1, 2, 3))
        results = {
            "off": asyncio.run(
                run_mode(root / "off", None, args.partitions, args.seconds, args.rate)
            ),
            "curve": asyncio.run(
                run_mode(root / "curve", keys, args.partitions, args.seconds, args.rate)
            ),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [
        [
            mode,
            f"{r['throughput']['records_per_s']:,.0f}",
            f"{r['latency']['p50_ms']:.2f}",
            f"{r['latency']['p99_ms']:.2f}",
        ]
        for mode, r in results.items()
    ]
    print_table(["security", "records/s (100 B, RF 3, acks=all)", "p50 ms", "p99 ms"], rows)
    ratio = (
        results["curve"]["throughput"]["records_per_s"]
        / results["off"]["throughput"]["records_per_s"]
    )
    p99_ratio = results["curve"]["latency"]["p99_ms"] / results["off"]["latency"]["p99_ms"]
    path = write_results(
        "security_bench",
        {"args": vars(args), "results": results, "curve_ratio": ratio, "p99_ratio": p99_ratio},
    )
    print(f"results: {path}")
    print(f"security curve_ratio={ratio:.3f} latency_p99_ratio={p99_ratio:.3f}")


if __name__ == "__main__":
    main()
