"""An in-memory Backend for front-end tests: partitions are lists of batches;
consumer groups are served from a real (pure) ControllerState, applied inline."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from zstream import storage
from zstream.broker._acl import AclTable
from zstream.broker._controller import (
    ControllerState,
    PartitionAssignment,
    TopicRecord,
    acl_add_command,
    acl_remove_command,
    add_partitions_command,
    alter_topic_configs_command,
    commit_offsets_command,
    create_topic_command,
    decommission_broker_command,
    delete_topic_command,
    group_delete_command,
    group_join_or_update_command,
    group_leave_command,
    quota_set_command,
    reassign_partition_command,
    rebalance_command,
    register_broker_command,
)
from zstream.broker._frontend import Frontend
from zstream.clients import (
    Acks,
    AclEntry,
    CommitOffsetsRequest,
    CreateTopicRequest,
    FetchOffsetsRequest,
    GroupHeartbeatRequest,
    NotControllerError,
    NotLeaderError,
    OffsetOutOfRangeError,
    QuotaLimits,
    TopicExistsError,
    UnknownMemberError,
    UnknownPartitionError,
    UnknownTopicError,
    ZStreamError,
)
from zstream.clients._protocol import (
    AddPartitionsRequest,
    AlterTopicRequest,
    Buffer,
    DecommissionBrokerRequest,
    ReassignPartitionRequest,
    RebalanceRequest,
)

T = TypeVar("T")


class FakePartition:
    def __init__(self) -> None:
        self.batches: list[tuple[int, bytes]] = []  # (base offset, stamped batch)
        self.next_offset = 0
        self.committed = 0
        self.start = 0  # the log start (as if retention had removed what is below)
        self.leader: int | None = 1
        self.me = 1
        self.auto_commit = True
        self.blocked: asyncio.Event | None = None  # produce waits on it when set
        self._changed = asyncio.Condition()

    @property
    def high_watermark(self) -> int:
        return self.committed

    @property
    def log_start_offset(self) -> int:
        return self.start

    @property
    def log_end_offset(self) -> int:
        return self.next_offset

    def check_leader(self) -> None:
        if self.leader != self.me:
            raise NotLeaderError("not the leader", leader=self.leader)

    async def produce(self, batch: Buffer, acks: Acks, timeout_s: float) -> int:
        if self.blocked is not None:
            await self.blocked.wait()
        copy = bytearray(batch)
        base = self.next_offset
        storage.stamp_base_offset(copy, base)
        self.batches.append((base, bytes(copy)))
        self.next_offset += storage.decode_batch_header(copy).record_count
        if self.auto_commit:
            await self.commit()
        return base

    async def commit(self) -> None:
        async with self._changed:
            self.committed = self.next_offset
            self._changed.notify_all()

    def read(self, offset: int, max_bytes: int) -> list[memoryview]:
        if not self.start <= offset <= self.committed:
            raise OffsetOutOfRangeError("out of range", start=self.start, end=self.committed)
        out: list[memoryview] = []
        used = 0
        for base, batch in self.batches:
            header = storage.decode_batch_header(batch)
            if header.next_offset <= offset or base >= self.committed:
                continue
            if out and used + len(batch) > max_bytes:
                break
            out.append(memoryview(batch))
            used += len(batch)
        return out

    async def wait_beyond(self, offset: int, timeout_s: float) -> bool:
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.committed > offset), timeout_s
                )
            except TimeoutError:
                return False
        return True


class FakeBackend:
    def __init__(self) -> None:
        self.topics: dict[str, list[FakePartition]] = {}
        self.fail_metadata = False
        self.addr = ""  # the front end's address, for metadata
        self.next_producer_id = 1
        self.controller = ControllerState()
        self.controller_leader = 1  # group ops raise NotControllerError unless 1
        self.proposals = 0  # group commands applied (the heartbeat fast path makes none)
        self._index = 0
        self._propose(register_broker_command(1, "tcp://fake:1", "tcp://fake:2"))

    def _propose(self, command: bytes) -> object:
        self._check_controller()
        self._index += 1
        self.proposals += 1
        result = self.controller.apply(self._index, command)
        if isinstance(result, ZStreamError):
            raise result
        return result

    def _check_controller(self) -> None:
        if self.controller_leader != 1:
            raise NotControllerError("not the controller", leader=self.controller_leader)

    def partition(self, topic: str, partition: int) -> FakePartition:
        parts = self.topics.get(topic)
        if parts is None:
            raise UnknownTopicError(f"unknown topic {topic!r}")
        if partition >= len(parts):
            raise UnknownPartitionError(f"{topic} has no partition {partition}")
        return parts[partition]

    def metadata(self, topics: Sequence[str] | None) -> dict[str, Any]:
        """The real metadata's shape: one broker (id 1, at ``addr``) leads everything."""
        if self.fail_metadata:
            raise RuntimeError("a bug in the backend")
        names = sorted(self.topics) if topics is None else [t for t in topics if t in self.topics]
        return {
            "brokers": [{"id": 1, "client_addr": self.addr, "alive": True}],
            "controller": self.controller_leader,
            "topics": [
                {
                    "name": name,
                    "replication_factor": 1,
                    "configs": {},
                    "partitions": [
                        {
                            "partition": i,
                            "leader": p.leader,
                            "replicas": [1],
                            "hwm": p.high_watermark,
                            "log_start": p.log_start_offset,
                        }
                        for i, p in enumerate(self.topics[name])
                    ],
                }
                for name in names
            ],
        }

    def list_topics(self) -> list[str]:
        return sorted(self.topics)

    def describe_topic(self, name: str) -> dict[str, Any]:
        if name not in self.topics:
            raise UnknownTopicError(f"unknown topic {name!r}")
        return {"name": name, "partitions": len(self.topics[name])}

    async def create_topic(self, request: CreateTopicRequest) -> dict[str, Any]:
        if request.name in self.topics:
            raise TopicExistsError(f"topic {request.name!r} already exists")
        self.topics[request.name] = [FakePartition() for _ in range(request.partitions)]
        self._propose(create_topic_command(request.name, request.partitions, 1, {}, [1]))
        return {"name": request.name}

    async def delete_topic(self, name: str) -> None:
        if self.topics.pop(name, None) is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        self._propose(delete_topic_command(name))

    async def init_producer(self) -> dict[str, Any]:
        pid = self.next_producer_id
        self.next_producer_id += 1
        return {"producer_id": pid, "epoch": 0}

    async def group_heartbeat(self, request: GroupHeartbeatRequest) -> dict[str, Any]:
        self._check_controller()
        if request.leave:
            with contextlib.suppress(UnknownMemberError):
                self._propose(group_leave_command(request.group, request.member_id))
            return {"member_id": request.member_id, "member_epoch": -1, "assignment": {}}
        owned = [(t, p) for t, ps in request.owned.items() for p in ps]
        args = (request.group, request.member_id, request.topics, request.session_timeout_ms)
        if self.controller.heartbeat_changes_nothing(*args, owned):
            return self.controller.heartbeat_reply(request.group, request.member_id)
        result = self._propose(group_join_or_update_command(*args, owned))
        assert isinstance(result, dict)
        return result

    async def commit_offsets(self, request: CommitOffsetsRequest) -> None:
        rows = [(t, p, o) for t, pairs in request.offsets.items() for p, o in pairs]
        self._propose(commit_offsets_command(request.group, request.member_id, rows))

    async def fetch_offsets(self, request: FetchOffsetsRequest) -> dict[str, Any]:
        self._check_controller()
        return self.controller.fetch_offsets(request.group, request.topics)

    async def list_groups(self) -> list[str]:
        self._check_controller()
        return self.controller.list_groups()

    async def describe_group(self, name: str) -> dict[str, Any]:
        self._check_controller()
        return self.controller.describe_group(name)

    async def delete_group(self, name: str) -> None:
        self._propose(group_delete_command(name))

    async def reassign_partition(self, request: ReassignPartitionRequest) -> dict[str, Any]:
        live = sorted(self.controller.brokers)  # every registered broker counts as live
        command = reassign_partition_command(
            request.topic, request.partition, request.replicas, live
        )
        part = self._propose(command)
        assert isinstance(part, PartitionAssignment)
        return {
            "topic": request.topic,
            "partition": part.partition,
            "replicas": list(part.replicas),
            "target": list(part.target) or None,
        }

    async def decommission_broker(self, request: DecommissionBrokerRequest) -> dict[str, Any]:
        leaving = self._propose(decommission_broker_command(request.broker_id))
        return {"decommissioning": leaving}

    async def rebalance(self, request: RebalanceRequest) -> dict[str, Any]:
        self._check_controller()
        plan = self.controller.rebalance_plan(self.controller.brokers)
        if not request.dry_run:
            self._propose(rebalance_command("moving"))
        return self.controller.rebalance_reply(plan, request.dry_run)

    async def alter_topic(self, request: AlterTopicRequest) -> dict[str, Any]:
        topic = self._propose(alter_topic_configs_command(request.name, request.configs))
        assert isinstance(topic, TopicRecord)
        return {
            "name": topic.name,
            "configs": dict(topic.configs),
            "partitions": [],
            "replication_factor": topic.replication_factor,
        }

    async def add_partitions(self, request: AddPartitionsRequest) -> dict[str, Any]:
        topic = self._propose(add_partitions_command(request.name, request.count, [1]))
        assert isinstance(topic, TopicRecord)
        self.topics[topic.name] += [
            FakePartition() for _ in range(len(topic.partitions) - len(self.topics[topic.name]))
        ]
        return {
            "name": topic.name,
            "configs": dict(topic.configs),
            "partitions": [],
            "replication_factor": topic.replication_factor,
        }

    async def list_reassignments(self) -> list[dict[str, Any]]:
        self._check_controller()
        return self.controller.reassignments()

    @property
    def acls(self) -> AclTable:
        return self.controller.acls

    @property
    def quotas(self) -> Mapping[str, QuotaLimits]:
        return self.controller.quotas

    async def list_acls(self) -> list[AclEntry]:
        self._check_controller()
        return self.controller.acls.entries()

    async def add_acls(self, entries: Sequence[AclEntry]) -> int:
        added = self._propose(acl_add_command(entries))
        assert isinstance(added, int)
        return added

    async def remove_acls(self, entries: Sequence[AclEntry]) -> int:
        removed = self._propose(acl_remove_command(entries))
        assert isinstance(removed, int)
        return removed

    async def set_quota(self, quota: QuotaLimits) -> None:
        self._propose(quota_set_command(quota))

    async def list_quotas(self) -> list[QuotaLimits]:
        self._check_controller()
        return [q for _, q in sorted(self.controller.quotas.items())]


class LiveFrontend:
    """A front end over a FakeBackend, serving from its own thread and event loop
    (for synchronous clients: raw sockets, the CLI)."""

    def __init__(
        self, max_message_bytes: int = 8 * 1024 * 1024, principal: str | None = None
    ) -> None:
        self.addr = ""
        self.backend = FakeBackend()
        self._max_bytes = max_message_bytes
        self._principal = principal  # every request's, as if CURVE said so (None: off)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()))

    async def _main(self) -> None:
        principal = self._principal
        frontend = Frontend(
            self.backend,
            "tcp://127.0.0.1:*",
            max_message_bytes=self._max_bytes,
            principal_of=None if principal is None else (lambda msg: principal),
        )
        self.addr = self.backend.addr = frontend.addr
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        task = asyncio.create_task(frontend.run())
        self._ready.set()
        await self._stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await frontend.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the front end's loop (to set the backend up) and wait."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def __enter__(self) -> LiveFrontend:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive()
