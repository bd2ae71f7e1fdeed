"""`DistributedLog`: the seed project's replicated-log API, in Python, for one Raft group.

One process runs one `DistributedLog`: a `PeerTransport` on ``bind_addr``, a `RaftHost`
with one group (id 1) whose `RaftLog` is a partition log (``records=True``), and a
members file. Each `append` is one record, stored as a one-record batch, so offsets are
dense from 0 and every replica agrees on them.

Data directory::

    <data_dir>/group/     the group's RaftLog (log/, raft-state)
    <data_dir>/members    msgpack map {node id (str): peer address}, atomic replace

Membership: ``join(id, addr)`` (on the leader) adds a voter through a configuration
change whose ``context`` is the new member's address, so every replica learns it from
the log; a blank node learns its leader's address from the leader's liveness heartbeat.
Timeouts map onto ticks: one tick = ``heartbeat_timeout_ms``, and the election timeout
is ``election_timeout_ms`` rounded to ticks (randomized up to twice that by Raft).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from zstream.storage import (
    LogConfig,
    OffsetOutOfRange,
    atomic_write,
    decode_records,
    encode_batch,
    read_file_if_exists,
)

from ._codec import decode_conf_change
from ._errors import ConfChangeInProgressError, ConfigError
from ._host import GroupHandle, HostConfig, RaftHost
from ._raft import RaftConfig
from ._raftlog_disk import RaftLog, RaftLogError
from ._transport import PeerTransport
from ._types import ConfChange, ConfChangeType, ConfState, Entry, EntryType, NodeId

__all__ = ["BlockingDistributedLog", "DistributedLog", "DistributedLogConfig", "Server"]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)
_GROUP = 1
# Bytes per log read when serving read_range (one pread per segment touched).
_READ_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class DistributedLogConfig:
    """Configuration of one `DistributedLog` node (the seed's Config, with units)."""

    local_id: NodeId
    bind_addr: str  # tcp://host:port; port 0 binds a free port
    bootstrap: bool = False  # the first node of a new cluster: a one-voter group
    # One Raft tick; the leader heartbeats every tick. 50 ms as in HostConfig.
    heartbeat_timeout_ms: int = 50
    # Followers campaign after a randomized [1x, 2x) of this without a leader.
    election_timeout_ms: int = 500
    # An append not committed within this fails with ProposalTimeoutError.
    commit_timeout_ms: int = 5000
    fsync: bool = True  # off only for tests and benchmarks that accept losing data
    log_config: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if type(self.local_id) is not int or self.local_id < 1:
            raise ConfigError(f"local_id must be an int >= 1, got {self.local_id!r}")
        if not self.bind_addr.startswith("tcp://"):
            raise ConfigError(f"bind_addr must be tcp://host:port, got {self.bind_addr!r}")
        if self.heartbeat_timeout_ms < 1 or self.commit_timeout_ms < 1:
            raise ConfigError("timeouts must be >= 1 ms")
        if self.election_timeout_ms < 2 * self.heartbeat_timeout_ms:
            raise ConfigError("election_timeout_ms must be >= 2 x heartbeat_timeout_ms")

    @property
    def election_tick(self) -> int:
        return max(2, round(self.election_timeout_ms / self.heartbeat_timeout_ms))


@dataclass(frozen=True, slots=True)
class Server:
    """A member of the log's cluster, as get_servers reports it."""

    id: NodeId
    address: str
    is_leader: bool


class DistributedLog:
    """A replicated log of records (see the module docstring). Async API; use
    `BlockingDistributedLog` from threads without an event loop."""

    def __init__(self, data_dir: Path | str, config: DistributedLogConfig) -> None:
        self._dir = Path(data_dir)
        self._cfg = config
        self._transport: PeerTransport | None = None
        self._host: RaftHost | None = None
        self._handle: GroupHandle | None = None
        self._log: RaftLog | None = None
        self._task: asyncio.Task[None] | None = None
        self._members: dict[NodeId, str] = {}
        self._address = ""
        self._leader_event: asyncio.Event | None = None
        self._end_cache = (-1, 0)  # (applied index, committed end offset)
        # Set when the replication loop died of an error (fail-stop: restart the node).
        self.failed = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind, open the log, and start replicating."""
        cfg = self._cfg
        self._dir.mkdir(parents=True, exist_ok=True)
        transport = PeerTransport(cfg.local_id, cfg.bind_addr)
        self._address = await transport.start()
        self._transport = transport
        try:
            log = RaftLog.open(self._dir / "group", cfg.log_config, records=True)
        except BaseException:
            await transport.close()
            raise
        self._log = log
        fresh = log.last_index() == 0 and log.initial_state()[0].term == 0
        if cfg.bootstrap:
            log.bootstrap(ConfState(voters=frozenset({cfg.local_id})))
        raw = read_file_if_exists(self._dir / "members")
        if raw:
            self._members = {int(k): v for k, v in msgpack.unpackb(raw, raw=False).items()}
        for nid, addr in self._members.items():
            if nid != cfg.local_id:
                transport.add_peer(nid, addr)
        host = RaftHost(
            cfg.local_id,
            transport,
            HostConfig(
                tick_ms=cfg.heartbeat_timeout_ms,
                election_tick=cfg.election_tick,
                heartbeat_tick=1,
                fsync=cfg.fsync,
                proposal_timeout_ms=cfg.commit_timeout_ms,
            ),
        )
        host.on_peer_address(self._learn_peer)
        self._host = host
        self._leader_event = asyncio.Event()
        handle = host.add_group(
            _GROUP,
            log,
            RaftConfig(id=cfg.local_id, election_tick=cfg.election_tick, heartbeat_tick=1),
            on_apply=self._on_apply,
        )
        handle.on_leader_change(self._leader_changed)
        self._handle = handle
        self._task = asyncio.create_task(host.run(), name=f"dlog-{cfg.local_id}")
        self._task.add_done_callback(self._host_done)
        if cfg.bootstrap and fresh:
            handle.campaign()  # a one-voter group elects itself at once

    async def close(self) -> None:
        """Stop replicating and close every file and socket. Idempotent."""
        host, task = self._host, self._task
        self._host = self._task = None
        if host is not None:
            await host.close()
        if task is not None:
            await task
        if self._transport is not None:
            await self._transport.close()
            self._transport = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> DistributedLog:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- records -------------------------------------------------------------------------

    async def append(self, record: bytes) -> int:
        """Replicate one record; returns its offset once committed on a majority.
        Raises NotLeaderError (with a hint) on a follower, ProposalTimeoutError after
        ``commit_timeout_ms``, HostStoppedError once closed."""
        handle, log = self._parts()
        index = await handle.propose(encode_batch([(None, record)]))
        return log.offset_after(index) - 1

    async def read(self, offset: int) -> bytes:
        """The record at ``offset``; raises storage.OffsetOutOfRange unless this replica
        holds it committed."""
        _, log = self._parts()
        start, end = log.log_start_offset, self.commit_offset()
        if not start <= offset < end:
            raise OffsetOutOfRange(offset, start, end)
        return (await self.read_range(offset, 1))[0]

    async def read_range(self, offset: int, max_records: int) -> list[bytes]:
        """Up to ``max_records`` committed records from ``offset`` (empty at the
        committed end); raises OffsetOutOfRange below the start or beyond the end.
        A corrupt segment met here raises RaftLogError and fail-stops the log
        (`failed` is set; the next open cuts the log there and catches up)."""
        try:
            return self._read_range(offset, max_records)
        except RaftLogError:
            self.failed.set()
            raise

    def _read_range(self, offset: int, max_records: int) -> list[bytes]:
        _, log = self._parts()
        start, end = log.log_start_offset, self.commit_offset()
        if not start <= offset <= end:
            raise OffsetOutOfRange(offset, start, end)
        out: list[bytes] = []
        while len(out) < max_records and offset < end:
            before = offset
            for base, batch in log.read_batches(offset, _READ_BYTES):
                # read_batches checked each entry's CRC, which covers the whole batch.
                records = decode_records(batch, verify=False)
                take = min(max_records - len(out), end - offset, base + len(records) - offset)
                if take <= 0:
                    break
                out.extend(r.value for r in records[offset - base : offset - base + take])
                offset += take
            if offset == before:  # pragma: no cover - the log holds no batch at offset
                raise OffsetOutOfRange(offset, log.log_start_offset, end)
        return out

    def commit_offset(self) -> int:
        """The committed end offset of this replica: offsets below it are readable."""
        handle, log = self._parts()
        applied = handle.applied_index
        if self._end_cache[0] != applied:
            self._end_cache = (applied, log.offset_after(applied))
        return self._end_cache[1]

    async def snapshot(self) -> int:
        """Move the log start up to the applied index (a "log starts here" snapshot,
        what a lagging or new member then receives); returns the new start offset."""
        handle, log = self._parts()
        host = self._require(self._host)
        async with host.exclusive():  # no sync thread may run while segments go
            log.sync()
            log.compact(handle.applied_index)
        return log.log_start_offset

    # -- membership ----------------------------------------------------------------------

    async def join(self, node_id: NodeId, addr: str) -> None:
        """Add ``node_id`` at peer address ``addr`` as a voter (call on the leader)."""
        handle, _ = self._parts()
        transport = self._require(self._transport)
        if node_id == self._cfg.local_id:
            return
        if node_id in handle.conf_state.all_voters() and self._members.get(node_id) == addr:
            return
        transport.add_peer(node_id, addr)
        self._remember(node_id, addr)
        cc = ConfChange(((ConfChangeType.ADD_VOTER, node_id),), addr.encode())
        await self._change(cc)

    async def leave(self, node_id: NodeId) -> None:
        """Remove ``node_id`` from the cluster (call on the leader)."""
        handle, _ = self._parts()
        if node_id not in handle.conf_state.members():
            return
        await self._change(ConfChange(((ConfChangeType.REMOVE_NODE, node_id),)))

    async def _change(self, cc: ConfChange) -> None:
        handle, _ = self._parts()
        deadline = time.monotonic() + self._cfg.commit_timeout_ms / 1000
        while True:
            await self._settle(deadline)
            try:
                await handle.propose_conf_change(cc)
                break
            except ConfChangeInProgressError:
                if time.monotonic() > deadline:
                    raise
                await handle.wait_committed(handle.applied_index + 1)
        await self._settle(deadline)

    async def _settle(self, deadline: float) -> None:
        """Wait until the configuration is not joint (the leader leaves it by itself)."""
        handle, _ = self._parts()
        while handle.conf_state.joint:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the configuration change did not settle")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(handle.wait_committed(handle.applied_index + 1), left)

    def get_servers(self) -> list[Server]:
        """Every member of the configuration, its address and whether it leads."""
        handle, _ = self._parts()
        leader = handle.leader
        me = self._cfg.local_id
        out = []
        cs = handle.conf_state
        peers = self._require(self._transport).peers()
        for nid in sorted(cs.all_voters() | cs.learners):
            addr = self._address if nid == me else self._members.get(nid, peers.get(nid, ""))
            out.append(Server(nid, addr, nid == leader))
        return out

    async def wait_for_leader(self, timeout_s: float) -> NodeId:
        """Wait until a leader is known; returns its id or raises TimeoutError."""
        handle, _ = self._parts()
        event = self._require(self._leader_event)
        deadline = time.monotonic() + timeout_s
        while handle.leader == 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no leader within {timeout_s}s")
            event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)
        return handle.leader

    # -- introspection -------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The bound peer address."""
        return self._address

    @property
    def raft_log(self) -> RaftLog:
        return self._parts()[1]

    @property
    def group(self) -> GroupHandle:
        return self._parts()[0]

    def status(self) -> dict[str, Any]:
        """A plain summary (lognode's ``status``)."""
        handle, log = self._parts()
        return {
            "leader": handle.leader,
            "is_leader": handle.is_leader,
            "term": handle.term,
            "commit_index": handle.commit_index,
            "applied_index": handle.applied_index,
            "first_index": log.first_index(),
            "last_index": log.last_index(),
            "start_offset": log.log_start_offset,
            "commit_offset": self.commit_offset(),
            "voters": sorted(handle.conf_state.all_voters()),
            "progress": [[nid, *p] for nid, p in handle.progress().items()],
            "peers": sorted(self._require(self._transport).peers()),
        }

    # -- internals -----------------------------------------------------------------------

    def _parts(self) -> tuple[GroupHandle, RaftLog]:
        if self._handle is None or self._log is None or self._host is None:
            raise ConfigError("the DistributedLog is not started (or closed)")
        return self._handle, self._log

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise ConfigError("the DistributedLog is not started (or closed)")
        return value

    def _remember(self, node_id: NodeId, addr: str) -> None:
        if self._members.get(node_id) != addr:
            self._members[node_id] = addr
            data = msgpack.packb({str(k): v for k, v in self._members.items()})
            atomic_write(self._dir / "members", data)

    def _learn_peer(self, node_id: NodeId, addr: str) -> None:
        handle = self._handle
        transport = self._transport
        if handle is None or transport is None:
            return
        cs = handle.conf_state
        # A blank node learns anyone (its leader contacts it first); a member learns
        # only members, so a removed node's heartbeats do not bring it back.
        if not cs.members() or node_id in cs.members():
            transport.add_peer(node_id, addr)
            self._remember(node_id, addr)

    def _on_apply(self, entries: list[Entry]) -> None:
        me = self._cfg.local_id
        transport = self._transport
        for e in entries:
            if e.type != EntryType.CONF_CHANGE:
                continue
            cc = decode_conf_change(e.data)
            for typ, nid in cc.changes:
                if nid == me or transport is None:
                    continue
                if typ == ConfChangeType.REMOVE_NODE:
                    continue  # kept until the joint configuration is left
                if cc.context:
                    addr = cc.context.decode()
                    transport.add_peer(nid, addr)
                    self._remember(nid, addr)
        handle = self._handle
        if handle is not None and transport is not None and not handle.conf_state.joint:
            members = handle.conf_state.members()
            for nid in list(transport.peers()):
                if members and nid not in members:
                    transport.remove_peer(nid)

    def _host_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            _log.critical("replication stopped: %r", task.exception(), exc_info=task.exception())
            self.failed.set()

    def _leader_changed(self, leader: NodeId, term: int) -> None:
        if self._leader_event is not None:
            self._leader_event.set()


class BlockingDistributedLog:
    """`DistributedLog` for plain threads: runs its event loop in a thread it owns
    (ended by `close`). Same methods, blocking."""

    def __init__(self, data_dir: Path | str, config: DistributedLogConfig) -> None:
        try:
            import uvloop

            self._loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a dependency
            self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"dlog-loop-{config.local_id}", daemon=True
        )
        self._thread.start()
        self._log = DistributedLog(data_dir, config)
        try:
            self._call(self._log.start())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, _T], timeout_s: float | None = None) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def append(self, record: bytes) -> int:
        return self._call(self._log.append(record))

    def read(self, offset: int) -> bytes:
        return self._call(self._log.read(offset))

    def join(self, node_id: NodeId, addr: str) -> None:
        self._call(self._log.join(node_id, addr))

    def leave(self, node_id: NodeId) -> None:
        self._call(self._log.leave(node_id))

    def wait_for_leader(self, timeout_s: float) -> NodeId:
        return self._call(self._log.wait_for_leader(timeout_s))

    def get_servers(self) -> list[Server]:
        async def get() -> list[Server]:
            return self._log.get_servers()

        return self._call(get())

    @property
    def address(self) -> str:
        return self._log.address

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self._log.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BlockingDistributedLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
