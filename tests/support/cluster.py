"""Clusters of real lognode processes for fault tests and benchmarks.

- `ClusterNode`: one ``tests.support.lognode`` process (optionally inside a network
  namespace) with start / stop (SIGTERM) / kill (SIGKILL) / pause (SIGSTOP) / resume
  (SIGCONT) / restart, always by PID, on the same addresses and data directory across
  restarts. Its ``client`` is a `LogNodeClient` (the control protocol lives in lognode).
- `Cluster`: N such nodes; node 1 bootstraps and joins the others. Helpers find the
  leader, read every committed record, wait until all replicas hold the same committed
  log (the ``digest`` operation), and read a stopped node's entries from its segment
  files (term, kind, payload: byte equality).
- `AppendWorkload`: client threads appending unique values to whichever node leads,
  recording a history for `tests.support.checker.check_queue`.
- `ReadMonitor`: a thread that keeps sampling every reachable node's committed end
  offset, the records just below it and its leadership claims, for `check_watermarks`,
  `check_reads` and `check_election_safety`.

On loopback, peer and control sockets are TCP on free ports of 127.0.0.1. With a
`tests.support.netns.Network`, node n runs in its namespace and binds its peer socket
on the namespace's own address (a fixed port: nothing else lives there), and every
control socket is an ``ipc://`` endpoint, so partitions never cut the test's own
control traffic.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.checker import Append, LeaderClaim, Read, Watermark
from tests.support.lognode import LogNode, LogNodeError
from tests.support.netns import Network
from tests.support.proc import free_port, wait_until
from zstream.storage import LogConfig, SegmentedLog

__all__ = ["AppendWorkload", "Cluster", "ClusterNode", "DiskEntry", "ReadMonitor"]

_NETNS_PEER_PORT = 7100
_READ_PAGE = 2000

DiskEntry = tuple[int, int, int, bytes]  # (index, term, kind, payload)


class ClusterNode(LogNode):
    """A `LogNode` that fault tests can also pause (SIGSTOP) and resume (SIGCONT)."""

    paused = False

    def start(self, ready_timeout_s: float = 20.0) -> None:
        super().start(ready_timeout_s)
        self.paused = False

    def stop(self) -> None:
        super().stop()
        self.paused = False

    def kill(self) -> None:
        super().kill()
        self.paused = False

    def pause(self) -> None:
        self.process.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.process.signal(signal.SIGCONT)
        self.paused = False

    def restart(self, ready_timeout_s: float = 20.0) -> None:
        self.stop()
        self.start(ready_timeout_s)

    def status(self, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """The node's status, or None when it is down, paused or does not answer."""
        if not self.running or self.paused:
            return None
        try:
            return self.client.status(timeout_s)
        except (TimeoutError, LogNodeError):
            return None

    def records(self, start: int = 0, timeout_s: float = 10.0) -> list[bytes]:
        """Every committed record this replica holds from offset ``start`` on."""
        out: list[bytes] = []
        while True:
            reply = self.client.call(
                "read_range", timeout_s, offset=start + len(out), max_records=_READ_PAGE
            )
            page = [bytes(r) for r in reply["records"]]
            if not page:
                return out
            out.extend(page)

    def disk_entries(self, segment_bytes: int | None = None) -> list[DiskEntry]:
        """(index, term, kind, payload) of every entry in the segment files; only while
        the node is down (the log directory is locked while a process has it open)."""
        if self.running:
            raise RuntimeError(f"lognode {self.node_id} is running")
        config = LogConfig() if segment_bytes is None else LogConfig(segment_bytes=segment_bytes)
        log = SegmentedLog.open(self.data_dir / "group" / "log", config)
        try:
            out: list[DiskEntry] = []
            index = log.first_index
            while index <= log.last_index:
                for e in log.read(index, log.last_index + 1, 4 << 20):
                    out.append((e.index, e.term, int(e.kind), bytes(e.payload)))
                    index = e.index + 1
            return out
        finally:
            log.close()

    def log_tail(self, lines: int = 30) -> str:
        return self.process.tail(lines)


