"""The ROUTER front end over a real loopback socket, with a fake backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgpack
import pytest
import zmq
import zmq.asyncio

from tests.unit.broker.fakes import FakeBackend
from zstream import storage
from zstream.broker._frontend import Frontend
from zstream.clients import (
    Acks,
    CommitOffsetsRequest,
    CorruptBatchError,
    CreateTopicRequest,
    CreditRequest,
    DeleteGroupRequest,
    DescribeGroupRequest,
    ErrorCode,
    FencedMemberError,
    FetchOffsetsRequest,
    FetchRequest,
    GroupHeartbeatRequest,
    GroupNotEmptyError,
    InitProducerRequest,
    ListGroupsRequest,
    ListTopicsRequest,
    MessageTooLargeError,
    MetadataRequest,
    NotControllerError,
    NotLeaderError,
    OffsetOutOfRangeError,
    OffsetsForTimeRequest,
    ProduceRequest,
    SubscribeRequest,
    ThrottledError,
    UnknownGroupError,
    UnknownMemberError,
    UnknownServerError,
    UnknownTopicError,
    UnsubscribeRequest,
)
from zstream.clients._connection import Connection
from zstream.clients._protocol import decode_reply

MAX_BYTES = 64 * 1024


class Served:
    def __init__(self, frontend: Frontend, backend: FakeBackend, conn: Connection) -> None:
        self.frontend, self.backend, self.conn = frontend, backend, conn


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    backend = FakeBackend()
    frontend = Frontend(
        backend,
        "tcp://127.0.0.1:*",
        max_message_bytes=MAX_BYTES,
        max_in_flight_per_client=4,
        heartbeat_ms=50,
    )
    task = asyncio.create_task(frontend.run())
    conn = Connection(frontend.addr, timeout_s=5)
    try:
        yield Served(frontend, backend, conn)
    finally:
        await conn.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await frontend.close()


def _batch(*values: bytes) -> bytes:
    return storage.encode_batch([(None, v) for v in values])


async def _topic(s: Served, name: str = "t", partitions: int = 1) -> None:
    await s.conn.call(CreateTopicRequest(name, partitions, 1))


async def test_produce_then_fetch_round_trip(served: Served) -> None:
    await _topic(served)
    first = await served.conn.call(ProduceRequest("t", 0), [_batch(b"a", b"b")])
    second = await served.conn.call(ProduceRequest("t", 0, Acks.LEADER), [_batch(b"c")])
    assert (first.result["base_offset"], second.result["base_offset"]) == (0, 2)
    reply = await served.conn.call(FetchRequest("t", 0, 1, max_wait_ms=0))
    assert reply.result["hwm"] == 3
    values = [r.value for f in reply.frames for r in storage.decode_records(f)]
    assert values == [b"a", b"b", b"c"]
    offsets = [r.offset for f in reply.frames for r in storage.decode_records(f)]
    assert offsets == [0, 1, 2]


async def test_errors_are_numbered_and_the_broker_keeps_serving(served: Served) -> None:
    await _topic(served)
    bad = bytearray(_batch(b"x"))
    bad[-1] ^= 0xFF
    with pytest.raises(CorruptBatchError):
        await served.conn.call(ProduceRequest("t", 0), [bytes(bad)])
    with pytest.raises(UnknownTopicError):
        await served.conn.call(ProduceRequest("nope", 0), [_batch(b"x")])
    with pytest.raises(MessageTooLargeError):
        await served.conn.call(ProduceRequest("t", 0), [_batch(b"x" * MAX_BYTES)])
    with pytest.raises(OffsetOutOfRangeError) as info:
        await served.conn.call(FetchRequest("t", 0, 5, max_wait_ms=0))
    assert info.value.details == {"start": 0, "end": 0}
    served.backend.topics["t"][0].leader = 3
    with pytest.raises(NotLeaderError) as not_leader:
        await served.conn.call(ProduceRequest("t", 0), [_batch(b"x")])
    assert not_leader.value.leader == 3
    served.backend.fail_metadata = True
    with pytest.raises(UnknownServerError):
        await served.conn.call(MetadataRequest())
    assert (await served.conn.call(ListTopicsRequest())).result == {"topics": ["t"]}
    assert served.frontend.stats.errors["CORRUPT_BATCH"] == 1


async def test_raw_garbage_gets_invalid_request_under_its_id(served: Served) -> None:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(served.frontend.addr)
    try:
        cases = [
            [b"\xc1garbage"],
            [msgpack.packb({"v": 1, "id": 7, "op": "launch_missiles", "args": {}})],
            [msgpack.packb({"v": 9, "id": 8, "op": "metadata"})],
            [msgpack.packb({"v": 1, "id": 9, "op": "produce", "args": {"topic": "t"}})],
        ]
        expected = [
            (0, ErrorCode.INVALID_REQUEST),
            (7, ErrorCode.INVALID_REQUEST),
            (8, ErrorCode.UNSUPPORTED_VERSION),
            (9, ErrorCode.INVALID_REQUEST),
        ]
        for frames, (corr, code) in zip(cases, expected, strict=True):
            await sock.send_multipart(frames)
            reply = decode_reply(await asyncio.wait_for(sock.recv_multipart(), 5))
            assert (reply.corr_id, reply.error) == (corr, code)
    finally:
        sock.close()
        ctx.term()


async def test_fetch_long_polls_until_data_commits(served: Served) -> None:
    await _topic(served)
    part = served.backend.topics["t"][0]
    part.auto_commit = False
    waiting = asyncio.create_task(served.conn.call(FetchRequest("t", 0, 0, max_wait_ms=5000)))
    await served.conn.call(ProduceRequest("t", 0), [_batch(b"late")])
    assert not waiting.done()  # written but not committed: never visible
    await part.commit()
    reply = await asyncio.wait_for(waiting, 5)
    assert [r.value for r in storage.decode_records(reply.frames[0])] == [b"late"]
    empty = await served.conn.call(FetchRequest("t", 0, 1, max_wait_ms=20))
    assert empty.frames == ()
    assert empty.result["hwm"] == 1


async def test_in_flight_limit_throttles(served: Served) -> None:
    await _topic(served)
    gate = asyncio.Event()
    served.backend.topics["t"][0].blocked = gate
    held = [
        asyncio.create_task(served.conn.call(ProduceRequest("t", 0), [_batch(b"x")]))
        for _ in range(4)
    ]
    await asyncio.sleep(0)
    # The four held requests went out first on the same socket, so the broker has
    # read them, and holds them, before it reads this one.
    with pytest.raises(ThrottledError):
        await served.conn.call(ProduceRequest("t", 0), [_batch(b"y")])
    gate.set()
    bases = sorted([(await h).result["base_offset"] for h in held])
    assert len(bases) == 4
    assert (await served.conn.call(InitProducerRequest())).result["producer_id"] == 1


async def test_push_stream_credit_heartbeat_and_unsubscribe(served: Served) -> None:
    await _topic(served)
    for v in (b"1", b"2", b"3"):
        await served.conn.call(ProduceRequest("t", 0), [_batch(v)])
    one_batch = len(_batch(b"1"))
    reply = await served.conn.call(SubscribeRequest("t", 0, 1, credit_bytes=one_batch))
    sid = reply.result["stream"]
    queue = served.conn.stream_queue(sid)
    push = await asyncio.wait_for(queue.get(), 5)
    assert (push.kind, push.result["offset"]) == ("data", 1)
    # Out of credit: only heartbeats until the client grants more.
    push = await asyncio.wait_for(queue.get(), 5)
    assert push.kind == "heartbeat"
    await served.conn.call(CreditRequest(sid, 10 * one_batch))
    while (push := await asyncio.wait_for(queue.get(), 5)).kind != "data":
        pass
    assert [r.value for r in storage.decode_records(push.frames[0])] == [b"3"]
    # New data is pushed as it commits.
    await served.conn.call(ProduceRequest("t", 0), [_batch(b"4")])
    while (push := await asyncio.wait_for(queue.get(), 5)).kind != "data":
        pass
    assert push.result["offset"] == 3
    await served.conn.call(UnsubscribeRequest(sid))
    with pytest.raises(Exception, match="no stream"):
        await served.conn.call(UnsubscribeRequest(sid))


async def test_stream_closes_when_leadership_moves(served: Served) -> None:
    await _topic(served)
    reply = await served.conn.call(SubscribeRequest("t", 0, 0, credit_bytes=1 << 20))
    queue = served.conn.stream_queue(reply.result["stream"])
    served.backend.topics["t"][0].leader = 2
    while (push := await asyncio.wait_for(queue.get(), 5)).kind != "closed":
        pass
    assert push.result["err"] == ErrorCode.NOT_LEADER
    assert push.result["leader"] == 2


async def test_consumer_group_operations(served: Served) -> None:
    await _topic(served, "t", partitions=2)
    conn, backend = served.conn, served.backend
    join = await conn.call(GroupHeartbeatRequest("g", "m1", topics=["t"]))
    assert join.result["assignment"] == {"t": [0, 1]}
    before = backend.proposals
    owned = {"t": [0, 1]}
    await conn.call(GroupHeartbeatRequest("g", "m1", owned=owned))
    assert backend.proposals == before + 1  # owned changed: a proposal
    again = await conn.call(GroupHeartbeatRequest("g", "m1", owned=owned))
    assert backend.proposals == before + 1  # nothing changed: answered from the state
    assert again.result["assignment"] == owned
    await conn.call(CommitOffsetsRequest("g", {"t": [[0, 5]]}, member_id="m1"))
    fetched = await conn.call(FetchOffsetsRequest("g"))
    assert fetched.result == {"offsets": {"t": [[0, 5]]}}
    assert (await conn.call(ListGroupsRequest())).result == {"groups": ["g"]}
    described = (await conn.call(DescribeGroupRequest("g"))).result
    assert [m["member_id"] for m in described["members"]] == ["m1"]
    with pytest.raises(FencedMemberError):
        await conn.call(CommitOffsetsRequest("g", {"t": [[0, 6]]}))
    with pytest.raises(UnknownMemberError):
        await conn.call(GroupHeartbeatRequest("g", "ghost"))
    with pytest.raises(UnknownGroupError):
        await conn.call(DescribeGroupRequest("nope"))
    left = await conn.call(GroupHeartbeatRequest("g", "m1", leave=True))
    assert left.result["assignment"] == {}
    backend.controller_leader = 3
    with pytest.raises(NotControllerError) as info:
        await conn.call(GroupHeartbeatRequest("g", "m1", topics=["t"]))
    assert info.value.details["leader"] == 3
    with pytest.raises(NotControllerError):
        await conn.call(ListGroupsRequest())


async def test_delete_group_and_offsets_for_time(served: Served) -> None:
    await _topic(served, "t", partitions=1)
    conn, backend = served.conn, served.backend
    for ts in (100, 200, 300):
        batch = storage.encode_batch([(None, b"a"), (None, b"b")], timestamp_ms=ts)
        await conn.call(ProduceRequest("t", 0), [batch])
    reply = await conn.call(OffsetsForTimeRequest("t", 0, 150))
    assert reply.result == {"offset": 2, "timestamp_ms": 200, "log_start": 0, "hwm": 6}
    assert (await conn.call(OffsetsForTimeRequest("t", 0, 301))).result["offset"] == 6
    with pytest.raises(UnknownTopicError):
        await conn.call(OffsetsForTimeRequest("nope", 0, 1))
    backend.topics["t"][0].leader = 2
    with pytest.raises(NotLeaderError):
        await conn.call(OffsetsForTimeRequest("t", 0, 1))
    await conn.call(GroupHeartbeatRequest("g", "m1", topics=["t"]))
    with pytest.raises(GroupNotEmptyError):
        await conn.call(DeleteGroupRequest("g"))
    await conn.call(GroupHeartbeatRequest("g", "m1", leave=True))
    await conn.call(CommitOffsetsRequest("g", {"t": [[0, 4]]}))
    await conn.call(DeleteGroupRequest("g"))
    assert (await conn.call(ListGroupsRequest())).result == {"groups": []}
    with pytest.raises(UnknownGroupError):
        await conn.call(DeleteGroupRequest("g"))
