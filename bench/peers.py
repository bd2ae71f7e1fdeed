"""zstream against NATS JetStream: the same workloads on both, in the same run.

Both clusters have three nodes on free loopback ports, run one after the other on the
same machine, and are measured by one Python client process:

* zstream: three brokers with a static peer list, RF 3, fsync on, ``acks=all``; the
  workloads are bench/produce_consume.py's own functions, unchanged (``run_rf``);
* NATS: three Debian ``nats-server`` processes (2.9), each with its own config file
  in a temp dir (client and cluster-route ports free-picked, no monitoring port),
  JetStream file storage in that temp dir, one stream per workload with R3 file
  storage; the nats-py client with ``publish_async`` (its default window of 4,000
  acks in flight) and otherwise NATS's default settings.

Workloads, as in produce_consume.py, for 100 B and 1 KiB records:

* produce for ``--seconds``: records/s and MB/s count acknowledged records only;
* consume everything back from the start: zstream's stream ``Consumer``; for NATS an
  ordered push consumer (ack policy none, flow control: the client's way to read a
  stream back in order, the counterpart of a zstream stream without commits);
* latency, 100 B at a fixed 1,000 records/s: p50/p99/p999 of (arrival at a consumer in
  the same process - send time).

nats-server 2.9 has no option to fsync before it acknowledges (``sync_interval``
arrived in 2.10), so NATS acknowledges writes that zstream would still be fsyncing:
the comparison favours NATS.

    make bench-deps                      # nats-server from Debian, when missing
    .venv/bin/python bench/peers.py [--quick]

Writes bench/results/peers-<time>.json and a PNG chart of the same name. Progress goes
to stderr. Last line: ``e2e records_per_s=X nats_ratio=Y latency_p99_ms=Z latency_p50_ms=P
consume_records_per_s=C`` (C: getmany_values, 100 B, RF 3): X and Z are
zstream's (100 B, RF 3, acks=all), Y is X divided by NATS's records/s for 100 B.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, StorageType, StreamConfig

from bench._common import (
    chart_next_to,
    cpu_seconds,
    latency_summary,
    paced,
    print_table,
    process_cpu_seconds,
    progress,
    write_chart,
    write_results,
)
from bench.produce_consume import cluster as zstream_cluster
from bench.produce_consume import run_rf
from tests.support import ManagedProcess, free_port, wait_until, wait_until_async

NATS_NOTE = (
    "nats-server 2.9 has no fsync-before-ack option (sync_interval arrived in 2.10): "
    "NATS acknowledges writes zstream is still fsyncing; the comparison favours NATS."
)
SIZES = (100, 1024)


# ------------------------------------------------------------------------- the cluster


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class NatsServers:
    urls: list[str]
    pids: list[int]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the servers have used so far, summed."""
        return sum(process_cpu_seconds(pid) for pid in self.pids)


@contextmanager
def nats_cluster(root: Path, nodes: int = 3) -> Iterator[NatsServers]:
    """``nodes`` nats-servers with JetStream, routed to each other. Every server is
    stopped by its PID on the way out."""
    binary = shutil.which("nats-server")
    if binary is None:
        raise SystemExit("nats-server not found: run `make bench-deps` (Debian's nats-server)")
    client_ports = [free_port() for _ in range(nodes)]
    route_ports = [free_port() for _ in range(nodes)]
    procs: list[ManagedProcess] = []
    for n in range(nodes):
        store = root / f"n{n + 1}" / "jetstream"
        store.mkdir(parents=True)
        routes = ", ".join(
            f'"nats-route://127.0.0.1:{p}"' for i, p in enumerate(route_ports) if i != n
        )
        conf = root / f"n{n + 1}.conf"
        # No http/monitor port: nats-server opens none unless asked to.
        conf.write_text(
            f'server_name: "n{n + 1}"\n'
            f'listen: "127.0.0.1:{client_ports[n]}"\n'
            f'jetstream {{\n  store_dir: "{store}"\n}}\n'
            f"cluster {{\n"
            f'  name: "zsbench"\n'
            f'  listen: "127.0.0.1:{route_ports[n]}"\n'
            f"  routes: [{routes}]\n"
            f"}}\n"
        )
        procs.append(ManagedProcess(f"nats-n{n + 1}", [binary, "-c", str(conf)], root))
    try:
        for proc in procs:
            proc.start()
        for proc, port in zip(procs, client_ports, strict=True):
            wait_until(
                lambda proc=proc, port=port: not proc.running() or _accepts(port),
                20,
                f"{proc.name} to listen on {port}",
            )
            if not proc.running():
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        yield NatsServers([f"nats://127.0.0.1:{p}" for p in client_ports], [p.pid for p in procs])
    finally:
        for proc in procs:
            proc.stop()