class Cluster:
    """``size`` lognode processes; node 1 bootstraps the group and joins the others."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        network: Network | None = None,
        extra_args: Iterable[str] = (),
        node_env: Mapping[int, Mapping[str, str]] | None = None,
    ) -> None:
        """``node_env`` adds environment variables to some nodes (by node id)."""
        self.root = root
        self.network = network
        extra = tuple(extra_args)
        # ipc paths must stay short (about 100 bytes): a private temp dir, removed by close.
        self._ipc_dir = tempfile.mkdtemp(prefix="zs-ctl-") if network is not None else None
        self.nodes: dict[int, ClusterNode] = {}
        for n in range(1, size + 1):
            if network is not None:
                bind = f"tcp://{network.address(n)}:{_NETNS_PEER_PORT}"
                control = f"ipc://{self._ipc_dir}/n{n}"
                prefix: list[str] = network.exec_prefix(n)
            else:
                bind = f"tcp://127.0.0.1:{free_port()}"
                control = f"tcp://127.0.0.1:{free_port()}"
                prefix = []
            self.nodes[n] = ClusterNode(
                n,
                root / f"data{n}",
                root / "logs",
                bootstrap=n == 1,
                bind_addr=bind,
                control_addr=control,
                extra_args=extra,
                exec_prefix=prefix,
                env=(node_env or {}).get(n),
            )

    def start(self, timeout_s: float = 20.0) -> None:
        """Start every node, then form the group: node 1 leads and joins the others."""
        for node in self.nodes.values():
            node.start()
        first = self.nodes[1]
        if first.client.wait_for_leader(timeout_s) != 1:
            raise RuntimeError("the bootstrap node did not elect itself")
        for node in list(self.nodes.values())[1:]:
            first.client.join(node.node_id, node.bind_addr)
        voters = sorted(self.nodes)
        wait_until(
            lambda: all(
                (st := n.status()) is not None and st["voters"] == voters
                for n in self.nodes.values()
            ),
            timeout_s,
            f"every node to see voters {voters}",
            interval_s=0.05,
        )

    def close(self) -> None:
        """End every process by PID and remove the ipc directory."""
        for node in self.nodes.values():
            node.stop()
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def node(self, node_id: int) -> ClusterNode:
        return self.nodes[node_id]

    def running(self) -> list[ClusterNode]:
        return [n for n in self.nodes.values() if n.running and not n.paused]

    def find_leader(self, exclude: Iterable[int] = ()) -> tuple[ClusterNode, dict[str, Any]] | None:
        """The reachable node that says it leads, with the highest term (or None)."""
        skip = set(exclude)
        best: tuple[ClusterNode, dict[str, Any]] | None = None
        for node in self.running():
            if node.node_id in skip:
                continue
            st = node.status(0.5)
            if (
                st is not None
                and st["is_leader"]
                and (best is None or st["term"] > best[1]["term"])
            ):
                best = (node, st)
        return best

    def wait_leader(
        self, timeout_s: float = 10.0, exclude: Iterable[int] = ()
    ) -> tuple[ClusterNode, dict[str, Any]]:
        """Wait until `find_leader` finds one (outside ``exclude``)."""
        skip = tuple(exclude)
        found: list[tuple[ClusterNode, dict[str, Any]]] = []

        def check() -> bool:
            got = self.find_leader(skip)
            if got is not None:
                found.append(got)
            return got is not None

        wait_until(check, timeout_s, f"a leader (excluding {list(skip)})", interval_s=0.05)
        return found[-1]

    def wait_converged(
        self, timeout_s: float = 20.0, nodes: Iterable[ClusterNode] | None = None
    ) -> dict[str, Any]:
        """Wait until the given (default: all running) nodes report the same committed
        log: equal first index, commit index, committed end offset and digest."""
        members = list(self.running() if nodes is None else nodes)
        seen: list[tuple[int, int, int, str]] = []
        problem: list[str] = []

        def same() -> bool:
            digests = []
            for node in members:
                try:
                    d = node.client.call("digest", 2.0)
                except (TimeoutError, LogNodeError) as exc:
                    problem[:] = [f"node {node.node_id}: {exc}"]
                    return False
                digests.append(
                    (d["first_index"], d["commit_index"], d["commit_offset"], d["digest"])
                )
            seen[:] = digests
            problem.clear()
            return len(set(digests)) == 1

        try:
            wait_until(same, timeout_s, "replicas to converge", interval_s=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last seen: {problem or seen}\n{self.describe()}") from None
        first_index, commit_index, commit_offset, digest = seen[0]
        return {
            "first_index": first_index,
            "commit_index": commit_index,
            "commit_offset": commit_offset,
            "digest": digest,
        }

    def describe(self) -> str:
        """Every node's status and the tail of its output, for failure messages."""
        parts = []
        for node in self.nodes.values():
            parts.append(f"--- node {node.node_id} running={node.running} status={node.status()}")
            parts.append(node.log_tail(15))
        return "\n".join(parts)


