"""The producer: batching, partitioning, pipelined sends per partition, retries and
idempotence.

Theory of operation
-------------------
``send`` is synchronous and cheap: it picks a partition, appends ``(key, value)``
(or a ``NewRecord`` when there are headers) to that partition's open batch, and
returns a :class:`RecordFuture` holding the batch and the record's position. There is
ONE asyncio future per batch; a record's metadata is the batch's base offset plus its
position, computed when the record's future is awaited.

A batch closes when it reaches ``batch_bytes`` or when it is ``linger_ms`` old (or on
`flush`). Each partition has one sender task (owned by the producer, ended by
`close`) that keeps up to ``max_in_flight`` closed batches in flight on the leader's
connection, in order, as a sliding window: when the oldest in-flight batch is
answered the next one leaves at once. A batch is encoded (one ``msgpack`` call) when
first sent.

Retries: a failure on any in-flight batch stops new sends on that partition; once
every in-flight request has settled, the batches that did not succeed go back to the
front of the queue, in order, after a backoff and a metadata refresh (a retriable
error such as NOT_LEADER, TIMEOUT or a lost connection, or an OUT_OF_ORDER_SEQUENCE
that only echoes an earlier failure in the same window). The window never spans more
than ``max_in_flight`` (at most 5) consecutive batches, the leader's deduplication
window, so a resent batch the log already holds is answered with its original
offset. With idempotence (the default) each partition sender holds a
(producer id, epoch) from the controller and numbers its batches; the leader answers a
batch it already has with its original offset, so a retry never writes twice. A batch
that fails for good gets its error; its partition then takes a fresh producer id so
that the next batches are not refused as out of order.

A topic the producer does not know yet (created after ``start``) is looked up: its
records wait, each as a one-record batch, while one task per topic refreshes the
metadata with backoff for up to ``metadata_wait_ms``; then they join their partitions'
open batches in send order, or fail with UnknownTopicError.

Serializers: with ``key_serializer`` / ``value_serializer`` ``send`` turns the
application's key and value into bytes first, synchronously; a serializer that raises
or returns something other than bytes makes that ``send`` raise SerializationError,
and nothing is queued, so the other records of the batch go out as if it had never
been sent. A ``None`` key is never passed to the key serializer (clients/_serde.py).

Partitioning: a key goes to ``crc32c(key) % partitions`` (stable across processes and
versions); records without a key stick to one partition until its batch closes, then
move to the next (Kafka's sticky partitioner, KIP-480).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Generic, Self, cast

import crc32c

from zstream import storage
from zstream.clients._cluster import ClusterClient
from zstream.clients._credentials import Credentials
from zstream.clients._errors import (
    InvalidRequestError,
    NotLeaderError,
    OutOfOrderSequenceError,
    SerializationError,
    UnknownPartitionError,
    UnknownServerError,
    UnknownTopicError,
    ZStreamError,
    throttle_time_s,
)
from zstream.clients._protocol import Acks, InitProducerRequest, ProduceRequest
from zstream.clients._serde import K, V

__all__ = ["BlockingProducer", "Producer", "RecordFuture", "RecordMetadata"]

# Bytes a record adds to a batch beyond its key and value (msgpack framing, the
# timestamp delta): an estimate for closing batches near batch_bytes.
_RECORD_OVERHEAD = 8
_BYTES = (bytes, bytearray, memoryview)
_BYTE_TYPES = set(_BYTES)


def _record_name(topic: str, partition: int | None, key: object, where: str) -> str:
    """How an error names a record that has no offset yet."""
    name = topic if partition is None else f"{topic}/{partition}"
    if where:
        return f"{name} {where}"
    shown = repr(key)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{name} record with key {shown}" if key is not None else f"{name} keyless record"


@dataclasses.dataclass(frozen=True, slots=True)
class RecordMetadata:
    """Where a record was written."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class _Batch:
    __slots__ = ("created", "future", "partition", "records", "sequence", "size", "timestamp_ms")

    def __init__(self, partition: int, now: float) -> None:
        self.partition = partition
        self.records: list[Any] = []
        self.size = storage.BATCH_HEADER_SIZE
        self.timestamp_ms = time.time_ns() // 1_000_000
        self.created = now
        self.sequence = -1
        # Resolves to the base offset.
        self.future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def absorb(self, later: _Batch) -> None:
        """Take ``later``'s records at the end of this (never sent) batch; its future
        follows this one's, shifted by the records already here."""
        shift = len(self.records)
        self.records.extend(later.records)
        self.size += later.size - storage.BATCH_HEADER_SIZE
        later.timestamp_ms = self.timestamp_ms  # what the log will say
        follower = later.future

        def settle(future: asyncio.Future[int]) -> None:
            if follower.done():
                return
            if future.cancelled():
                follower.cancel()
            elif (exc := future.exception()) is not None:
                follower.set_exception(exc)
            else:
                follower.set_result(future.result() + shift)

        self.future.add_done_callback(settle)