async def add_stream(js: JetStreamContext, name: str, subject: str) -> None:
    """An R3 file-storage stream, everything else at its default. Retried until the
    JetStream meta leader is elected and all three servers are routed (until then the
    request fails or finds too few peers)."""
    last: list[BaseException] = []

    async def created() -> bool:
        try:
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=[subject],
                    storage=StorageType.FILE,
                    num_replicas=3,
                )
            )
        except Exception as exc:
            last[:] = [exc]
            return False
        return True

    try:
        await wait_until_async(created, 30, f"NATS stream {name} (R3, file)", interval_s=0.2)
    except TimeoutError as exc:
        raise RuntimeError(f"NATS stream {name}: {last[0]!r}" if last else str(exc)) from exc

    async def writable() -> bool:  # the stream's leader answers a publish
        try:
            await js.publish(subject, b"warm-up", timeout=1)
        except Exception:
            return False
        return True

    await wait_until_async(writable, 30, f"NATS stream {name} to take a publish", 0.1)
    await js.purge_stream(name)


# ----------------------------------------------------------------------- the workloads


async def nats_produce(
    js: JetStreamContext, subject: str, size: int, seconds: float
) -> dict[str, Any]:
    value = bytes(size)
    label = f"nats produce {size} B"
    pending: collections.deque[asyncio.Future[Any]] = collections.deque()
    sent = acked = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(500):
            # publish_async waits while 4,000 acks (its default) are outstanding.
            pending.append(await js.publish_async(subject, value))
        sent += 500
        while pending and pending[0].done():
            pending.popleft().result()  # raises if NATS refused the write
            acked += 1
        elapsed = time.perf_counter() - started
        if sent % 5000 == 0 and elapsed < seconds:
            progress(label, elapsed, seconds)
    for ack in await asyncio.wait_for(asyncio.gather(*pending), 60):
        assert ack.seq > 0
    acked += len(pending)
    elapsed = time.perf_counter() - started
    progress(label, seconds, seconds)
    assert acked == sent
    return {
        "records": acked,
        "seconds": elapsed,
        "records_per_s": acked / elapsed,
        "mb_per_s": acked * size / elapsed / 1e6,
    }


async def nats_consume(js: JetStreamContext, subject: str, total: int) -> dict[str, Any]:
    started = time.perf_counter()
    got = 0
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        async for _ in sub.messages:
            got += 1
            if got % 50_000 == 0:
                progress("nats consume", got, total)
            if got >= total:
                break
    finally:
        await sub.unsubscribe()
    elapsed = time.perf_counter() - started
    progress("nats consume", total, total)
    return {"records": got, "seconds": elapsed, "records_per_s": got / elapsed}


async def nats_latency(
    js: JetStreamContext, subject: str, rate: int, seconds: float
) -> dict[str, Any]:
    """As produce_consume's ``latency``: 100 B records (an 8-byte sequence number, then
    zeros) published at ``rate``/s without waiting for their acks, stamped on arrival
    at an ordered consumer that starts at the stream's end."""
    total = int(rate * seconds)
    sent_at: dict[int, float] = {}
    lat: list[float] = []
    acks: list[asyncio.Future[Any]] = []
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)

    async def reader() -> None:
        async for msg in sub.messages:
            lat.append(time.perf_counter() - sent_at[int.from_bytes(msg.data[:8], "big")])
            if len(lat) >= total:
                return

    task = asyncio.create_task(reader())
    try:
        async for i in paced(total, rate):
            sent_at[i] = time.perf_counter()
            acks.append(await js.publish_async(subject, i.to_bytes(8, "big") + bytes(92)))
            if i % rate == 0:
                progress("nats latency @1000/s", i, total)
        await asyncio.wait_for(asyncio.gather(*acks), 30)
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sub.unsubscribe()
    progress("nats latency @1000/s", total, total)
    return latency_summary(lat)


