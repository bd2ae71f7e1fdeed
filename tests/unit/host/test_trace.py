"""The opt-in stage trace (replication/_trace.py) that bench/latency.py reads."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest

from tests.unit.host.test_host import batch, cluster, elect
from zstream.replication import Trace, _trace


def _rows(directory: Path) -> dict[str, set[int]]:
    """stage -> indexes (watermark stages: the indexes they reached)."""
    seen: dict[str, set[int]] = defaultdict(set)
    for path in directory.glob("trace-*.txt"):
        for line in path.read_text().splitlines():
            stage, _gid, index, _t = line.split()
            seen[stage].add(int(index))
    return seen


def test_rows_are_bounded_and_flushed_on_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_trace, "_MAX_ROWS", 5)
    t = Trace(tmp_path / "t.txt")
    t.mark_range("appended", 7, 1, 3, t_ns=10)
    t.mark_range("appended", 7, 4, 6, t_ns=11)  # would pass the bound: dropped whole
    t.mark("synced", 7, 3, t_ns=12)
    t.close()
    t.mark("synced", 7, 4)  # after close: ignored, no error
    assert (tmp_path / "t.txt").read_text().splitlines() == [
        "appended 7 1 10",
        "appended 7 2 10",
        "appended 7 3 10",
        "synced 7 3 12",
    ]


def test_from_env_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZSTREAM_TRACE_DIR", raising=False)
    assert Trace.from_env() is None
    monkeypatch.setenv("ZSTREAM_TRACE_DIR", str(tmp_path / "d"))
    t = Trace.from_env()
    assert t is not None
    t.close()
    assert list((tmp_path / "d").glob("trace-*.txt"))


async def test_every_stage_of_a_committed_entry_is_traced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = Trace(tmp_path / "trace" / "trace-1.txt")
    monkeypatch.setattr(_trace, "trace", t)
    async with cluster(tmp_path / "c") as nodes:
        leader = await elect(nodes)
        index = await leader.groups[1].propose(batch(b"x"))
        for n in nodes.values():
            await asyncio.wait_for(n.groups[1].wait_committed(index), 5)
    t.close()
    seen = _rows(tmp_path / "trace")
    for stage in ("queued", "proposed", "appended", "received"):
        assert index in seen[stage], stage
    for stage in ("synced", "acked", "committed", "applied"):
        assert max(seen[stage]) >= index, stage
