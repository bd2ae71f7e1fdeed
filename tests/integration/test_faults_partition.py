"""A network partition between Linux network namespaces: the leader is cut off while
clients keep appending.

Three lognode processes, each in its own namespace on a shared bridge (see
tests/support/netns.py); the test's control traffic uses ipc:// sockets, which the
partition does not cut. Skipped, with the reason, where namespaces cannot be made.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until
from tests.support.checker import (
    Append,
    check_election_safety,
    check_queue,
    check_reads,
    check_watermarks,
)
from tests.support.cluster import AppendWorkload, Cluster, ReadMonitor
from tests.support.lognode import LogNodeError
from tests.support.netns import Network, NetworkUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MINORITY_WRITES = 20


@pytest.fixture
def network() -> Iterator[Network]:
    net = Network(3)
    try:
        net.create()
    except NetworkUnavailable as exc:
        pytest.skip(f"no network namespaces here: {exc}")
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def cluster(tmp_path: Path, network: Network) -> Iterator[Cluster]:
    with Cluster(tmp_path, 3, network=network) as c:
        c.start()
        yield c


def test_isolated_leader_loses_its_uncommitted_tail_and_nothing_acknowledged(
    cluster: Cluster, network: Network
) -> None:
    workload = AppendWorkload(cluster).start()
    monitor = ReadMonitor(cluster).start()
    minority: list[Append] = []
    try:
        workload.wait_acked(20, timeout_s=15)
        old, old_status = cluster.wait_leader()
        network.isolate(old.node_id)
        cut_at = time.monotonic()
        # Straight away, while it still believes it leads: appends that it can write
        # to its own log but never commit (its reply, if any, is a failure).
        values = [b"minority-%d" % i for i in range(MINORITY_WRITES)]
        invoked = time.monotonic()
        try:
            reply = old.client.call("append_many", 1.5, records=values)
            offsets = reply["offsets"]
        except TimeoutError:
            offsets = [None] * len(values)
        minority = [
            Append(v, off, invoked, time.monotonic())
            for v, off in zip(values, offsets, strict=True)
        ]
        assert all(op.offset is None for op in minority), "an isolated leader acknowledged"

        # The majority side elects a new leader and keeps committing.
        _new, new_status = cluster.wait_leader(timeout_s=10, exclude=[old.node_id])
        assert new_status["term"] > old_status["term"]
        workload.wait_acked(20, timeout_s=15, since=cut_at)

        # The old leader wrote the minority appends but could not commit them.
        old_st = old.status()
        assert old_st is not None
        assert old_st["last_index"] > old_st["commit_index"], old_st

        network.heal()
        wait_until(
            lambda: (
                (st := old.status()) is not None
                and not st["is_leader"]
                and st["term"] >= new_status["term"]
            ),
            15,
            "the old leader to rejoin as a follower",
        )
        workload.wait_acked(10, timeout_s=15, since=time.monotonic())
    finally:
        network.heal()
        history = workload.stop()
        reads, watermarks = monitor.stop()

    cluster.wait_converged(timeout_s=20)
    logs = {f"n{n.node_id}": n.records() for n in cluster.nodes.values()}
    report = check_queue([*history, *minority], logs)
    assert report.ok, report.summary()
    # Nothing uncommitted was ever served (the isolated leader held a tail it could
    # not commit), and no committed end offset went backwards.
    assert reads
    assert check_reads(reads, logs["n1"]) == []
    assert check_watermarks(watermarks) == []
    assert check_election_safety(monitor.leaders) == {}, "two leaders in a term"
    # The minority's tail was replaced by the majority's log, on every replica.
    for name, log in logs.items():
        assert not set(log) & {op.value for op in minority}, f"{name} kept a minority write"
    # And reads on the healed node see the majority's records.
    with pytest.raises(LogNodeError) as info:
        old.client.read(len(logs["n1"]))
    assert info.value.error == "OffsetOutOfRange"
    # Byte equality on disk: the old leader's segment files hold the majority's entries.
    for node in cluster.nodes.values():
        node.stop()
    disks = {n.node_id: n.disk_entries() for n in cluster.nodes.values()}
    assert all(d == disks[old.node_id] for d in disks.values())


def reachable(network: Network, frm: int, to: int) -> bool:
    """Whether a TCP connect from node ``frm``'s namespace reaches node ``to`` (a refused
    connection reached it; a timeout did not)."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(('{network.address(to)}', 9), timeout=1.0)\n"
        "except ConnectionRefusedError:\n"
        "    sys.exit(0)\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    proc = subprocess.run(
        [*network.exec_prefix(frm), sys.executable, "-c", probe], timeout=10, check=False
    )
    return proc.returncode == 0


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_network_isolates_heals_and_deletes_exactly_what_it_made(network: Network) -> None:
    mine = {network.bridge_ns, *(network.ns(n) for n in (1, 2, 3))}
    assert mine <= namespaces()
    assert reachable(network, 1, 2)
    network.isolate(2)
    assert network.isolated == {2}
    assert not reachable(network, 1, 2)
    assert reachable(network, 1, 3)
    network.heal()
    assert reachable(network, 1, 2)
    # A namespace the network did not make (named like its own) survives its close.
    bystander = f"{network.tag}-bystander"
    subprocess.run(["ip", "netns", "add", bystander], check=True, timeout=10)
    try:
        network.close()
        assert not mine & namespaces()
        assert bystander in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", bystander], check=False, timeout=10)