async def run_nats(servers: NatsServers, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    nc = await nats.connect(servers=servers.urls)
    try:
        js = nc.jetstream()
        for size in SIZES:
            await add_stream(js, f"BENCH{size}", f"bench{size}")
            # Who is the bottleneck: this one Python client, or the three servers?
            client_cpu, server_cpu = cpu_seconds(), servers.cpu_seconds()
            p = await nats_produce(js, f"bench{size}", size, args.seconds)
            p["client_cpu_per_s"] = (cpu_seconds() - client_cpu) / p["seconds"]
            p["servers_cpu_per_s"] = (servers.cpu_seconds() - server_cpu) / p["seconds"]
            out[f"produce_{size}"] = p
            out[f"consume_{size}"] = await nats_consume(js, f"bench{size}", p["records"])
        await add_stream(js, "LATENCY", "latency")
        out["latency"] = await nats_latency(js, "latency", 1000, args.latency_seconds)
        out["server_version"] = str(nc.connected_server_version)
    finally:
        await nc.close()
    return out


# --------------------------------------------------------------------------- reporting


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def report(results: dict[str, Any]) -> None:
    z, n = results["zstream"], results["nats"]
    rows: list[tuple[str, float, float, str]] = []
    for size in SIZES:
        zp, np_ = z[f"produce_{size}"], n[f"produce_{size}"]
        rows.append(
            (f"produce {size} B rec/s", zp["records_per_s"], np_["records_per_s"], "higher")
        )
        rows.append((f"produce {size} B MB/s", zp["mb_per_s"], np_["mb_per_s"], "higher"))
        zc, nc = z[f"consume_{size}"], n[f"consume_{size}"]
        rows.append((f"consume {size} B rec/s", zc["records_per_s"], nc["records_per_s"], "higher"))
    for q in ("p50", "p99", "p999"):
        zl, nl = z["latency"][f"{q}_ms"], n["latency"][f"{q}_ms"]
        rows.append((f"latency {q} ms @1000/s", zl, nl, "lower"))
    print_table(
        ["3 nodes, R3", "zstream", "NATS JetStream", "zstream/NATS", "better"],
        [[label, zv, nv, f"{ratio(zv, nv):.2f}x", b] for label, zv, nv, b in rows],
    )
    print(f"note: {NATS_NOTE}")
    p = n["produce_100"]
    print(
        f"note: during NATS's 100 B produce this one Python client used "
        f"{p['client_cpu_per_s']:.2f} CPU s/s and the three servers together "
        f"{p['servers_cpu_per_s']:.2f} (of 2 cores)"
    )


def chart(path: Path, results: dict[str, Any]) -> Path:
    z, n = results["zstream"], results["nats"]
    cases = [(op, size) for op in ("produce", "consume") for size in SIZES]
    labels = [f"{op} {'100 B' if size == 100 else '1 KiB'}" for op, size in cases]
    qs = ("p50", "p99", "p999")
    return write_chart(
        path,
        "zstream vs NATS JetStream 2.9, 3 nodes, R3 (NATS acks before fsync)",
        [
            (
                "throughput (log scale)",
                "records/s",
                labels,
                {
                    "zstream": [z[f"{op}_{s}"]["records_per_s"] for op, s in cases],
                    "NATS JetStream": [n[f"{op}_{s}"]["records_per_s"] for op, s in cases],
                },
            ),
            (
                "end-to-end latency, 100 B at 1,000 records/s",
                "ms",
                list(qs),
                {
                    "zstream": [z["latency"][f"{q}_ms"] for q in qs],
                    "NATS JetStream": [n["latency"][f"{q}_ms"] for q in qs],
                },
            ),
        ],
        log_y=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short runs (< 90 s)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--partitions", type=int, default=6, help="zstream's topic")
    args = parser.parse_args()
    args.latency_only = False  # produce_consume.run_rf's option: every workload here
    if args.quick:
        args.seconds, args.latency_seconds = 3.0, 5.0
    results: dict[str, Any] = {"note": NATS_NOTE}
    root = Path(tempfile.mkdtemp(prefix="zstream-peers-"))
    try:
        print("== zstream, 3 brokers, RF 3", file=sys.stderr)
        with zstream_cluster(root / "zstream", 3) as bootstrap:
            results["zstream"] = asyncio.run(run_rf(bootstrap, 3, args))
        print("== NATS JetStream, 3 servers, R3 file storage", file=sys.stderr)
        with nats_cluster(root / "nats") as servers:
            results["nats"] = asyncio.run(run_nats(servers, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(results)
    path = write_results("peers", results)
    print(f"results: {path}")
    chart_next_to(path, lambda png: chart(png, results))
    x = results["zstream"]["produce_100"]["records_per_s"]
    y = ratio(x, results["nats"]["produce_100"]["records_per_s"])
    lat = results["zstream"]["latency"]
    consumed = results["zstream"]["consume_batch_100"]["records_per_s"]
    print(
        f"e2e records_per_s={x:.0f} nats_ratio={y:.2f} latency_p99_ms={lat['p99_ms']:.2f} "
        f"latency_p50_ms={lat['p50_ms']:.2f} consume_records_per_s={consumed:.0f}"
    )


if __name__ == "__main__":
    main()