class AppendWorkload:
    """Client threads appending unique values to the current leader, recording every
    attempt (`tests.support.checker.Append`); owned threads, joined by `stop`."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        threads: int = 2,
        tag: bytes = b"w",
        reply_timeout_s: float = 3.0,
    ) -> None:
        self.cluster = cluster
        self.tag = tag
        self.reply_timeout_s = reply_timeout_s
        self._history: list[Append] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"append-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> AppendWorkload:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Append]:
        """Stop every thread, wait for it, and return the history."""
        self._stop.set()
        for t in self._threads:
            t.join(self.reply_timeout_s + 10.0)
            if t.is_alive():
                raise RuntimeError(f"{t.name} did not stop")
        if self._errors:
            raise RuntimeError("a workload thread failed") from self._errors[0]
        return self.history()

    def history(self) -> list[Append]:
        with self._lock:
            return list(self._history)

    def acked(self, since: float = 0.0) -> int:
        """Acknowledged appends invoked at or after monotonic time ``since``."""
        with self._lock:
            return sum(1 for op in self._history if op.offset is not None and op.invoked >= since)

    def wait_acked(self, count: int, timeout_s: float, since: float = 0.0) -> None:
        wait_until(
            lambda: self.acked(since) >= count,
            timeout_s,
            f"{count} acknowledged appends",
            interval_s=0.05,
        )

    def _run(self, worker: int) -> None:
        seq = 0
        target: ClusterNode | None = None
        try:
            while not self._stop.is_set():
                if target is None or not target.running or target.paused:
                    found = self.cluster.find_leader()
                    if found is None:
                        self._stop.wait(0.05)
                        continue
                    target = found[0]
                value = b"%s-%d-%d" % (self.tag, worker, seq)
                seq += 1
                invoked = time.monotonic()
                offset: int | None = None
                try:
                    offset = target.client.append(value, self.reply_timeout_s)
                except LogNodeError as exc:
                    hint = int(exc.details.get("leader_hint", 0))
                    target = self.cluster.nodes.get(hint)
                except TimeoutError:
                    target = None
                with self._lock:
                    self._history.append(Append(value, offset, invoked, time.monotonic()))
        except BaseException as exc:  # surfaced by stop()
            self._errors.append(exc)


class ReadMonitor:
    """A thread sampling every reachable node: its committed end offset (`Watermark`),
    the ``tail`` records just below it (`Read`: the ones a replica that served
    uncommitted data would get wrong) and whether it says it leads (`LeaderClaim`).
    Owned thread, joined by `stop`."""

    def __init__(self, cluster: Cluster, *, tail: int = 3) -> None:
        self.cluster = cluster
        self.tail = tail
        self.reads: list[Read] = []
        self.watermarks: list[Watermark] = []
        self.leaders: list[LeaderClaim] = []
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="read-monitor", daemon=True)

    def start(self) -> ReadMonitor:
        self._thread.start()
        return self

    def stop(self) -> tuple[list[Read], list[Watermark]]:
        self._stop.set()
        self._thread.join(30.0)
        if self._thread.is_alive():
            raise RuntimeError("the read monitor did not stop")
        if self._errors:
            raise RuntimeError("the read monitor failed") from self._errors[0]
        return self.reads, self.watermarks

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for node in self.cluster.running():
                    self._sample(node)
                self._stop.wait(0.02)
        except BaseException as exc:  # surfaced by stop()
            self._errors.append(exc)

    def _sample(self, node: ClusterNode) -> None:
        name = f"n{node.node_id}"
        try:
            st = node.client.status(0.5)
            end = int(st["commit_offset"])
            self.watermarks.append(Watermark(name, int(st["pid"]), end))
            if st["is_leader"]:
                self.leaders.append(LeaderClaim(name, int(st["term"])))
            first = max(int(st["start_offset"]), end - self.tail)
            reply = node.client.call("read_range", 0.5, offset=first, max_records=self.tail)
        except (TimeoutError, LogNodeError):
            return  # down, paused or busy: nothing seen
        for i, value in enumerate(reply["records"]):
            self.reads.append(Read(name, first + i, bytes(value)))
