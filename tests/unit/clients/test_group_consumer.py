"""The group consumer against a fake broker that speaks the protocol (fakebroker.py):
joining, revoking (commit before release), losing membership (no commit), commit,
auto-commit (only processed records), close (commit, then leave)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.support import wait_until_async
from tests.unit.clients.fakebroker import FakeBroker, FakeMember
from zstream.clients import (
    CommitOffsetsRequest,
    Consumer,
    FencedMemberError,
    GroupHeartbeatRequest,
    NotControllerError,
    TopicPartition,
    UnavailableError,
    UnknownMemberError,
    UnknownServerError,
)
from zstream.clients._protocol import RequestArgs

T0, T1, T2, T3 = (TopicPartition("t", p) for p in range(4))


@pytest.fixture
async def fake() -> AsyncIterator[FakeBroker]:
    broker = FakeBroker()
    broker.create_topic("t", 4)
    broker.start()
    try:
        yield broker
    finally:
        await broker.close()


def _consumer(fake: FakeBroker, **options: object) -> Consumer:
    settings: dict[str, object] = {
        "mode": "fetch",
        "fetch_max_wait_ms": 50,
        "session_timeout_ms": 3000,
        "request_timeout_ms": 2000,
        "enable_auto_commit": True,
        "auto_commit_interval_ms": 60_000,  # only on revoke and close unless a test asks
    }
    settings.update(options)
    return Consumer(fake.addr, "g", **settings)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    async def check() -> bool:
        return condition()

    await wait_until_async(check, timeout_s, what)


async def _fill(fake: FakeBroker, per_partition: int) -> None:
    for p in range(4):
        await fake.append("t", p, *(f"{p}-{i}".encode() for i in range(per_partition)))


def _owned_in(request: GroupHeartbeatRequest) -> set[tuple[str, int]]:
    return {(t, p) for t, parts in request.owned.items() for p in parts}


async def test_a_lone_member_gets_every_partition_and_reads_from_the_start(
    fake: FakeBroker,
) -> None:
    await _fill(fake, 3)
    async with _consumer(fake) as consumer:
        await consumer.subscribe(["t"])
        await until(lambda: consumer.assignment() == {T0, T1, T2, T3}, "all four partitions")
        records = [await consumer.getone() for _ in range(12)]
        assert sorted(r.value for r in records) == sorted(
            f"{p}-{i}".encode() for p in range(4) for i in range(3)
        )
        joins = fake.sent(GroupHeartbeatRequest)
        assert joins[0].topics == ["t"]
        assert joins[0].owned == {}
        assert consumer.member_id == joins[0].member_id
        # Later heartbeats do not repeat the subscription, and report what is owned.
        await until(
            lambda: any(
                _owned_in(h) == set(consumer.assignment())
                for h in fake.sent(GroupHeartbeatRequest)[1:]
            ),
            "owned reported",
        )
        assert all(h.topics is None for h in fake.sent(GroupHeartbeatRequest)[1:])


class HeldClaims(FakeBroker):
    """Holds the first heartbeat of ``member_id`` that reports owned partitions until
    ``release`` is set: a slow Raft round for that member's claim."""

    def __init__(self) -> None:
        super().__init__()
        self.member_id: str | None = None
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def _handle(self, args: RequestArgs) -> tuple[dict[str, Any], list[bytes]]:
        if (
            isinstance(args, GroupHeartbeatRequest)
            and args.member_id == self.member_id
            and args.owned
            and not self.held.is_set()
        ):
            self.held.set()
            await self.release.wait()
        return await super()._handle(args)


