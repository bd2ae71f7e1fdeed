"""Opt-in latency tracing: timestamps of a Raft entry's stages, for bench/latency.py.

Off unless the environment names a directory in ``ZSTREAM_TRACE_DIR`` when the process
starts; then each process appends rows to ``<dir>/trace-<pid>.txt``:

    <stage> <group id> <raft index> <CLOCK_MONOTONIC ns>

CLOCK_MONOTONIC is one clock for every process of a machine, so rows from a client and
three brokers can be laid side by side. Stages (who writes them):

- ``queued``: a proposal reached the leader's host (GroupHandle.propose);
- ``proposed``: the pass handed it to the core (index assigned);
- ``appended``: written to this node's log, no fsync yet (leader and followers);
- ``synced``: this node's fsync covering the index finished (in the worker thread);
- ``received``: a follower stepped the AppendEntries carrying the index;
- ``acked``: a follower sent its acknowledgement up to the index;
- ``committed``: this node learned the commit index (leader: it decided it);
- ``applied``: applied here (the leader answers its producer now);
- ``offset``: (broker) the partition offset of the index, written as ``offset <group>
  <index> <base offset>`` so a client's offsets can be matched to indexes.

Rows go through a buffered file and are flushed at exit; at most ``_MAX_ROWS`` rows per
process, so a forgotten variable cannot fill the disk. With tracing off every call site
costs one global lookup and a ``None`` test.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from pathlib import Path
from typing import IO

__all__ = ["Trace", "trace"]

_MAX_ROWS = 5_000_000


class Trace:
    """Appends stage rows to one file; safe to call from worker threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("a", buffering=1 << 20)
        self._rows = 0
        self._lock = threading.Lock()
        atexit.register(self.close)

    @classmethod
    def from_env(cls) -> Trace | None:
        directory = os.environ.get("ZSTREAM_TRACE_DIR")
        if not directory:
            return None
        return cls(Path(directory) / f"trace-{os.getpid()}.txt")

    def mark(self, stage: str, group: int, index: int, t_ns: int | None = None) -> None:
        self.mark_range(stage, group, index, index, t_ns)

    def mark_range(
        self, stage: str, group: int, first: int, last: int, t_ns: int | None = None
    ) -> None:
        """One row per index in ``[first, last]``, all at ``t_ns`` (now by default)."""
        if t_ns is None:
            t_ns = time.monotonic_ns()
        with self._lock:
            if self._rows + (last - first + 1) > _MAX_ROWS or self._file.closed:
                return
            self._rows += last - first + 1
            self._file.writelines(f"{stage} {group} {i} {t_ns}\n" for i in range(first, last + 1))

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


trace: Trace | None = Trace.from_env()
