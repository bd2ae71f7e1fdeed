"""A runnable replicated-log node for integration tests, fault injection and benchmarks.

Run::

    python -m tests.support.lognode --id N --data-dir D --bind tcp://127.0.0.1:P \
        [--bootstrap] --control tcp://127.0.0.1:C \
        [--heartbeat-ms 50] [--election-ms 500] [--commit-timeout-ms 5000] [--no-fsync]
        [--segment-bytes N]

It runs one `replication.DistributedLog` (one Raft group, the seed's API) and answers
commands on a ZeroMQ REP socket bound at ``--control``. When it is ready it prints one
line ``lognode ready id=N`` on stdout (tests need not parse it: `status` answering is
the readiness signal). SIGTERM closes it cleanly; SIGKILL is what the fault tests use.

Control protocol (stable: the fault tests and the benchmarks are written against it)
===================================================================================

Transport: one ZeroMQ REP socket. A request is ONE frame, a msgpack map
``{"op": <str>, ...arguments}``; the reply is ONE frame, a msgpack map, either
``{"ok": true, ...results}`` or
``{"ok": false, "error": <name>, "message": <str>, ...details}``.

Error names:

- ``"OffsetOutOfRange"``: details ``start``, ``end`` (this replica's committed range).
- ``"NotLeader"``: details ``leader_hint`` (node id, 0 = unknown).
- ``"Timeout"``: the operation did not finish in time (commit timeout, wait_for_leader).
- ``"BadRequest"``: a malformed request (unknown op, wrong argument types).
- ``"Error"``: anything else; ``message`` names the exception.

Operations (arguments -> results; all ints are plain msgpack ints):

- ``status`` -> ``id``, ``pid``, ``leader`` (0 = unknown), ``is_leader``, ``term``,
  ``commit_index``, ``applied_index``, ``first_index``, ``last_index``,
  ``start_offset`` (first readable offset), ``commit_offset`` (committed end offset:
  offsets below it are readable here), ``voters`` (sorted ids), ``progress`` (on the
  leader: ``[[id, match, next, state name], ...]``, else empty), ``peers`` (sorted ids
  the transport knows).
- ``append`` ``record: bin`` -> ``offset``. Acknowledged = committed on a majority.
- ``append_many`` ``records: [bin]`` -> ``offsets: [int | nil]`` and
  ``errors: [str | nil]`` (one slot per record; the whole list is proposed at once,
  pipelined). Always ``ok: true``; per-record failures are in ``errors``
  (the same error names as above).
- ``read`` ``offset: int`` -> ``record: bin``; ``OffsetOutOfRange`` beyond this
  replica's committed end (or below its start).
- ``read_range`` ``offset: int, max_records: int`` -> ``records: [bin]`` (committed
  records from ``offset``, at most ``max_records``; empty at the end) and ``next``
  (the offset after the last record returned).
- ``join`` ``id: int, addr: str`` -> (nothing). Leader only (else ``NotLeader``).
- ``leave`` ``id: int`` -> (nothing). Leader only.
- ``get_servers`` -> ``servers: [{"id": int, "address": str, "is_leader": bool}]``.
- ``wait_for_leader`` ``timeout_s: float`` -> ``leader: int``; ``Timeout`` otherwise.
- ``digest`` -> ``digest`` (hex SHA-256 over every committed entry of this replica's
  log from its first index: index, term, kind and payload), ``first_index``,
  ``commit_index``, ``commit_offset``. Two replicas whose logs hold the same committed
  entries give the same digest when they report the same first and commit index.
- ``snapshot`` -> ``start_offset``: moves the log start up to the applied index (a
  "log starts here" snapshot: members that lag behind it, or join later, are caught up
  by installing it). Reads below the new start then raise ``OffsetOutOfRange``.
- ``shutdown`` -> (nothing); the node replies, closes its log and exits with status 0.

Fail-stop: when the replication loop dies, or a read meets a corrupt segment (the reply
is then an ``Error`` naming the file), the node closes and exits with status 1. Start
it again: the log is cut at the corrupt segment and caught up from the leader.

`LogNodeClient` speaks this protocol (one REQ socket per call, so a timed-out call
never wedges the next one); `LogNode` starts and ends a node process by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from tests.support.proc import ManagedProcess, free_port
from zstream.replication import (
    DistributedLog,
    DistributedLogConfig,
    NotLeaderError,
    ProposalTimeoutError,
)
from zstream.storage import LogConfig, OffsetOutOfRange

__all__ = ["LogNode", "LogNodeClient", "LogNodeError", "main"]

# -- client side ---------------------------------------------------------------------------


class LogNodeError(Exception):
    """A control call answered ``ok: false``; ``error`` is the protocol's error name."""

    def __init__(self, error: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error
        self.details = details


class LogNodeClient:
    """Blocking client of one node's control socket."""

    def __init__(self, control_addr: str, context: zmq.Context[Any] | None = None) -> None:
        self.control_addr = control_addr
        self._context = context or zmq.Context.instance()

    def call(self, op: str, reply_timeout_s: float = 10.0, /, **args: Any) -> dict[str, Any]:
        """Send one request ``{"op": op, **args}``; return the reply map or raise
        `LogNodeError` / TimeoutError (no reply within ``reply_timeout_s``, positional)."""
        timeout_s = reply_timeout_s
        sock = self._context.socket(zmq.REQ)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.control_addr)
            sock.send(msgpack.packb({"op": op, **args}, use_bin_type=True))
            if not sock.poll(int(timeout_s * 1000)):
                raise TimeoutError(f"{op} to {self.control_addr}: no reply in {timeout_s}s")
            reply: dict[str, Any] = msgpack.unpackb(sock.recv(), raw=False)
        finally:
            sock.close(linger=0)
        if not reply.get("ok"):
            details = {k: v for k, v in reply.items() if k not in ("ok", "error", "message")}
            raise LogNodeError(str(reply.get("error")), str(reply.get("message")), details)
        return reply

    # Convenience wrappers (the same names as the protocol's operations).
    def status(self, timeout_s: float = 5.0) -> dict[str, Any]:
        return self.call("status", timeout_s)

    def append(self, record: bytes, timeout_s: float = 10.0) -> int:
        return int(self.call("append", timeout_s, record=record)["offset"])

    def read(self, offset: int, timeout_s: float = 5.0) -> bytes:
        return bytes(self.call("read", timeout_s, offset=offset)["record"])

    def join(self, node_id: int, addr: str, timeout_s: float = 10.0) -> None:
        self.call("join", timeout_s, id=node_id, addr=addr)

    def leave(self, node_id: int, timeout_s: float = 10.0) -> None:
        self.call("leave", timeout_s, id=node_id)

    def get_servers(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        servers: list[dict[str, Any]] = self.call("get_servers", timeout_s)["servers"]
        return servers

    def wait_for_leader(self, timeout_s: float) -> int:
        return int(self.call("wait_for_leader", timeout_s + 5.0, timeout_s=timeout_s)["leader"])


class LogNode:
    """One lognode child process, always ended by PID. Addresses default to free
    ports on 127.0.0.1; ``exec_prefix`` (e.g. ``ip netns exec NS``) and ``env`` let
    a fault test place it elsewhere. The addresses and data directory stay the
    same across restarts."""

    def __init__(
        self,
        node_id: int,
        data_dir: Path,
        log_dir: Path,
        *,
        bootstrap: bool = False,
        extra_args: Iterable[str] = (),
        bind_addr: str | None = None,
        control_addr: str | None = None,
        exec_prefix: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.data_dir = data_dir
        self.bind_addr = bind_addr or f"tcp://127.0.0.1:{free_port()}"
        self.control_addr = control_addr or f"tcp://127.0.0.1:{free_port()}"
        self.bootstrap = bootstrap
        argv = [
            *exec_prefix,
            sys.executable,
            "-m",
            "tests.support.lognode",
            "--id",
            str(node_id),
            "--data-dir",
            str(data_dir),
            "--bind",
            self.bind_addr,
            "--control",
            self.control_addr,
            *(("--bootstrap",) if bootstrap else ()),
            *extra_args,
        ]
        root = Path(__file__).resolve().parents[2]
        child_env = {**os.environ, **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(root), child_env.get("PYTHONPATH")])
        )
        self.process = ManagedProcess(f"lognode-{node_id}", argv, log_dir, env=child_env, cwd=root)
        self.client = LogNodeClient(self.control_addr)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.running()

    def start(self, ready_timeout_s: float = 20.0) -> None:
        """Start the process and wait until its control socket answers `status`."""
        if not self.process.running():
            # One that exited by itself (fail-stop) is reaped and its output file closed.
            self.process.stop()
        self.process.start()
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if not self.process.running():
                raise RuntimeError(f"lognode {self.node_id} exited:\n{self.process.tail()}")
            try:
                self.client.status(timeout_s=0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    tail = self.process.tail()
                    self.process.stop()  # never leave a half-started child running
                    raise TimeoutError(f"lognode {self.node_id} not ready:\n{tail}") from None

    def stop(self) -> None:
        """SIGTERM (SIGKILL after a grace period), by PID."""
        self.process.stop()

    def kill(self) -> None:
        """SIGKILL, by PID, and reap."""
        self.process.kill()


# -- server side ---------------------------------------------------------------------------


def _error(name: str, exc: BaseException, **details: Any) -> dict[str, Any]:
    return {"ok": False, "error": name, "message": f"{type(exc).__name__}: {exc}", **details}


def _translate(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, OffsetOutOfRange):
        return _error("OffsetOutOfRange", exc, start=exc.start, end=exc.end)
    if isinstance(exc, NotLeaderError):
        return _error("NotLeader", exc, leader_hint=exc.leader_hint)
    if isinstance(exc, ProposalTimeoutError | TimeoutError):
        return _error("Timeout", exc)
    if isinstance(exc, KeyError | TypeError | ValueError):
        return _error("BadRequest", exc)
    return _error("Error", exc)


def _error_name(exc: BaseException) -> str:
    return str(_translate(exc)["error"])


class _Server:
    def __init__(self, dlog: DistributedLog, node_id: int) -> None:
        self.dlog = dlog
        self.node_id = node_id
        self.stopping = asyncio.Event()
        self.ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "status": self.status,
            "append": self.append,
            "append_many": self.append_many,
            "read": self.read,
            "read_range": self.read_range,
            "join": self.join,
            "leave": self.leave,
            "get_servers": self.get_servers,
            "wait_for_leader": self.wait_for_leader,
            "digest": self.digest,
            "snapshot": self.snapshot,
            "shutdown": self.shutdown,
        }

    async def handle(self, raw: bytes) -> dict[str, Any]:
        try:
            req = msgpack.unpackb(raw, raw=False)
            if not isinstance(req, dict):
                raise TypeError("request must be a map")
            op = self.ops.get(req.get("op"))  # type: ignore[arg-type]
            if op is None:
                raise KeyError(f"unknown op {req.get('op')!r}")
            return await op(req)
        except Exception as exc:
            return _translate(exc)

    async def status(self, req: dict[str, Any]) -> dict[str, Any]:
        st = self.dlog.status()
        return {"ok": True, "id": self.node_id, "pid": os.getpid(), **st}

    async def append(self, req: dict[str, Any]) -> dict[str, Any]:
        record = req["record"]
        if not isinstance(record, bytes):
            raise TypeError("record must be bin")
        return {"ok": True, "offset": await self.dlog.append(record)}

    async def append_many(self, req: dict[str, Any]) -> dict[str, Any]:
        records = req["records"]
        if not isinstance(records, list) or not all(isinstance(r, bytes) for r in records):
            raise TypeError("records must be a list of bin")
        results = await asyncio.gather(
            *(self.dlog.append(r) for r in records), return_exceptions=True
        )
        offsets: list[int | None] = []
        errors: list[str | None] = []
        for res in results:
            if isinstance(res, BaseException):
                if not isinstance(res, Exception):
                    raise res
                offsets.append(None)
                errors.append(_error_name(res))
            else:
                offsets.append(res)
                errors.append(None)
        return {"ok": True, "offsets": offsets, "errors": errors}

    async def read(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "record": await self.dlog.read(int(req["offset"]))}

    async def read_range(self, req: dict[str, Any]) -> dict[str, Any]:
        offset = int(req["offset"])
        records = await self.dlog.read_range(offset, int(req["max_records"]))
        return {"ok": True, "records": records, "next": offset + len(records)}

    async def join(self, req: dict[str, Any]) -> dict[str, Any]:
        await self.dlog.join(int(req["id"]), str(req["addr"]))
        return {"ok": True}

    async def leave(self, req: dict[str, Any]) -> dict[str, Any]:
        await self.dlog.leave(int(req["id"]))
        return {"ok": True}

    async def get_servers(self, req: dict[str, Any]) -> dict[str, Any]:
        servers = [
            {"id": s.id, "address": s.address, "is_leader": s.is_leader}
            for s in self.dlog.get_servers()
        ]
        return {"ok": True, "servers": servers}

    async def wait_for_leader(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "leader": await self.dlog.wait_for_leader(float(req["timeout_s"]))}

    async def digest(self, req: dict[str, Any]) -> dict[str, Any]:
        log = self.dlog.raft_log
        st = self.dlog.status()
        first, commit = log.first_index(), min(st["commit_index"], log.last_index())
        h = hashlib.sha256()
        index = first
        while index <= commit:
            for e in log.entries(index, commit + 1, 4 << 20):
                h.update(f"{e.index}:{e.term}:{int(e.type)}:{len(e.data)}:".encode())
                h.update(e.data)
                index = e.index + 1
        return {
            "ok": True,
            "digest": h.hexdigest(),
            "first_index": first,
            "commit_index": commit,
            "commit_offset": st["commit_offset"],
        }

    async def snapshot(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "start_offset": await self.dlog.snapshot()}

    async def shutdown(self, req: dict[str, Any]) -> dict[str, Any]:
        self.stopping.set()
        return {"ok": True}


