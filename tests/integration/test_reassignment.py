"""Partition reassignment on real brokers: four brokers, replication factor 3, one
replica moved to the fourth broker under continuous produce, and the controller
leader killed (kill -9) in the middle of a move. Afterwards the brokers are stopped
and every replica's log is read from its segment files: a Jepsen-style check finds
nothing acknowledged lost, duplicated or reordered, and the replicas agree."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    BrokerProcess,
    bootstrap_of,
    broker_removed,
    running_brokers,
    wait_until_async,
)
from tests.support.checker import Append, check_queue
from zstream import replication, storage
from zstream.clients import (
    Admin,
    ClusterClient,
    Consumer,
    DescribeTopicRequest,
    Producer,
    ZStreamError,
)

pytestmark = pytest.mark.integration

TOPIC = "moving"


@dataclass
class ProduceLoad:
    """Produces unique values to one partition until stopped, a few in flight at a
    time, recording every attempt for `check_queue`."""

    bootstrap: str
    partition: int = 0
    history: list[Append] = field(default_factory=list)
    errors: list[ZStreamError] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        n = 0
        async with Producer(self.bootstrap, linger_ms=2, delivery_timeout_ms=60_000) as producer:
            while not self.stop.is_set():
                sent = []
                for _ in range(16):
                    value = f"v{n}".encode()
                    n += 1
                    sent.append(
                        (
                            value,
                            time.monotonic(),
                            producer.send(TOPIC, value, partition=self.partition),
                        )
                    )
                for value, invoked, fut in sent:
                    try:
                        meta = await fut
                    except ZStreamError as exc:
                        self.errors.append(exc)
                        self.history.append(Append(value, None, invoked, time.monotonic()))
                    else:
                        self.history.append(Append(value, meta.offset, invoked, time.monotonic()))

    @property
    def acked(self) -> int:
        return sum(1 for a in self.history if a.offset is not None)


def _records_on_disk(broker: BrokerProcess, group_id: int) -> list[bytes]:
    """Every record value in a stopped broker's copy of the partition, from offset 0."""
    raft_log = replication.RaftLog.open(
        broker.data_dir / "groups" / str(group_id), storage.LogConfig(), records=True
    )
    try:
        assert raft_log.log_start_offset == 0
        out: list[bytes] = []
        offset = 0
        while offset < raft_log.next_offset:
            for base, batch in raft_log.read_batches(offset, 1 << 20):
                records = storage.decode_records(batch)
                out.extend(bytes(r.value or b"") for r in records)
                offset = base + len(records)
        return out
    finally:
        raft_log.close()


async def _partition(admin: Admin) -> dict[str, Any]:
    doc: dict[str, Any] = (await admin.describe_topic(TOPIC))["partitions"][0]
    return doc


async def _cli_json(words: list[str], bootstrap: str) -> Any:
    """Run a ``zstream`` command with ``--output json`` (in a thread: the produce load
    goes on meanwhile); its document."""
    argv = [sys.executable, "-m", "zstream.broker.cli", *words]
    argv += ["--bootstrap", bootstrap, "--output", "json"]
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(done.stdout)


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    async def check() -> bool:
        return condition()

    await wait_until_async(check, timeout_s, what, interval_s=0.05)


async def _leader_view(brokers: list[BrokerProcess], p: int = 0) -> dict[str, Any] | None:
    """Partition ``p`` as its leader describes it (with the group's voters and learners),
    or None while no live broker says it leads."""
    async with ClusterClient(bootstrap_of(brokers), timeout_s=2) as client:
        for b in brokers:
            if not b.running():
                continue
            try:
                reply = await client.connection(b.addr).call(
                    DescribeTopicRequest(TOPIC), timeout_s=2
                )
            except ZStreamError:
                continue
            part: dict[str, Any] = reply.result["partitions"][p]
            if "voters" in part:
                return part
    return None