async def test_a_partition_is_read_only_after_the_controller_recorded_the_claim() -> None:
    """Regression: a member started reading what a reply assigned before reporting it
    in ``owned``; a member joining meanwhile was handed the same partitions, and both
    read (and committed) them at once."""
    fake = HeldClaims()
    fake.create_topic("t", 4)
    fake.start()
    assigned: list[set[TopicPartition]] = []

    async def on_assign(tps: set[TopicPartition]) -> None:
        assigned.append(tps)

    try:
        await _fill(fake, 3)
        async with _consumer(fake, on_assign=on_assign) as a, _consumer(fake) as b:
            await a.subscribe(["t"])
            fake.member_id = a.member_id  # before its coordinator task first runs
            await until(fake.held.is_set, "a's claim is in flight")
            assert a.assignment() == set()  # claimed, not read
            await b.subscribe(["t"])
            # The controller has not seen a's claim: b's own claim on its half wins.
            await until(lambda: b.assignment() == {T0, T2}, "b reads its half")
            assert a.assignment() == set()
            fake.release.set()
            await until(lambda: a.assignment() == {T1, T3}, "a reads the other half")
            assert assigned == [{T1, T3}]  # t/0 and t/2 were never started by a
            assert not a.assignment() & b.assignment()
            assert not fake.sent(
                CommitOffsetsRequest, lambda r: r.member_id == a.member_id and r.offsets
            )
    finally:
        await fake.close()


async def test_revoke_commits_the_processed_offset_before_the_release(fake: FakeBroker) -> None:
    await _fill(fake, 5)
    a = _consumer(fake)
    b = _consumer(fake)
    async with a, b:
        await a.subscribe(["t"])
        await until(lambda: a.assignment() == {T0, T1, T2, T3}, "a owns all")
        got = [await a.getone() for _ in range(20)]
        in_hand = got[-1]  # the application is still processing it
        await b.subscribe(["t"])
        await until(lambda: b.assignment() == {T0, T2}, "b gets its half")
        await until(lambda: a.assignment() == {T1, T3}, "a keeps the other half")
        a_hb = [
            (i, r)
            for i, r in enumerate(fake.log)
            if isinstance(r, GroupHeartbeatRequest) and r.member_id == a.member_id
        ]
        held_all = next(i for i, r in a_hb if _owned_in(r) == {T0, T1, T2, T3})
        release_at = next(i for i, r in a_hb if i > held_all and not _owned_in(r) & {T0, T2})
        commits = [
            (i, r)
            for i, r in enumerate(fake.log)
            if isinstance(r, CommitOffsetsRequest) and r.member_id == a.member_id
        ]
        assert len(commits) == 1
        commit_at, commit = commits[0]
        assert held_all < commit_at < release_at
        # Everything delivered of t/0 and t/2 was processed, except the record in hand.
        expected = {p: (in_hand.offset if in_hand.partition == p else 5) for p in (0, 2)}
        assert dict(map(tuple, commit.offsets["t"])) == expected  # type: ignore[arg-type]
        # b starts where a's commit left off.
        for tp in (T0, T2):
            assert b.position(tp) == expected[tp.partition]


async def test_a_new_owner_resumes_after_an_explicit_commit(fake: FakeBroker) -> None:
    await fake.append("t", 0, *(f"r{i}".encode() for i in range(100)))
    async with _consumer(fake, enable_auto_commit=False) as a:
        await a.subscribe(["t"])
        await until(lambda: T0 in a.assignment(), "a owns t/0")
        first = [await a.getone() for _ in range(10)]
        assert [r.offset for r in first] == list(range(10))
        await a.commit()
        assert fake.offsets[T0] == 10
        async with _consumer(fake) as b:
            await b.subscribe(["t"])
            await until(lambda: T0 in b.assignment(), "t/0 moves to b")
            assert T0 not in a.assignment()
            record = await b.getone()
            assert (record.partition, record.offset) == (0, 10)


