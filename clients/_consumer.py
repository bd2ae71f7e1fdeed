"""The consumer: assigned partitions read through push streams (default) or fetch.

Theory of operation
-------------------
Each assigned partition has one reader task (owned by the consumer; cancelled by
`pause`, `seek`, `assign` and `close`). It keeps ``fetch_offset``, the next offset it
has not yet handed over, and appends chunks (one per batch: the CRC-checked msgpack
rows of its records with ``offset >= fetch_offset``, see clients/_records.py) to one
arrival-ordered deque that the delivery calls drain: ``async for`` / `getone` one
record at a time from the oldest chunk, `getmany` / `getmany_values` many in one call
(at most ``max_records``; by default `getmany` stops at ``max_poll_records``, 500,
and `getmany_values` takes everything buffered), per partition in offset order.
Record objects are built only when asked for, in C (``map``/``zip``; the per-record path
256 at a time), with the deserializers applied there; `getmany_values` builds none.
A partition's reader waits while its chunks not yet delivered hold more than
``max(credit_bytes, 2 * fetch_max_bytes)``, so a partition the application does not
ask for does not hold up the others. Every chunk carries the partition's generation:
`seek`, `pause` and re-assignment bump it and drop the partition's chunks, so records
read before the change are never delivered.

Stream mode: the reader subscribes on the leader from ``fetch_offset`` with
``credit_bytes``; the iterator grants credit again once the application has consumed
half of it. When the stream closes (NOT_LEADER, the broker died, a silence longer
than ``stream_silence_ms`` with no heartbeat) the reader refreshes the metadata and
subscribes on the (new) leader from ``fetch_offset``: records already delivered are
filtered out and none is skipped, so the application sees no gap and no duplicate.

Fetch mode: the reader long-polls ``fetch`` from ``fetch_offset``; the queue's bound
is the back-pressure.

Offsets: ``position(tp)`` is the offset of the next record the application will
get. A record counts as *processed* once the application asks for more: the next
``getone`` / iteration step / ``getmany`` call (as in Kafka, where the records returned
by one ``poll`` are processed by the next), so auto-commit commits only records handed
out before the last delivery call.
A reader whose offset falls below the log start (retention) goes on from the log
start; one whose offset stays beyond the end (a commit or seek past it) for a second
applies ``auto_offset_reset`` with a warning, as if nothing were committed.

Groups (``group=``): `subscribe` joins the group and a `clients._group.Coordinator`
(owned by the consumer, ended by `close`) heartbeats the controller, which assigns
the partitions. A newly assigned partition is first claimed (reported in the next
heartbeat's ``owned``); only when the reply to that heartbeat still assigns it does the
coordinator start its reader, from the group's committed offset
(``auto_offset_reset`` when none), so two members never read it at once. For each
partition it releases it stops the reader, drops the queued records (generation bump), calls
``on_revoke``, commits the processed offset (auto-commit) and only then reports the
partition released. Once no heartbeat has been answered for a session timeout
(counted from when the last answered one was sent), the consumer delivers no more
records until the coordinator has dropped the partitions as lost (or heard back).
`commit` commits ``position()`` of every owned partition (or the
given offsets), synchronously; auto-commit commits processed offsets every
``auto_commit_interval_ms``, on revoke, and ``position()`` on `close`, then the
member leaves. Commits go out one at a time, and auto-commit never moves a
partition's offset below what this consumer committed last (unless the application
seeked). `assign` with a group reads from the committed offsets and commits as a
non-member (accepted only while the group has no members).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from itertools import repeat
from operator import add
from typing import Any, Generic, Literal, NamedTuple, Self, TypeVar

from zstream import storage
from zstream.clients._cluster import ClusterClient
from zstream.clients._credentials import Credentials
from zstream.clients._errors import (
    CorruptBatchError,
    DeserializationError,
    InvalidRequestError,
    NotAuthorizedError,
    OffsetOutOfRangeError,
    UnavailableError,
    UnknownPartitionError,
    ZStreamError,
    error_for_code,
    throttle_time_s,
)
from zstream.clients._group import TP, Coordinator, Membership, committed_offsets
from zstream.clients._protocol import (
    MAX_SESSION_TIMEOUT_MS,
    MIN_SESSION_TIMEOUT_MS,
    Buffer,
    CommitOffsetsRequest,
    CreditRequest,
    FetchOffsetsRequest,
    FetchRequest,
    Push,
    Reply,
    RequestArgs,
    SubscribeRequest,
    UnsubscribeRequest,
    validate_group_name,
)
from zstream.clients._records import VALUE, Rows, decode_rows
from zstream.clients._serde import K, V

__all__ = ["Consumer", "RebalanceCallback", "Record", "TopicPartition"]

log = logging.getLogger("zstream.clients.consumer")

# How long a partition's offset must stay beyond its end before auto_offset_reset
# applies: a newly elected leader's high watermark can trail its log for a moment
# (until it commits an entry of its term), and an offset this consumer read up to
# must not be reset for that. One second is a broker heartbeat; a bad commit or seek
# stays beyond the end for good.
_PAST_END_GRACE_S = 1.0


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class Record(NamedTuple, Generic[K, V]):
    """A consumed record: an immutable named tuple (built in C, a whole chunk at a
    time). ``key`` and ``value`` are bytes, or what the consumer's deserializers made
    of them; a record stored without a key has ``key`` None."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: K | None
    value: V
    headers: tuple[tuple[str, bytes], ...]


_new_tuple = tuple.__new__
# Records the per-record path builds at a time: few enough that most are dropped by
# the application before a GC generation-0 collection (700 allocations) sees them.
_ITER_BLOCK = 256
_T = TypeVar("_T")


