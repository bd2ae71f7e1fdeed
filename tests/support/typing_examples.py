"""How the generic clients type-check (mypy --strict runs over this file in `make
typecheck`; nothing here is called).

A line marked ``MUST FAIL`` is one mypy has to reject: its ``type: ignore`` would be
reported as unused (``warn_unused_ignores``, part of strict) if it ever stopped
failing, and tests/unit/clients/test_typing.py checks, through ``mypy.api``, that
without those comments exactly the marked lines fail, with the codes named.
"""

from __future__ import annotations

from typing import Any

from zstream import (
    BlockingProducer,
    Consumer,
    Producer,
    Record,
    RecordFuture,
    TopicPartition,
    json_deserializer,
    json_serializer,
)


def _str_key(key: str) -> bytes:
    return key.encode()


async def typed_round_trip(bootstrap: str) -> None:
    producer = Producer[str, dict[str, Any]](
        bootstrap, key_serializer=_str_key, value_serializer=json_serializer
    )
    future: RecordFuture = producer.send("events", {"n": 1}, key="user-1")
    await future
    producer.send("events", {"n": 2})  # no key: fine, and the serializer is not called
    producer.send_many("events", [{"n": 3}, {"n": 4}])
    producer.send("events", {"n": 5}, key=b"user-1")  # type: ignore[arg-type]  # MUST FAIL
    producer.send("events", "not a dict", key="k")  # type: ignore[arg-type]  # MUST FAIL

    consumer = Consumer[str, dict[str, Any]](
        bootstrap, key_deserializer=bytes.decode, value_deserializer=json_deserializer
    )
    consumer.assign([TopicPartition("events", 0)])
    record: Record[str, dict[str, Any]] = await consumer.getone()
    key: str | None = record.key
    count: int = record.value["n"]
    batches = await consumer.getmany(timeout_ms=100)
    for records in batches.values():
        for r in records:
            r.value.get("n")
    values: dict[TopicPartition, list[dict[str, Any]]] = await consumer.getmany_values()
    raw: bytes = record.value  # type: ignore[assignment]  # MUST FAIL
    del key, count, values, raw


async def inferred_from_the_callables(bootstrap: str) -> None:
    """Without type arguments the types come from the (de)serializers."""
    consumer = Consumer(bootstrap, key_deserializer=bytes.decode, value_deserializer=int)
    async for record in consumer:
        total: int = record.value + 1
        name: str | None = record.key
        del total, name
    producer = Producer(bootstrap, value_serializer=_str_key)
    producer.send("t", "text")
    producer.send("t", b"bytes")  # type: ignore[arg-type]  # MUST FAIL


async def plain_bytes(bootstrap: str) -> None:
    """Un-parameterized: K and V default to bytes, in annotations and in inference."""
    producer = Producer(bootstrap)
    producer.send("t", b"value", key=b"key")
    producer.send("t", "text")  # type: ignore[arg-type]  # MUST FAIL
    consumer: Consumer = Consumer(bootstrap)
    record: Record = await consumer.getone()
    data: bytes = record.value
    values: list[bytes] = (await consumer.getmany_values()).get(TopicPartition("t", 0), [])
    del data, values


def blocking(bootstrap: str) -> None:
    with BlockingProducer[str, bytes](bootstrap, key_serializer=_str_key) as producer:
        producer.send("t", b"value", key="k")
        producer.send("t", b"value", key=1)  # type: ignore[arg-type]  # MUST FAIL
