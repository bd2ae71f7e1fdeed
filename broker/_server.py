"""The broker process: discovery, the controller, partitions, the client front
end, metrics, and graceful shutdown, on one uvloop event loop.

Start-up: bind the peer transport; start discovery (etcd, static peers, or the
embedded single node); on a fresh data dir wait until ``bootstrap_expect``
brokers are known, then form the controller group (group 0) whose voters are the
lowest ids among them, at most three (the others join it as learners); on a
restart the group's membership comes from its own log. Open the partition groups
the controller places here; serve clients.

The controller leader registers every live broker in the controller state (with
its addresses, so that peers are known even while etcd is away), and adds brokers
beyond the voters as learners of group 0 so that every broker holds the metadata.

On SIGTERM or SIGINT: stop taking requests, hand leadership of every group this
broker leads to another live replica, close the groups, deregister, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack

from zstream import replication, storage
from zstream.broker._acl import AclTable
from zstream.broker._config import BrokerConfig
from zstream.broker._controller import (
    CONTROLLER_GROUP_ID,
    REBALANCE_ELECTION_MS,
    ControllerState,
    PartitionAssignment,
    TopicRecord,
    acl_add_command,
    acl_remove_command,
    add_partitions_command,
    allocate_producer_id_command,
    alter_topic_configs_command,
    commit_offsets_command,
    complete_reassignment_command,
    create_topic_command,
    decommission_broker_command,
    delete_topic_command,
    expire_offsets_command,
    group_delete_command,
    group_expire_command,
    group_join_or_update_command,
    group_leave_command,
    heartbeat_interval_ms,
    quota_set_command,
    reassign_partition_command,
    rebalance_command,
    register_broker_command,
    remove_broker_command,
    validate_topic_configs,
)
from zstream.broker._discovery import (
    BrokerInfo,
    EtcdRegistry,
    Members,
    StaticRegistry,
    parse_endpoints,
)
from zstream.broker._frontend import Frontend
from zstream.broker._groups import Sessions
from zstream.broker._metrics import BrokerMetrics
from zstream.broker._partitions import PartitionManager, RaftReplica, translate_raft_error
from zstream.broker._reassign import (
    Reached,
    ReassignedReport,
    Transfer,
    decode_report,
    encode_report,
    next_step,
)
from zstream.clients import (
    Acks,
    AclEntry,
    CommitOffsetsRequest,
    CreateTopicRequest,
    FetchOffsetsRequest,
    GroupHeartbeatRequest,
    InvalidRequestError,
    NotControllerError,
    NotLeaderError,
    QuotaLimits,
    UnavailableError,
    UnknownMemberError,
    UnknownPartitionError,
    UnknownServerError,
    UnknownTopicError,
    ZStreamError,
)
from zstream.clients._protocol import (
    MIN_SESSION_TIMEOUT_MS,
    AddPartitionsRequest,
    AlterTopicRequest,
    Buffer,
    DecommissionBrokerRequest,
    ReassignPartitionRequest,
    RebalanceRequest,
)

__all__ = ["Broker", "Controller", "GroupCoordinator"]

log = logging.getLogger("zstream.broker")

# Voters of the controller group: three tolerate one failure, as KRaft's default.
MAX_CONTROLLER_VOTERS = 3
# Snapshot the controller state after this many applied commands.
_SNAPSHOT_EVERY = 64
# Compact the controller's Raft log to its latest snapshot once this many entries sit
# below it (consumer commits make group 0 a busy log). A follower further behind than
# the new log start receives the state as a Raft snapshot: a few KB to a few MB.
_COMPACT_AFTER = 4096
_DUTY_INTERVAL_S = 1.0
# How often the controller leader looks for members past their session timeout: a
# fifth of the shortest allowed session, so expiry is late by at most that. (Other
# brokers only look every half duty interval whether they lead yet.)
_SESSION_CHECK_S = MIN_SESSION_TIMEOUT_MS / 1000 / 5
_CATCH_UP_TIMEOUT_S = 5.0
# A restarted broker waits this long, at most, for the controller state to catch up
# before serving clients (checking every _METADATA_POLL_S).
_METADATA_CATCH_UP_S = 10.0
_METADATA_POLL_S = 0.02
# Reassignments: how often each partition leader takes the next step of the walks it
# leads, and how often it repeats a report the controller has not acted on yet.
_REASSIGN_INTERVAL_S = 0.2
_REPORT_EVERY_S = 1.0
# A learner this close to the commit index (in entries) is promoted: under continuous
# produce it never reaches the very end, and a joint configuration commits without
# it anyway (the old voters' majority and the new one's overlap in the others).
_LEARNER_MAX_LAG_ENTRIES = 256
# How often the controller leader takes the next step of the moves it leads
# (decommission, dead-broker re-placement, rebalance).
_MOVES_EVERY_S = 1.0


class Controller:
    """Group 0: the controller state machine, replicated by Raft on the host.

    Every broker applies every command (``on_apply``), so any broker can answer
    metadata; only the group's leader accepts commands. The state is snapshotted
    to ``controller-state`` every ``_SNAPSHOT_EVERY`` commands (and at shutdown);
    a restart restores it and replays the log after it."""

    def __init__(
        self, broker_id: int, data_dir: Path, *, compact_after: int = _COMPACT_AFTER
    ) -> None:
        self._broker_id = broker_id
        self._compact_after = compact_after
        self._file_stale = False
        self._snapshot_path = data_dir / "controller-state"
        self._dir = data_dir / "groups" / str(CONTROLLER_GROUP_ID)
        raw = storage.read_file_if_exists(self._snapshot_path)
        self.state = ControllerState() if raw is None else ControllerState.restore(raw)
        self._snapshot_index = self.state.applied_index
        self.log: replication.RaftLog | None = None
        self.handle: replication.GroupHandle | None = None
        self._host: replication.RaftHost | None = None
        # Proposals of this broker waiting for their command's result, by the token
        # `propose` adds to the command ("req"); apply ignores the key.
        self._waiting: dict[int, asyncio.Future[object]] = {}
        self._caught_up_term: int | None = None
        self.changed = asyncio.Event()

    def is_fresh(self) -> bool:
        """No controller log here yet (a new broker)."""
        return not (self._dir / "raft-state").exists() and not (self._dir / "log").exists()

    def start(
        self,
        host: replication.RaftHost,
        raft_config: replication.RaftConfig,
        voters: frozenset[int] | None,
    ) -> None:
        """Open group 0; ``voters`` bootstraps a fresh group (None: wait to be added)."""
        fresh = self.is_fresh()
        raft_log = replication.RaftLog.open(self._dir, storage.LogConfig(), records=False)
        self.log = raft_log
        self._host = host
        snap = raft_log.snapshot()
        if snap.metadata.index > self.state.applied_index and snap.data:
            # The log was compacted (or a leader's snapshot installed) past the saved
            # state: a crash fell between the two writes. The log's snapshot wins.
            self._restore(snap)
        self._replay(raft_log)
        if fresh and voters is not None:
            raft_log.bootstrap(replication.ConfState(voters=voters))
        self.handle = host.add_group(
            CONTROLLER_GROUP_ID,
            raft_log,
            raft_config,
            on_apply=self._on_apply,
            on_snapshot=self._on_snapshot,
        )
        self.handle.on_leader_change(
            lambda leader, term: log.info("controller leader=%d term=%d", leader, term)
        )
        if fresh and voters is not None and min(voters) == self._broker_id:
            self.handle.campaign()
        self.changed.set()

    def _replay(self, raft_log: replication.RaftLog) -> None:
        """Apply what the log says was applied but the snapshot does not hold."""
        lo, hi = self.state.applied_index + 1, raft_log.applied_index + 1
        lo = max(lo, raft_log.first_index())
        while lo < hi:
            entries = raft_log.entries(lo, hi, 4 * 1024 * 1024)
            self._apply(entries)
            lo = entries[-1].index + 1

    def _apply(self, entries: Sequence[replication.Entry]) -> None:
        for e in entries:
            if e.type == replication.EntryType.NORMAL and e.data:
                result = self.state.apply(e.index, e.data)
                if self._waiting:
                    self._deliver(e.data, result)
        self.changed.set()

    def _restore(self, snap: replication.Snapshot) -> None:
        self.state = ControllerState.restore(snap.data)
        self._file_stale = True  # the next save_snapshot writes it, forced or not
        self.changed.set()

    def _on_snapshot(self, snap: replication.Snapshot) -> None:
        """The leader sent the state itself (we were behind its log start)."""
        log.info("controller state installed from a snapshot at index %d", snap.metadata.index)
        self._restore(snap)

    def _on_apply(self, entries: list[replication.Entry]) -> None:
        self._apply(entries)

    def _deliver(self, data: bytes, result: object) -> None:
        """Hand a command's result to this broker's proposal waiting for it, if any."""
        try:
            cmd = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except ValueError:
            return
        token = cmd.get("req") if type(cmd) is dict else None
        fut = self._waiting.pop(token, None) if type(token) is int else None
        if fut is not None and not fut.done():
            fut.set_result(result)

    @property
    def leader(self) -> int | None:
        return (self.handle.leader or None) if self.handle is not None else None

    @property
    def is_leader(self) -> bool:
        return self.handle is not None and self.handle.is_leader

    @property
    def term(self) -> int:
        return self.handle.term if self.handle is not None else 0

    def check_leader(self) -> None:
        """Raise NotControllerError (with the leader hint) unless this broker leads group 0."""
        if self.handle is None:
            raise UnavailableError("the controller is starting")
        if not self.handle.is_leader:
            raise NotControllerError("not the controller", leader=self.leader)

    async def caught_up(self) -> None:
        """As the leader, wait until the state holds every command committed before
        this term (once per term: a ReadIndex round, then its apply). A new leader
        may not have applied the last commits of the old one yet; reads served from
        the state (group heartbeats, offsets) wait for this first."""
        self.check_leader()
        assert self.handle is not None
        term = self.handle.term
        if self._caught_up_term == term:
            return
        try:
            async with asyncio.timeout(_CATCH_UP_TIMEOUT_S):
                index = await self.handle.read_index()
                await self.handle.wait_committed(index)
        except TimeoutError as exc:
            raise UnavailableError("the controller is not caught up yet") from exc
        except replication.RaftError as exc:
            if isinstance(exc, replication.NotLeaderError):
                raise NotControllerError("not the controller", leader=self.leader) from exc
            raise translate_raft_error(exc) from exc
        if self.handle.is_leader and self.handle.term == term:
            self._caught_up_term = term
        else:
            raise NotControllerError("not the controller", leader=self.leader)

    async def propose(self, command: bytes) -> object:
        """Commit a command through group 0; its result, or its error raised."""
        if self.handle is None:
            raise UnavailableError("the controller is starting")
        if not self.handle.is_leader:
            raise NotControllerError("not the controller", leader=self.leader)
        # The result travels by a token in the command, not by index: the proposer
        # resumes only after apply, and by then any number of entries may have gone by.
        token = secrets.randbits(62)
        cmd = msgpack.unpackb(command, raw=False)
        cmd["req"] = token
        outcome: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting[token] = outcome
        try:
            await self.handle.propose(msgpack.packb(cmd, use_bin_type=True))
        except replication.RaftError as exc:
            if isinstance(exc, replication.NotLeaderError):
                raise NotControllerError("not the controller", leader=self.leader) from exc
            raise translate_raft_error(exc) from exc
        finally:
            self._waiting.pop(token, None)
        if not outcome.done():  # pragma: no cover - the host applies before it resolves
            raise UnavailableError("the controller applied the command but lost its result")
        result = outcome.result()
        if isinstance(result, ZStreamError):
            raise result
        return result

    async def save_snapshot(self, force: bool = False) -> None:
        due = self.state.applied_index - self._snapshot_index >= _SNAPSHOT_EVERY
        if not (force or due or self._file_stale):
            return
        if self.state.applied_index == self._snapshot_index and not self._file_stale:
            return
        self._file_stale = False
        data = self.state.snapshot()
        index = self.state.applied_index
        await asyncio.to_thread(storage.atomic_write, self._snapshot_path, data)
        self._snapshot_index = index
        await self._compact(index, data)

    async def _compact(self, index: int, data: bytes) -> None:
        """Move group 0's log start to ``index``, whose state is ``data``, once enough
        entries sit below it. The saved state file is written first, and `start`
        prefers the log's snapshot when it is newer, so a crash between is harmless."""
        raft_log, host = self.log, self._host
        if raft_log is None or host is None:
            return
        if index - raft_log.first_index() < self._compact_after or index > raft_log.applied_index:
            return
        async with host.exclusive():  # no pass, so nothing else touches group 0's log
            if self.log is not raft_log:
                return
            try:
                # fsyncs and unlinks: off the loop, like the host's own durable writes.
                await asyncio.to_thread(_sync_and_compact, raft_log, index, data)
            except replication.RaftError:
                log.exception("controller log compaction to %d failed", index)
                return
        log.info("controller log compacted to index %d", index)

    def close(self) -> None:
        if self.log is not None:
            with contextlib.suppress(replication.RaftError, storage.StorageError):
                self.log.close()
            self.log = None


