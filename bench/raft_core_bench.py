"""Throughput of the pure Raft core: three RaftNodes in one process, MemoryStorage,
an instant in-memory network, no fsync and no codec.

    .venv/bin/python bench/raft_core_bench.py [--quick] [--payload-bytes 128]

Two runs: one ``propose()`` per entry, then ``propose_batch()`` of 64 entries. Each
loop pass proposes, then runs every node's Ready/advance once and delivers the
messages (so replication is pipelined across passes). Reports committed entries per
second (wall clock, counted when the leader applies them) and CPU microseconds per
entry per node (process CPU time / entries / 3). Writes JSON to bench/results/.
The last line is ``raft_core entries_per_s=X`` for the batched run.
Target (issue 3): entries_per_s >= 200000.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections import deque
from pathlib import Path

from zstream.replication import (
    ConfState,
    EntryType,
    MemoryStorage,
    Message,
    RaftConfig,
    RaftNode,
    Role,
)

TARGET = 200_000
IDS = (1, 2, 3)


class Group:
    """Three nodes and a FIFO network; every message is delivered on the next pass."""

    def __init__(self) -> None:
        conf = ConfState(voters=frozenset(IDS))
        self.storage = {i: MemoryStorage(conf_state=conf) for i in IDS}
        self.nodes = {
            i: RaftNode(
                RaftConfig(id=i, pre_vote=False, check_quorum=False),
                self.storage[i],
                rng=random.Random(i),
            )
            for i in IDS
        }
        self.net: deque[Message] = deque()
        self.applied = dict.fromkeys(IDS, 0)

    def pass_once(self) -> bool:
        moved = False
        net, nodes = self.net, self.nodes
        while net:
            m = net.popleft()
            nodes[m.to].step(m)
            moved = True
        for i, node in nodes.items():
            if not node.has_ready():
                continue
            moved = True
            rd = node.ready()
            st = self.storage[i]
            if rd.snapshot is not None:
                st.apply_snapshot(rd.snapshot)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            net.extend(rd.messages)
            if rd.entries:
                st.append(rd.entries)
            net.extend(rd.messages_after_append)
            n = 0
            for e in rd.committed_entries:
                if e.type == EntryType.NORMAL:
                    n += 1
            self.applied[i] += n
            node.advance(rd)
        return moved

    def drain(self) -> None:
        while self.pass_once():
            pass

    def elect(self) -> RaftNode:
        self.nodes[1].campaign()
        self.drain()
        leader = self.nodes[1]
        assert leader.role == Role.LEADER
        return leader


def run(total: int, batch: int, payload: bytes) -> dict[str, float]:
    g = Group()
    leader = g.elect()
    base = g.applied[1]
    datas = [payload] * batch
    wall0, cpu0 = time.perf_counter(), time.process_time()
    proposed = 0
    while proposed < total:
        if batch == 1:
            leader.propose(payload)
        else:
            leader.propose_batch(datas)
        proposed += batch
        g.pass_once()
    g.drain()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    committed = g.applied[1] - base
    assert committed == proposed, (committed, proposed)
    assert g.applied[2] - base == g.applied[3] - base == proposed
    return {
        "batch": batch,
        "entries": committed,
        "wall_s": wall,
        "cpu_s": cpu,
        "entries_per_s": committed / wall,
        "cpu_us_per_entry_per_node": cpu / committed / len(IDS) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run, under 30 s")
    ap.add_argument("--payload-bytes", type=int, default=128)
    args = ap.parse_args(argv)
    payload = b"x" * args.payload_bytes
    single_n, batch_n = (20_000, 200_000) if args.quick else (100_000, 1_000_000)
    results = [run(single_n, 1, payload), run(batch_n, 64, payload)]

    print(f"{'mode':<10}{'entries':>10}{'wall s':>9}{'entries/s':>12}{'CPU us/entry/node':>20}")
    for r in results:
        mode = "single" if r["batch"] == 1 else f"batch{int(r['batch'])}"
        print(
            f"{mode:<10}{int(r['entries']):>10}{r['wall_s']:>9.2f}{r['entries_per_s']:>12.0f}"
            f"{r['cpu_us_per_entry_per_node']:>20.2f}"
        )
    batched = results[-1]["entries_per_s"]
    print(f"target entries_per_s >= {TARGET}: {'met' if batched >= TARGET else 'NOT met'}")

    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    doc = {
        "bench": "raft_core",
        "quick": args.quick,
        "payload_bytes": args.payload_bytes,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "target_entries_per_s": TARGET,
        "results": results,
    }
    (out / f"raft_core_{stamp}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"raft_core entries_per_s={batched:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