async def test_unknown_member_drops_everything_without_commit_and_rejoins(
    fake: FakeBroker,
) -> None:
    await _fill(fake, 4)
    revoked: list[set[TopicPartition]] = []

    async def on_revoke(tps: set[TopicPartition]) -> None:
        revoked.append(tps)

    async with _consumer(fake, on_revoke=on_revoke) as consumer:
        await consumer.subscribe(["t"])
        await until(lambda: len(consumer.assignment()) == 4, "joined")
        for _ in range(6):
            await consumer.getone()
        old = consumer.member_id
        assert old is not None
        fake.forget(old)
        await until(lambda: consumer.member_id != old, "a fresh member id")
        await until(lambda: len(consumer.assignment()) == 4, "joined again")
        assert revoked[:1] == [{T0, T1, T2, T3}]
        assert not fake.sent(CommitOffsetsRequest)  # nothing committed for the lost member
        joins = fake.sent(GroupHeartbeatRequest, lambda r: r.member_id == consumer.member_id)
        assert joins[0].topics == ["t"]
        assert joins[0].owned == {}
        # It reads from the start again (nothing was committed): a duplicate, not a loss.
        seen = {(r.partition, r.offset) for r in [await consumer.getone() for _ in range(16)]}
        assert seen == {(p, i) for p in range(4) for i in range(4)}


async def test_a_member_unheard_for_a_session_drops_its_partitions(fake: FakeBroker) -> None:
    await _fill(fake, 2)
    options = {"session_timeout_ms": 1000, "request_timeout_ms": 300}
    async with _consumer(fake, **options) as consumer:
        await consumer.subscribe(["t"])
        await until(lambda: len(consumer.assignment()) == 4, "joined")
        for _ in range(3):
            await consumer.getone()
        old = consumer.member_id
        fake.muted.add("group_heartbeat")
        await until(lambda: not consumer.assignment(), "partitions dropped", timeout_s=15)
        assert not fake.sent(CommitOffsetsRequest)  # they may be someone else's by now
        fake.forget(old or "")
        fake.muted.clear()
        await until(lambda: len(consumer.assignment()) == 4, "joined again", timeout_s=15)
        assert consumer.member_id != old


