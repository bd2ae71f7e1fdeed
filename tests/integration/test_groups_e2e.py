"""Consumer groups end to end on a real three-broker cluster (etcd discovery, RF 3,
fsync on): members join, leave gracefully and die (SIGKILL, found by the session
timeout) while a producer writes and the group consumes; every member commits
synchronously after each small batch.

Checked on the recorded history (tests/integration/_group_member.py):
- no loss: every produced record was delivered, where the producer was told;
- a commit is final: no record below a successfully committed offset is delivered
  again afterwards, by anyone;
- within one member's ownership of a partition (on_assign .. on_revoke), offsets
  arrive in order without gaps, and nothing arrives outside an ownership.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration._group_member import Event, group_consumer, run_member
from tests.support import EtcdServer, ManagedProcess, wait_until_async
from zstream.clients import Admin, Consumer, Producer, TopicPartition
from zstream.testing import Cluster, cluster

pytestmark = pytest.mark.integration

TOTAL = 20_000
PARTITIONS = 6
TOPIC, GROUP = "orders", "workers"
CHUNK = 300  # records per produce round
AHEAD = 2000  # the producer stays at most this far ahead of the consumers
CHILD_SESSION_MS = 3000
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def three(tmp_path: Path, etcd: EtcdServer) -> Iterator[Cluster]:
    with cluster(3, path=tmp_path, etcd=etcd.endpoint) as brokers:
        yield brokers


class ChildLog:
    """The events a child member wrote so far (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self._pos = 0

    def poll(self) -> list[Event]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._pos += end
        fresh = [json.loads(line) for line in data[:end].splitlines() if line]
        self.events.extend(fresh)
        return fresh


class Run:
    """The whole history, and the members running in this process."""

    def __init__(self, bootstrap: str, child_log: ChildLog) -> None:
        self.bootstrap = bootstrap
        self.events: list[Event] = []
        self.values: set[int] = set()
        self.child = child_log
        self.members: dict[str, tuple[Consumer, asyncio.Event, asyncio.Task[None]]] = {}

    def emit(self, event: Event) -> None:
        self.events.append(event)
        if event["ev"] == "deliver":
            self.values.add(event["v"])

    def delivered(self) -> int:
        for event in self.child.poll():
            if event["ev"] == "deliver":
                self.values.add(event["v"])
        return len(self.values)

    def count(self, member: str, ev: str) -> int:
        self.delivered()
        return sum(
            1 for e in (*self.events, *self.child.events) if (e["m"], e["ev"]) == (member, ev)
        )

    def owned(self, member: str) -> set[int]:
        """The partitions ``member`` owns, as its on_assign / on_revoke said."""
        self.delivered()
        owned: set[int] = set()
        for e in (*self.events, *self.child.events):
            if e["m"] == member and e["ev"] == "assign":
                owned.update(e["tps"])
            elif e["m"] == member and e["ev"] == "revoke":
                owned.difference_update(e["tps"])
        return owned

    async def start(self, name: str) -> None:
        consumer = group_consumer(self.bootstrap, GROUP, name, self.emit, request_timeout_ms=3000)
        await consumer.start()
        await consumer.subscribe([TOPIC])
        stop = asyncio.Event()
        task = asyncio.create_task(run_member(consumer, name, self.emit, stop))
        self.members[name] = (consumer, stop, task)

    async def stop(self, name: str) -> None:
        """Graceful: the worker finishes its batch (reported), then close commits and
        leaves."""
        consumer, stop, task = self.members.pop(name)
        stop.set()
        try:
            await task
        finally:
            await consumer.close()


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    async def check() -> bool:
        return condition()

    await wait_until_async(check, timeout_s, what, interval_s=0.05)


class Feed:
    """The producer, driven by the scenario: it writes while the scenario waits for
    something, spreading records over every partition, at most AHEAD records ahead of
    what the group has consumed (so the changes happen during consumption)."""

    def __init__(self, run: Run, producer: Producer) -> None:
        self.run = run
        self.producer = producer
        self.produced: dict[int, tuple[int, int]] = {}  # value -> (partition, offset)

    async def _chunk(self) -> None:
        start = len(self.produced)
        futures = [
            self.producer.send(TOPIC, str(i).encode(), partition=i % PARTITIONS)
            for i in range(start, start + CHUNK)
        ]
        await self.producer.flush()
        for i, future in enumerate(futures, start):
            meta = await future
            self.produced[i] = (meta.partition, meta.offset)

    async def until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Produce until ``condition`` holds."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            if len(self.produced) - self.run.delivered() < AHEAD:
                await self._chunk()
            else:
                await asyncio.sleep(0.02)  # poll: the consumers are behind

    async def finish(self, total: int, timeout_s: float) -> None:
        """Produce up to ``total`` records, then wait until every one was consumed."""
        await self.until(lambda: len(self.produced) >= total, timeout_s, f"{total} produced")
        await until(lambda: self.run.delivered() == len(self.produced), timeout_s, "all consumed")


def _check(events: list[Event], produced: dict[int, tuple[int, int]]) -> None:
    delivers = [e for e in events if e["ev"] == "deliver"]
    # No loss, nothing phantom, each record where the producer was told it landed.
    assert {e["v"] for e in delivers} == set(range(len(produced)))
    assert all(produced[e["v"]] == (e["p"], e["o"]) for e in delivers)

    # A successful commit is final: nothing below it is delivered after it.
    commits: dict[int, list[tuple[float, int]]] = {}
    for e in events:
        if e["ev"] == "commit":
            for p, offset in e["offsets"].items():
                commits.setdefault(int(p), []).append((e["t"], offset))
    floors: dict[int, tuple[list[float], list[int]]] = {}
    for p, pairs in commits.items():
        pairs.sort()
        times, highest, best = [], [], -1
        for t, offset in pairs:
            best = max(best, offset)
            times.append(t)
            highest.append(best)
        floors[p] = (times, highest)
    redelivered = []
    for e in delivers:
        times, highest = floors.get(e["p"], ([], []))
        i = bisect.bisect_left(times, e["t"])
        if i and e["o"] < highest[i - 1]:
            redelivered.append(e)
    assert not redelivered, (
        f"{len(redelivered)} records delivered below a commit: {redelivered[:5]}"
    )

    # Per member: deliveries only while owning, in order and without gaps per span.
    by_member: dict[str, list[Event]] = {}
    for e in events:
        by_member.setdefault(e["m"], []).append(e)
    for member, mine in by_member.items():
        last: dict[int, int | None] = {}
        for e in mine:
            if e["ev"] == "assign":
                last.update(dict.fromkeys(e["tps"]))
            elif e["ev"] == "revoke":
                for p in e["tps"]:
                    last.pop(p, None)
            elif e["ev"] == "deliver":
                p, o = e["p"], e["o"]
                assert p in last, f"{member} delivered {p}/{o} without owning it"
                previous = last[p]
                assert previous is None or o == previous + 1, f"{member}: {p}/{previous} -> {o}"
                last[p] = o


async def test_members_join_leave_and_die_while_consuming(three: Cluster, tmp_path: Path) -> None:
    began = time.monotonic()
    bootstrap = three.bootstrap
    async with Admin(bootstrap) as admin:
        await admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
    child_log = ChildLog(tmp_path / "child.jsonl")
    run = Run(bootstrap, child_log)
    child = ManagedProcess(
        "group-child",
        [
            sys.executable,
            "-m",
            "tests.integration._group_member",
            bootstrap,
            GROUP,
            TOPIC,
            str(CHILD_SESSION_MS),
            str(child_log.path),
        ],
        tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    async with Producer(bootstrap, linger_ms=5, request_timeout_ms=5000) as producer:
        feed = Feed(run, producer)
        try:
            await run.start("m1")
            await feed.until(lambda: run.delivered() >= 3000, 40, "m1 alone to consume 3000")
            # Two more join: m1 releases partitions to them (committing first).
            await run.start("m2")
            child.start()
            await feed.until(
                lambda: run.count("m2", "commit") > 0 and run.count("child", "commit") > 0,
                40,
                f"m2 and the child to consume and commit ({child.tail(5)})",
            )
            assert run.count("m1", "revoke") > 0
            # m2 leaves gracefully (commit, leave): the others take its partitions.
            await run.stop("m2")
            assigned = run.count("child", "assign") + run.count("m1", "assign")
            await feed.until(
                lambda: run.count("child", "assign") + run.count("m1", "assign") > assigned,
                40,
                "m2's partitions to move",
            )
            commits = run.count("child", "commit")
            await feed.until(lambda: run.count("child", "commit") > commits + 1, 40, "child")
            # SIGKILL: its partitions move to m1 once its session times out.
            child.kill()
            await feed.until(lambda: len(run.owned("m1")) == PARTITIONS, 40, "m1 to own all")
            await feed.finish(TOTAL, 60)
        finally:
            child.kill()
            for name in list(run.members):
                await run.stop(name)
            run.delivered()
            with (tmp_path / "history.jsonl").open("w") as f:
                f.writelines(json.dumps(e) + "\n" for e in run.events + child_log.events)
    produced = feed.produced
    run.delivered()
    events = run.events + child_log.events
    assert len(produced) >= TOTAL
    _check(events, produced)
    # The last member committed everything it consumed before it left.
    async with Consumer(bootstrap, GROUP) as reader:
        ends: dict[int, int] = {}
        for p, o in produced.values():
            ends[p] = max(ends.get(p, 0), o + 1)
        for p, end in ends.items():
            assert await reader.committed(TopicPartition(TOPIC, p)) == end
    assert time.monotonic() - began < 90