def _group_name(name: str) -> str:
    try:
        return validate_group_name(name)
    except InvalidRequestError as exc:
        raise ValueError(str(exc)) from None


# on_assign / on_revoke: called with the partitions taken / being released.
RebalanceCallback = Callable[[set[TopicPartition]], Awaitable[None]]


def _check_count(name: str, value: int | None) -> None:
    """A record count: a whole number >= 1, or None. (True or 2.5 would slip through
    a plain comparison and leave a budget no chunk can be taken by.)"""
    if value is not None and (type(value) is not int or value < 1):
        raise ValueError(f"{name} must be a whole number >= 1 or None, got {value!r}")


class _Chunk:
    """One batch's records waiting for the application: ``rows[index:]`` are still to
    be delivered, the row at ``i`` has offset ``base + i``. ``records`` holds the
    Record objects the per-record path built last, for ``rows[cached_at:]`` (a block
    at a time: records are tuple subclasses, which the cyclic GC never untracks, so
    building a whole chunk ahead keeps thousands of them alive through collections)."""

    __slots__ = (
        "base",
        "cached_at",
        "first_ts",
        "generation",
        "index",
        "records",
        "rows",
        "size",
        "state",
        "stream",
    )

    def __init__(
        self,
        state: _PartitionState,
        generation: int,
        base: int,
        first_ts: int,
        rows: Rows,
        size: int,
        stream: int,
    ) -> None:
        self.state = state
        self.generation = generation
        self.base = base
        self.first_ts = first_ts
        self.rows = rows
        self.size = size
        self.stream = stream  # the push stream it came on (0 for fetch)
        self.index = 0
        self.records: list[Any] = []
        self.cached_at = 0