class SlowHeartbeats(FakeBroker):
    """Answers heartbeats ``delay_s`` after they arrive; once ``mute`` is set, answers
    none that arrive. Notes when each answered heartbeat arrived."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.mute = False
        self.answered_arrivals: list[float] = []

    async def _handle(self, args: RequestArgs) -> tuple[dict[str, Any], list[bytes]]:
        if isinstance(args, GroupHeartbeatRequest):
            arrived = time.monotonic()
            if self.mute:
                await asyncio.Event().wait()  # never answered
            await asyncio.sleep(self.delay_s)
            self.answered_arrivals.append(arrived)
        return await super()._handle(args)


async def test_no_record_is_delivered_past_a_session_after_the_last_answered_send() -> None:
    """Regression: the session was counted from when a reply ARRIVED, and records kept
    being delivered until a failed attempt noticed: with slow replies the member read
    on for a while after the controller may have expired it and moved its partitions."""
    fake = SlowHeartbeats(delay_s=0.3)
    fake.create_topic("t", 1)
    fake.start()
    session_s = 1.0
    try:
        async with _consumer(fake, session_timeout_ms=int(session_s * 1000)) as c:
            await c.subscribe(["t"])
            await until(lambda: c.assignment() == {T0}, "t/0 taken")
            fake.mute = True
            delivered: list[float] = []
            n = 0
            while c.assignment():
                await fake.append("t", 0, f"r{n}".encode())
                n += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(c.getone(), 0.2)
                    delivered.append(time.monotonic())
            assert delivered, "records flowed until the session ran out"
            # The controller heard from us last when that heartbeat arrived, and its
            # session ran out a session later: nothing may be delivered after that.
            deadline = fake.answered_arrivals[-1] + session_s
            assert max(delivered) <= deadline + 0.1
            assert not fake.sent(CommitOffsetsRequest)
    finally:
        await fake.close()


class HeldJoin(FakeBroker):
    """Applies the first heartbeat (the join) but never answers it."""

    async def _handle(self, args: RequestArgs) -> tuple[dict[str, Any], list[bytes]]:
        result = await super()._handle(args)
        if isinstance(args, GroupHeartbeatRequest) and len(self.sent(GroupHeartbeatRequest)) == 1:
            await asyncio.Event().wait()
        return result


async def test_close_during_the_first_join_still_leaves() -> None:
    """Regression: close() sent the leave only once a join had been answered; a join
    applied but unanswered left a member holding partitions for a whole session."""
    fake = HeldJoin()
    fake.create_topic("t", 2)
    fake.start()
    try:
        async with _consumer(fake) as c:
            await c.subscribe(["t"])
            member_id = c.member_id
            await until(lambda: member_id in fake.members, "the join applied")
        leaves = fake.sent(GroupHeartbeatRequest, lambda r: r.leave)
        assert [r.member_id for r in leaves] == [member_id]
        assert not fake.members
    finally:
        await fake.close()


async def test_auto_commit_commits_only_processed_records(fake: FakeBroker) -> None:
    await fake.append("t", 0, *(f"r{i}".encode() for i in range(10)))
    async with _consumer(fake, auto_commit_interval_ms=20) as consumer:
        await consumer.subscribe(["t"])
        await until(lambda: T0 in consumer.assignment(), "joined")
        consumer.pause(T1, T2, T3)
        for _ in range(3):
            await consumer.getone()  # offsets 0, 1, 2; 2 is still being processed
        await until(lambda: fake.offsets.get(T0) == 2, "auto-commit of the processed two")
        assert consumer.position(T0) == 3
        # Nothing more is processed: later auto-commit rounds send nothing.
        commits = len(fake.sent(CommitOffsetsRequest))
        beats = len(fake.sent(GroupHeartbeatRequest))
        await until(lambda: len(fake.sent(GroupHeartbeatRequest)) > beats + 4, "more beats")
        assert len(fake.sent(CommitOffsetsRequest)) == commits
    # close: what was handed out counts as processed, then the member leaves.
    assert fake.offsets[T0] == 3
    last_commit = max(i for i, r in enumerate(fake.log) if isinstance(r, CommitOffsetsRequest))
    leave = next(
        i for i, r in enumerate(fake.log) if isinstance(r, GroupHeartbeatRequest) and r.leave
    )
    assert last_commit < leave
    assert not fake.members


async def test_commit_position_then_fenced_once_the_partition_moved(fake: FakeBroker) -> None:
    await _fill(fake, 5)
    async with _consumer(fake, enable_auto_commit=False) as consumer:
        await consumer.subscribe(["t"])
        await until(lambda: len(consumer.assignment()) == 4, "joined")
        records = [await consumer.getone() for _ in range(8)]
        positions = {r.partition: r.offset + 1 for r in records}
        await consumer.commit()
        for p, offset in positions.items():
            assert fake.offsets[("t", p)] == offset
        assert await consumer.committed(T0) == fake.offsets.get(T0)
        await consumer.commit({T1: 1})  # backwards is legal, as in Kafka
        assert fake.offsets[T1] == 1
        # Someone else owns t/3 now (a stale view): the commit is fenced, nothing lands.
        fake.members["intruder"] = FakeMember(["t"], owned={T3})
        before = dict(fake.offsets)
        with pytest.raises(FencedMemberError):
            await consumer.commit({T0: 5, T3: 5})
        assert fake.offsets == before
        fake.members.pop("intruder")
        fake.forget(consumer.member_id or "")
        with pytest.raises((UnknownMemberError, FencedMemberError)):
            await consumer.commit({T0: 5})


@pytest.mark.parametrize("reset", ["earliest", "latest"])
async def test_a_commit_past_the_end_applies_auto_offset_reset(
    fake: FakeBroker, reset: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a committed offset beyond the partition's end (the controller knows
    no high watermark) made the reader retry OFFSET_OUT_OF_RANGE forever."""
    await _fill(fake, 3)
    fake.offsets[T0] = 1000
    caplog.set_level(logging.WARNING, "zstream.clients.consumer")
    async with _consumer(fake, auto_offset_reset=reset, auto_commit_interval_ms=20) as c:
        await c.subscribe(["t"])
        await until(lambda: len(c.assignment()) == 4, "all four")
        await until(lambda: c.position(T0) == (0 if reset == "earliest" else 3), "t/0 reset")
        assert any("beyond the end" in r.getMessage() for r in caplog.records)
        await fake.append("t", 0, b"new")
        expected = [0, 1, 2, 3] if reset == "earliest" else [3]
        t0: list[int] = []
        for _ in range(13):  # with earliest, the 9 records of t/1..t/3 come too
            if len(t0) == len(expected):
                break
            record = await c.getone()
            if record.partition == 0:
                t0.append(record.offset)
        assert t0 == expected
        # Auto-commit may move the bad offset back now: to what was processed.
        await until(lambda: fake.offsets[T0] <= 3, "the offset committed again")


