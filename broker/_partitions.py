"""Partition replicas on this broker, each one Raft group on the multi-Raft host,
and the manager that opens and closes them as the controller's placement changes.

A :class:`RaftReplica` implements the front end's ``PartitionBackend`` over a
``replication.GroupHandle`` and its ``RaftLog`` (the partition log IS the Raft
log). Produce proposes the batch and answers once it is committed (durable on a
majority) and applied here. The high watermark is the record offset after the
commit index; fetches and streams never read past it.

``acks=leader`` is served as ``acks=all`` for now: the host resolves a proposal
on commit only. That is stronger than asked, never weaker.

Directory layout under the broker's data dir::

    groups/0/                    the controller's RaftLog (records=False)
    groups/<group id>/           one partition's RaftLog: log/ segments, raft-state
    controller-state             the controller state machine's snapshot
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from zstream import replication, storage
from zstream.broker._controller import ControllerState, PartitionAssignment, TopicRecord
from zstream.broker._idempotence import ProducerTable
from zstream.broker._reassign import Reached, ReassignedReport, Transfer, next_step
from zstream.clients import (
    Acks,
    NotLeaderError,
    OffsetOutOfRangeError,
    RequestTimedOutError,
    UnavailableError,
    UnknownServerError,
    ZStreamError,
)
from zstream.clients._protocol import Buffer

__all__ = ["PartitionManager", "RaftReplica", "log_config_for", "translate_raft_error"]

log = logging.getLogger("zstream.partitions")

# How far back from the log end the producer table is rebuilt: a producer silent for
# longer than this many records is forgotten (its next batch starts a new sequence).
TAIL_RECORDS = 50_000
# How long a reassignment's leadership transfer may take before it is asked again.
_TRANSFER_RETRY_S = 2.0
# Bytes per read while replaying the log tail into the producer table (one pread each).
_REBUILD_READ_BYTES = 1024 * 1024


def log_config_for(configs: Mapping[str, int], default_segment_bytes: int) -> storage.LogConfig:
    return storage.LogConfig(
        segment_bytes=configs.get("segment_bytes", default_segment_bytes),
        retention_bytes=configs.get("retention_bytes"),
        retention_ms=configs.get("retention_ms"),
    )


def translate_raft_error(exc: BaseException) -> ZStreamError:
    """The client's view of a replication error."""
    if isinstance(exc, replication.NotLeaderError):
        return NotLeaderError("not the leader", leader=exc.leader_hint or None)
    if isinstance(exc, replication.ProposalTimeoutError):
        return RequestTimedOutError("not committed in time; it may still commit")
    if isinstance(exc, replication.HostStoppedError):
        return NotLeaderError("the partition is closing on this broker", leader=None)
    if isinstance(exc, replication.ProposalDroppedError):
        return UnavailableError("the leader refused the proposal for now (transferring?)")
    if isinstance(exc, storage.CorruptBatchError):
        return UnknownServerError(f"batch rejected by the log: {exc}")
    return UnknownServerError(f"replication failed: {exc!r}")