class RecordFuture:
    """Awaitable metadata of one sent record (backed by its batch's future)."""

    __slots__ = ("_batch", "_index", "_topic")

    def __init__(self, topic: str, batch: _Batch, index: int) -> None:
        self._topic = topic
        self._batch = batch
        self._index = index

    def done(self) -> bool:
        return self._batch.future.done()

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        base = yield from self._batch.future.__await__()
        batch = self._batch
        return RecordMetadata(self._topic, batch.partition, base + self._index, batch.timestamp_ms)


@dataclasses.dataclass(frozen=True, slots=True)
class _ProducerConfig:
    linger_ms: int
    batch_bytes: int
    acks: Acks
    idempotence: bool
    max_in_flight: int
    request_timeout_ms: int
    delivery_timeout_ms: int
    retry_backoff_ms: int
    metadata_wait_ms: int


@dataclasses.dataclass(slots=True)
class _Waiting:
    """A record sent to a topic not in the producer's metadata yet: a one-record batch
    that joins a real one once the topic's partitions are known."""

    batch: _Batch
    key: bytes | None
    partition: int | None


class _PartitionSender:
    """Sends one partition's closed batches in order through a sliding window.

    ``window`` holds the batches sent and not yet settled, oldest first, at most
    ``max_in_flight`` of them. When the oldest is answered the window slides and the
    next queued batch leaves at once; the window never spans more than
    ``max_in_flight`` consecutive batches (a later batch answered early does not
    open a slot), so every batch that may need a retry is still inside the leader's
    five-batch deduplication window (broker/_idempotence.py ``KEEP``).

    A failure stops new sends. Once the whole window has settled, the batches that
    did not succeed go back to the front of the queue in sequence order (a retriable
    error, or OUT_OF_ORDER_SEQUENCE behind an earlier failure of the same window),
    and are sent again after a backoff and a metadata refresh.
    """

    def __init__(self, producer: Producer[Any, Any], topic: str, partition: int) -> None:
        self._producer = producer
        self.topic = topic
        self.partition = partition
        self.queue: deque[_Batch] = deque()
        self.window: deque[tuple[_Batch, asyncio.Task[int]]] = deque()
        self._changed = asyncio.Event()  # a batch queued or a send settled
        self.idle = asyncio.Event()
        self.idle.set()
        self._pid = -1
        self._epoch = -1
        self._next_seq = 0
        self._throttle_s = 0.0  # the longest wait a THROTTLED reply of the window asked
        self.task: asyncio.Task[None] = asyncio.create_task(self._run())

    def push(self, batch: _Batch) -> None:
        self.queue.append(batch)
        self.idle.clear()
        self._changed.set()

    async def _identity(self) -> None:
        if self._producer.config.idempotence and self._pid < 0:
            reply = await self._producer.cluster.call_controller(InitProducerRequest())
            self._pid = int(reply.result["producer_id"])
            self._epoch = int(reply.result["epoch"])
            self._next_seq = 0

    def _encode(self, batch: _Batch) -> bytes:
        fresh = self._pid >= 0 and batch.sequence < 0
        sequence = self._next_seq if fresh else batch.sequence
        frame = storage.encode_batch(
            batch.records,
            producer_id=self._pid,
            producer_epoch=self._epoch,
            base_sequence=sequence,
            timestamp_ms=batch.timestamp_ms,
        )
        if fresh:  # numbered only once encoded: a batch that cannot be leaves no gap
            batch.sequence = sequence
            self._next_seq = (sequence + len(batch.records)) % (2**31)
        return frame

    def _failed(self) -> bool:
        return any(task.done() and task.exception() is not None for _, task in self.window)

    def _slide(self) -> None:
        """Drop the answered batches at the front of the window."""
        window = self.window
        while window and window[0][1].done():
            window.popleft()

    def _fill(self) -> None:
        """Send queued batches while the window has room; tasks start in creation
        order, so the requests leave in sequence order."""
        window = self.window
        limit = self._producer.config.max_in_flight
        while self.queue and len(window) < limit:
            batch = self._take()
            try:
                frame = self._encode(batch)
            except ValueError as exc:  # a value that msgpack cannot take
                batch.future.set_exception(InvalidRequestError(str(exc)))
                continue
            task = asyncio.create_task(self._send(frame))
            task.add_done_callback(functools.partial(self._settled, batch))
            window.append((batch, task))

    def _take(self) -> _Batch:
        """The next batch to send. Batches queued behind it that were never sent join
        it, up to ``batch_bytes``: a backlog that built up while the window was full
        leaves as one request, not one round trip per small batch (Kafka gets the same
        by appending to the open batch while the partition is at its in-flight limit).
        Nothing waits for this: an idle partition sends its batch at once."""
        queue = self.queue
        batch = queue.popleft()
        if batch.sequence >= 0:  # numbered already: a retry goes out exactly as before
            return batch
        room = self._producer.config.batch_bytes - batch.size + storage.BATCH_HEADER_SIZE
        while queue and queue[0].sequence < 0 and queue[0].size <= room:
            later = queue.popleft()
            room -= later.size - storage.BATCH_HEADER_SIZE
            batch.absorb(later)
        return batch

    def _settled(self, batch: _Batch, task: asyncio.Task[int]) -> None:
        # A success is final at once, even ahead of older batches: it is durable.
        if not task.cancelled() and task.exception() is None and not batch.future.done():
            batch.future.set_result(task.result())
        self._changed.set()

    def _requeue_failed(self) -> bool:
        """Every batch of the window has settled and one failed: fail for good what
        cannot be retried, put the rest back in front of the queue, in order. Returns
        whether anything is to be retried."""
        delivery_s = self._producer.config.delivery_timeout_ms / 1000
        retry: list[_Batch] = []
        fatal = False
        behind_failure = False
        now = time.monotonic()
        for batch, task in self.window:
            exc = task.exception()
            if exc is None:
                if not batch.future.done():
                    batch.future.set_result(task.result())
                continue
            if not isinstance(exc, ZStreamError):
                exc = UnknownServerError(f"sending the batch failed: {exc!r}")
            # A gap behind a failed batch is that failure's echo, not its own.
            echo = behind_failure and isinstance(exc, OutOfOrderSequenceError)
            behind_failure = True
            self._throttle_s = max(self._throttle_s, throttle_time_s(exc))
            if (exc.retriable or echo) and now - batch.created <= delivery_s:
                retry.append(batch)
            else:
                if not batch.future.done():
                    batch.future.set_exception(exc)
                fatal = True
        self.window.clear()
        if fatal and self._pid >= 0:
            # Later sequences would be refused as a gap: start over with a new id.
            self._pid = -1
            for batch in retry:
                batch.sequence = -1
            for batch in self.queue:
                batch.sequence = -1
        self.queue.extendleft(reversed(retry))
        return bool(retry)

    async def _run(self) -> None:
        config = self._producer.config
        first_backoff = config.retry_backoff_ms / 1000
        backoff = first_backoff
        while True:
            self._changed.clear()
            if self._failed():
                if all(task.done() for _, task in self.window):
                    if self._requeue_failed():
                        if self._throttle_s:  # over a quota: wait as the broker said
                            await asyncio.sleep(self._throttle_s)
                            self._throttle_s = 0.0
                            continue
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 1.0)
                        with contextlib.suppress(ZStreamError):
                            await self._producer.cluster.refresh()
                    continue
            else:
                if self.window and self.window[0][1].done():
                    self._slide()
                    backoff = first_backoff
                if self.queue and len(self.window) < config.max_in_flight:
                    if not self.window:  # a new identity only between windows
                        try:
                            await self._identity()
                        except ZStreamError as exc:
                            if not exc.retriable:
                                self._fail_all(exc)
                            else:
                                await asyncio.sleep(backoff)
                            continue
                    self._fill()
                if not self.window and not self.queue:
                    self.idle.set()
            if not self._changed.is_set():
                await self._changed.wait()

    def _fail_all(self, exc: ZStreamError) -> None:
        while self.queue:
            batch = self.queue.popleft()
            if not batch.future.done():
                batch.future.set_exception(exc)

    async def _send(self, frame: bytes) -> int:
        producer = self._producer
        config = producer.config
        cluster = producer.cluster
        leader = cluster.leader_of(self.topic, self.partition)
        addr = cluster.broker_addr(leader)
        if addr is None:
            raise NotLeaderError("no leader known yet", leader=None)
        request = ProduceRequest(self.topic, self.partition, config.acks, config.request_timeout_ms)
        # The connection's timeout covers the broker's own wait plus the round trip.
        timeout_s = config.request_timeout_ms / 1000 + 2
        try:
            reply = await cluster.connection(addr).call(request, [frame], timeout_s=timeout_s)
        except ZStreamError as exc:
            cluster.leader_failed(self.topic, self.partition, leader, exc)
            raise
        base: int = reply.result["base_offset"]
        return base

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        error = UnknownServerError("the producer was closed before the batch was sent")
        for _, task in self.window:
            task.cancel()
        await asyncio.gather(*(task for _, task in self.window), return_exceptions=True)
        for batch, _ in self.window:
            if not batch.future.done():
                batch.future.set_exception(error)
        self.window.clear()
        self._fail_all(error)


