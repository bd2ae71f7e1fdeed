"""One consumer-group member for the group end-to-end test, in this process (the
`run_member` coroutine) or in a child process that the test can SIGKILL.

Usage: python -m tests.integration._group_member BOOTSTRAP GROUP TOPIC SESSION_MS OUT

The member subscribes, takes records in small batches and, after each batch,
commits synchronously. It reports everything as events (JSON lines in OUT for a
child, flushed before each commit)::

    {"m": name, "ev": "assign" | "revoke", "tps": [partition, ...], "t": monotonic}
    {"m": name, "ev": "deliver", "p": partition, "o": offset, "v": value, "t": ...}
    {"m": name, "ev": "commit", "offsets": {partition: next_offset}, "t": ...}

``t`` is CLOCK_MONOTONIC, the same clock in every process of the machine. A commit's
``t`` is taken after it succeeded; a delivery's as soon as the record was handed out.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from zstream.clients import Consumer, FencedMemberError, TopicPartition, UnknownMemberError

Event = dict[str, Any]
BATCH = 100  # records between two synchronous commits


def group_consumer(
    bootstrap: str, group: str, name: str, emit: Callable[[Event], None], **options: Any
) -> Consumer:
    """A group consumer whose on_assign / on_revoke are reported as events."""

    async def on_assign(tps: set[TopicPartition]) -> None:
        emit({"m": name, "ev": "assign", "tps": sorted(p for _, p in tps), "t": time.monotonic()})

    async def on_revoke(tps: set[TopicPartition]) -> None:
        emit({"m": name, "ev": "revoke", "tps": sorted(p for _, p in tps), "t": time.monotonic()})

    return Consumer(bootstrap, group, on_assign=on_assign, on_revoke=on_revoke, **options)


async def run_member(
    consumer: Consumer,
    name: str,
    emit: Callable[[Event], None],
    stop: asyncio.Event,
    flush: Callable[[], None] = lambda: None,
) -> None:
    """Until ``stop`` is set: a batch of records (as many as come within 0.2 s, at
    most BATCH), each reported, then a synchronous commit, reported if it succeeded.
    Never cancelled mid-record: a record handed out is always reported."""
    while not stop.is_set():
        got = 0
        while got < BATCH:
            try:
                # Not wait_for: it would run getone in another task, and the coordinator
                # could run (and report a revoke) between the hand-out and our report.
                async with asyncio.timeout(0.2):
                    record = await consumer.getone()
            except TimeoutError:
                break
            got += 1
            emit(
                {
                    "m": name,
                    "ev": "deliver",
                    "p": record.partition,
                    "o": record.offset,
                    "v": int(record.value),
                    "t": time.monotonic(),
                }
            )
        if not got:
            continue
        flush()
        positions = {
            tp.partition: offset
            for tp in consumer.assignment()
            if (offset := consumer.position(tp)) is not None
        }
        try:
            await consumer.commit()
        except (FencedMemberError, UnknownMemberError):
            continue  # the partitions moved on: nothing was committed
        emit({"m": name, "ev": "commit", "offsets": positions, "t": time.monotonic()})
        flush()


async def _child(bootstrap: str, group: str, topic: str, session_ms: int, out: str) -> None:
    with open(out, "a", encoding="utf-8") as f:  # noqa: ASYNC230 (a child's small log)

        def emit(event: Event) -> None:
            f.write(json.dumps(event) + "\n")

        name = "child"
        consumer = group_consumer(bootstrap, group, name, emit, session_timeout_ms=session_ms)
        async with consumer:
            await consumer.subscribe([topic])
            emit({"m": name, "ev": "ready", "t": time.monotonic()})
            f.flush()
            await run_member(consumer, name, emit, asyncio.Event(), f.flush)


def main() -> None:
    bootstrap, group, topic, session_ms, out = sys.argv[1:6]
    asyncio.run(_child(bootstrap, group, topic, int(session_ms), out))


if __name__ == "__main__":
    main()
