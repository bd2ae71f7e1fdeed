"""A follower whose sealed segment has a flipped bit: the damage is detected, the log is
cut there, and the follower catches up from the leader until its log is byte-equal to
the others'.

Three places for the bit:

- ``first``: in the first sealed segment (small segments, verified whole on open): the
  whole log is cut and refetched;
- ``middle``: in a middle sealed segment: the prefix before it survives;
- ``unverified``: early in a big sealed segment, before its last sparse-index record,
  which open does not verify: the first read that meets it reports the corruption
  (naming the file) and the node exits (fail-stop); the restart that follows (the test
  acts as its supervisor) cuts the log there.

And a follower whose disk lost a synced, acknowledged tail (it ends mid-entry after a
kill -9), which open takes for an ordinary torn write: the leader's next heartbeat
carries a commit above its log, so it blocks its vote and reports LOST_ENTRIES, and the
leader refills it (FAULT_FINDINGS F5).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until
from tests.support.checker import Append, check_queue
from tests.support.cluster import Cluster, ClusterNode
from tests.support.lognode import LogNodeError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEGMENT_HEADER_BYTES = 32  # storage._entry: a segment file's fixed header
INDEX_INTERVAL_BYTES = 4096  # storage.LogConfig's default: a sparse-index record per 4 KiB
# (segment bytes, records to write, record bytes) per case: at least three sealed segments.
CASES = {
    "first": (2048, 60, 40),
    "middle": (2048, 60, 40),
    "unverified": (32768, 800, 120),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def cluster(tmp_path: Path, case: str) -> Iterator[Cluster]:
    segment_bytes = CASES[case][0]
    with Cluster(tmp_path, 3, extra_args=("--segment-bytes", str(segment_bytes))) as c:
        c.start()
        yield c


def sealed_segments(node: ClusterNode) -> list[Path]:
    """The node's segment files except the active (last) one, oldest first."""
    return sorted((node.data_dir / "group" / "log").glob("*.log"))[:-1]


def flip_bit(path: Path, position: int) -> bytes:
    """Flip one bit at ``position``; return the damaged file's bytes."""
    data = bytearray(path.read_bytes())
    data[position] ^= 0x10
    path.write_bytes(bytes(data))
    return bytes(data)


def append_records(leader: ClusterNode, count: int, size: int, tag: bytes) -> list[Append]:
    """``count`` records of ``size`` bytes, proposed in pipelined batches of 100."""
    ops: list[Append] = []
    for start in range(0, count, 100):
        values = [
            (b"%s-%05d-" % (tag, i)).ljust(size, b"x")
            for i in range(start, min(count, start + 100))
        ]
        invoked = time.monotonic()
        reply = leader.client.call("append_many", 30.0, records=values)
        done = time.monotonic()
        assert reply["errors"] == [None] * len(values), reply["errors"]
        ops += [Append(v, o, invoked, done) for v, o in zip(values, reply["offsets"], strict=True)]
    return ops


def test_follower_with_a_flipped_bit_in_a_sealed_segment_recovers_from_the_leader(
    cluster: Cluster, case: str
) -> None:
    segment_bytes, count, size = CASES[case]
    leader, _ = cluster.wait_leader()
    history = append_records(leader, count, size, b"before")
    cluster.wait_converged()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    follower.stop()
    sealed = sealed_segments(follower)
    assert len(sealed) >= 3, sealed
    if case == "first":
        victim, position = sealed[0], segment_bytes // 2
    elif case == "middle":
        victim, position = sealed[len(sealed) // 2], segment_bytes // 2
    else:
        victim, position = sealed[1], SEGMENT_HEADER_BYTES + INDEX_INTERVAL_BYTES // 2
    damaged = flip_bit(victim, position)
    follower.start()

    if case == "unverified":
        # Open did not look there; the first read that does reports it, naming the
        # file, and the node fail-stops (the next open cuts the log there). Restart it,
        # as its supervisor would.
        with pytest.raises(LogNodeError) as info:
            follower.records()
        assert victim.name in str(info.value)
        wait_until(lambda: not follower.running, 10, "the node to fail-stop")
        assert follower.process.returncode() != 0
        follower.start()

    # New appends while it recovers; it must end up holding everything.
    history += append_records(leader, 20, size, b"after")
    cluster.wait_converged(timeout_s=10)
    logs = {f"n{n.node_id}": n.records() for n in cluster.nodes.values()}
    report = check_queue(history, logs)
    assert report.ok, report.summary()

    # On disk: the damaged bytes are gone and every replica holds the same entries
    # (reading them verifies every entry's CRC).
    for node in cluster.nodes.values():
        node.stop()
    assert not victim.exists() or victim.read_bytes() != damaged
    disks = {n.node_id: n.disk_entries(segment_bytes) for n in cluster.nodes.values()}
    assert all(d == disks[leader.node_id] for d in disks.values())


def test_follower_that_lost_its_synced_tail_is_repaired_from_the_leader(tmp_path: Path) -> None:
    """The disk lost entries the follower had synced and acknowledged (a lying disk or
    write cache): its active segment ends mid-entry after a kill -9. Open cuts the torn
    tail as if it had never been synced; the leader, which counted those entries, must
    still bring the follower back (a majority holds them)."""
    with Cluster(tmp_path, 3) as cluster:
        cluster.start()
        leader, _ = cluster.wait_leader()
        history = append_records(leader, 50, 200, b"synced")
        cluster.wait_converged()
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        follower.kill()
        active = sorted((follower.data_dir / "group" / "log").glob("*.log"))[-1]
        with active.open("r+b") as f:
            f.truncate(active.stat().st_size - 3 * 200)  # about three entries, mid-entry
        follower.start()
        history += append_records(leader, 5, 200, b"after")
        cluster.wait_converged(timeout_s=5)
        logs = {f"n{n.node_id}": n.records() for n in cluster.nodes.values()}
        report = check_queue(history, logs)
        assert report.ok, report.summary()