class RaftReplica:
    """One partition replica: a Raft group on the host."""

    def __init__(self, handle: replication.GroupHandle, raft_log: replication.RaftLog) -> None:
        self.handle = handle
        self.log = raft_log
        self._hwm_cache = (-1, 0)  # (commit index, offset after it)
        self.log_config: storage.LogConfig | None = None  # what the log was given last
        self.closed = False
        # Idempotent producers: rebuilt from the log tail when stale (at open, after a
        # leader change, after a proposal with an unknown outcome).
        self._producers = ProducerTable()
        self._producers_stale = True
        # Idempotent batches proposed and not yet answered, in proposal order:
        # (producer id, first sequence) -> (epoch, record count, outcome).
        self._in_flight: dict[tuple[int, int], tuple[int, int, asyncio.Future[int]]] = {}

    def leadership_changed(self) -> None:
        self._producers_stale = True

    def _rebuild_producers(self) -> None:
        """Replay the batches of the last TAIL_RECORDS offsets into the table, then the
        batches proposed here that the log does not hold yet (still queued in the
        host): they follow everything in the log, and a retry of one of them must be
        answered as a duplicate, not appended a second time."""
        table = self._producers
        table.clear()
        replayed: set[tuple[int, int]] = set()
        end = self.log.next_offset
        offset = max(self.log.log_start_offset, end - TAIL_RECORDS)
        while offset < end:
            try:
                batches = self.log.read_batches(offset, _REBUILD_READ_BYTES)
            except (storage.OffsetOutOfRange, replication.RaftError):
                break
            for base, batch in batches:
                header = storage.decode_batch_header(batch)
                if header.producer_id >= 0:
                    table.observe(
                        header.producer_id,
                        header.producer_epoch,
                        header.base_sequence,
                        header.record_count,
                        base,
                    )
                    replayed.add((header.producer_id, header.base_sequence))
                offset = base + header.record_count
        for (pid, seq), (epoch, count, _) in self._in_flight.items():
            if (pid, seq) not in replayed:
                table.observe(pid, epoch, seq, count, -1)
        self._producers_stale = False

    @property
    def is_leader(self) -> bool:
        return not self.closed and self.handle.is_leader

    @property
    def leader(self) -> int | None:
        return None if self.closed else self.handle.leader or None

    @property
    def leader_epoch(self) -> int | None:
        """The Raft term ``leader`` was heard in (None while closed): a client keeps
        the leader of the highest epoch it has seen."""
        return None if self.closed else self.handle.term

    # -- PartitionBackend ------------------------------------------------------------------

    @property
    def high_watermark(self) -> int:
        commit = min(self.handle.commit_index, self.log.last_index())
        if self._hwm_cache[0] != commit:
            try:
                self._hwm_cache = (commit, self.log.offset_after(commit))
            except replication.RaftError:
                return self._hwm_cache[1]
        return self._hwm_cache[1]

    @property
    def log_start_offset(self) -> int:
        return self.log.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self.log.next_offset

    def check_leader(self) -> None:
        if self.closed:
            raise NotLeaderError("the partition is closing on this broker", leader=None)
        if not self.handle.is_leader:
            raise NotLeaderError(
                "not the leader", leader=self.handle.leader or None, leader_epoch=self.handle.term
            )

    async def produce(self, batch: Buffer, acks: Acks, timeout_s: float) -> int:
        self.check_leader()
        header = storage.decode_batch_header(batch)
        count = header.record_count
        pid = header.producer_id
        if pid < 0:
            return await self._append(batch, count)
        if self._producers_stale:
            self._rebuild_producers()
        seq, epoch = header.base_sequence, header.producer_epoch
        duplicate = self._producers.check(pid, epoch, seq, count)
        if duplicate is not None:
            return await self._original(pid, seq, duplicate.base_offset, count, timeout_s)
        self._producers.observe(pid, epoch, seq, count, -1)
        future = asyncio.get_running_loop().create_future()
        self._in_flight[(pid, seq)] = (epoch, count, future)
        try:
            base = await self._append(batch, count)
        except BaseException as exc:
            # Unknown outcome (it may still commit): describe the log again next time.
            self._producers_stale = True
            future.set_exception(exc if isinstance(exc, ZStreamError) else NotLeaderError())
            future.exception()  # retrieved: nobody else may be waiting
            raise
        else:
            self._producers.resolve(pid, seq, base)
            future.set_result(base)
            return base
        finally:
            mine = self._in_flight.get((pid, seq))
            if mine is not None and mine[2] is future:
                del self._in_flight[(pid, seq)]

    async def _original(self, pid: int, seq: int, base: int, count: int, timeout_s: float) -> int:
        """The offset of a batch the log already holds, once it is committed."""
        if base < 0:
            original = self._in_flight.get((pid, seq))
            if original is None:  # pragma: no cover - resolved or failed in between
                raise NotLeaderError("the original batch's outcome is unknown", leader=None)
            return await asyncio.shield(original[2])
        if not await self.wait_beyond(base + count - 1, timeout_s):
            raise RequestTimedOutError("the original batch is not committed yet")
        return base

    async def _append(self, batch: Buffer, count: int) -> int:
        try:
            index = await self.handle.propose(bytes(batch))
        except (replication.RaftError, storage.StorageError) as exc:
            raise translate_raft_error(exc) from exc
        try:
            base = self.log.offset_after(index) - count
        except replication.RaftError as exc:  # compacted already: the offset is gone
            raise translate_raft_error(exc) from exc
        if replication.trace is not None:
            replication.trace.mark("offset", self.handle.group_id, index, base)
        return base

    def read(self, offset: int, max_bytes: int) -> list[memoryview]:
        hwm = self.high_watermark
        start = self.log.log_start_offset
        if not start <= offset <= hwm:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{start}, {hwm}]", start=start, end=hwm
            )
        if offset == hwm:
            return []
        try:
            batches = self.log.read_batches(offset, max_bytes, max_index=self._hwm_cache[0])
        except storage.OffsetOutOfRange as exc:
            raise OffsetOutOfRangeError(
                f"offset {offset} is no longer here", start=self.log.log_start_offset, end=hwm
            ) from exc
        except replication.RaftError as exc:
            raise translate_raft_error(exc) from exc
        return [batch for _, batch in batches]

    async def wait_beyond(self, offset: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.high_watermark <= offset:
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return False
            try:
                await asyncio.wait_for(
                    self.handle.wait_committed(self.handle.commit_index + 1), left
                )
            except TimeoutError:
                return False
            except replication.RaftError:
                return False
        return True


def _quiet(fut: asyncio.Future[int]) -> None:
    """A reassignment's conf change proposal: its outcome shows in the next walk."""
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("reassign conf change failed: %s", fut.exception())


def _open_log(
    directory: Path, config: storage.LogConfig, voters: replication.ConfState | None
) -> tuple[replication.RaftLog, bool]:
    """Open (recover) a partition's log and bootstrap its first configuration (None: a
    replica a reassignment adds, which waits, blank, for its leader); says whether the
    group is brand new."""
    raft_log = replication.RaftLog.open(directory, config, records=True)
    try:
        fresh = raft_log.last_index() == 0 and raft_log.initial_state()[0].term == 0
        if voters is not None:
            raft_log.bootstrap(voters)
    except BaseException:
        raft_log.close()
        raise
    return raft_log, fresh


class PartitionManager:
    """Opens the replicas the controller places on this broker, closes (and deletes)
    the ones it no longer does, and finds them for the front end."""

    def __init__(
        self,
        broker_id: int,
        data_dir: Path,
        host: replication.RaftHost,
        raft_config: Callable[[], replication.RaftConfig],
        default_segment_bytes: int,
    ) -> None:
        self._broker_id = broker_id
        self._groups_dir = data_dir / "groups"
        self._host = host
        self._raft_config = raft_config
        self._segment_bytes = default_segment_bytes
        self._by_group: dict[int, RaftReplica] = {}
        self._by_name: dict[tuple[str, int], RaftReplica] = {}
        self._lock = asyncio.Lock()
        self._leadership_changed = asyncio.Event()
        # Per group standing on its reassignment target: the commit index then.
        self._reached: dict[int, int] = {}
        self._transfers: dict[int, float] = {}  # group id -> when a transfer was asked

    def get(self, topic: str, partition: int) -> RaftReplica | None:
        return self._by_name.get((topic, partition))

    def replicas(self) -> dict[tuple[str, int], RaftReplica]:
        return dict(self._by_name)

    async def _open(self, topic: TopicRecord, part: PartitionAssignment) -> RaftReplica:
        directory = self._groups_dir / str(part.group_id)
        config = log_config_for(topic.configs, self._segment_bytes)
        # A replica only in a reassignment's target joins an existing group: it must not
        # bootstrap a configuration of its own (it would count itself a voter).
        joining = self._broker_id not in part.replicas
        voters = None if joining else replication.ConfState(voters=frozenset(part.replicas))
        # Recovery scans and fsyncs: in a thread, so serving goes on while a broker
        # opens (or a new topic creates) many partitions.
        raft_log, fresh = await asyncio.to_thread(_open_log, directory, config, voters)
        try:
            handle = self._host.add_group(part.group_id, raft_log, self._raft_config())
        except BaseException:
            raft_log.close()
            raise
        gid = part.group_id
        replica = RaftReplica(handle, raft_log)
        replica.log_config = config

        def leader_changed(leader: int, term: int) -> None:
            log.info("leader group=%d leader=%d term=%d", gid, leader, term)
            replica.leadership_changed()
            self._leadership_changed.set()

        handle.on_leader_change(leader_changed)
        if fresh and not joining and part.replicas[0] == self._broker_id:
            handle.campaign()  # the preferred leader: leaders spread as placed
        return replica

    async def reconcile(self, state: ControllerState) -> None:
        """Make the open replicas match the placement in ``state``."""
        async with self._lock:
            wanted = {p.group_id: (t, p) for t, p in state.partitions_of(self._broker_id)}
            for group_id in [g for g in self._by_group if g not in wanted]:
                replica = self._by_group.pop(group_id)
                self._by_name = {k: v for k, v in self._by_name.items() if v is not replica}
                self._close(group_id, replica)
                directory = self._groups_dir / str(group_id)
                await asyncio.to_thread(shutil.rmtree, directory, True)
                log.info("partition removed group=%d (topic deleted or replica moved)", group_id)
            for group_id, (topic, part) in sorted(wanted.items()):
                if group_id in self._by_group:
                    self._reconfigure(self._by_group[group_id], topic)
                    continue
                try:
                    replica = await self._open(topic, part)
                except (replication.RaftError, storage.StorageError):
                    log.exception("partition open failed group=%d", group_id)
                    continue
                self._by_group[group_id] = replica
                self._by_name[(topic.name, part.partition)] = replica
                log.info(
                    "partition opened topic=%s partition=%d group=%d replicas=%s",
                    topic.name,
                    part.partition,
                    group_id,
                    list(part.replicas),
                )

    def _reconfigure(self, replica: RaftReplica, topic: TopicRecord) -> None:
        """A topic's configs altered: hand the replica's log its new settings."""
        config = log_config_for(topic.configs, self._segment_bytes)
        if config == replica.log_config or replica.closed:
            return
        try:
            replica.log.reconfigure(config)
        except (replication.RaftError, storage.StorageError):
            log.exception("reconfigure failed group=%d", replica.handle.group_id)
            return
        replica.log_config = config
        log.info("topic configs applied topic=%s group=%d", topic.name, replica.handle.group_id)

    def _close(self, group_id: int, replica: RaftReplica) -> None:
        replica.closed = True
        self._host.remove_group(group_id)
        with contextlib.suppress(replication.RaftError, storage.StorageError):
            replica.log.close()

    async def enforce_retention(self, now_ms: int) -> int:
        """Move the log start of every replica whose topic's retention_bytes or
        retention_ms asks for it (whole segments, applied entries only). Each replica
        does this on its own, as each Kafka replica deletes its own segments; a
        follower that falls behind the leader's new start receives a snapshot.
        Returns how many replicas moved their start."""
        moved = 0
        async with self._lock:
            for group_id, replica in sorted(self._by_group.items()):
                if replica.closed or not replica.log.retention_index(now_ms):
                    continue
                async with self._host.exclusive():  # no fsync thread while segments go
                    cut = replica.log.retention_index(now_ms)
                    if not cut:
                        continue
                    try:
                        replica.log.compact(cut)
                    except replication.RaftError:
                        log.exception("retention failed group=%d", group_id)
                        continue
                moved += 1
                log.info(
                    "retention group=%d log start offset=%d", group_id, replica.log_start_offset
                )
        return moved

    async def transfer_leadership(self, live: set[int], timeout_s: float) -> int:
        """Hand every partition this broker leads to another live replica; wait (up to
        ``timeout_s``) until they have moved. Returns how many still lead here."""
        moving: list[RaftReplica] = []
        for replica in self._by_group.values():
            if not replica.is_leader:
                continue
            others = sorted(replica.handle.conf_state.voters - {self._broker_id})
            target = next((b for b in others if b in live), None)
            if target is None:
                continue  # no live replica to take it (the last broker of a cluster)
            with contextlib.suppress(replication.RaftError):
                replica.handle.transfer_leader(target)
                moving.append(replica)
        deadline = time.monotonic() + timeout_s
        while any(r.is_leader for r in moving):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._leadership_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leadership_changed.wait(), left)
        return sum(1 for r in moving if r.is_leader)

    def walk_reassignments(
        self, state: ControllerState, max_lag_entries: int
    ) -> list[ReassignedReport]:
        """One step of every reassignment whose partition this broker leads (see
        broker/_reassign.py): propose the next configuration change or leadership
        transfer. Returns a report for each group that stands on its target, once a
        majority of the target holds the log up to the commit index seen when it got
        there (a dead target member must not hold the report back; the others learn
        that the configuration is final from the next heartbeat)."""
        reports = []
        for topic, part in state.partitions_of(self._broker_id):
            if not part.target:
                self._reached.pop(part.group_id, None)
                continue
            replica = self._by_group.get(part.group_id)
            if replica is None or not replica.is_leader:
                continue
            handle = replica.handle
            matches = {n: pr[0] for n, pr in handle.progress().items()}
            commit = handle.commit_index
            target = frozenset(part.target)
            step = next_step(
                handle.conf_state,
                self._broker_id,
                target,
                matches,
                commit,
                max_lag_entries,
                self._host.down_peers(),
            )
            if isinstance(step, Reached):
                at = self._reached.setdefault(part.group_id, commit)
                holding = sum(1 for n in target if n == self._broker_id or matches.get(n, 0) >= at)
                if holding > len(target) // 2:
                    reports.append(
                        ReassignedReport(
                            topic.name, part.partition, part.group_id, tuple(sorted(target))
                        )
                    )
                continue
            self._reached.pop(part.group_id, None)
            if step is None:
                continue
            try:
                if isinstance(step, Transfer):
                    # The leader refuses proposals while a transfer runs: one attempt per
                    # _TRANSFER_RETRY_S, so a failed one (abandoned by the core after an
                    # election timeout) leaves producers room in between.
                    now = time.monotonic()
                    if now - self._transfers.get(part.group_id, 0.0) < _TRANSFER_RETRY_S:
                        continue
                    self._transfers[part.group_id] = now
                    log.info("reassign group=%d transfer leadership to %d", part.group_id, step.to)
                    handle.transfer_leader(step.to)
                else:
                    log.info("reassign group=%d conf change %s", part.group_id, step.changes)
                    fut = handle.propose_conf_change(step)
                    fut.add_done_callback(_quiet)
            except replication.RaftError as exc:
                log.debug("reassign group=%d step deferred: %s", part.group_id, exc)
        return reports

    def elect_preferred(self, state: ControllerState, max_lag_entries: int) -> int:
        """A rebalance's elections: every partition this broker leads, not moving, whose
        first replica (its preferred leader) is another broker, a voter, live and
        within ``max_lag_entries`` of the commit index, hands leadership to it (Raft's
        transfer, which waits for the log to be up to date). One attempt per partition
        per _TRANSFER_RETRY_S. Returns how many transfers were asked."""
        asked = 0
        down = self._host.down_peers()
        now = time.monotonic()
        for _topic, part in state.partitions_of(self._broker_id):
            preferred = part.replicas[0]
            if part.target or preferred == self._broker_id or preferred in down:
                continue
            replica = self._by_group.get(part.group_id)
            if replica is None or not replica.is_leader:
                continue
            handle = replica.handle
            if preferred not in handle.conf_state.voters or handle.conf_state.joint:
                continue
            pr = handle.progress().get(preferred)
            if pr is None or pr[0] + max_lag_entries < handle.commit_index:
                continue
            if now - self._transfers.get(part.group_id, 0.0) < _TRANSFER_RETRY_S:
                continue
            self._transfers[part.group_id] = now
            try:
                handle.transfer_leader(preferred)
            except replication.RaftError as exc:
                log.debug("elect group=%d deferred: %s", part.group_id, exc)
                continue
            asked += 1
            log.info(
                "rebalance group=%d leadership to preferred replica %d", part.group_id, preferred
            )
        return asked

    async def close(self) -> None:
        async with self._lock:
            for group_id, replica in self._by_group.items():
                self._close(group_id, replica)
            self._by_group.clear()
            self._by_name.clear()