async def _serve(args: argparse.Namespace) -> None:
    config = DistributedLogConfig(
        local_id=args.id,
        bootstrap=args.bootstrap,
        bind_addr=args.bind,
        heartbeat_timeout_ms=args.heartbeat_ms,
        election_timeout_ms=args.election_ms,
        commit_timeout_ms=args.commit_timeout_ms,
        fsync=not args.no_fsync,
        log_config=LogConfig(segment_bytes=args.segment_bytes),
    )
    dlog = DistributedLog(Path(args.data_dir), config)
    await dlog.start()
    server = _Server(dlog, args.id)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.stopping.set)
    failed = asyncio.ensure_future(dlog.failed.wait())
    failed.add_done_callback(lambda _: server.stopping.set())
    loop.add_signal_handler(signal.SIGINT, server.stopping.set)
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(args.control)
    print(f"lognode ready id={args.id}", flush=True)
    try:
        while not server.stopping.is_set():
            recv = asyncio.ensure_future(sock.recv())
            stop = asyncio.ensure_future(server.stopping.wait())
            try:
                await asyncio.wait([recv, stop], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not recv.done():
                    recv.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stop
            if recv.cancelled() or not recv.done():
                break
            reply = await server.handle(recv.result())
            await sock.send(msgpack.packb(reply, use_bin_type=True))
            if dlog.failed.is_set():
                break
    finally:
        failed.cancel()
        sock.close(linger=0)
        ctx.term()
        await dlog.close()
    if dlog.failed.is_set():
        sys.exit("lognode: replication failed (see the log above)")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(prog="lognode", description=__doc__.split("\n\n")[0])
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--bind", required=True, help="peer address, tcp://host:port")
    p.add_argument("--control", required=True, help="control REP address, tcp://host:port")
    p.add_argument("--bootstrap", action="store_true")
    p.add_argument("--heartbeat-ms", type=int, default=50)
    p.add_argument("--election-ms", type=int, default=500)
    p.add_argument("--commit-timeout-ms", type=int, default=5000)
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--segment-bytes", type=int, default=LogConfig().segment_bytes)
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.run(_serve(args))
    except ImportError:
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