def _sync_and_compact(raft_log: replication.RaftLog, index: int, data: bytes) -> None:
    raft_log.sync()
    raft_log.compact(index, data)


def _quiet_conf_change(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.info("controller group change failed: %s", fut.exception())


def _wall_ms() -> int:
    """Wall-clock milliseconds, for retention decisions carried in commands."""
    return int(time.time() * 1000)


class GroupCoordinator:
    """Consumer groups as the controller leader serves them: the group state lives in
    the controller's state machine; this adds the leader's in-memory session clocks
    (`Sessions`) and decides which heartbeats need a Raft proposal. Time is an input
    (monotonic seconds). On any other broker every call raises NotControllerError."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller
        self._sessions = Sessions()

    async def heartbeat(self, request: GroupHeartbeatRequest, now: float) -> dict[str, Any]:
        controller = self._controller
        await controller.caught_up()
        group, member_id = request.group, request.member_id
        if request.leave:
            self._sessions.forget(group, member_id)
            if controller.state.has_member(group, member_id):
                with contextlib.suppress(UnknownMemberError):  # it expired meanwhile
                    await controller.propose(group_leave_command(group, member_id, _wall_ms()))
            return {  # leaving twice, or an unknown member leaving, is fine
                "member_id": member_id,
                "member_epoch": -1,
                "heartbeat_interval_ms": heartbeat_interval_ms(request.session_timeout_ms),
                "assignment": {},
            }
        owned = [(t, p) for t, ps in request.owned.items() for p in ps]
        timeout = request.session_timeout_ms
        state = controller.state
        if request.topics is None and not state.has_member(group, member_id):
            # Removed (or never joined): no proposal needed to say so.
            raise UnknownMemberError(
                f"group {group!r} has no member {member_id!r}: join again with topics"
            )
        if state.heartbeat_changes_nothing(group, member_id, request.topics, timeout, owned):
            reply = state.heartbeat_reply(group, member_id)
        else:
            command = group_join_or_update_command(group, member_id, request.topics, timeout, owned)
            result = await controller.propose(command)
            if not isinstance(result, dict):  # pragma: no cover - a controller bug
                raise UnknownServerError(f"group heartbeat applied as {result!r}")
            reply = result
        self._sessions.touch(group, member_id, controller.term, now)
        return reply

    async def commit_offsets(self, request: CommitOffsetsRequest) -> None:
        rows = [(t, p, o) for t, pairs in request.offsets.items() for p, o in pairs]
        await self._controller.propose(
            commit_offsets_command(request.group, request.member_id, rows, _wall_ms())
        )

    async def fetch_offsets(self, request: FetchOffsetsRequest) -> dict[str, Any]:
        await self._controller.caught_up()
        return self._controller.state.fetch_offsets(request.group, request.topics)

    async def list_groups(self) -> list[str]:
        await self._controller.caught_up()
        return self._controller.state.list_groups()

    async def describe_group(self, name: str) -> dict[str, Any]:
        await self._controller.caught_up()
        return self._controller.state.describe_group(name)

    async def delete_group(self, name: str) -> None:
        await self._controller.propose(group_delete_command(name))
        log.info("group deleted group=%s", name)

    async def expire_offsets(self, now_ms: int, retention_ms: int) -> list[str]:
        """As the leader, drop the groups with no members whose offsets are older than
        ``retention_ms`` (proposed only when some group qualifies); returns them."""
        controller = self._controller
        if not controller.is_leader or not controller.state.expired_offsets(now_ms, retention_ms):
            return []
        dropped = await controller.propose(expire_offsets_command(now_ms, retention_ms))
        assert isinstance(dropped, list)
        for name in dropped:
            log.info("group offsets expired group=%s", name)
        return dropped

    async def expire_silent(self, now: float) -> list[tuple[str, str]]:
        """As the leader, propose ``group_expire`` for every member silent longer than
        its session timeout; returns those expired. Not the leader: forget every
        clock (a later term starts them afresh)."""
        controller = self._controller
        handle = controller.handle
        if handle is None or not handle.is_leader:
            self._sessions.reset()
            return []
        members = controller.state.members()
        expired = []
        for group, member_id in self._sessions.expired(members, handle.term, now):
            try:
                await controller.propose(group_expire_command(group, member_id, _wall_ms()))
            except UnknownMemberError:
                pass  # it left meanwhile
            except ZStreamError as exc:
                log.info("session expiry deferred: %s", exc)
                break
            else:
                expired.append((group, member_id))
                log.info("group member expired group=%s member=%s", group, member_id)
            self._sessions.forget(group, member_id)
        return expired


class _Partition:
    """Wraps a replica to time commits for the metrics (the front end's view)."""

    def __init__(self, replica: RaftReplica, metrics: BrokerMetrics) -> None:
        self._replica = replica
        self._metrics = metrics

    @property
    def high_watermark(self) -> int:
        return self._replica.high_watermark

    @property
    def log_start_offset(self) -> int:
        return self._replica.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._replica.log_end_offset

    def check_leader(self) -> None:
        self._replica.check_leader()

    async def produce(self, batch: Buffer, acks: Acks, timeout_s: float) -> int:
        started = time.monotonic()
        base = await self._replica.produce(batch, acks, timeout_s)
        self._metrics.commit_latency.observe(time.monotonic() - started)
        return base

    def read(self, offset: int, max_bytes: int) -> list[memoryview]:
        return self._replica.read(offset, max_bytes)

    async def wait_beyond(self, offset: int, timeout_s: float) -> bool:
        return await self._replica.wait_beyond(offset, timeout_s)


class Broker:
    """One broker. ``await run()`` serves until `request_stop` (or cancellation)."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.me = BrokerInfo(config.broker_id, config.client_addr, config.peer_addr)
        self._stop = asyncio.Event()
        self.registry: EtcdRegistry | StaticRegistry = self._make_registry()
        self.controller = Controller(
            config.broker_id, config.data_dir, compact_after=config.controller_compact_after
        )
        self.metrics = BrokerMetrics(self._gauges)
        self.transport: replication.PeerTransport | None = None
        self.host: replication.RaftHost | None = None
        self.partitions: PartitionManager | None = None
        self.frontend: Frontend | None = None
        self.metrics_port: int | None = None
        self._membership_changed = asyncio.Event()
        self.groups = GroupCoordinator(self.controller)
        # Reassignment reports received as the controller leader, by group id.
        self._reports: dict[int, ReassignedReport] = {}
        self._reported_at: dict[int, float] = {}
        # As the controller leader: since when each registered broker is absent.
        self._absent_since: dict[int, float] = {}
        # Dead brokers' replicas were re-placed this term: an auto rebalance follows
        # once every move has finished.
        self._replacing = False

    def _make_registry(self) -> EtcdRegistry | StaticRegistry:
        cfg = self.config
        if cfg.discovery == "etcd":
            endpoints = parse_endpoints(",".join(cfg.etcd_endpoints))
            return EtcdRegistry(endpoints, cfg.cluster_name, self.me)
        if cfg.discovery == "static":
            peers = [BrokerInfo(p.broker_id, p.client_addr, p.peer_addr) for p in cfg.peers]
            return StaticRegistry(peers)
        return StaticRegistry([self.me])

    def _raft_config(self) -> replication.RaftConfig:
        return replication.RaftConfig(id=self.config.broker_id)

    def request_stop(self) -> None:
        self._stop.set()

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        tasks: list[asyncio.Task[Any]] = []
        if not cfg.secure and cfg.insecure:
            log.warning(
                "security is off (--insecure): anyone who reaches client=%s or peer=%s can "
                "read, write and delete every topic, or pose as a broker",
                cfg.client_addr,
                cfg.peer_addr,
            )
        transport = replication.PeerTransport(
            cfg.broker_id, cfg.peer_addr, security=cfg.peer_security()
        )
        await transport.start()
        self.transport = transport
        host = replication.RaftHost(
            cfg.broker_id,
            transport,
            replication.HostConfig(
                tick_ms=cfg.tick_ms, fsync=cfg.fsync, inline_sync_us=cfg.inline_sync_us
            ),
        )
        self.host = host
        host.on_peer_address(self._learn_peer)
        host.on_app_message(self._on_app_message)
        self.partitions = PartitionManager(
            cfg.broker_id, cfg.data_dir, host, self._raft_config, cfg.segment_bytes
        )
        self.registry.add_listener(self._on_members)
        try:
            tasks.append(asyncio.create_task(self.registry.run(), name="registry"))
            tasks.append(asyncio.create_task(host.run(), name="raft-host"))
            for b in self.controller.state.brokers.values():
                self._add_peer(b.id, b.peer_addr)
            voters: frozenset[int] | None = None
            if self.controller.is_fresh():
                # A static peer list names the whole cluster: all of it is expected.
                expect = max(cfg.bootstrap_expect, len(cfg.peers))
                members = await self._until_stopped(
                    self.registry.wait_for(lambda m: len(m) >= expect)
                )
                if members is None:
                    return
                chosen = sorted(members)[: min(MAX_CONTROLLER_VOTERS, expect)]
                voters = frozenset(chosen) if cfg.broker_id in chosen else None
                log.info("controller forming voters=%s", sorted(chosen))
            restarted = not self.controller.is_fresh()
            self.controller.start(host, self._raft_config(), voters)
            if cfg.broker_id in self.controller.state.removed:
                log.error(
                    "broker %d was decommissioned and removed from the cluster: refusing to "
                    "start (a new broker needs a new id and an empty data dir)",
                    cfg.broker_id,
                )
                return
            if restarted:
                await self._catch_up_metadata()
            self.frontend = Frontend(
                self,
                cfg.client_addr,
                max_message_bytes=cfg.max_message_bytes,
                max_in_flight_per_client=cfg.max_in_flight_per_client,
                heartbeat_ms=cfg.stream_heartbeat_ms,
                on_request=self.metrics.on_request,
                security=cfg.client_security(),
                super_users=cfg.super_users,
                max_connections_per_principal=cfg.max_connections_per_principal,
                connection_idle_ms=cfg.connection_idle_ms,
            )
            if cfg.metrics_addr is not None:
                mhost, _, mport = cfg.metrics_addr.removeprefix("tcp://").rpartition(":")
                self.metrics_port = self.metrics.serve(mhost, int(mport))
            tasks.append(asyncio.create_task(self.frontend.run(), name="frontend"))
            tasks.append(asyncio.create_task(self._reconcile_loop(), name="reconcile"))
            tasks.append(asyncio.create_task(self._controller_duties(), name="duties"))
            tasks.append(asyncio.create_task(self._retention_loop(), name="retention"))
            tasks.append(asyncio.create_task(self._expire_sessions(), name="sessions"))
            tasks.append(asyncio.create_task(self._reassign_loop(), name="reassign"))
            log.info(
                "broker ready id=%d client=%s peer=%s discovery=%s metrics=%s security=%s",
                cfg.broker_id,
                self.frontend.addr,
                transport.address,
                cfg.discovery,
                self.metrics_port,
                "curve" if cfg.secure else "off",
            )
            stop = asyncio.create_task(self._stop.wait(), name="stop")
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            for task in done:
                error = None if task is stop or task.cancelled() else task.exception()
                if error is not None:
                    raise error
        finally:
            await self._shutdown(tasks)

    async def _catch_up_metadata(self) -> None:
        """On a restart, before serving clients: wait (at most _METADATA_CATCH_UP_S)
        until group 0 has a leader and this broker applied what it knows committed.
        The saved state may predate topics created since; serving it would tell
        clients those topics do not exist (a non-retriable UNKNOWN_TOPIC)."""
        handle = self.controller.handle
        assert handle is not None
        deadline = time.monotonic() + _METADATA_CATCH_UP_S
        while time.monotonic() < deadline and not self._stop.is_set():
            if handle.leader and handle.applied_index >= handle.commit_index:
                return
            await asyncio.sleep(_METADATA_POLL_S)
        log.warning("serving before the controller state caught up")

    async def _until_stopped(self, awaitable: Any) -> Members | None:
        wait = asyncio.ensure_future(awaitable)
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait([wait, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (wait, stop):
                t.cancel()
            await asyncio.gather(wait, stop, return_exceptions=True)
        if wait.cancelled() or wait.exception() is not None:
            return None
        result: Members = wait.result()
        return result

    def _add_peer(self, broker_id: int, peer_addr: str) -> None:
        if self.transport is None or broker_id == self.config.broker_id:
            return
        with contextlib.suppress(replication.TransportError, ValueError):
            self.transport.add_peer(broker_id, peer_addr)

    def _learn_peer(self, broker_id: int, peer_addr: str) -> None:
        self._add_peer(broker_id, peer_addr)

    def _on_members(self, members: Members) -> None:
        for b in members.values():
            self._add_peer(b.id, b.peer_addr)
        self._membership_changed.set()

    async def _reconcile_loop(self) -> None:
        assert self.partitions is not None
        while True:
            await self.controller.changed.wait()
            self.controller.changed.clear()
            for b in self.controller.state.brokers.values():
                if b.id not in self.registry.members:
                    self._add_peer(b.id, b.peer_addr)
            if self.config.broker_id in self.controller.state.removed:
                log.error(
                    "broker %d was decommissioned and removed from the cluster: stopping",
                    self.config.broker_id,
                )
                self.request_stop()
            await self.partitions.reconcile(self.controller.state)
            await self.controller.save_snapshot()

    async def _retention_loop(self) -> None:
        """Enforce topic retention, and (as the controller leader) offsets retention of
        groups without members, every ``retention_check_ms``."""
        interval_s = self.config.retention_check_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            if self.partitions is not None:
                await self.partitions.enforce_retention(_wall_ms())
            try:
                await self.groups.expire_offsets(_wall_ms(), self.config.offsets_retention_ms)
            except ZStreamError as exc:
                log.info("offsets retention deferred: %s", exc)

    async def _controller_duties(self) -> None:
        """As the controller leader: register live brokers, add learners to group 0."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._membership_changed.wait(), _DUTY_INTERVAL_S)
            self._membership_changed.clear()
            if not self.controller.is_leader:
                continue
            try:
                await self._register_members()
            except (ZStreamError, replication.RaftError) as exc:
                log.info("controller duty deferred: %s", exc)

    async def _expire_sessions(self) -> None:
        """As the controller leader: expire silent group members (GroupCoordinator)."""
        while True:
            leading = self.controller.is_leader
            await asyncio.sleep(_SESSION_CHECK_S if leading else _DUTY_INTERVAL_S / 2)
            await self.groups.expire_silent(time.monotonic())

    async def _register_members(self) -> None:
        state = self.controller.state
        handle = self.controller.handle
        assert handle is not None
        for b in sorted(self.registry.members.values(), key=lambda b: b.id):
            if b.id in state.removed:
                continue  # decommissioned for good: refused a place
            known = state.brokers.get(b.id)
            if known is None or (known.client_addr, known.peer_addr) != (
                b.client_addr,
                b.peer_addr,
            ):
                await self.controller.propose(
                    register_broker_command(b.id, b.client_addr, b.peer_addr)
                )
                log.info("controller registered broker id=%d", b.id)
                if known is None and state.topics:
                    await self._auto_rebalance(f"broker {b.id} joined")
            conf = handle.conf_state
            if b.id not in conf.voters | conf.learners and not conf.voters_outgoing:
                change = replication.ConfChange(
                    ((replication.ConfChangeType.ADD_LEARNER, b.id),), b.peer_addr.encode()
                )
                await handle.propose_conf_change(change)
                log.info("controller added broker id=%d as a learner of group 0", b.id)

    # -- reassignment ----------------------------------------------------------------------

    def _on_app_message(self, frm: int, data: bytes) -> None:
        """A peer's reassignment report (broker/_reassign.py); kept, as the controller
        leader, for `_reassign_loop` to act on. Bad input is logged and dropped."""
        try:
            report = decode_report(data)
        except InvalidRequestError as exc:
            log.warning("bad app message from broker %d: %s", frm, exc)
            return
        if self.controller.is_leader:
            self._reports[report.group_id] = report

    async def _reassign_loop(self) -> None:
        """Walk the reassignments this broker leads (PartitionManager), send the
        controller leader the reports of those that reached their target, and, as the
        controller leader, complete the reported ones and propose the next moves."""
        last_moves = 0.0
        while True:
            await asyncio.sleep(_REASSIGN_INTERVAL_S)
            now = time.monotonic()
            try:
                await self._reassign_pass(now)
                if self.controller.is_leader and now - last_moves >= _MOVES_EVERY_S:
                    last_moves = now
                    await self._moves_step(now)
            except (ZStreamError, replication.RaftError, storage.StorageError) as exc:
                # Never the end of the broker: the next pass decides again from scratch.
                log.info("reassignment pass deferred: %s", exc)

    async def _reassign_pass(self, now: float) -> None:
        assert self.partitions is not None
        assert self.host is not None
        state = self.controller.state
        for report in self.partitions.walk_reassignments(state, _LEARNER_MAX_LAG_ENTRIES):
            if now - self._reported_at.get(report.group_id, 0.0) < _REPORT_EVERY_S:
                continue
            self._reported_at[report.group_id] = now
            if self.controller.is_leader:
                self._reports[report.group_id] = report
            elif self.controller.leader is not None:
                self.host.send_app(self.controller.leader, encode_report(report))
        if state.rebalance == "electing":
            self.partitions.elect_preferred(state, _LEARNER_MAX_LAG_ENTRIES)
        if not self.controller.is_leader:
            self._reports.clear()
            self._absent_since.clear()  # a later term starts the clocks afresh
            self._replacing = False
            return
        for group_id, report in list(self._reports.items()):
            del self._reports[group_id]
            await self._complete(report)

    def _live(self) -> set[int]:
        """Brokers discovery lists and the host has heard from lately."""
        down = self.host.down_peers() if self.host is not None else frozenset()
        return set(self.registry.members) - down

    async def _moves_step(self, now: float) -> None:
        """As the controller leader, one step of every kind of move, through the one
        reassignment mechanism (bounded per receiving broker by the controller):

        - replicas off decommissioning brokers, which are then taken out of the
          controller group and removed once they hold nothing;
        - replicas off brokers absent (from discovery, or silent on the peer links)
          for ``replica_replace_after_ms``, only where enough live brokers exist to keep
          each partition's replica count; their controller votes go to live learners.
          The clock is this leader's own (a new leader starts it again) and stops when
          the broker returns: nothing new is moved off it then (moves under way
          finish);
        - a rebalance's moves (ControllerState.rebalance_moves), then its phases.

        A move the controller refuses for now (the receiving broker is busy) is
        proposed again on a later pass: plans are recomputed from the state each time."""
        state = self.controller.state
        live = self._live()
        for broker_id in list(self._absent_since):
            if broker_id in live or broker_id not in state.brokers:
                del self._absent_since[broker_id]
                log.info("broker %d is back (or gone): its replicas stay", broker_id)
        for broker_id in state.brokers:
            if broker_id not in live and broker_id not in state.decommissioning:
                self._absent_since.setdefault(broker_id, now)
        limit_s = self.config.replica_replace_after_ms / 1000
        dead = {b for b, since in self._absent_since.items() if now - since >= limit_s}
        plans = [
            ("decommission", state.decommission_moves(live)),
            (f"dead broker(s) {sorted(dead)}", state.replacement_moves(dead, live) if dead else []),
        ]
        for why, moves in plans:
            if why.startswith("dead") and moves:
                self._replacing = True
            await self._propose_moves(why, moves, live)
        handle = self.controller.handle
        assert handle is not None
        for broker_id in sorted(state.decommissioning):
            if broker_id in handle.conf_state.all_voters():
                self._controller_group_step(broker_id, live)
                continue
            if any(
                broker_id in p.replicas or broker_id in p.target
                for t in state.topics.values()
                for p in t.partitions
            ):
                continue
            await self.controller.propose(remove_broker_command(broker_id))
            log.info("decommission: broker %d removed", broker_id)
            if broker_id in handle.conf_state.learners:
                change = replication.ConfChange(
                    ((replication.ConfChangeType.REMOVE_NODE, broker_id),)
                )
                await handle.propose_conf_change(change)
            await self._auto_rebalance(f"decommission of broker {broker_id} finished")
        for broker_id in sorted(dead):
            if broker_id in handle.conf_state.all_voters():
                self._controller_group_step(broker_id, live)
        if self._replacing and not state.reassignments():
            self._replacing = False
            await self._auto_rebalance(f"re-placement off {sorted(dead)} finished")
        await self._rebalance_step(live)

    async def _propose_moves(
        self, why: str, moves: Sequence[tuple[str, int, tuple[int, ...], bool]], live: set[int]
    ) -> int:
        """Propose each move; one refused for now (a busy broker, or the partition has
        started moving since) waits for a later pass. Returns how many were recorded."""
        recorded = 0
        for topic, partition, replicas, override in moves:
            try:
                await self.controller.propose(
                    reassign_partition_command(
                        topic, partition, replicas, sorted(live), override=override
                    )
                )
            except (UnavailableError, InvalidRequestError) as exc:
                log.debug("%s: move of %s/%d deferred: %s", why, topic, partition, exc)
                continue
            recorded += 1
            log.info("%s: moving topic=%s partition=%d to %s", why, topic, partition, replicas)
        return recorded

    async def _rebalance_step(self, live: set[int]) -> None:
        """A rebalance in its ``moving`` phase proposes its plan's moves; once nothing
        is left to plan and nothing moves, its ``electing`` phase starts (partition
        leaders hand over to preferred replicas, PartitionManager.elect_preferred) and
        ends after REBALANCE_ELECTION_MS."""
        state = self.controller.state
        if state.rebalance == "moving":
            moves = state.rebalance_moves(live)
            await self._propose_moves("rebalance", moves, live)
            if not moves and not state.reassignments():
                await self.controller.propose(rebalance_command("electing", _wall_ms()))
                log.info("rebalance: moves done, preferred leaders elected")
        elif (
            state.rebalance == "electing"
            and _wall_ms() - state.rebalance_since_ms >= REBALANCE_ELECTION_MS
        ):
            await self.controller.propose(rebalance_command("", _wall_ms()))
            log.info("rebalance: done")

    async def _auto_rebalance(self, why: str) -> None:
        if self.config.auto_rebalance and self.controller.state.rebalance != "moving":
            await self.controller.propose(rebalance_command("moving", _wall_ms()))
            log.info("auto rebalance: %s", why)

    def _controller_group_step(self, leaving: int, live: set[int]) -> None:
        """Walk group 0's voters towards "without ``leaving``": the live placeable
        learner with the lowest id takes its place (none: the group shrinks). The same
        decision as a partition's (next_step), over the voters only: group 0's other
        learners (every other broker) stay."""
        handle = self.controller.handle
        assert handle is not None
        conf = handle.conf_state
        state = self.controller.state
        voters = conf.voters - {leaving}
        spare = sorted(b for b in conf.learners if b in live and state.placeable(b))
        target = frozenset(voters | set(spare[:1])) if spare else frozenset(voters)
        if not target:
            return
        view = replication.ConfState(
            voters=conf.voters,
            learners=conf.learners & target,
            voters_outgoing=conf.voters_outgoing,
        )
        matches = {n: pr[0] for n, pr in handle.progress().items()}
        step = next_step(
            view,
            self.config.broker_id,
            target,
            matches,
            handle.commit_index,
            _LEARNER_MAX_LAG_ENTRIES,
            self.host.down_peers() if self.host is not None else frozenset(),
        )
        if step is None or isinstance(step, Reached):
            return
        try:
            if isinstance(step, Transfer):
                log.info("broker %d leaving: controller leadership to %d", leaving, step.to)
                handle.transfer_leader(step.to)
            else:
                log.info("broker %d leaving: controller group change %s", leaving, step.changes)
                handle.propose_conf_change(step).add_done_callback(_quiet_conf_change)
        except replication.RaftError as exc:
            log.info("broker %d leaving: controller group step deferred: %s", leaving, exc)

    async def _complete(self, report: ReassignedReport) -> None:
        topic = self.controller.state.topics.get(report.topic)
        if topic is None or report.partition >= len(topic.partitions):
            return
        part = topic.partitions[report.partition]
        if part.group_id != report.group_id or set(part.target) != set(report.voters):
            return  # stale: finished already, or another target since
        try:
            await self.controller.propose(
                complete_reassignment_command(
                    report.topic, report.partition, report.group_id, report.voters
                )
            )
        except ZStreamError as exc:
            log.info("reassignment completion deferred group=%d: %s", report.group_id, exc)
            return
        log.info(
            "reassignment done topic=%s partition=%d replicas=%s",
            report.topic,
            report.partition,
            list(part.target),
        )

    async def _shutdown(self, tasks: Sequence[asyncio.Task[Any]]) -> None:
        log.info("broker stopping id=%d", self.config.broker_id)
        serving = [
            t
            for t in tasks
            if t.get_name() in ("frontend", "duties", "sessions", "reconcile", "reassign")
        ]
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)
        if self.frontend is not None:
            await self.frontend.close()
        if self.partitions is not None and self.host is not None:
            live = set(self.registry.members) - {self.config.broker_id}
            handle = self.controller.handle
            if handle is not None and handle.is_leader:
                others = sorted(handle.conf_state.voters & live)
                if others:
                    with contextlib.suppress(replication.RaftError):
                        handle.transfer_leader(others[0])
            left = await self.partitions.transfer_leadership(live, 5.0)
            if left:
                log.warning("shutdown: %d partition(s) still led here", left)
        if self.host is not None:
            await self.host.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.partitions is not None:
            await self.partitions.close()
        with contextlib.suppress(OSError, storage.StorageError):
            await self.controller.save_snapshot(force=True)
        self.controller.close()
        if self.transport is not None:
            await self.transport.close()
        if isinstance(self.registry, EtcdRegistry):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.registry.deregister(), 3)
        self.metrics.close()
        log.info("broker stopped id=%d", self.config.broker_id)

    # -- metrics ---------------------------------------------------------------------------

    def _gauges(self) -> dict[str, float]:
        stats = self.frontend.stats if self.frontend is not None else None
        replicas = self.partitions.replicas() if self.partitions is not None else {}
        live = set(self.registry.members)
        leading = [r for r in replicas.values() if r.is_leader]
        under = sum(1 for r in leading if not r.handle.conf_state.voters <= live)
        return {
            "bytes_in_total": float(stats.bytes_in if stats else 0),
            "bytes_out_total": float(stats.bytes_out if stats else 0),
            "leader_partitions": float(len(leading)),
            "hosted_partitions": float(len(replicas)),
            "under_replicated_partitions": float(under),
            "controller_leader": float(1 if self.controller.is_leader else 0),
        }

    # -- the front end's Backend -----------------------------------------------------------

    def partition(self, topic: str, partition: int) -> _Partition:
        record = self.controller.state.topics.get(topic)
        if record is None:
            raise UnknownTopicError(f"unknown topic {topic!r}")
        if not 0 <= partition < len(record.partitions):
            raise UnknownPartitionError(f"topic {topic!r} has no partition {partition}")
        replica = self.partitions.get(topic, partition) if self.partitions else None
        if replica is None:
            leader = record.partitions[partition].replicas[0]
            hint = None if leader == self.config.broker_id else leader
            raise NotLeaderError(f"{topic}/{partition} is not hosted here", leader=hint)
        return _Partition(replica, self.metrics)

    def _topic_doc(self, topic: TopicRecord) -> dict[str, Any]:
        parts = []
        live = set(self.registry.members)
        for p in topic.partitions:
            replica = self.partitions.get(topic.name, p.partition) if self.partitions else None
            if replica is not None:  # first-hand: the Raft group's leader in its term
                leader, leader_epoch = replica.leader, replica.leader_epoch
            else:
                # A guess: this broker is not in the group. The first live replica (the
                # preferred one unless it is gone); no epoch, so that a client keeps a
                # leader it heard of first-hand (clients/_cluster.py).
                leader = next((b for b in p.replicas if b in live), p.replicas[0])
                leader_epoch = None
            leads_here = replica is not None and replica.is_leader
            parts.append(
                {
                    "partition": p.partition,
                    "group_id": p.group_id,  # its Raft group (data under groups/<id>)
                    "leader": leader,
                    "leader_epoch": leader_epoch,
                    "replicas": list(p.replicas),
                    # A reassignment in progress: where the replicas are going.
                    "target": list(p.target) if p.target else None,
                    "live_replicas": [b for b in p.replicas if b in live],
                    "hwm": replica.high_watermark if leads_here and replica else None,
                    # This broker's own copy: how far its log reaches (a follower's lag).
                    "local_end": replica.log_end_offset if replica is not None else None,
                    "local_start": replica.log_start_offset if replica is not None else None,
                    "log_start": replica.log_start_offset if leads_here and replica else None,
                }
            )
            if leads_here and replica is not None:
                # The Raft group's own view, as its leader holds it (a reassignment's
                # progress: learners catching up, then the joint configuration).
                conf = replica.handle.conf_state
                parts[-1]["voters"] = sorted(conf.voters)
                parts[-1]["learners"] = sorted(conf.learners)
                parts[-1]["joint"] = conf.joint
        return {
            "name": topic.name,
            "replication_factor": topic.replication_factor,
            "configs": dict(topic.configs),
            "partitions": parts,
        }

    def metadata(self, topics: Sequence[str] | None) -> dict[str, Any]:
        state = self.controller.state
        live = self.registry.members
        known = {b.id: b.client_addr for b in state.brokers.values()}
        for b in live.values():
            known.setdefault(b.id, b.client_addr)
        counts = state.replica_counts()

        def role(bid: int) -> str:
            if bid in state.removed:
                return "removed"
            return "decommissioning" if bid in state.decommissioning else "active"

        brokers = [
            {
                "id": bid,
                "client_addr": addr,
                "alive": bid in live,
                "state": role(bid),
                "replicas": counts.get(bid, 0),
            }
            for bid, addr in sorted(known.items())
        ]
        names = sorted(state.topics) if topics is None else [t for t in topics if t in state.topics]
        return {
            "brokers": brokers,
            "controller": self.controller.leader,
            "controller_group": CONTROLLER_GROUP_ID,
            # A rebalance under way: "moving" or "electing" ("" when none).
            "rebalance": state.rebalance,
            "topics": [self._topic_doc(state.topics[n]) for n in names],
        }

    def list_topics(self) -> list[str]:
        return sorted(self.controller.state.topics)

    def describe_topic(self, name: str) -> dict[str, Any]:
        topic = self.controller.state.topics.get(name)
        if topic is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        return self._topic_doc(topic)

    async def create_topic(self, request: CreateTopicRequest) -> dict[str, Any]:
        configs = validate_topic_configs(request.configs)
        live = sorted(self.registry.members)
        command = create_topic_command(
            request.name, request.partitions, request.replication_factor, configs, live
        )
        result = await self.controller.propose(command)
        if not isinstance(result, TopicRecord):  # pragma: no cover - a controller bug
            raise UnknownServerError(f"create_topic applied as {result!r}")
        if self.partitions is not None:
            await self.partitions.reconcile(self.controller.state)
        log.info(
            "topic created name=%s partitions=%d replication_factor=%d",
            request.name,
            request.partitions,
            request.replication_factor,
        )
        return self._topic_doc(result)

    async def delete_topic(self, name: str) -> None:
        await self.controller.propose(delete_topic_command(name))
        if self.partitions is not None:
            await self.partitions.reconcile(self.controller.state)
        log.info("topic deleted name=%s", name)

    async def reassign_partition(self, request: ReassignPartitionRequest) -> dict[str, Any]:
        live = sorted(self.registry.members)
        result = await self.controller.propose(
            reassign_partition_command(request.topic, request.partition, request.replicas, live)
        )
        if not isinstance(result, PartitionAssignment):  # pragma: no cover - a controller bug
            raise UnknownServerError(f"reassign_partition applied as {result!r}")
        if self.partitions is not None:
            await self.partitions.reconcile(self.controller.state)
        log.info(
            "reassignment recorded topic=%s partition=%d target=%s",
            request.topic,
            request.partition,
            list(result.target or result.replicas),
        )
        return {
            "topic": request.topic,
            "partition": result.partition,
            "replicas": list(result.replicas),
            "target": list(result.target) if result.target else None,
        }

    async def add_partitions(self, request: AddPartitionsRequest) -> dict[str, Any]:
        live = sorted(self._live())
        result = await self.controller.propose(
            add_partitions_command(request.name, request.count, live)
        )
        if not isinstance(result, TopicRecord):  # pragma: no cover - a controller bug
            raise UnknownServerError(f"add_partitions applied as {result!r}")
        if self.partitions is not None:
            await self.partitions.reconcile(self.controller.state)
        log.info("partitions added name=%s count=%d", request.name, request.count)
        return self._topic_doc(result)

    async def alter_topic(self, request: AlterTopicRequest) -> dict[str, Any]:
        configs = validate_topic_configs(request.configs)
        result = await self.controller.propose(alter_topic_configs_command(request.name, configs))
        if not isinstance(result, TopicRecord):  # pragma: no cover - a controller bug
            raise UnknownServerError(f"alter_topic_configs applied as {result!r}")
        if self.partitions is not None:
            await self.partitions.reconcile(self.controller.state)
        log.info("topic configs altered name=%s configs=%s", request.name, dict(result.configs))
        return self._topic_doc(result)

    async def rebalance(self, request: RebalanceRequest) -> dict[str, Any]:
        """Plan (broker/_balance.py) over the live placeable brokers and, unless a dry
        run, start the rebalance: the moving phase, carried out by `_moves_step`."""
        self.controller.check_leader()
        live = self._live()
        plan = self.controller.state.rebalance_plan(live)
        if not request.dry_run:
            await self.controller.propose(rebalance_command("moving", _wall_ms()))
            log.info("rebalance started: %d move(s) planned", len(plan))
        return self.controller.state.rebalance_reply(plan, request.dry_run)

    async def decommission_broker(self, request: DecommissionBrokerRequest) -> dict[str, Any]:
        leaving = await self.controller.propose(decommission_broker_command(request.broker_id))
        log.info("decommission recorded broker=%d", request.broker_id)
        return {"decommissioning": leaving}

    async def list_reassignments(self) -> list[dict[str, Any]]:
        await self.controller.caught_up()
        return self.controller.state.reassignments()

    async def init_producer(self) -> dict[str, Any]:
        pid = await self.controller.propose(allocate_producer_id_command())
        return {"producer_id": pid, "epoch": 0}

    # Consumer groups: the controller leader serves them (others: NOT_CONTROLLER).

    async def group_heartbeat(self, request: GroupHeartbeatRequest) -> dict[str, Any]:
        return await self.groups.heartbeat(request, time.monotonic())

    async def commit_offsets(self, request: CommitOffsetsRequest) -> None:
        await self.groups.commit_offsets(request)

    async def fetch_offsets(self, request: FetchOffsetsRequest) -> dict[str, Any]:
        return await self.groups.fetch_offsets(request)

    async def list_groups(self) -> list[str]:
        return await self.groups.list_groups()

    async def describe_group(self, name: str) -> dict[str, Any]:
        return await self.groups.describe_group(name)

    async def delete_group(self, name: str) -> None:
        await self.groups.delete_group(name)

    # ACLs and quotas: every broker checks against its own copy of the controller
    # state; changes and consistent listings go through the controller leader.

    @property
    def acls(self) -> AclTable:
        return self.controller.state.acls

    @property
    def quotas(self) -> Mapping[str, QuotaLimits]:
        return self.controller.state.quotas

    async def list_acls(self) -> list[AclEntry]:
        await self.controller.caught_up()
        return self.controller.state.acls.entries()

    async def add_acls(self, entries: Sequence[AclEntry]) -> int:
        added = await self.controller.propose(acl_add_command(entries))
        assert isinstance(added, int)
        log.info("acl added count=%d new=%d", len(entries), added)
        return added

    async def remove_acls(self, entries: Sequence[AclEntry]) -> int:
        removed = await self.controller.propose(acl_remove_command(entries))
        assert isinstance(removed, int)
        log.info("acl removed count=%d removed=%d", len(entries), removed)
        return removed

    async def set_quota(self, quota: QuotaLimits) -> None:
        await self.controller.propose(quota_set_command(quota))
        log.info(
            "quota set principal=%s produce_bytes_per_s=%s fetch_bytes_per_s=%s",
            quota.principal,
            quota.produce_bytes_per_s,
            quota.fetch_bytes_per_s,
        )

    async def list_quotas(self) -> list[QuotaLimits]:
        await self.controller.caught_up()
        return [q for _, q in sorted(self.controller.state.quotas.items())]


def install_signal_handlers(broker: Broker) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, broker.request_stop)
