"""The Producer against the real ROUTER front end over loopback, with an in-memory
leader that keeps the broker's idempotence table and fails chosen requests: the
sliding in-flight window, and per-partition order with no duplicate under retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from tests.support import wait_until_async
from tests.unit.broker.fakes import FakeBackend, FakePartition
from zstream import storage
from zstream.broker._frontend import Frontend
from zstream.broker._idempotence import KEEP, ProducerTable
from zstream.clients import (
    Acks,
    NotLeaderError,
    Producer,
    RecordFuture,
    RecordMetadata,
    RequestTimedOutError,
)
from zstream.clients._protocol import Buffer


class Leader(FakePartition):
    """A partition leader with the idempotence table. ``faults`` maps a produce call's
    number (from 0) to what goes wrong with it: "reject" fails it before the append
    (leadership lost), "lost" appends it and then fails the reply (a timeout after
    the write). A call waits on ``gates[n]`` before answering when one is set."""

    def __init__(self) -> None:
        super().__init__()
        self.table = ProducerTable()
        self.faults: dict[int, str] = {}
        self.gates: dict[int, asyncio.Future[None]] = {}
        self.calls = 0
        self.outstanding = 0
        self.most_outstanding = 0
        self.errors: list[str] = []

    async def produce(self, batch: Buffer, acks: Acks, timeout_s: float) -> int:
        call = self.calls
        self.calls += 1
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        try:
            return await self._produce(call, batch)
        except Exception as exc:
            self.errors.append(type(exc).__name__)
            raise
        finally:
            self.outstanding -= 1

    async def _produce(self, call: int, batch: Buffer) -> int:
        header = storage.decode_batch_header(batch)
        pid, epoch, seq = header.producer_id, header.producer_epoch, header.base_sequence
        count = header.record_count
        fault = self.faults.get(call)
        if fault == "reject":
            raise NotLeaderError("lost the leadership", leader=1)
        duplicate = self.table.check(pid, epoch, seq, count)  # raises on a gap
        if duplicate is not None:
            base = duplicate.base_offset
        else:
            base = self.next_offset
            copy = bytearray(batch)
            storage.stamp_base_offset(copy, base)
            self.batches.append((base, bytes(copy)))
            self.next_offset += count
            self.table.observe(pid, epoch, seq, count, base)
            await self.commit()
        gate = self.gates.get(call)
        if gate is not None:  # bounded: a failing test must not hang in close()
            await asyncio.wait_for(gate, 10)
        await asyncio.sleep(0)  # answer later than the next request arrives
        if fault == "lost":
            raise RequestTimedOutError("the reply was lost")
        return base

    def values(self) -> list[bytes]:
        out: list[bytes] = []
        for _, frame in self.batches:
            out.extend(r.value for r in storage.decode_records(frame))
        return out

    def producer_ids(self) -> set[int]:
        return {storage.decode_batch_header(frame).producer_id for _, frame in self.batches}


class Backend(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.addr = ""
        self.leader = Leader()
        self.topics["t"] = [self.leader]

    def metadata(self, topics: Sequence[str] | None) -> dict[str, Any]:
        return {
            "brokers": [{"id": 1, "client_addr": self.addr, "alive": True}],
            "controller": 1,
            "topics": [
                {
                    "name": name,
                    "replication_factor": 1,
                    "configs": {},
                    "partitions": [
                        {"partition": i, "leader": 1, "replicas": [1], "hwm": 0, "log_start": 0}
                        for i in range(len(parts))
                    ],
                }
                for name, parts in self.topics.items()
            ],
        }


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    backend = Backend()
    frontend = Frontend(backend, "tcp://127.0.0.1:*", max_message_bytes=1 << 20, heartbeat_ms=50)
    backend.addr = frontend.addr
    task = asyncio.create_task(frontend.run())
    try:
        yield backend
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await frontend.close()


def _producer(backend: Backend) -> Producer:
    # batch_bytes=1: every record closes its own batch, so each send is one request.
    return Producer(backend.addr, linger_ms=0, batch_bytes=1, retry_backoff_ms=1)


async def test_a_batch_leaves_as_soon_as_the_oldest_in_flight_is_answered(
    backend: Backend,
) -> None:
    leader = backend.leader
    loop = asyncio.get_running_loop()
    leader.gates = {n: loop.create_future() for n in range(7)}
    async with _producer(backend) as producer:
        futures = [producer.send("t", b"%d" % i) for i in range(7)]

        async def calls(n: int) -> bool:
            return leader.calls >= n

        await wait_until_async(lambda: calls(KEEP), 10, "a full window in flight")
        assert leader.calls == KEEP  # no more than max_in_flight
        leader.gates[0].set_result(None)
        assert (await futures[0]).offset == 0
        # The window slides: the sixth batch leaves while 1..4 are still unanswered.
        await wait_until_async(lambda: calls(KEEP + 1), 10, "the sixth batch")
        assert not any(f.done() for f in futures[1:])
        for gate in leader.gates.values():
            if not gate.done():
                gate.set_result(None)
        offsets = [(await f).offset for f in futures]
    assert offsets == list(range(7))
    assert leader.most_outstanding <= KEEP


@pytest.mark.parametrize(
    "faults",
    [
        {3: "reject"},  # 4..7 in flight behind it answer OUT_OF_ORDER_SEQUENCE
        {3: "lost"},  # the retry of 3 is a duplicate: answered with its offset
        {2: "lost", 3: "reject", 4: "lost", 15: "reject", 16: "reject", 30: "lost"},
    ],
    ids=["reject", "lost-reply", "mixed"],
)
async def test_retries_keep_partition_order_and_write_each_batch_once(
    backend: Backend, faults: dict[int, str]
) -> None:
    leader = backend.leader
    leader.faults = faults
    values = [b"v%03d" % i for i in range(40)]
    async with _producer(backend) as producer:
        futures = [producer.send("t", v) for v in values]
        await producer.flush()
        metas: list[RecordMetadata] = [await f for f in futures]
    assert leader.values() == values  # in order, each once
    assert [m.offset for m in metas] == list(range(len(values)))
    assert len(leader.producer_ids()) == 1  # no batch failed for good
    assert leader.most_outstanding <= KEEP
    if "reject" in faults.values():
        assert "OutOfOrderSequenceError" in leader.errors  # the echo path ran


async def test_batches_queued_behind_a_full_window_leave_as_one_request(
    backend: Backend,
) -> None:
    leader = backend.leader
    loop = asyncio.get_running_loop()
    leader.gates = {n: loop.create_future() for n in range(KEEP)}
    flushes: list[asyncio.Task[None]] = []
    async with Producer(backend.addr, linger_ms=1000) as producer:

        async def send_alone(value: bytes) -> RecordFuture:
            future = producer.send("t", value)
            # flush closes the open batch before its first await: one batch per record
            flushes.append(asyncio.create_task(producer.flush()))
            await asyncio.sleep(0)
            return future

        async def calls(n: int) -> bool:
            return leader.calls >= n

        futures = []
        for i in range(KEEP):  # one request each: the window fills up
            futures.append(await send_alone(b"%d" % i))
            await wait_until_async(lambda i=i: calls(i + 1), 10, f"request {i}")
        futures += [await send_alone(b"%d" % i) for i in range(KEEP, 3 * KEEP)]
        for gate in leader.gates.values():
            gate.set_result(None)
        metas = [await f for f in futures]
        await asyncio.gather(*flushes)
    assert [m.offset for m in metas] == list(range(3 * KEEP))
    assert leader.values() == [b"%d" % i for i in range(3 * KEEP)]
    assert len(leader.batches) == KEEP + 1  # the backlog went out as one batch
    assert leader.calls == KEEP + 1