async def _wait_caught_up(
    brokers: list[BrokerProcess], target: list[int], p: int = 0
) -> dict[str, Any]:
    """Wait until the group's voters are ``target`` and every one of them holds the
    leader's whole log (a restarted broker catches up); the leader's view."""
    view: dict[str, Any] | None = None

    async def caught_up() -> bool:
        nonlocal view
        view = await _leader_view(brokers, p)
        if view is None or view["voters"] != sorted(target):
            return False
        async with ClusterClient(bootstrap_of(brokers), timeout_s=2) as client:
            for b in target:
                try:
                    reply = await client.connection(brokers[b - 1].addr).call(
                        DescribeTopicRequest(TOPIC), timeout_s=2
                    )
                except ZStreamError:
                    return False
                if reply.result["partitions"][p]["local_end"] < view["hwm"]:
                    return False
        return True

    await wait_until_async(caught_up, 60, f"replicas {target} to catch up", interval_s=0.2)
    assert view is not None
    return view


async def _wait_moved(bootstrap: str, target: list[int], timeout_s: float) -> None:
    async def done() -> bool:
        # A fresh client each time: a long-lived one may keep asking a dead controller.
        try:
            async with Admin(bootstrap, timeout_s=2) as admin:
                moving = await admin.list_reassignments()
                part = await _partition(admin)
        except ZStreamError:
            return False
        return not moving and part["replicas"] == target and part["target"] is None

    await wait_until_async(done, timeout_s, f"the partition to move to {target}", interval_s=0.2)


def _check_replicas(
    brokers: list[BrokerProcess], replicas: list[int], group_id: int, load: ProduceLoad
) -> None:
    logs = {f"broker-{b}": _records_on_disk(brokers[b - 1], group_id) for b in replicas}
    report = check_queue(load.history, logs)
    assert report.ok, report.summary()
    assert load.acked > 0
    assert all(e.retriable for e in load.errors), load.errors[:3]


async def test_move_one_replica_to_a_fourth_broker_under_produce(tmp_path: Path) -> None:
    with running_brokers(tmp_path, 4, extra=["--log-level=INFO"]) as brokers:
        bootstrap = bootstrap_of(brokers)
        async with Admin(bootstrap) as admin:
            await admin.create_topic(TOPIC, partitions=1, replication_factor=3)
            before = (await _partition(admin))["replicas"]
            assert 4 not in before
            load = ProduceLoad(bootstrap)
            task = asyncio.create_task(load.run())
            try:
                await _until(lambda: load.acked > 500, 30, "records before the move")
                # Replace a follower (the last replica) by broker 4.
                target = [*before[:2], 4]
                reply = await admin.reassign_partition(TOPIC, 0, target)
                assert reply["target"] == target
                rows = await admin.list_reassignments()
                assert [(r["adding"], r["removing"]) for r in rows] == [([4], [before[2]])]
                group_id = rows[0]["group_id"]
                # The operator's view, as scripts read it.
                moving = (await _cli_json(["partition", "reassignments"], bootstrap))[
                    "reassignments"
                ]
                assert moving in ([], rows)  # (it may have finished already)
                described = await _cli_json(["topic", "describe", TOPIC], bootstrap)
                assert described["partitions"][0]["target"] in (None, target)
                await _wait_moved(bootstrap, target, 60)
                moved_at = load.acked
                await _until(lambda: load.acked > moved_at + 300, 30, "records after the move")
            finally:
                load.stop.set()
                await task
            view = await _wait_caught_up(brokers, target)
            assert view["learners"] == []
        removed = brokers[before[2] - 1]
        await _until(
            lambda: not (removed.data_dir / "groups" / str(group_id)).exists(),
            20,
            "the removed replica to delete its data",
        )
    _check_replicas(brokers, target, group_id, load)


