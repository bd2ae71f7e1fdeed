"""Kill -9 a real process that appends and syncs, then check what recovery returns."""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.storage_crash_child import CONFIG, kind_for, records_for, size_for
from tests.unit.storage.helpers import payload_for, read_all
from zstream.storage import EntryKind, SegmentedLog

ROOT = Path(__file__).resolve().parents[3]
KILLS = 24


def _run_and_kill(directory: Path, term: int, rng: random.Random) -> int:
    """Start the child, kill it at a random moment; return the highest synced index."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.storage_crash_child",
            str(directory),
            str(term),
            str(rng.randrange(1 << 30)),
            "1500",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    synced = -1
    buffered = b""
    kill_after: float | None = None
    kill_at = 0.0
    sel = selectors.DefaultSelector()
    sel.register(child.stdout, selectors.EVENT_READ)
    try:
        start_deadline = time.monotonic() + 30
        while True:
            now = time.monotonic()
            if kill_after is not None and now >= kill_at:
                break
            if kill_after is None and now > start_deadline:
                pytest.fail("crash child never reported")
            timeout = (kill_at - now) if kill_after is not None else (start_deadline - now)
            if not sel.select(timeout=max(timeout, 0)):
                continue
            chunk = os.read(child.stdout.fileno(), 65536)
            if not chunk:
                pytest.fail(f"crash child exited early with {child.wait()}")
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                synced = max(synced, int(line.split()[1]))
                if kill_after is None:  # the first line: the child has opened the log
                    kill_after = rng.uniform(0.0, 0.25)
                    kill_at = time.monotonic() + kill_after
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        # Lines written before the kill may still sit in the pipe.
        rest = child.stdout.read()
        for line in (buffered + rest).split(b"\n"):
            if line.strip():
                synced = max(synced, int(line.split()[1]))
    finally:
        sel.close()
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        child.stdout.close()
        assert child.stdin is not None
        child.stdin.close()
    return synced


def _check(directory: Path, synced: int) -> int:
    with SegmentedLog.open(directory, CONFIG) as log:
        assert log.last_index >= synced, "an entry reported synced was lost"
        assert log.synced_index == log.last_index
        offset = 0
        term = 0
        entries = read_all(log)
        assert [e.index for e in entries] == list(range(1, log.last_index + 1))
        for entry in entries:
            i = entry.index
            assert entry.kind == kind_for(i)
            assert entry.record_count == records_for(i)
            assert entry.base_offset == offset
            assert bytes(entry.payload) == payload_for(i, size_for(i)), f"entry {i} damaged"
            assert entry.term >= term
            offset += entry.record_count
            term = entry.term
            if entry.kind == EntryKind.DATA:
                assert log.entry_for_offset(entry.base_offset).index == i
        assert log.next_offset == offset
        return log.last_index


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_synced_entry(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    directory = tmp_path / "log"
    lengths = []
    for run in range(1, KILLS + 1):
        synced = _run_and_kill(directory, run, rng)
        try:
            assert synced >= 0, "the child reported nothing"
            lengths.append(_check(directory, synced))
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, run {run}: {exc}") from exc
    assert lengths[-1] > lengths[0], f"seed {seed}: the log never grew"
