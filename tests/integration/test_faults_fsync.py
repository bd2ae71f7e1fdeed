"""Acknowledged means durable: a node whose fsyncs hang must not help commit.

kill -9 cannot catch an acknowledgement sent before its fsync (the page cache survives
the process), so this test stalls a disk instead: one node runs with a small LD_PRELOAD
shim whose fdatasync/fsync block while a gate file exists. With one follower down, a
quorum needs the stalled node, so while the gate is closed nothing new may commit, even
once the entries are written everywhere they can be. When the gate opens, everything
commits and no acknowledged record is lost. Two cases: the stalled node is the follower
(it must not acknowledge before its fsync) or the leader (it may send before its own
fsync, Ongaro 10.2.1, but must not count itself until it is done). And the same for
votes: term and vote are durable before any vote leaves the node, so with the leader
killed and the deciding voter's disk stalled, no leader appears.

Needs a C compiler (to build the shim); skipped with the reason otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until
from tests.support.checker import Append, check_queue
from tests.support.cluster import Cluster, ClusterNode

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# How long "nothing commits" is watched once the follower holds the entries:
# several heartbeat rounds (50 ms) and pass cycles; a follower that acknowledged before
# its fsync would let the leader commit within one round trip.
STALL_WINDOW_S = 1.0

SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void wait_gate(void) {
    const char *gate = getenv("ZS_FSYNC_GATE");
    struct timespec pause = {0, 2000000};
    while (gate != NULL && access(gate, F_OK) == 0) nanosleep(&pause, NULL);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    wait_gate();
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    wait_gate();
    return real(fd);
}
"""


@pytest.fixture
def shim(tmp_path: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the fsync shim")
    source, lib = tmp_path / "fsync_gate.c", tmp_path / "fsync_gate.so"
    source.write_text(SHIM_SOURCE)
    proc = subprocess.run(
        [cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(source), "-ldl"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot build the fsync shim: {proc.stderr.strip()[:200]}")
    return lib


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    return tmp_path / "fsync-gate"


@pytest.fixture(params=["follower", "leader"])
def stalled_role(request: pytest.FixtureRequest) -> str:
    role: str = request.param
    return role


@pytest.fixture
def cluster(tmp_path: Path, shim: Path, gate: Path, stalled_role: str) -> Iterator[Cluster]:
    # Node 1 bootstraps and leads; the gated disk is node 3's or node 1's.
    env = {"LD_PRELOAD": str(shim), "ZS_FSYNC_GATE": str(gate)}
    with Cluster(tmp_path, 3, node_env={3 if stalled_role == "follower" else 1: env}) as c:
        c.start()
        yield c


def test_a_node_with_stalled_fsyncs_does_not_help_commit(
    cluster: Cluster, gate: Path, stalled_role: str
) -> None:
    # Node 2 goes down; nodes 1 (leader) and 3 are the only quorum left.
    leader, witness, down = cluster.node(1), cluster.node(3), cluster.node(2)
    assert cluster.wait_leader()[0] is leader
    history = [append(leader, b"before-%d" % i) for i in range(10)]
    down.kill()
    history.append(append(leader, b"with one follower"))  # node 3 alone completes a quorum

    gate.touch()
    try:
        before = leader.status()
        assert before is not None
        values = [b"stalled-%d" % i for i in range(5)]
        invoked = time.monotonic()
        try:
            reply = leader.client.call("append_many", 0.2, records=values)
            pytest.fail(f"appends were answered while no quorum could sync: {reply}")
        except TimeoutError:
            pass  # as it must: nothing can be acknowledged yet
        target = before["last_index"] + len(values)
        # The follower receives and writes them (its loop keeps answering)...
        wait_until(
            lambda: (st := witness.status()) is not None and st["last_index"] >= target,
            10,
            "the follower to write the new entries",
        )
        # ... but they must not commit anywhere before a quorum made them durable.
        watch_until = time.monotonic() + STALL_WINDOW_S
        answered = 0
        while time.monotonic() < watch_until:
            commits = [st["commit_index"] for n in (leader, witness) if (st := n.status())]
            if commits:  # a slow status reply on a loaded host is no finding; skip it
                answered += 1
                assert max(commits) == before["commit_index"], (
                    f"committed entries no quorum has synced ({stalled_role} stalled)"
                )
            time.sleep(0.05)
        assert answered, "no node answered during the stall window: nothing was observed"
    finally:
        gate.unlink(missing_ok=True)

    # Once the disk moves again they commit (the proposals may have timed out on the
    # client side: they are then unacknowledged, but present). The leader may have
    # stepped down meanwhile (check-quorum: the stalled follower answered nothing).
    wait_until(
        lambda: (found := cluster.find_leader()) is not None and found[1]["commit_index"] >= target,
        15,
        "the entries to commit once fsync works",
    )
    history += [Append(v, None, invoked, time.monotonic()) for v in values]
    history.append(append(cluster.wait_leader()[0], b"after"))
    down.start()
    cluster.wait_converged(timeout_s=20)
    logs = {f"n{n.node_id}": n.records() for n in cluster.nodes.values()}
    report = check_queue(history, logs)
    assert report.ok, report.summary()
    assert set(values) <= set(logs["n1"])


def append(node: ClusterNode, value: bytes) -> Append:
    invoked = time.monotonic()
    offset = node.client.append(value)
    return Append(value, offset, invoked, time.monotonic())


# An election needs 1-2 election timeouts (0.5-1 s each) once the leader is gone.
ELECTION_WINDOW_S = 2.5


@pytest.mark.parametrize("stalled_role", ["follower"])
def test_no_vote_leaves_before_it_is_durable(cluster: Cluster, gate: Path) -> None:
    """With the leader down, node 2 can only win with node 3's vote, and node 3 cannot
    make its vote (or its own candidacy's term) durable: no leader may appear. Then
    node 3 is killed with its vote never written, and the cluster recovers."""
    leader, healthy, stalled = cluster.node(1), cluster.node(2), cluster.node(3)
    assert cluster.wait_leader()[0] is leader
    history = [append(leader, b"before-%d" % i) for i in range(10)]
    cluster.wait_converged()
    terms = {n.node_id: st["term"] for n in (healthy, stalled) if (st := n.status())}

    gate.touch()
    try:
        leader.kill()
        watch_until = time.monotonic() + ELECTION_WINDOW_S
        while time.monotonic() < watch_until:
            for node in (healthy, stalled):
                st = node.status()
                assert st is None or not st["is_leader"], (
                    f"node {node.node_id} won an election whose deciding vote was not durable"
                )
            time.sleep(0.05)
        stalled.kill()  # whatever it had not synced is gone
    finally:
        gate.unlink(missing_ok=True)

    for node in (leader, stalled):
        node.start()
    new, status = cluster.wait_leader(timeout_s=15)
    assert status["term"] > max(terms.values())
    history.append(append(new, b"after"))
    cluster.wait_converged(timeout_s=20)
    logs = {f"n{n.node_id}": n.records() for n in cluster.nodes.values()}
    report = check_queue(history, logs)
    assert report.ok, report.summary()