@dataclasses.dataclass(slots=True, eq=False)  # compared (and hashed) by identity
class _PartitionState:
    tp: TopicPartition
    position: int | None = None  # next offset for the application
    fetch_offset: int = 0  # next offset the reader has not queued
    hwm: int = 0
    generation: int = 0
    paused: bool = False
    task: asyncio.Task[None] | None = None
    stream: int = 0
    stream_addr: str = ""
    consumed: int = 0  # bytes of the current stream consumed since the last credit
    processed: int | None = None  # offset after the last record the application processed
    committed: int | None = None  # what this consumer last committed (or found committed)
    look_up_committed: bool = False  # assign() with a group: start from the commit
    revoked: bool = False  # being released by the group: never read again
    past_end_since: float | None = None  # loop time the offset was first beyond the end
    queued_bytes: int = 0  # of this partition's chunks not yet fully delivered
    room: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class Consumer(Generic[K, V]):
    """An asyncio consumer::

    async with Consumer("127.0.0.1:7101") as consumer:
        consumer.assign([TopicPartition("events", 0)])
        async for record in consumer:
            print(record.offset, record.value)

    Many records per call, per partition (`getmany`), or only their values, with no
    object per record (`getmany_values`)::

        batches = await consumer.getmany(timeout_ms=100)  # up to 500 records
        for tp, records in batches.items():
            ...

    ``key_deserializer`` / ``value_deserializer`` turn the stored bytes into the
    application's objects (``Consumer[str, Any](b, value_deserializer=json_deserializer)``);
    see clients/_serde.py for the typing of un-parameterized use (``bytes``).

    In a group, the controller shares the partitions out among the members::

    async with Consumer("127.0.0.1:7101", group="billing") as consumer:
        await consumer.subscribe(["events"])
        async for record in consumer:
            handle(record)
            await consumer.commit()  # or rely on auto-commit (at least once)
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        group: str | None = None,
        *,
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        session_timeout_ms: int = 10_000,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        mode: Literal["stream", "fetch"] = "stream",
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
        credit_bytes: int = 4 * 1024 * 1024,
        fetch_max_bytes: int = 1024 * 1024,
        fetch_max_wait_ms: int = 500,
        max_poll_records: int | None = 500,
        stream_silence_ms: int = 5000,
        request_timeout_ms: int = 5000,
        key_deserializer: Callable[[bytes], K] | None = None,
        value_deserializer: Callable[[bytes], V] | None = None,
        credentials: str | os.PathLike[str] | Credentials | None = None,
        server_key: str | os.PathLike[str] | None = None,
    ) -> None:
        # credit 4 MiB: enough to keep a stream busy through one round trip at several
        # hundred MB/s, small enough to bound the memory a slow application holds.
        # stream_silence_ms 5 s: five broker heartbeats (1 s) missed means a dead leader.
        # session_timeout_ms 10 s and auto-commit every 5 s: Kafka's defaults (a dead
        # member's partitions move within seconds; a crash redelivers <= 5 s of records).
        if mode not in ("stream", "fetch") or auto_offset_reset not in ("earliest", "latest"):
            raise ValueError("mode is 'stream' or 'fetch'; auto_offset_reset 'earliest'/'latest'")
        if not MIN_SESSION_TIMEOUT_MS <= session_timeout_ms <= MAX_SESSION_TIMEOUT_MS:
            raise ValueError(
                f"session_timeout_ms must be within {MIN_SESSION_TIMEOUT_MS}.."
                f"{MAX_SESSION_TIMEOUT_MS}, got {session_timeout_ms}"
            )
        if auto_commit_interval_ms <= 0:
            raise ValueError("auto_commit_interval_ms must be > 0")
        _check_count("max_poll_records", max_poll_records)
        self._group = None if group is None else _group_name(group)
        self._auto_commit = enable_auto_commit
        self._auto_commit_s = auto_commit_interval_ms / 1000
        self._session_timeout_ms = session_timeout_ms
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._mode = mode
        self._reset = auto_offset_reset
        self._credit = credit_bytes
        self._fetch_max_bytes = fetch_max_bytes
        self._fetch_wait_ms = fetch_max_wait_ms
        # 500, Kafka's max.poll.records: the Record objects of one call then fit in
        # the cyclic GC's youngest generation (700 allocations). Unbounded, a call
        # hands out thousands, every young collection promotes them, and full
        # collections follow: 464-531k records/s against 916k-1.01M with 500
        # (100 B, one consumer; docs/benchmarks.md, stop 18). CPython 3.11-3.12's
        # threshold; a deserializer that builds objects (JSON) adds allocations per
        # record, so fewer fit then.
        self._max_poll_records = max_poll_records
        self._silence_s = stream_silence_ms / 1000
        self._timeout_s = request_timeout_ms / 1000
        self.cluster = ClusterClient(
            bootstrap,
            timeout_s=self._timeout_s,
            retry_for_s=30,
            credentials=credentials,
            server_key=server_key,
        )
        self._key_deserializer = key_deserializer
        self._value_deserializer = value_deserializer
        self._states: dict[TopicPartition, _PartitionState] = {}
        # Chunks read and not yet fully delivered, in arrival order (several partitions).
        self._ready: deque[_Chunk] = deque()
        self._arrived = asyncio.Event()  # set when a chunk is appended, or on close
        # A reader's refusal that no retry of the consumer's can mend (NOT_AUTHORIZED):
        # raised by the next delivery call, while the reader keeps trying (an ACL
        # granted later takes effect without a restart).
        self._refused: ZStreamError | None = None
        # A partition's reader waits while this many bytes of it are undelivered.
        self._queue_limit = max(credit_bytes, 2 * fetch_max_bytes)
        # What the last delivery call handed out, as (partition, generation): each such
        # partition's position counts as processed when the application asks for more
        # (unless sought, paused or revoked since). One chunk for the per-record path.
        self._held_chunk: _Chunk | None = None
        self._held: list[tuple[_PartitionState, int]] = []
        # Chunks `getmany` delivered to their end: credit is granted on the next call.
        self._spent: list[_Chunk] = []
        self._closed = False
        # Every reader task, including cancelled ones still unsubscribing: `close`
        # waits for them all.
        self._tasks: set[asyncio.Task[None]] = set()
        self._coordinator: Coordinator | None = None  # while subscribed with a group
        self._manual = False  # assign() was used
        self._auto_commit_task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()

    async def start(self) -> None:
        await self.cluster.refresh()

    # -- assignment ---------------------------------------------------------------------

    def assign(self, partitions: Iterable[TopicPartition | tuple[str, int]]) -> None:
        """Read exactly these partitions (replacing any earlier assignment). With a
        group, each starts from the group's committed offset, and commits are made as
        a non-member (accepted only while the group has no members)."""
        if self._coordinator is not None:
            raise RuntimeError("this consumer subscribed with a group: use subscribe or assign")
        self._manual = True
        wanted = [TopicPartition(*tp) for tp in partitions]
        for tp in list(self._states):
            if tp not in wanted:
                self._stop(self._states.pop(tp))
        for tp in wanted:
            if tp not in self._states:
                state = self._states[tp] = _PartitionState(tp)
                state.look_up_committed = self._group is not None
                self._start(state)
        self._start_auto_commit()

    async def subscribe(self, topics: Sequence[str], group: str | None = None) -> None:
        """Without a group: assign every partition of ``topics`` (this consumer reads
        them all). With a group (here or in the constructor): join it; the controller
        assigns this member its share of the partitions, and moves them as members
        come and go (see `assignment`, ``on_assign``, ``on_revoke``)."""
        if group is not None:
            name = _group_name(group)
            if self._group not in (None, name):
                raise ValueError(f"this consumer is in group {self._group!r}, not {name!r}")
            self._group = name
        if self._group is None:
            await self.cluster.refresh(list(topics))
            self.assign(
                TopicPartition(t, p["partition"])
                for t in topics
                for p in self.cluster.topic(t)["partitions"]
            )
            return
        if self._manual:
            raise RuntimeError("this consumer used assign: use subscribe or assign")
        if self._closed:
            raise RuntimeError("the consumer is closed")
        if self._coordinator is None:
            membership = Membership(self._group, topics, self._session_timeout_ms)
            self._coordinator = Coordinator(membership, self._call_controller, self)
            self._coordinator.start()
        else:
            self._coordinator.membership.subscribe(topics)
            self._coordinator.wake()
        self._start_auto_commit()

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer reads (in a group: the ones it owns now)."""
        return {tp for tp, s in self._states.items() if not s.revoked}

    @property
    def member_id(self) -> str | None:
        """This consumer's id in its group (None unless subscribed with a group)."""
        return None if self._coordinator is None else self._coordinator.member_id

    def _state(self, tp: TopicPartition | tuple[str, int]) -> _PartitionState:
        state = self._states.get(TopicPartition(*tp))
        if state is None:
            raise UnknownPartitionError(f"{tp} is not assigned to this consumer")
        return state

    def _start(self, state: _PartitionState) -> None:
        state.generation += 1
        self._drop_chunks(state)
        if state.position is not None:
            state.fetch_offset = state.position
        if state.paused or state.revoked or self._closed:
            return
        reader = self._stream if self._mode == "stream" else self._fetch
        task = state.task = asyncio.create_task(reader(state, state.generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stop(self, state: _PartitionState) -> None:
        state.generation += 1
        self._drop_chunks(state)
        if state.task is not None:
            state.task.cancel()
            state.task = None

    def _drop_chunks(self, state: _PartitionState) -> None:
        """Forget the partition's undelivered chunks (its generation just changed)."""
        if state.queued_bytes or any(c.state is state for c in self._ready):
            self._ready = deque(c for c in self._ready if c.state is not state)
        state.queued_bytes = 0
        state.room.set()

    def _restart(self, state: _PartitionState) -> None:
        self._stop(state)
        self._start(state)

    # -- the group coordinator's side (clients._group.GroupHost) -------------------------

    async def _call_controller(self, args: RequestArgs) -> Reply:
        return await self.cluster.call_controller(args, timeout_s=self._timeout_s)

    def group_take(self, offsets: Mapping[TP, int | None]) -> None:
        for tp, offset in offsets.items():
            state = _PartitionState(TopicPartition(*tp), position=offset)
            state.processed = state.committed = offset
            self._states[state.tp] = state
            self._start(state)

    async def group_release(self, tps: frozenset[TP], *, lost: bool) -> None:
        states = [s for tp in tps if (s := self._states.get(TopicPartition(*tp))) is not None]
        for state in states:
            state.revoked = True
            self._stop(state)  # the generation bump drops its queued records
        try:
            if self._on_revoke is not None:
                try:
                    await self._on_revoke({s.tp for s in states})
                except Exception:  # the application's bug must not stop the membership
                    log.exception("on_revoke failed")
            if self._auto_commit and not lost:
                try:
                    await asyncio.wait_for(self._auto_commit_now(states), self._timeout_s)
                except (ZStreamError, TimeoutError) as exc:
                    log.warning("commit on revoke of %s failed: %s", sorted(tps), exc)
        finally:
            for state in states:
                if self._states.get(state.tp) is state:
                    del self._states[state.tp]

    async def group_assigned(self, tps: frozenset[TP]) -> None:
        if self._on_assign is not None:
            try:
                await self._on_assign({TopicPartition(*tp) for tp in tps})
            except Exception:  # the application's bug must not stop the membership
                log.exception("on_assign failed")

    # -- committed offsets --------------------------------------------------------------

    def _require_group(self) -> str:
        if self._group is None:
            raise ValueError("committed offsets need a group (Consumer(..., group=...))")
        return self._group

    async def commit(
        self, offsets: Mapping[TopicPartition | tuple[str, int], int] | None = None
    ) -> None:
        """Commit synchronously (replicated by the controller before this returns):
        ``offsets`` ({partition: next offset}), or else `position` of every partition
        this consumer reads, including those being revoked (so ``on_revoke`` may
        commit them: they are released only after it returns). Raises
        FencedMemberError / UnknownMemberError when the group no longer gives this
        member those partitions; nothing is committed then."""
        self._require_group()
        if offsets is None:
            wanted = {s.tp: s.position for s in self._states.values() if s.position is not None}
        else:
            wanted = {TopicPartition(*tp): off for tp, off in offsets.items()}
        async with self._commit_lock:
            await self._send_commit(wanted)

    async def _send_commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """One commit_offsets request (the caller holds the commit lock)."""
        if not offsets:
            return
        group = self._require_group()
        member = "" if self._coordinator is None else self._coordinator.member_id
        wire: dict[str, list[list[int]]] = {}
        for tp, offset in sorted(offsets.items()):
            wire.setdefault(tp.topic, []).append([tp.partition, offset])
        await self._call_controller(CommitOffsetsRequest(group, wire, member))
        for tp, offset in offsets.items():
            state = self._states.get(tp)
            if state is not None:
                state.committed = offset

    async def _auto_commit_now(self, states: Iterable[_PartitionState] | None = None) -> None:
        """Commit the processed offsets that are ahead of what this consumer committed."""
        async with self._commit_lock:
            chosen = self._states.values() if states is None else states
            due = {
                s.tp: s.processed
                for s in chosen
                if s.processed is not None and (s.committed is None or s.processed > s.committed)
            }
            await self._send_commit(due)

    async def _auto_commit_loop(self) -> None:
        while not self._closed:  # checked too: 3.11's wait_for can swallow a cancel
            await asyncio.sleep(self._auto_commit_s)
            try:
                await self._auto_commit_now([s for s in self._states.values() if not s.revoked])
            except ZStreamError as exc:
                log.warning("auto-commit failed: %s", exc)

    def _start_auto_commit(self) -> None:
        if self._group is not None and self._auto_commit and self._auto_commit_task is None:
            self._auto_commit_task = asyncio.create_task(self._auto_commit_loop())

    async def committed(self, tp: TopicPartition | tuple[str, int]) -> int | None:
        """The group's committed offset for ``tp`` (None when nothing is committed)."""
        group = self._require_group()
        topic, partition = tp
        reply = await self._call_controller(FetchOffsetsRequest(group, [topic]))
        return committed_offsets(reply.result).get((topic, partition))

    # -- offsets ------------------------------------------------------------------------

    def position(self, tp: TopicPartition | tuple[str, int]) -> int | None:
        """The offset of the next record this consumer will deliver for ``tp``
        (None until the reader has found its starting offset)."""
        return self._state(tp).position

    def seek(self, tp: TopicPartition | tuple[str, int], offset: int) -> None:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        state = self._state(tp)
        state.position = state.processed = offset
        state.committed = None  # auto-commit may now move the offset backwards
        self._restart(state)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        await self._seek_to("log_start", tps)

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        await self._seek_to("hwm", tps)

    async def _seek_to(self, field: str, tps: Sequence[TopicPartition]) -> None:
        targets = [self._state(tp) for tp in tps] if tps else list(self._states.values())
        for state in targets:
            start, end = await self._bounds(state.tp)
            self.seek(state.tp, start if field == "log_start" else end)

    async def _bounds(self, tp: TopicPartition) -> tuple[int, int]:
        """(log start, high watermark), asked of the partition's leader (metadata
        from another broker does not know them)."""
        request = FetchRequest(*tp, 0, max_bytes=1, max_wait_ms=0)
        try:
            reply = await self.cluster.call_leader(*tp, request, timeout_s=self._timeout_s)
        except OffsetOutOfRangeError as exc:
            start, end = exc.details.get("start"), exc.details.get("end")
            if isinstance(start, int) and isinstance(end, int):
                return start, end
            raise
        return int(reply.result["log_start"]), int(reply.result["hwm"])

    def lag(self, tp: TopicPartition | tuple[str, int]) -> int:
        """Records committed on the partition and not yet delivered (as of the
        last high watermark the broker reported)."""
        state = self._state(tp)
        return max(0, state.hwm - (state.position or 0))

    def pause(self, *tps: TopicPartition) -> None:
        """Stop reading ``tps``; records already queued for them are dropped and read
        again after `resume`."""
        for tp in tps:
            state = self._state(tp)
            if not state.paused:
                state.paused = True
                self._stop(state)

    def resume(self, *tps: TopicPartition) -> None:
        for tp in tps:
            state = self._state(tp)
            if state.paused:
                state.paused = False
                self._start(state)

    def paused(self) -> set[TopicPartition]:
        return {tp for tp, s in self._states.items() if s.paused}

    # -- delivery -----------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    def _release_held(self) -> None:
        """The application asks for more: what the last call handed out is processed
        (its partition's position, unless sought, paused or revoked since)."""
        chunk, self._held_chunk = self._held_chunk, None
        if chunk is not None and chunk.state.generation == chunk.generation:
            chunk.state.processed = chunk.state.position
        if self._held:
            for state, generation in self._held:
                if state.generation == generation:
                    state.processed = state.position
            self._held = []

    async def __anext__(self) -> Record[K, V]:
        # The hot path: the next record of the chunk the last one came from, already
        # built. (While a chunk is held, no getmany ran since: nothing else is held
        # and no credit is due.)
        chunk = self._held_chunk
        if chunk is not None:
            state = chunk.state
            if state.generation == chunk.generation:  # not sought, paused or revoked
                state.processed = state.position
                i = chunk.index
                j = i - chunk.cached_at
                records = chunk.records
                if j < len(records) and (
                    self._coordinator is None or not self._coordinator.stale()
                ):
                    chunk.index = i + 1
                    state.position = chunk.base + i + 1
                    record: Record[K, V] = records[j]
                    return record
            self._held_chunk = None
        return await self._next()

    async def _next(self) -> Record[K, V]:
        """`__anext__` from a new chunk (or waiting for one)."""
        if self._held:
            self._release_held()
        if self._spent:
            await self._grant_spent()
        while True:
            ready = self._ready
            if ready:
                chunk = ready[0]
                i = chunk.index
                if i < len(chunk.rows):
                    coordinator = self._coordinator
                    if coordinator is not None and coordinator.stale():
                        await self._wait_for_session(coordinator)
                        if self._closed:
                            raise StopAsyncIteration
                        continue  # lost (its chunks are dropped) or fresh
                    j = i - chunk.cached_at
                    if not 0 <= j < len(chunk.records):
                        # raises DeserializationError when record i cannot be built
                        chunk.records = self._build(chunk, i, _ITER_BLOCK)
                        chunk.cached_at, j = i, 0
                    chunk.index = i + 1
                    chunk.state.position = chunk.base + i + 1
                    self._held_chunk = chunk
                    record: Record[K, V] = chunk.records[j]
                    return record
                ready.popleft()
                self._finish(chunk)
                await self._consumed(chunk.state, chunk.stream, chunk.size)
                continue
            if self._closed:
                raise StopAsyncIteration
            self._raise_refused()
            self._arrived.clear()
            await self._arrived.wait()

    def _raise_refused(self) -> None:
        refused, self._refused = self._refused, None
        if refused is not None:
            raise refused

    def group_refused(self, exc: NotAuthorizedError) -> None:
        """A refusal (the group's coordinator's, or a reader's): the next delivery call
        that finds nothing to hand out raises it."""
        self._refused = exc
        self._arrived.set()

    async def getone(self) -> Record[K, V]:
        """The next record (waits for one); as one step of ``async for``."""
        return await self.__anext__()

    async def getmany(
        self,
        *partitions: TopicPartition,
        timeout_ms: int = 0,
        max_records: int | None = None,
    ) -> dict[TopicPartition, list[Record[K, V]]]:
        """The records buffered now, per partition in offset order (only those of
        ``partitions``, when given; each must be assigned), at most ``max_records`` in
        all (default: the consumer's ``max_poll_records``, 500). Waits up to
        ``timeout_ms`` for the first to arrive, then returns at once with what there
        is; ``{}`` when nothing came in time (or the consumer closed).
        Everything returned counts as handed out: ``position`` moves past it, and it is
        processed (auto-commit) once the application asks for more. A record whose
        deserializer fails raises DeserializationError at once when it is the oldest
        the call would hand out (as Kafka's poll); after other records, it ends its
        partition's list and the next call raises. A few hundred records per call
        keep the garbage collector's work (and the latency of a call) small; with
        ``max_poll_records=None`` and no ``max_records`` one call may hand out
        ``credit_bytes`` worth of records per partition."""
        if max_records is None:
            max_records = self._max_poll_records
        return await self._many(partitions, timeout_ms, max_records, self._take_records)

    async def getmany_values(
        self,
        *partitions: TopicPartition,
        timeout_ms: int = 0,
        max_records: int | None = None,
    ) -> dict[TopicPartition, list[V]]:
        """As `getmany`, but only the records' values (through ``value_deserializer``
        when there is one), without building an object per record: the fast way to
        read a partition. Not bounded by ``max_poll_records``: a list of bytes gives
        the collector nothing to promote, so without ``max_records`` it is everything
        buffered. (A ``value_deserializer`` that builds objects, JSON say, brings the
        collector back: pass ``max_records=500`` then.) The values of a partition's
        list have consecutive offsets up to ``position(tp) - 1``, except across
        records deleted by retention."""
        return await self._many(partitions, timeout_ms, max_records, self._take_values)

    async def _many(
        self,
        partitions: Sequence[TopicPartition],
        timeout_ms: int,
        max_records: int | None,
        take: Callable[[_Chunk, int], list[_T]],
    ) -> dict[TopicPartition, list[_T]]:
        _check_count("max_records", max_records)
        if timeout_ms < 0:
            raise ValueError("timeout_ms must be >= 0")
        wanted = {self._state(tp) for tp in partitions} if partitions else None
        if self._held_chunk is not None or self._held:
            self._release_held()
        if self._spent:
            await self._grant_spent()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while not self._closed:
            coordinator = self._coordinator
            if self._ready and coordinator is not None and coordinator.stale():
                await self._wait_for_session(coordinator)
                continue
            out = self._collect(wanted, max_records, take)
            if out:
                return out
            self._raise_refused()  # only once nothing it could deliver is there
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return {}

    def _collect(
        self,
        wanted: set[_PartitionState] | None,
        max_records: int | None,
        take: Callable[[_Chunk, int], list[_T]],
    ) -> dict[TopicPartition, list[_T]]:
        """Take records from the buffered chunks, oldest first (synchronous: nothing
        else runs meanwhile). A partition whose chunk is not taken whole (the budget
        ran out, or a deserializer failed) gives nothing more this call, so its
        records stay in offset order."""
        out: dict[TopicPartition, list[_T]] = {}
        budget = math.inf if max_records is None else max_records
        stopped: set[_PartitionState] = set()
        ready = self._ready
        passed: list[_Chunk] = []  # chunks left in place, in order, ahead of the rest
        # Only as far as the budget goes: a bounded call costs what it hands out, not
        # what is buffered (thousands of small batches' chunks while catching up).
        while ready and budget > 0:
            chunk = ready.popleft()
            state = chunk.state
            if state in stopped or (wanted is not None and state not in wanted):
                passed.append(chunk)
                continue
            left = len(chunk.rows) - chunk.index
            try:
                items = take(chunk, left if left <= budget else int(budget))
            except DeserializationError:
                passed.append(chunk)
                if not out:  # the oldest deliverable record: raise now (as Kafka's poll)
                    ready.extendleft(reversed(passed))
                    raise
                stopped.add(state)  # handed out first: the next call raises
                continue
            if items:
                chunk.index += len(items)
                budget -= len(items)
                state.position = chunk.base + chunk.index
                got = out.get(state.tp)
                if got is None:
                    out[state.tp] = items
                    self._held.append((state, state.generation))
                else:
                    got.extend(items)
            if chunk.index < len(chunk.rows):
                stopped.add(state)
                passed.append(chunk)
            else:
                self._finish(chunk)
                self._spent.append(chunk)
        ready.extendleft(reversed(passed))
        return out

    def _take_records(self, chunk: _Chunk, n: int) -> list[Record[K, V]]:
        i = chunk.index
        j = i - chunk.cached_at
        if 0 <= j < len(chunk.records):  # built by getone already: those first
            cached: list[Record[K, V]] = chunk.records[j : j + n]
            return cached
        return self._build(chunk, i, n)  # raises DeserializationError for record i

    def _take_values(self, chunk: _Chunk, n: int) -> list[V]:
        i = chunk.index
        rows = chunk.rows
        values: list[Any] = list(map(VALUE, rows if i == 0 and n == len(rows) else rows[i : i + n]))
        deserialize = self._value_deserializer
        if deserialize is None:
            return values
        try:
            return list(map(deserialize, values))
        except Exception:  # noqa: BLE001 - the application's deserializer: which record?
            out: list[V] = []
            for j, value in enumerate(values):
                try:
                    out.append(deserialize(value))
                except Exception as exc:
                    if not out:
                        raise self._deserialization_error(chunk, i + j, "value", exc) from exc
                    break
            return out

    def _build(self, chunk: _Chunk, start: int, n: int) -> list[Record[K, V]]:
        """Record objects (deserialized) for ``rows[start:start + n]``, built in C, or
        up to the first record a deserializer fails on; raises DeserializationError
        when that is the very first one."""
        rows = chunk.rows
        if start or n < len(rows):
            rows = rows[start : start + n]
        topic, partition = chunk.state.tp
        base = chunk.base + start
        deltas, keys, values, headers = zip(*rows, strict=True)
        key_de, value_de = self._key_deserializer, self._value_deserializer
        try:
            if key_de is not None:
                keys = tuple(None if k is None else key_de(k) for k in keys)
            if value_de is not None:
                values = tuple(map(value_de, values))
        except Exception:  # noqa: BLE001 - the application's deserializer: which record?
            return self._build_one_by_one(chunk, rows, start)
        return list(
            map(
                _new_tuple,
                repeat(Record),
                zip(
                    repeat(topic),
                    repeat(partition),
                    range(base, base + len(rows)),
                    map(add, repeat(chunk.first_ts), deltas),
                    keys,
                    values,
                    headers,
                ),
            )
        )

    def _build_one_by_one(self, chunk: _Chunk, rows: Rows, start: int) -> list[Record[K, V]]:
        key_de, value_de = self._key_deserializer, self._value_deserializer
        topic, partition = chunk.state.tp
        out: list[Record[K, V]] = []
        for j, (delta, key, value, headers) in enumerate(rows):
            field = "key"
            try:
                k: Any = key if key_de is None or key is None else key_de(key)
                field = "value"
                v: Any = value if value_de is None else value_de(value)
            except Exception as exc:
                if j == 0:
                    raise self._deserialization_error(chunk, start, field, exc) from exc
                break
            offset = chunk.base + start + j
            ts = chunk.first_ts + delta
            out.append(Record(topic, partition, offset, ts, k, v, headers))
        return out

    def _deserialization_error(
        self, chunk: _Chunk, index: int, field: str, exc: Exception
    ) -> DeserializationError:
        delta, key, value, headers = chunk.rows[index]
        topic, partition = chunk.state.tp
        offset = chunk.base + index
        raw = Record(topic, partition, offset, chunk.first_ts + delta, key, value, headers)
        return DeserializationError(
            f"{topic}/{partition} offset {offset}: the {field} deserializer failed: {exc!r} "
            f"(the position stays at this record; seek past it to skip it)",
            record=raw,
        )

    def _finish(self, chunk: _Chunk) -> None:
        """A chunk was delivered to its end: its partition's reader may read more."""
        state = chunk.state
        state.queued_bytes -= chunk.size
        if state.queued_bytes < self._queue_limit:
            state.room.set()

    async def _grant_spent(self) -> None:
        """Credit for the chunks that the last `getmany` delivered to their end (here,
        not in that call: a cancelled credit request then loses no records)."""
        spent = self._spent
        while spent:
            chunk = spent.pop()
            await self._consumed(chunk.state, chunk.stream, chunk.size)

    async def _wait_for_session(self, coordinator: Coordinator) -> None:
        """The group session may have run out while this consumer holds partitions:
        they may be someone else's now, so deliver nothing until the coordinator has
        either heard from the controller again or dropped them as lost (woken now to
        do so)."""
        coordinator.wake()
        async with coordinator.changed:
            await coordinator.changed.wait_for(
                lambda: coordinator.closed or not coordinator.stale()
            )

    async def _consumed(self, state: _PartitionState, stream: int, size: int) -> None:
        """Grant stream credit back once half of it has been consumed."""
        if not stream or stream != state.stream:
            return
        state.consumed += size
        if state.consumed * 2 < self._credit:
            return
        grant, state.consumed = state.consumed, 0
        try:
            conn = self.cluster.connection(state.stream_addr)
            await conn.call(CreditRequest(stream, grant), timeout_s=self._timeout_s)
        except ZStreamError:
            pass
        except asyncio.CancelledError:
            # wait_for(getone(), t) ran out here: grant it with the next chunk instead,
            # or the stream would stall with its credit spent.
            state.consumed += grant
            raise

    # -- readers ------------------------------------------------------------------------

    async def _leader_addr(self, tp: TopicPartition) -> str:
        addr = self.cluster.broker_addr(self.cluster.leader_of(tp.topic, tp.partition))
        if addr is not None:
            return addr
        raise UnavailableError(f"no leader known for {tp.topic}/{tp.partition}")

    async def _initial_offset(self, state: _PartitionState) -> None:
        if state.position is None and state.look_up_committed and self._group is not None:
            reply = await self._call_controller(FetchOffsetsRequest(self._group, [state.tp.topic]))
            offset = committed_offsets(reply.result).get(state.tp)
            state.look_up_committed = False
            if offset is not None:
                state.position = state.fetch_offset = state.processed = offset
                state.committed = offset
        if state.position is None:
            start, end = await self._bounds(state.tp)
            state.position = state.fetch_offset = start if self._reset == "earliest" else end

    def _chunks(
        self, state: _PartitionState, generation: int, frames: Sequence[Buffer], stream: int
    ) -> tuple[list[_Chunk], int]:
        """Decode batches (CRC checked) into chunks of the records at or after
        ``fetch_offset``, and move it past them. Also returns the bytes of batches
        that held nothing new (their stream credit is granted back at once)."""
        topic, partition = state.tp
        out: list[_Chunk] = []
        skipped = 0
        for frame in frames:
            try:
                header, rows = decode_rows(frame)
            except storage.CorruptBatchError as exc:
                raise CorruptBatchError(f"{topic}/{partition}: {exc}") from exc
            base = header.base_offset
            skip = state.fetch_offset - base
            if skip >= len(rows):
                skipped += len(frame)
                continue
            if skip > 0:
                rows = rows[skip:]
                base += skip
            first_ts = header.first_timestamp_ms
            out.append(_Chunk(state, generation, base, first_ts, rows, len(frame), stream))
            state.fetch_offset = base + len(rows)
        return out, skipped

    async def _put(self, state: _PartitionState, generation: int, chunks: list[_Chunk]) -> None:
        """Queue a reader's chunks for delivery, once its partition has room."""
        while state.queued_bytes >= self._queue_limit and state.generation == generation:
            state.room.clear()
            await state.room.wait()
        if state.generation != generation or not chunks:
            return
        self._ready.extend(chunks)
        state.queued_bytes += sum(c.size for c in chunks)
        self._arrived.set()

    async def _recover(self, state: _PartitionState, exc: ZStreamError, delay: float) -> float:
        """After a failed read: back off, refresh metadata, fix an out-of-range offset.
        Over a fetch quota: wait as long as the broker said, and no more. Refused
        (NOT_AUTHORIZED): the next delivery call raises it, and the reader goes on."""
        throttle_s = throttle_time_s(exc)
        if throttle_s:
            await asyncio.sleep(throttle_s)
            return delay
        if isinstance(exc, NotAuthorizedError):
            self.group_refused(exc)
        with contextlib.suppress(ZStreamError):  # (a topic no longer known)
            tried = self.cluster.leader_of(*state.tp)
            self.cluster.leader_failed(*state.tp, tried, exc)
        past_end = False
        if isinstance(exc, OffsetOutOfRangeError):
            start, end = exc.details.get("start"), exc.details.get("end")
            if isinstance(start, int) and state.fetch_offset < start:
                # The records were deleted by retention: go on from the log start. The
                # reader and its generation stay (bumping it here dropped every later
                # chunk); records already queued are still delivered first.
                if state.position == state.fetch_offset:
                    state.position = start
                state.fetch_offset = start
            elif isinstance(start, int) and isinstance(end, int) and state.fetch_offset > end:
                past_end = True
                self._past_end(state, start, end)
        if not past_end:
            state.past_end_since = None
        await asyncio.sleep(delay)
        with contextlib.suppress(ZStreamError):  # every topic read: metadata is shared
            await self.cluster.refresh(sorted({tp.topic for tp in self._states}))
        return min(delay * 2, 1.0)

    def _past_end(self, state: _PartitionState, start: int, end: int) -> None:
        """The offset is beyond the partition's end (a commit or seek past it, or a log
        that lost records): once that has lasted `_PAST_END_GRACE_S`, apply
        auto_offset_reset, as for a partition with no commit. Left alone, the reader
        would retry OFFSET_OUT_OF_RANGE forever."""
        now = asyncio.get_running_loop().time()
        if state.past_end_since is None:
            state.past_end_since = now
        if now - state.past_end_since < _PAST_END_GRACE_S:
            return
        target = start if self._reset == "earliest" else end
        log.warning(
            "%s/%s: offset %d is beyond the end %d; auto_offset_reset=%s: going on from %d",
            *state.tp,
            state.fetch_offset,
            end,
            self._reset,
            target,
        )
        if state.position == state.fetch_offset:  # nothing queued still to deliver
            state.position = state.processed = target
        state.fetch_offset = target
        state.committed = None  # auto-commit may now move the offset backwards
        state.past_end_since = None

    async def _stream(self, state: _PartitionState, generation: int) -> None:
        delay = 0.05
        # A stopped reader's generation is bumped before it is cancelled; checking it
        # ends the reader even when Python 3.11's wait_for swallowed the cancellation.
        while state.generation == generation:
            try:
                await self._initial_offset(state)
                addr = await self._leader_addr(state.tp)
                conn = self.cluster.connection(addr)
                request = SubscribeRequest(*state.tp, state.fetch_offset, self._credit)
                reply = await conn.call(request, timeout_s=self._timeout_s)
                sid: int = reply.result["stream"]
                state.past_end_since = None
                state.stream, state.stream_addr, state.consumed = sid, addr, 0
                pushes = conn.stream_queue(sid)
                try:
                    await self._pump(state, generation, pushes, sid)
                finally:
                    conn.forget_stream(sid)
                    state.stream = 0
                    if state.generation != generation:  # cancelled by seek/pause/close
                        with contextlib.suppress(ZStreamError):
                            await conn.call(UnsubscribeRequest(sid), timeout_s=1)
            except (ZStreamError, TimeoutError) as exc:
                error = exc if isinstance(exc, ZStreamError) else UnavailableError("silent stream")
                delay = await self._recover(state, error, delay)

    async def _pump(
        self, state: _PartitionState, generation: int, pushes: asyncio.Queue[Push], sid: int
    ) -> None:
        while True:
            push = await asyncio.wait_for(pushes.get(), self._silence_s)
            result = push.result
            hwm = result.get("hwm")
            if isinstance(hwm, int):
                state.hwm = hwm
            if push.kind == "data":
                chunks, skipped = self._chunks(state, generation, push.frames, sid)
                if skipped:
                    await self._consumed(state, sid, skipped)
                await self._put(state, generation, chunks)
            elif push.kind == "closed":
                code = result.get("err", 1)
                details = {k: v for k, v in result.items() if k not in ("err", "msg")}
                raise error_for_code(code if isinstance(code, int) else 1)(
                    str(result.get("msg", "stream closed")), **details
                )

    async def _fetch(self, state: _PartitionState, generation: int) -> None:
        delay = 0.05
        while state.generation == generation:  # as in _stream
            try:
                await self._initial_offset(state)
                addr = await self._leader_addr(state.tp)
                request = FetchRequest(
                    *state.tp, state.fetch_offset, self._fetch_max_bytes, self._fetch_wait_ms
                )
                timeout_s = self._timeout_s + self._fetch_wait_ms / 1000
                reply = await self.cluster.connection(addr).call(request, timeout_s=timeout_s)
                state.hwm = reply.result.get("hwm", state.hwm)
                state.past_end_since = None
                chunks, _ = self._chunks(state, generation, reply.frames, 0)
                await self._put(state, generation, chunks)
                delay = 0.05
            except ZStreamError as exc:
                delay = await self._recover(state, exc, delay)

    # -- life cycle ---------------------------------------------------------------------

    async def close(self) -> None:
        """Stop reading; with a group, commit ``position()`` of every owned partition
        (auto-commit) and leave the group, so its partitions move at once."""
        if self._closed:
            return
        self._closed = True
        coordinator = self._coordinator  # kept until the end: commits name the member
        if coordinator is not None:
            await coordinator.close(leave=False)  # no heartbeat while we commit
        if self._auto_commit_task is not None:
            self._auto_commit_task.cancel()
            await asyncio.gather(self._auto_commit_task, return_exceptions=True)
        for state in self._states.values():
            self._stop(state)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._group is not None and self._auto_commit:
            for state in self._states.values():  # everything handed out counts as done
                if not state.revoked and state.position is not None:
                    state.processed = state.position
            try:
                await asyncio.wait_for(
                    self._auto_commit_now([s for s in self._states.values() if not s.revoked]),
                    self._timeout_s,
                )
            except (ZStreamError, TimeoutError) as exc:
                log.warning("commit on close failed: %s", exc)
        if coordinator is not None:
            await coordinator.close(leave=True)
            self._coordinator = None
        # Wake a delivery call waiting for records: it sees the consumer closed.
        self._arrived.set()
        await self.cluster.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