async def test_controller_leader_killed_in_the_middle_of_a_reassignment(tmp_path: Path) -> None:
    with running_brokers(tmp_path, 4, extra=["--log-level=INFO"]) as brokers:
        bootstrap = bootstrap_of(brokers)
        async with Admin(bootstrap) as admin:
            await admin.create_topic(TOPIC, partitions=1, replication_factor=3)
            before = (await _partition(admin))["replicas"]
            load = ProduceLoad(bootstrap)
            task = asyncio.create_task(load.run())
            try:
                await _until(lambda: load.acked > 500, 30, "records before the move")
                target = [*before[:2], 4]
                await admin.reassign_partition(TOPIC, 0, target)
                group_id = (await admin.list_reassignments())[0]["group_id"]

                async def learner_added() -> bool:
                    view = await _leader_view(brokers)
                    return view is not None and 4 in view["learners"] + view["voters"]

                await wait_until_async(learner_added, 30, "broker 4 to join", interval_s=0.1)
                controller = (await admin.describe_cluster())["controller"]
                assert await admin.list_reassignments(), "finished before the kill"
                brokers[controller - 1].kill()
                await _wait_moved(bootstrap, target, 90)
                # The killed broker comes back (a restart of any broker): it catches up.
                brokers[controller - 1].start()
                moved_at = load.acked
                await _until(lambda: load.acked > moved_at + 300, 30, "records after the move")
            finally:
                load.stop.set()
                await task

            await _wait_caught_up(brokers, target)
    _check_replicas(brokers, target, group_id, load)


def _records_of(broker: BrokerProcess, group_id: int) -> list[bytes]:
    return _records_on_disk(broker, group_id)


async def test_decommission_the_controller_leader_under_produce(tmp_path: Path) -> None:
    """Broker 1 leads the controller and partition 0: decommissioning it moves both
    partitions to broker 4 and group 0's vote with them, then removes it; started
    again, it is refused and stops."""
    with running_brokers(tmp_path, 4, extra=["--log-level=INFO"]) as brokers:
        bootstrap = bootstrap_of(brokers)
        async with Admin(bootstrap) as admin:
            await admin.create_topic(TOPIC, partitions=2, replication_factor=3)
            meta = await admin.describe_cluster()
            groups = {p["partition"]: p["group_id"] for p in meta["topics"][0]["partitions"]}
            loads = [ProduceLoad(bootstrap, p) for p in (0, 1)]
            tasks = [asyncio.create_task(load.run()) for load in loads]
            try:
                await _until(lambda: all(ld.acked > 300 for ld in loads), 30, "records")
                assert await admin.decommission_broker(1) == [1]

                await wait_until_async(
                    lambda: broker_removed(bootstrap, 1),
                    120,
                    "broker 1 to be removed",
                    interval_s=0.5,
                )
                moved_at = [ld.acked for ld in loads]
                await _until(
                    lambda: all(ld.acked > m + 200 for ld, m in zip(loads, moved_at, strict=True)),
                    30,
                    "records after the decommission",
                )
            finally:
                for load in loads:
                    load.stop.set()
                await asyncio.gather(*tasks)
            meta = await admin.describe_cluster()
            assert meta["controller"] != 1
            replicas = {p["partition"]: p["replicas"] for p in meta["topics"][0]["partitions"]}
            assert all(sorted(r) == [2, 3, 4] for r in replicas.values()), replicas
            for p, r in replicas.items():
                await _wait_caught_up(brokers, r, p)
        # It stopped itself on seeing its removal; started again it is refused at once.
        await _until(lambda: not brokers[0].running(), 30, "broker 1 to stop")
        brokers[0].stop()  # reap it (closes its log file)
        brokers[0].launch()
        await _until(lambda: not brokers[0].running(), 30, "broker 1 to be refused")
        assert not (brokers[0].data_dir / "groups" / str(groups[0])).exists()
    for p, load in enumerate(loads):
        gid = groups[p]
        logs = {f"broker-{b}": _records_of(brokers[b - 1], gid) for b in replicas[p]}
        report = check_queue(load.history, logs)
        assert report.ok, report.summary()
        assert all(e.retriable for e in load.errors), load.errors[:3]


