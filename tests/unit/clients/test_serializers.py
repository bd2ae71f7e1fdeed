"""Producer serializers against the broker's front end over a fake backend (as in
test_producer.py): a failing serializer raises at ``send`` naming the record, and the
other records of the same batch are written as if it had never been sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.unit.clients.test_producer import Backend
from zstream import SerializationError, json_deserializer, json_serializer, storage
from zstream.broker._frontend import Frontend
from zstream.clients import Producer


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


def _records(backend: Backend) -> list[tuple[bytes | None, bytes]]:
    return [
        (r.key, r.value)
        for _, frame in backend.leader.batches
        for r in storage.decode_records(frame)
    ]


async def test_a_failing_serializer_fails_its_send_only(backend: Backend) -> None:
    calls: list[str] = []

    def key_serializer(key: str) -> bytes:
        calls.append(key)
        if key == "bad-key":
            raise ValueError("no such key")
        return key.encode()

    # One long linger: every record sent below lands in the same open batch.
    async with Producer[str, Any](
        backend.addr,
        linger_ms=60_000,
        key_serializer=key_serializer,
        value_serializer=json_serializer,
    ) as producer:
        first = producer.send("t", {"n": 1}, key="a")
        with pytest.raises(SerializationError, match=r"t record with key 'a'.*value serializer"):
            producer.send("t", {"not json": object()}, key="a")
        with pytest.raises(SerializationError, match=r"t/0 record with key 'bad-key'.*key ser"):
            producer.send("t", {"n": 2}, key="bad-key", partition=0)
        keyless = producer.send("t", {"n": 3})
        last = producer.send("t", [4], key="b")
        await producer.flush()
        metas = [await f for f in (first, keyless, last)]
    assert [m.offset for m in metas] == [0, 1, 2]
    assert len(backend.leader.batches) == 1  # one batch, written whole, without the failures
    assert _records(backend) == [(b"a", b'{"n":1}'), (None, b'{"n":3}'), (b"b", b"[4]")]
    assert "bad-key" in calls
    assert None not in calls  # a record without a key never reaches the key serializer


async def test_a_serializer_returning_something_else_than_bytes(backend: Backend) -> None:
    async with Producer[bytes, str](
        backend.addr,
        linger_ms=0,
        value_serializer=lambda v: v,  # type: ignore[arg-type,return-value]
    ) as producer:
        with pytest.raises(SerializationError, match="value serializer returned str, not bytes"):
            producer.send("t", "text")
        ok = producer.send("t", b"bytes are fine")  # type: ignore[arg-type]
        assert (await ok).offset == 0
    async with Producer(backend.addr, linger_ms=0) as plain:
        with pytest.raises(TypeError, match="must be bytes"):
            plain.send("t", "no serializer")  # type: ignore[arg-type]


async def test_send_many_serializes_everything_before_queueing_anything(
    backend: Backend,
) -> None:
    async with Producer(backend.addr, linger_ms=0, value_serializer=json_serializer) as producer:
        with pytest.raises(SerializationError, match=r"value #2: the value serializer failed"):
            producer.send_many("t", [{"n": 0}, {"n": 1}, {1j}, {"n": 3}])
        await producer.flush()
        assert backend.leader.batches == []  # none of them went out
        futures = producer.send_many("t", [{"n": i} for i in range(3)])
        await producer.flush()
        assert [await f for f in futures] == [0]
    assert [json_deserializer(v) for _, v in _records(backend)] == [{"n": i} for i in range(3)]


def test_json_helpers_round_trip_compact_utf8() -> None:
    doc = {"name": "zoë", "n": [1, 2.5, None, True]}
    data = json_serializer(doc)
    assert data == json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    assert json_deserializer(data) == doc