async def test_commit_inside_on_revoke_commits_the_revoked_partitions(fake: FakeBroker) -> None:
    """Regression: commit() skipped the partitions being revoked (marked so before
    on_revoke ran), so the Kafka pattern "commit in on_revoke" left the new owner
    to read again everything the old one had processed."""
    await _fill(fake, 3)
    consumers: list[Consumer] = []
    revoked: list[set[TopicPartition]] = []

    async def on_revoke(tps: set[TopicPartition]) -> None:
        revoked.append(tps)
        await consumers[0].commit()

    async with _consumer(fake, enable_auto_commit=False, on_revoke=on_revoke) as a:
        consumers.append(a)
        await a.subscribe(["t"])
        await until(lambda: len(a.assignment()) == 4, "a owns all four")
        for _ in range(12):
            await a.getone()
        async with _consumer(fake, enable_auto_commit=False) as b:
            await b.subscribe(["t"])
            await until(lambda: b.assignment() == {T0, T2}, "b took two")
            assert revoked == [{T0, T2}]
            # b starts after a's last record: the one in hand counts as delivered.
            assert fake.offsets[T0] == fake.offsets[T2] == 3
            assert b.position(T0) == b.position(T2) == 3


async def test_heartbeats_retry_through_not_controller_and_other_errors(fake: FakeBroker) -> None:
    fake.failures["group_heartbeat"] = [
        NotControllerError("moving", leader=1),
        NotControllerError("moving"),
        UnknownServerError("a controller bug"),
    ]
    fake.failures["fetch_offsets"] = [UnavailableError("not caught up yet")]
    async with _consumer(fake) as consumer:
        await consumer.subscribe(["t"])
        await until(lambda: len(consumer.assignment()) == 4, "joined despite the errors")
    assert not fake.failures["group_heartbeat"]
    assert not fake.failures["fetch_offsets"]


async def test_on_assign_sees_new_partitions_and_subscribe_keyword(fake: FakeBroker) -> None:
    assigned: list[set[TopicPartition]] = []

    async def on_assign(tps: set[TopicPartition]) -> None:
        assigned.append(tps)

    consumer = Consumer(fake.addr, mode="fetch", on_assign=on_assign, session_timeout_ms=3000)
    async with consumer:
        await consumer.subscribe(["t"], group="g2")
        await until(lambda: assigned == [{T0, T1, T2, T3}], "on_assign")
        with pytest.raises(ValueError, match="g2"):
            await consumer.subscribe(["t"], group="other")
        with pytest.raises(RuntimeError):
            consumer.assign([T0])


async def test_assign_with_a_group_starts_at_the_commit_and_commits_as_non_member(
    fake: FakeBroker,
) -> None:
    await fake.append("t", 1, *(f"r{i}".encode() for i in range(10)))
    fake.offsets[T1] = 7
    async with _consumer(fake, enable_auto_commit=False) as consumer:
        consumer.assign([T1])
        record = await consumer.getone()
        assert record.offset == 7
        await consumer.commit()
        assert fake.offsets[T1] == 8
        assert fake.sent(CommitOffsetsRequest)[-1].member_id == ""
        assert not fake.sent(GroupHeartbeatRequest)


async def test_commit_without_a_group_is_refused(fake: FakeBroker) -> None:
    async with Consumer(fake.addr, mode="fetch") as consumer:
        consumer.assign([T0])
        with pytest.raises(ValueError, match="group"):
            await consumer.commit()
    with pytest.raises(ValueError, match="session_timeout_ms"):
        Consumer(fake.addr, "g", session_timeout_ms=10)
    with pytest.raises(ValueError, match="group name"):
        Consumer(fake.addr, "bad name!")