async def test_a_broker_dead_for_good_has_its_replicas_replaced(tmp_path: Path) -> None:
    """kill -9 of broker 2 for good, with replica_replace_after_ms = 3 s: every
    partition gets back to three replicas on the other brokers (and group 0 its third
    voter); producers see only retriable errors; nothing is lost or duplicated."""
    config = tmp_path / "broker.toml"
    config.write_text("replica_replace_after_ms = 3000\n")
    with running_brokers(tmp_path, 4, extra=["--log-level=INFO", f"--config={config}"]) as brokers:
        bootstrap = bootstrap_of(brokers)
        async with Admin(bootstrap) as admin:
            await admin.create_topic(TOPIC, partitions=2, replication_factor=3)
            meta = await admin.describe_cluster()
            parts = meta["topics"][0]["partitions"]
            groups = {p["partition"]: p["group_id"] for p in parts}
            assert all(2 in p["replicas"] for p in parts)
            loads = [ProduceLoad(bootstrap, p) for p in (0, 1)]
            tasks = [asyncio.create_task(load.run()) for load in loads]
            try:
                await _until(lambda: all(ld.acked > 300 for ld in loads), 30, "records")
                killed_at = time.monotonic()
                brokers[1].kill()
                replicas: dict[int, list[int]] = {}

                async def replaced() -> bool:
                    try:
                        async with Admin(bootstrap, timeout_s=2) as fresh:
                            cluster = await fresh.describe_cluster()
                            moving = await fresh.list_reassignments()
                    except ZStreamError:
                        return False
                    replicas.update(
                        {p["partition"]: p["replicas"] for p in cluster["topics"][0]["partitions"]}
                    )
                    return not moving and all(len(r) == 3 and 2 not in r for r in replicas.values())

                await wait_until_async(replaced, 120, "replicas re-placed", interval_s=0.5)
                # Not before the grace period (3 s) ran out.
                assert time.monotonic() - killed_at >= 3.0
                moved_at = [ld.acked for ld in loads]
                await _until(
                    lambda: all(ld.acked > m + 200 for ld, m in zip(loads, moved_at, strict=True)),
                    30,
                    "records after the re-placement",
                )
            finally:
                for load in loads:
                    load.stop.set()
                await asyncio.gather(*tasks)
            for p, r in replicas.items():
                await _wait_caught_up(brokers, r, p)
    for p, load in enumerate(loads):
        logs = {f"broker-{b}": _records_of(brokers[b - 1], groups[p]) for b in replicas[p]}
        report = check_queue(load.history, logs)
        assert report.ok, report.summary()
        assert all(e.retriable for e in load.errors), load.errors[:3]


async def test_add_partitions_while_a_group_consumes(tmp_path: Path) -> None:
    """A group member reading a two-partition topic is assigned and reads the two
    partitions added while it runs, without a restart."""
    with running_brokers(tmp_path, 3, extra=["--log-level=INFO"]) as brokers:
        bootstrap = bootstrap_of(brokers)
        topic = "growing"
        async with Admin(bootstrap) as admin:
            await admin.create_topic(topic, partitions=2, replication_factor=3)
            seen: set[bytes] = set()
            async with Consumer(bootstrap, group="readers") as consumer:
                await consumer.subscribe([topic])

                async def read() -> None:
                    async for record in consumer:
                        seen.add(record.value)

                reader = asyncio.create_task(read())
                try:
                    async with Producer(bootstrap) as producer:
                        for p in (0, 1):
                            for i in range(10):
                                await producer.send(topic, b"%d-%d" % (p, i), partition=p)
                    await _until(lambda: len(seen) == 20, 30, "the first partitions read")
                    doc = await admin.add_partitions(topic, 4)
                    assert [p["partition"] for p in doc["partitions"]] == [0, 1, 2, 3]
                    async with Producer(bootstrap) as producer:  # a new one sees four
                        for p in (2, 3):
                            for i in range(10):
                                await producer.send(topic, b"%d-%d" % (p, i), partition=p)
                    await _until(lambda: len(seen) == 40, 60, "the added partitions read")
                    assert {tp.partition for tp in consumer.assignment()} == {0, 1, 2, 3}
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
    assert seen == {b"%d-%d" % (p, i) for p in range(4) for i in range(10)}