class Producer(Generic[K, V]):
    """An asyncio producer.

    ::

        async with Producer("127.0.0.1:7101") as producer:
            meta = await producer.send("events", b"hello", key=b"user-1")

    With serializers, keys and values are the application's objects::

        producer = Producer[str, dict[str, Any]](
            bootstrap, key_serializer=str.encode, value_serializer=json_serializer
        )
        await producer.send("events", {"n": 1}, key="user-1")

    (an un-parameterized ``Producer`` is a ``Producer[bytes, bytes]``: clients/_serde.py).

    ``send`` returns at once with an awaitable :class:`RecordFuture`; ``flush`` waits for
    everything sent so far. ``acks="all"`` (durable on a majority) and idempotence are on
    by default.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        *,
        linger_ms: int = 5,
        batch_bytes: int = 256 * 1024,
        acks: Acks | str = Acks.ALL,
        enable_idempotence: bool = True,
        max_in_flight: int = 5,
        request_timeout_ms: int = 30_000,
        delivery_timeout_ms: int = 120_000,
        retry_backoff_ms: int = 100,
        metadata_wait_ms: int = 10_000,
        key_serializer: Callable[[K], bytes] | None = None,
        value_serializer: Callable[[V], bytes] | None = None,
        credentials: str | os.PathLike[str] | Credentials | None = None,
        server_key: str | os.PathLike[str] | None = None,
    ) -> None:
        # linger 5 ms: one batch per partition per 5 ms keeps batches large at high
        # rates while a lone record waits only 5 ms. batch_bytes 256 KiB: large enough
        # that the per-request cost is spread thin, small under the broker's 8 MiB limit.
        # max_in_flight 5: as Kafka allows with idempotence, so ordering holds.
        # metadata_wait_ms 10 s: how long records sent to a topic this producer does
        # not know wait for it to appear in the metadata (a topic created just before
        # needs well under a second) before they fail with UnknownTopicError.
        if linger_ms < 0 or batch_bytes <= 0 or not 1 <= max_in_flight <= 5:
            raise ValueError("need linger_ms >= 0, batch_bytes > 0, 1 <= max_in_flight <= 5")
        if metadata_wait_ms < 0:
            raise ValueError("need metadata_wait_ms >= 0")
        self.config = _ProducerConfig(
            linger_ms,
            batch_bytes,
            Acks(acks),
            enable_idempotence,
            max_in_flight,
            request_timeout_ms,
            delivery_timeout_ms,
            retry_backoff_ms,
            metadata_wait_ms,
        )
        self._key_serializer = key_serializer
        self._value_serializer = value_serializer
        self.cluster = ClusterClient(
            bootstrap,
            timeout_s=request_timeout_ms / 1000 + 2,
            credentials=credentials,
            server_key=server_key,
        )
        self._partitions: dict[str, int] = {}
        self._leaders: dict[tuple[str, int], int | None] = {}
        self._open: dict[tuple[str, int], _Batch] = {}
        self._senders: dict[tuple[str, int], _PartitionSender] = {}
        self._sticky: dict[str, int] = {}
        self._round_robin = itertools.count()
        self._linger_task: asyncio.Task[None] | None = None
        self._linger_wake: asyncio.Event | None = None
        # Records for topics not known yet, and the task looking each topic up.
        self._waiting: dict[str, list[_Waiting]] = {}
        self._lookups: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    # -- metadata ---------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch the cluster's metadata (called by ``async with``)."""
        await self._refresh()
        self._linger_wake = asyncio.Event()
        self._linger_task = asyncio.create_task(self._linger())

    async def _refresh(self, topics: Sequence[str] | None = None) -> None:
        await self.cluster.refresh(topics)
        for topic in self.cluster.metadata.get("topics", []):
            self._partitions[topic["name"]] = len(topic["partitions"])

    async def partitions_for(self, topic: str) -> int:
        """How many partitions ``topic`` has (asks the cluster when unknown)."""
        count = self._partitions.get(topic)
        if count is None:
            await self._refresh([topic])
            count = self._partitions.get(topic)
            if count is None:
                raise UnknownTopicError(f"unknown topic {topic!r}")
        return count

    # -- sending ----------------------------------------------------------------------

    async def _look_up(self, topic: str) -> None:
        """Refresh the metadata until ``topic`` appears (or ``metadata_wait_ms`` runs
        out), then place the records waiting for it, or fail them."""
        config = self.config
        deadline = time.monotonic() + config.metadata_wait_ms / 1000
        backoff = config.retry_backoff_ms / 1000
        refused: ZStreamError | None = None
        try:
            while True:
                try:
                    await self._refresh([topic])
                except ZStreamError as exc:  # unreachable for now: try again
                    if not exc.retriable:  # NOT_AUTHORIZED: waiting will not help
                        refused = exc
                        break
                if topic in self._partitions or time.monotonic() + backoff > deadline:
                    break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
        finally:
            del self._lookups[topic]
        waiting = self._waiting.pop(topic, [])
        if topic not in self._partitions:
            error = refused or UnknownTopicError(
                f"unknown topic {topic!r}: not in the cluster's metadata "
                f"after {config.metadata_wait_ms} ms"
            )
            for w in waiting:
                w.batch.future.set_exception(error)
            return
        for w in waiting:
            self._place(topic, w)

    def _place(self, topic: str, waiting: _Waiting) -> None:
        """Move a waiting record into its partition's open batch."""
        try:
            part = self._choose(topic, waiting.key, waiting.partition)
        except ValueError as exc:
            waiting.batch.future.set_exception(UnknownPartitionError(str(exc)))
            return
        lone = waiting.batch
        batch = self._batch_for(topic, part)
        if batch.records and batch.size + lone.size - storage.BATCH_HEADER_SIZE > (
            self.config.batch_bytes
        ):
            self._close_batch(topic, part, batch)
            batch = self._batch_for(topic, part)
        lone.partition = part
        batch.absorb(lone)
        if batch.size >= self.config.batch_bytes:
            self._close_batch(topic, part, batch)

    def _wait_for_topic(self, topic: str, key: bytes | None, partition: int | None) -> _Batch:
        """A one-record batch for a record to a topic not known yet, placed once the
        topic is found (a lookup task per topic, owned by the producer)."""
        batch = _Batch(-1, time.monotonic())
        self._waiting.setdefault(topic, []).append(_Waiting(batch, key, partition))
        if topic not in self._lookups:
            self._lookups[topic] = asyncio.create_task(self._look_up(topic))
        return batch

    def _choose(self, topic: str, key: bytes | None, partition: int | None) -> int:
        count = self._partitions[topic]
        if partition is not None:
            if not 0 <= partition < count:
                raise ValueError(f"{topic} has no partition {partition}")
            return partition
        if key is not None:
            return int(crc32c.crc32c(key)) % count
        sticky = self._sticky.get(topic)
        if sticky is None or sticky >= count:
            sticky = next(self._round_robin) % count
            self._sticky[topic] = sticky
        return sticky

    def _serialize(
        self, topic: str, partition: int | None, value: V, key: K | None, where: str
    ) -> tuple[bytes, bytes | None]:
        """The record's bytes (through the serializers); SerializationError naming
        the record when a serializer raises or gives something that is not bytes."""
        field = "key"
        try:
            out_key: object = key
            if key is not None and self._key_serializer is not None:
                out_key = self._key_serializer(key)
            field = "value"
            out_value: object = value
            if self._value_serializer is not None:
                out_value = self._value_serializer(value)
        except Exception as exc:
            raise SerializationError(
                f"{_record_name(topic, partition, key, where)}: the {field} serializer "
                f"failed: {exc!r}; the record was not sent"
            ) from exc
        if not isinstance(out_value, _BYTES):
            bad, got = "value", out_value
        elif out_key is not None and not isinstance(out_key, _BYTES):
            bad, got = "key", out_key
        else:
            return cast(bytes, out_value), cast(bytes | None, out_key)
        serializer = self._value_serializer if bad == "value" else self._key_serializer
        if serializer is None:
            raise TypeError(
                f"{_record_name(topic, partition, key, where)}: the {bad} must be bytes "
                f"(or give the producer a {bad}_serializer), got {type(got).__name__}"
            )
        raise SerializationError(
            f"{_record_name(topic, partition, key, where)}: the {bad} serializer returned "
            f"{type(got).__name__}, not bytes; the record was not sent"
        )

    def send(
        self,
        topic: str,
        value: V,
        key: K | None = None,
        headers: Mapping[str, bytes] | Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> RecordFuture:
        """Queue one record; await the result for its :class:`RecordMetadata`.
        Raises at once, with nothing queued: SerializationError when a serializer
        fails, TypeError for a value or key that is not bytes (no serializer). A topic
        not known yet is looked up first (UnknownTopicError through the result if the
        cluster does not have it within ``metadata_wait_ms``)."""
        if self._closed:
            raise UnknownServerError("the producer is closed")
        if self._key_serializer is None and self._value_serializer is None:
            if not isinstance(value, _BYTES) or not (key is None or isinstance(key, _BYTES)):
                raise TypeError("value and key must be bytes")
            return self._send(
                topic, cast(bytes, value), cast(bytes | None, key), headers, partition
            )
        data, raw_key = self._serialize(topic, partition, value, key, "")
        return self._send(topic, data, raw_key, headers, partition)

    def _send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Mapping[str, bytes] | Sequence[tuple[str, bytes]] | None,
        partition: int | None,
    ) -> RecordFuture:
        if topic not in self._partitions or topic in self._waiting:
            # Created after start(), or a typo: ask the cluster, then place the record
            # (behind the records already waiting, if the topic turned up meanwhile).
            if partition is not None and partition < 0:
                raise ValueError(f"{topic} has no partition {partition}")
            batch = self._wait_for_topic(topic, key, partition)
            self._append(batch, value, key, headers)
            return RecordFuture(topic, batch, 0)
        part = self._choose(topic, key, partition)
        batch = self._batch_for(topic, part)
        index = self._append(batch, value, key, headers)
        if batch.size >= self.config.batch_bytes:
            self._close_batch(topic, part, batch)
        return RecordFuture(topic, batch, index)

    @staticmethod
    def _append(
        batch: _Batch,
        value: bytes,
        key: bytes | None,
        headers: Mapping[str, bytes] | Sequence[tuple[str, bytes]] | None,
    ) -> int:
        if headers:
            pairs = tuple(headers.items()) if isinstance(headers, Mapping) else tuple(headers)
            batch.records.append(storage.NewRecord(key, value, pairs))
            batch.size += sum(len(k) + len(v) for k, v in pairs)
        else:
            batch.records.append((key, value))
        batch.size += len(value) + (len(key) if key is not None else 0) + _RECORD_OVERHEAD
        return len(batch.records) - 1

    def send_many(
        self,
        topic: str,
        values: Iterable[V],
        *,
        partition: int | None = None,
    ) -> list[Awaitable[int]]:
        """Queue many keyless values; returns one awaitable per batch touched, each
        giving that batch's base offset. Cheaper per record than `send`. With a
        ``value_serializer``, every value is serialized before any is queued: a
        failure raises SerializationError naming the value's position, and none of
        them is sent."""
        if self._closed:
            raise UnknownServerError("the producer is closed")
        raw: Iterable[bytes]
        if self._value_serializer is not None:
            raw = self._serialize_all(topic, partition, values)
        else:
            raw = cast(Iterable[bytes], values)
        futures: list[Awaitable[int]] = []
        limit = self.config.batch_bytes
        batch: _Batch | None = None
        part = 0
        known = topic in self._partitions and topic not in self._waiting
        if not known and partition is not None and partition < 0:
            raise ValueError(f"{topic} has no partition {partition}")
        for value in raw:
            if batch is None:
                if known:
                    part = self._choose(topic, None, partition)
                    batch = self._batch_for(topic, part)
                else:  # placed, whole, once the topic is found
                    batch = self._wait_for_topic(topic, None, partition)
            batch.records.append((None, value))
            batch.size += len(value) + _RECORD_OVERHEAD
            if batch.size >= limit:
                futures.append(batch.future)
                if known:
                    self._close_batch(topic, part, batch)
                batch = None
        if batch is not None:
            futures.append(batch.future)
        return futures

    def _serialize_all(self, topic: str, partition: int | None, values: Iterable[V]) -> list[bytes]:
        """Every value serialized (one C-level map); on a failure, one by one again
        to name the value at fault."""
        serialize = self._value_serializer
        assert serialize is not None
        values = list(values)
        try:
            out = list(map(serialize, values))
        except Exception:  # noqa: BLE001 - the application's serializer: which value?
            pass
        else:
            if set(map(type, out)) <= _BYTE_TYPES:
                return out
        return [
            self._serialize(topic, partition, value, None, f"value #{i}")[0]
            for i, value in enumerate(values)
        ]

    def _batch_for(self, topic: str, partition: int) -> _Batch:
        key = (topic, partition)
        batch = self._open.get(key)
        if batch is None:
            batch = _Batch(partition, time.monotonic())
            self._open[key] = batch
            if len(self._open) == 1 and self._linger_wake is not None:
                self._linger_wake.set()
        return batch

    def _close_batch(self, topic: str, partition: int, batch: _Batch) -> None:
        key = (topic, partition)
        if self._open.get(key) is batch:
            del self._open[key]
        if self._sticky.get(topic) == partition:
            del self._sticky[topic]  # the sticky partitioner moves on
        sender = self._senders.get(key)
        if sender is None:
            sender = self._senders[key] = _PartitionSender(self, topic, partition)
        sender.push(batch)

    async def _linger(self) -> None:
        """Close batches once they are ``linger_ms`` old."""
        assert self._linger_wake is not None
        linger_s = self.config.linger_ms / 1000
        while True:
            if not self._open:
                self._linger_wake.clear()
                await self._linger_wake.wait()
                continue
            now = time.monotonic()
            oldest = now
            for (topic, partition), batch in list(self._open.items()):
                if now - batch.created >= linger_s:
                    self._close_batch(topic, partition, batch)
                else:
                    oldest = min(oldest, batch.created)
            wait = oldest + linger_s - time.monotonic()
            await asyncio.sleep(max(wait, 0.0005) if self._open else 0)

    async def flush(self) -> None:
        """Send every open batch now and wait until all sent batches are answered.
        Failed batches raise through their own futures, not here."""
        while self._lookups:  # records for topics being looked up join open batches
            await asyncio.gather(*self._lookups.values())
        for (topic, partition), batch in list(self._open.items()):
            self._close_batch(topic, partition, batch)
        for sender in list(self._senders.values()):
            await sender.idle.wait()

    async def close(self) -> None:
        """Flush, then stop every task and close the connections."""
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            if self._linger_task is not None:
                self._linger_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._linger_task
            lookups = list(self._lookups.values())
            for task in lookups:
                task.cancel()
            await asyncio.gather(*lookups, return_exceptions=True)
            for waiting in self._waiting.values():
                for w in waiting:
                    if not w.batch.future.done():
                        w.batch.future.set_exception(UnknownServerError("the producer was closed"))
            for sender in self._senders.values():
                await sender.stop()
            for batch in self._open.values():
                if not batch.future.done():
                    batch.future.set_exception(UnknownServerError("the producer was closed"))
            await self.cluster.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class BlockingProducer(Generic[K, V]):
    """A blocking wrapper: the asyncio :class:`Producer` on a private event loop.

    ``send`` returns the record's :class:`RecordMetadata` (it waits for the ack); use
    ``send_async`` + ``flush`` to batch many records. ``key_serializer`` /
    ``value_serializer`` and the other options are the Producer's.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        *,
        key_serializer: Callable[[K], bytes] | None = None,
        value_serializer: Callable[[V], bytes] | None = None,
        **options: Any,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        options["key_serializer"] = key_serializer
        options["value_serializer"] = value_serializer
        self._producer: Producer[K, V] = self._loop.run_until_complete(
            self._make(bootstrap, options)
        )

    @staticmethod
    async def _make(bootstrap: str | Sequence[str], options: dict[str, Any]) -> Producer[K, V]:
        producer: Producer[K, V] = Producer(bootstrap, **options)
        await producer.start()
        return producer

    def send_async(
        self,
        topic: str,
        value: V,
        key: K | None = None,
        headers: Mapping[str, bytes] | None = None,
        partition: int | None = None,
    ) -> RecordFuture:
        return self._loop.run_until_complete(self._send(topic, value, key, headers, partition))

    async def _send(
        self,
        topic: str,
        value: V,
        key: K | None,
        headers: Mapping[str, bytes] | None,
        partition: int | None,
    ) -> RecordFuture:
        await self._producer.partitions_for(topic)
        return self._producer.send(topic, value, key, headers, partition)

    def send(
        self,
        topic: str,
        value: V,
        key: K | None = None,
        headers: Mapping[str, bytes] | None = None,
        partition: int | None = None,
    ) -> RecordMetadata:
        future = self.send_async(topic, value, key, headers, partition)
        return self._loop.run_until_complete(_wait(future))

    def flush(self) -> None:
        self._loop.run_until_complete(self._producer.flush())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._loop.run_until_complete(self._producer.close())
        finally:
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _wait(future: RecordFuture) -> RecordMetadata:
    return await future
