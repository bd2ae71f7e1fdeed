"""The seed project's own scenario, on three real lognode processes, plus what the seed
left untested: snapshot and restore, restarts, and the wait_for_leader timeout."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import wait_until
from tests.support.lognode import LogNode, LogNodeError

pytestmark = pytest.mark.integration

NodeFactory = Callable[..., LogNode]


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[NodeFactory]:
    started: list[LogNode] = []

    def make(node_id: int, *, bootstrap: bool = False, extra: tuple[str, ...] = ()) -> LogNode:
        node = LogNode(
            node_id,
            tmp_path / f"data{node_id}",
            tmp_path / "logs",
            bootstrap=bootstrap,
            extra_args=extra,
        )
        node.start()
        started.append(node)
        return node

    try:
        yield make
    finally:
        for node in started:
            node.stop()


def readable(node: LogNode, offset: int, want: bytes) -> bool:
    try:
        return node.client.read(offset) == want
    except LogNodeError as exc:
        if exc.error != "OffsetOutOfRange":
            raise
        return False


def out_of_range(node: LogNode, offset: int) -> bool:
    try:
        node.client.read(offset)
    except LogNodeError as exc:
        return exc.error == "OffsetOutOfRange"
    return False


def three_node_cluster(make_node: NodeFactory) -> tuple[LogNode, LogNode, LogNode]:
    n1 = make_node(1, bootstrap=True)
    n2 = make_node(2)
    n3 = make_node(3)
    assert n1.client.wait_for_leader(5.0) == 1
    n1.client.join(2, n2.bind_addr)
    n1.client.join(3, n3.bind_addr)
    return n1, n2, n3


def test_seed_scenario_replicate_get_servers_and_leave(make_node: NodeFactory) -> None:
    n1, n2, n3 = three_node_cluster(make_node)
    records = [b"first", b"second"]
    assert [n1.client.append(r) for r in records] == [0, 1]
    start = time.monotonic()
    wait_until(
        lambda: all(readable(n, i, r) for n in (n2, n3) for i, r in enumerate(records)),
        timeout_s=0.5,
        what="both followers read both records",
    )
    assert time.monotonic() - start <= 0.5

    servers = n1.client.get_servers()
    assert sorted(s["id"] for s in servers) == [1, 2, 3]
    assert [s["id"] for s in servers if s["is_leader"]] == [1]
    assert {s["id"]: s["address"] for s in servers} == {
        1: n1.bind_addr,
        2: n2.bind_addr,
        3: n3.bind_addr,
    }

    n1.client.leave(2)
    assert n1.client.append(b"third") == 2
    wait_until(lambda: readable(n3, 2, b"third"), timeout_s=0.5, what="node 3 reads it")
    assert out_of_range(n2, 2)
    assert sorted(s["id"] for s in n1.client.get_servers()) == [1, 3]


def test_wait_for_leader_times_out_without_a_cluster(make_node: NodeFactory) -> None:
    lonely = make_node(7)  # not bootstrapped, never joined: no leader can exist
    start = time.monotonic()
    with pytest.raises(LogNodeError) as info:
        lonely.client.wait_for_leader(0.3)
    assert info.value.error == "Timeout"
    assert 0.3 <= time.monotonic() - start < 3.0
    with pytest.raises(LogNodeError) as info:
        lonely.client.append(b"nobody leads")
    assert info.value.error == "NotLeader"


def test_restarts_keep_every_record(make_node: NodeFactory) -> None:
    n1, n2, n3 = three_node_cluster(make_node)
    records = [b"r%d" % i for i in range(20)]
    offsets = n1.client.call("append_many", records=records)["offsets"]
    assert offsets == list(range(20))

    # A follower killed with SIGKILL comes back with everything.
    n3.kill()
    assert n1.client.append(b"while 3 is down") == 20
    n3.start()
    wait_until(lambda: readable(n3, 20, b"while 3 is down"), 10, "node 3 catches up")

    # The whole cluster restarts at once; every record and the term survive.
    term = n1.client.status()["term"]
    for n in (n1, n2, n3):
        n.stop()
    for n in (n1, n2, n3):
        n.start()
    leader_id = n1.client.wait_for_leader(10.0)
    leader = {1: n1, 2: n2, 3: n3}[leader_id]
    assert leader.client.status()["term"] >= term
    offset = leader.client.append(b"after restart")
    assert offset == 21
    for n in (n1, n2, n3):
        wait_until(lambda n=n: readable(n, offset, b"after restart"), 10, "the new record")
        assert [n.client.read(i) for i in range(20)] == records


def test_snapshot_and_restore(make_node: NodeFactory) -> None:
    n1 = make_node(1, bootstrap=True)
    n2 = make_node(2)
    assert n1.client.wait_for_leader(5.0) == 1
    n1.client.join(2, n2.bind_addr)
    records = [b"s%d" % i for i in range(5)]
    assert n1.client.call("append_many", records=records)["offsets"] == list(range(5))
    assert n1.client.call("snapshot")["start_offset"] == 5
    assert out_of_range(n1, 0)

    # A new member joins after the snapshot: it installs it, then replicates onwards.
    n3 = make_node(3)
    n1.client.join(3, n3.bind_addr)
    assert n1.client.append(b"after snapshot") == 5
    wait_until(lambda: readable(n3, 5, b"after snapshot"), 10, "node 3 reads past the start")
    status = n3.client.status()
    assert status["start_offset"] == 5
    assert out_of_range(n3, 4)
    assert n2.client.read(0) == b"s0"  # node 2 still holds its whole log

    # Restore from disk: the restarted node keeps its log start and its records.
    n3.stop()
    n3.start()
    assert n3.client.status()["start_offset"] == 5
    wait_until(lambda: readable(n3, 5, b"after snapshot"), 10, "node 3 after restart")
    assert n1.client.append(b"later") == 6
    wait_until(lambda: readable(n3, 6, b"later"), 10, "node 3 replicates again")
