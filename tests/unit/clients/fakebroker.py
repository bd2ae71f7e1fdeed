"""A one-process fake broker that speaks the client protocol on a loopback ROUTER
socket: metadata, fetch (long-poll), and a consumer-group controller small enough to
read at a glance. Consumer tests drive it through the real client code.

The group model follows docs of ``GroupHeartbeatRequest`` / ``CommitOffsetsRequest``:
targets are recomputed on every join and leave (partitions of the subscribed topics,
sorted, dealt round-robin over the members newest first, so that a joining member
takes partitions over from the older ones); a reply's assignment is the
member's target minus what another member still reports owned; commits are fenced
unless the member reports the partition owned and nobody else does.
Every request is logged in arrival order (``log``), so tests can check what a
consumer sent, and in which order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from zstream import storage
from zstream.clients import (
    CommitOffsetsRequest,
    FencedMemberError,
    FetchOffsetsRequest,
    FetchRequest,
    GroupHeartbeatRequest,
    MetadataRequest,
    OffsetOutOfRangeError,
    UnknownMemberError,
    UnknownTopicError,
    ZStreamError,
)
from zstream.clients._protocol import (
    RequestArgs,
    decode_request,
    encode_error_reply,
    encode_reply,
)

TP = tuple[str, int]


@dataclasses.dataclass
class FakeMember:
    topics: list[str]
    owned: set[TP] = dataclasses.field(default_factory=set)
    target: set[TP] = dataclasses.field(default_factory=set)
    epoch: int = 1


class FakeBroker:
    def __init__(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(endpoint, bytes)
        self.addr = endpoint.decode()
        self.topics: dict[str, list[list[bytes]]] = {}  # topic -> partition -> batches
        self.ends: dict[TP, int] = {}
        self.members: dict[str, FakeMember] = {}
        self.offsets: dict[TP, int] = {}
        self.log: list[RequestArgs] = []
        # Make the next request of an op fail: op -> queue of errors to raise.
        self.failures: dict[str, list[ZStreamError]] = {}
        self.muted: set[str] = set()  # ops left unanswered, as by a dead controller
        self.heartbeat_interval_ms = 50
        self._data = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    # -- the test's controls -------------------------------------------------------------

    def create_topic(self, name: str, partitions: int) -> None:
        self.topics[name] = [[] for _ in range(partitions)]
        for p in range(partitions):
            self.ends[(name, p)] = 0

    async def append(self, topic: str, partition: int, *values: bytes) -> None:
        base = self.ends[(topic, partition)]
        batch = storage.encode_batch([(None, v) for v in values], base_offset=base)
        self.topics[topic][partition].append(batch)
        self.ends[(topic, partition)] = base + len(values)
        async with self._data:
            self._data.notify_all()

    def forget(self, member_id: str) -> None:
        """Remove a member as a session expiry would."""
        self.members.pop(member_id, None)
        self._reassign()

    def sent(self, op: type[Any], where: Callable[[Any], bool] = lambda _: True) -> list[Any]:
        return [r for r in self.log if isinstance(r, op) and where(r)]

    # -- serving --------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.create_task(self._serve())

    async def close(self) -> None:
        tasks = [t for t in (self._loop, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        # Bounded: a handler that missed its cancellation (Python 3.11's wait_for can
        # swallow one) must not hang the fixture, and the socket must be closed anyway.
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self.sock.close(linger=0)
        self.ctx.term()

    async def _serve(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            task = asyncio.create_task(self._answer(frames[0], frames[1:]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, identity: bytes, frames: list[bytes]) -> None:
        request = decode_request(frames)
        self.log.append(request.args)
        if request.op in self.muted:
            return
        try:
            pending = self.failures.get(request.op)
            if pending:
                raise pending.pop(0)
            result, out = await self._handle(request.args)
            reply = encode_reply(request.corr_id, result, out)
        except ZStreamError as exc:
            reply = encode_error_reply(request.corr_id, exc)
        with contextlib.suppress(zmq.ZMQError):
            await self.sock.send_multipart([identity, *reply])

    async def _handle(self, args: RequestArgs) -> tuple[dict[str, Any], list[bytes]]:
        if isinstance(args, MetadataRequest):
            return self._metadata(), []
        if isinstance(args, FetchRequest):
            return await self._fetch(args)
        if isinstance(args, GroupHeartbeatRequest):
            return self._heartbeat(args), []
        if isinstance(args, CommitOffsetsRequest):
            self._commit(args)
            return {}, []
        if isinstance(args, FetchOffsetsRequest):
            wanted = set(args.topics) if args.topics is not None else set(self.topics)
            found: dict[str, list[list[int]]] = {}
            for (topic, p), offset in sorted(self.offsets.items()):
                if topic in wanted:
                    found.setdefault(topic, []).append([p, offset])
            return {"offsets": found}, []
        raise NotImplementedError(args.op)

    def _metadata(self) -> dict[str, Any]:
        return {
            "brokers": [{"id": 1, "client_addr": self.addr, "alive": True}],
            "controller": 1,
            "topics": [
                {
                    "name": name,
                    "replication_factor": 1,
                    "configs": {},
                    "partitions": [
                        {
                            "partition": p,
                            "leader": 1,
                            "replicas": [1],
                            "hwm": self.ends[(name, p)],
                            "log_start": 0,
                        }
                        for p in range(len(parts))
                    ],
                }
                for name, parts in self.topics.items()
            ],
        }

    async def _fetch(self, args: FetchRequest) -> tuple[dict[str, Any], list[bytes]]:
        tp = (args.topic, args.partition)
        if tp not in self.ends:
            raise UnknownTopicError(f"no {tp}")
        if not 0 <= args.offset <= self.ends[tp]:
            raise OffsetOutOfRangeError("out of range", start=0, end=self.ends[tp])
        if args.offset == self.ends[tp] and args.max_wait_ms > 0:
            with contextlib.suppress(TimeoutError):
                async with self._data:
                    await asyncio.wait_for(
                        self._data.wait_for(lambda: self.ends[tp] > args.offset),
                        args.max_wait_ms / 1000,
                    )
        out = [
            b
            for b in self.topics[args.topic][args.partition]
            if storage.decode_batch_header(b).next_offset > args.offset
        ]
        return {"hwm": self.ends[tp], "log_start": 0}, out

    # -- the group controller -------------------------------------------------------------

    def _reassign(self) -> None:
        ids = list(reversed(self.members))  # newest first
        for member in self.members.values():
            member.target = set()
        for i, tp in enumerate(
            sorted(
                (t, p)
                for t, parts in self.topics.items()
                for p in range(len(parts))
                if any(t in m.topics for m in self.members.values())
            )
        ):
            eligible = [m for m in ids if tp[0] in self.members[m].topics]
            self.members[eligible[i % len(eligible)]].target.add(tp)
        for member in self.members.values():
            member.epoch += 1

    def _owned_by_others(self, member_id: str) -> set[TP]:
        return {tp for m, member in self.members.items() if m != member_id for tp in member.owned}

    def _heartbeat(self, args: GroupHeartbeatRequest) -> dict[str, Any]:
        member = self.members.get(args.member_id)
        if args.leave:
            if member is not None:
                del self.members[args.member_id]
                self._reassign()
            return {"member_id": args.member_id, "member_epoch": -1}
        if member is None:
            if args.topics is None:
                raise UnknownMemberError(f"no member {args.member_id}")
            member = self.members[args.member_id] = FakeMember(list(args.topics))
            self._reassign()
        elif args.topics is not None and args.topics != member.topics:
            member.topics = list(args.topics)
            self._reassign()
        member.owned = {(t, p) for t, parts in args.owned.items() for p in parts}
        assignment: dict[str, list[int]] = {}
        for topic, p in sorted(member.target - self._owned_by_others(args.member_id)):
            assignment.setdefault(topic, []).append(p)
        return {
            "member_id": args.member_id,
            "member_epoch": member.epoch,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "assignment": assignment,
        }

    def _commit(self, args: CommitOffsetsRequest) -> None:
        pairs = {(t, p): off for t, ps in args.offsets.items() for p, off in ps}
        if args.member_id == "":
            if self.members:
                raise FencedMemberError("the group has members")
        else:
            member = self.members.get(args.member_id)
            if member is None:
                raise UnknownMemberError(f"no member {args.member_id}")
            others = self._owned_by_others(args.member_id)
            for tp in pairs:
                if tp not in member.owned or tp in others:
                    raise FencedMemberError(f"{tp} is not {args.member_id}'s")
        self.offsets.update(pairs)
