"""Partition replicas on this broker, and the manager that opens and closes them
as the controller's placement changes.

A replica implements the front end's ``PartitionBackend``. Two kinds exist:

* :class:`LocalReplica`: a partition whose only replica is this broker (replication
  factor 1, or an embedded single node). Its log is a ``storage.SegmentedLog``;
  produce appends one DATA entry and group-commits: one fsync, run in a worker
  thread, covers every batch appended before it started. The high watermark is the
  next offset after the last fsynced entry, so nothing unsynced is ever visible.
* a Raft replica (one Raft group per partition, on the multi-Raft host), when the
  replication host is available; see ``broker/_server.py``.

Directory layout under the broker's data dir::

    controller/snapshot          the controller state machine (embedded mode)
    groups/<group id>/log/       one partition's segmented log
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

import storage
from broker._controller import ControllerState, PartitionAssignment, TopicRecord
from clients import Acks, NotLeaderError, OffsetOutOfRangeError
from clients._protocol import Buffer

__all__ = ["LocalReplica", "PartitionManager", "ReplicaFactory", "log_config_for"]

log = logging.getLogger("zstream.partitions")


def log_config_for(configs: Mapping[str, int], default_segment_bytes: int) -> storage.LogConfig:
    return storage.LogConfig(
        segment_bytes=configs.get("segment_bytes", default_segment_bytes),
        retention_bytes=configs.get("retention_bytes"),
        retention_ms=configs.get("retention_ms"),
    )


class LocalReplica:
    """A partition with a single replica, here."""

    def __init__(self, directory: Path, config: storage.LogConfig, *, fsync: bool = True) -> None:
        self._log = storage.SegmentedLog.open(directory, config)
        if fsync:
            self._log.sync()  # whatever survived a crash is durable from now on
        self._fsync = fsync
        self._hwm = self._log.next_offset
        self._pending: deque[tuple[int, int]] = deque()  # (raft index, next offset)
        self._sync_task: asyncio.Task[int] | None = None
        self._changed = asyncio.Condition()
        self._closed = False
        self.is_leader = True
        self.leader: int | None = None  # set by the manager: this broker's id

    # -- PartitionBackend ------------------------------------------------------------------

    @property
    def high_watermark(self) -> int:
        return self._hwm

    @property
    def log_start_offset(self) -> int:
        return self._log.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._log.next_offset

    def check_leader(self) -> None:
        if self._closed:
            raise NotLeaderError("the partition is closing here", leader=None)

    async def produce(self, batch: Buffer, acks: Acks, timeout_s: float) -> int:
        self.check_leader()
        base = self._log.next_offset
        stamped = bytearray(batch)
        storage.stamp_base_offset(stamped, base)
        count = storage.decode_batch_header(stamped).record_count
        index = self._log.last_index + 1
        term = 1
        entry = storage.LogEntry(
            index, term, storage.EntryKind.DATA, base, count, memoryview(stamped)
        )
        self._log.append([entry])
        self._pending.append((index, base + count))
        await self._synced_through(index)
        return base

    async def _synced_through(self, index: int) -> None:
        while self._pending and self._pending[0][0] <= index:
            if self._sync_task is None:
                self._sync_task = asyncio.create_task(self._sync())
            task = self._sync_task
            await asyncio.shield(task)

    async def _sync(self) -> int:
        try:
            synced = (
                await asyncio.to_thread(self._log.sync) if self._fsync else self._log.last_index
            )
            hwm = self._hwm
            while self._pending and self._pending[0][0] <= synced:
                hwm = self._pending.popleft()[1]
            if hwm != self._hwm:
                async with self._changed:
                    self._hwm = hwm
                    self._changed.notify_all()
            return synced
        finally:
            self._sync_task = None

    def read(self, offset: int, max_bytes: int) -> list[memoryview]:
        hwm = self._hwm
        start = self._log.log_start_offset
        if not start <= offset <= hwm:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{start}, {hwm}]", start=start, end=hwm
            )
        if offset == hwm:
            return []
        first = self._log.entry_for_offset(offset)
        out: list[memoryview] = []
        for entry in self._log.read(first.index, self._log.last_index + 1, max_bytes):
            if entry.kind != storage.EntryKind.DATA:
                continue
            if entry.next_offset > hwm:
                break
            out.append(memoryview(entry.payload))
        return out

    async def wait_beyond(self, offset: int, timeout_s: float) -> bool:
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._hwm > offset), timeout_s
                )
            except TimeoutError:
                return False
        return True

    # -- management ------------------------------------------------------------------------

    def apply_retention(self, now_ms: int) -> int:
        if self._sync_task is not None:
            return 0  # never while a sync runs (SegmentedLog's rule); next round
        return self._log.apply_retention(now_ms)

    async def close(self) -> None:
        self._closed = True
        if self._sync_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._sync_task)
        self._log.close()


ReplicaFactory = Callable[[TopicRecord, PartitionAssignment, Path], LocalReplica]


class PartitionManager:
    """Opens the replicas the controller places on this broker, closes (and deletes)
    the ones it no longer does, and finds them for the front end."""

    def __init__(self, broker_id: int, data_dir: Path, factory: ReplicaFactory) -> None:
        self._broker_id = broker_id
        self._groups_dir = data_dir / "groups"
        self._factory = factory
        self._by_group: dict[int, LocalReplica] = {}
        self._by_name: dict[tuple[str, int], LocalReplica] = {}
        self._lock = asyncio.Lock()

    def get(self, topic: str, partition: int) -> LocalReplica | None:
        return self._by_name.get((topic, partition))

    def replicas(self) -> dict[tuple[str, int], LocalReplica]:
        return dict(self._by_name)

    async def reconcile(self, state: ControllerState) -> None:
        """Make the open replicas match the placement in ``state``."""
        async with self._lock:
            wanted = {p.group_id: (t, p) for t, p in state.partitions_of(self._broker_id)}
            for group_id in [g for g in self._by_group if g not in wanted]:
                replica = self._by_group.pop(group_id)
                self._by_name = {k: v for k, v in self._by_name.items() if v is not replica}
                await replica.close()
                directory = self._groups_dir / str(group_id)
                await asyncio.to_thread(shutil.rmtree, directory, True)
                log.info("partition closed group=%d (topic deleted)", group_id)
            for group_id, (topic, part) in wanted.items():
                if group_id in self._by_group:
                    continue
                directory = self._groups_dir / str(group_id)
                try:
                    replica = self._factory(topic, part, directory)
                except storage.StorageError:
                    log.exception("partition open failed group=%d", group_id)
                    continue
                replica.leader = self._broker_id
                self._by_group[group_id] = replica
                self._by_name[(topic.name, part.partition)] = replica
                log.info(
                    "partition opened topic=%s partition=%d group=%d",
                    topic.name,
                    part.partition,
                    group_id,
                )

    def apply_retention(self) -> int:
        now_ms = time.time_ns() // 1_000_000
        removed = 0
        for replica in list(self._by_group.values()):
            try:
                removed += replica.apply_retention(now_ms)
            except storage.StorageError:
                log.exception("retention failed")
        return removed

    async def close(self) -> None:
        async with self._lock:
            for replica in self._by_group.values():
                await replica.close()
            self._by_group.clear()
            self._by_name.clear()
