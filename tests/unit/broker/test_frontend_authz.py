"""The front end's ACL checks and quotas, with given principals (as the CURVE/ZAP
plumbing will give them), over a real loopback socket and a fake backend whose
ACLs live in a real ControllerState. The quota clock is virtual."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.unit.broker.fakes import FakeBackend
from zstream import storage
from zstream.broker._frontend import Frontend
from zstream.clients import (
    AclAddRequest,
    AclEntry,
    AclListRequest,
    AclOperation,
    AclPermission,
    AclRemoveRequest,
    CommitOffsetsRequest,
    Consumer,
    CreateTopicRequest,
    DeleteTopicRequest,
    DescribeGroupRequest,
    DescribeTopicRequest,
    ErrorCode,
    FetchOffsetsRequest,
    FetchRequest,
    GroupHeartbeatRequest,
    InitProducerRequest,
    ListGroupsRequest,
    ListTopicsRequest,
    MetadataRequest,
    NotAuthorizedError,
    PatternType,
    Producer,
    ProduceRequest,
    QuotaLimits,
    QuotaListRequest,
    QuotaSetRequest,
    ResourceType,
    SubscribeRequest,
    ThrottledError,
)
from zstream.clients._connection import Connection
from zstream.clients._protocol import (
    _REQUEST_TYPES,
    AddPartitionsRequest,
    AlterTopicRequest,
    DecommissionBrokerRequest,
    DeleteGroupRequest,
    ListReassignmentsRequest,
    OffsetsForTimeRequest,
    ReassignPartitionRequest,
    RebalanceRequest,
    Reply,
    RequestArgs,
)


class Secured:
    """A front end whose every request comes from ``who``; ``root`` is a super user."""

    def __init__(self, frontend: Frontend, backend: FakeBackend, conn: Connection) -> None:
        self.frontend, self.backend, self.conn = frontend, backend, conn
        self.who = "root"
        self.now = 0.0

    async def as_(
        self, principal: str, args: RequestArgs, frames: list[bytes] | None = None
    ) -> Reply:
        self.who = principal
        return await self.conn.call(args, frames or [])

    async def grant(self, *entries: str) -> None:
        """Entries as ``"allow alice produce topic orders"`` (``orders*``: prefixed)."""
        await self.as_("root", AclAddRequest([_entry(e).to_wire() for e in entries]))


def _entry(text: str) -> AclEntry:
    permission, principal, operation, rtype, name = text.split()
    pattern = "prefixed" if name.endswith("*") and name != "*" else "literal"
    return AclEntry(
        principal,
        ResourceType(rtype),
        PatternType(pattern),
        name.rstrip("*") or "*",
        AclOperation(operation),
        AclPermission(permission),
    )


@pytest.fixture
async def secured() -> AsyncIterator[Secured]:
    backend = FakeBackend()
    holder: list[Secured] = []
    frontend = Frontend(
        backend,
        "tcp://127.0.0.1:*",
        heartbeat_ms=50,
        principal_of=lambda msg: holder[0].who,
        super_users=["root"],
        clock=lambda: holder[0].now,
    )
    backend.addr = frontend.addr
    task = asyncio.create_task(frontend.run())
    conn = Connection(frontend.addr, timeout_s=5)
    holder.append(Secured(frontend, backend, conn))
    try:
        yield holder[0]
    finally:
        await conn.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await frontend.close()


def _batch(size: int = 10) -> bytes:
    return storage.encode_batch([(None, b"x" * size)])


def _join(group: str, topics: list[str] | None = None) -> GroupHeartbeatRequest:
    return GroupHeartbeatRequest(group, "m1", topics, session_timeout_ms=6000)


async def test_default_deny_names_the_operation_and_resource(secured: Secured) -> None:
    await secured.as_("root", CreateTopicRequest("orders", 1, 1))
    refused: list[tuple[RequestArgs, str, list[bytes] | None]] = [
        (ProduceRequest("orders", 0), "produce topic 'orders'", [_batch()]),
        (FetchRequest("orders", 0, 0, max_wait_ms=0), "consume topic 'orders'", None),
        (SubscribeRequest("orders", 0, 0, 1000), "consume topic 'orders'", None),
        (DescribeTopicRequest("orders"), "describe topic 'orders'", None),
        (CreateTopicRequest("new", 1, 1), "create topic 'new'", None),
        (DeleteTopicRequest("orders"), "delete topic 'orders'", None),
        (InitProducerRequest(), "produce topic '*'", None),
        (_join("g", ["orders"]), "consume group 'g'", None),
        (CommitOffsetsRequest("g", {"orders": [[0, 1]]}), "consume group 'g'", None),
        (FetchOffsetsRequest("g"), "describe group 'g'", None),
        (DescribeGroupRequest("g"), "describe group 'g'", None),
        (AclListRequest(), "describe cluster 'cluster'", None),
        (AclAddRequest([_entry("allow alice admin topic *").to_wire()]), "alter cluster", None),
        (AclRemoveRequest([_entry("allow alice admin topic *").to_wire()]), "alter cluster", None),
        (QuotaSetRequest("alice", 1), "alter cluster 'cluster'", None),
        (QuotaListRequest(), "describe cluster 'cluster'", None),
        (DeleteGroupRequest("g"), "delete group 'g'", None),
        (OffsetsForTimeRequest("orders", 0, 0), "describe topic 'orders'", None),
        (AlterTopicRequest("orders", {"retention_ms": 1000}), "alter topic 'orders'", None),
        (AddPartitionsRequest("orders", 2), "alter topic 'orders'", None),
        (ReassignPartitionRequest("orders", 0, [1]), "alter cluster 'cluster'", None),
        (DecommissionBrokerRequest(1), "alter cluster 'cluster'", None),
        (RebalanceRequest(), "alter cluster 'cluster'", None),
        (RebalanceRequest(dry_run=True), "alter cluster 'cluster'", None),
        (ListReassignmentsRequest(), "describe cluster 'cluster'", None),
    ]
    # Every request type is refused above, or is a listing (filtered) or acts on the
    # client's own stream: a new op cannot slip past the checks unnoticed.
    unchecked = {"metadata", "list_topics", "list_groups", "credit", "unsubscribe"}
    assert {args.op for args, _, _ in refused} | unchecked == set(_REQUEST_TYPES)
    for args, what, frames in refused:
        with pytest.raises(NotAuthorizedError, match=f"'alice' is not authorized to {what}"):
            await secured.as_("alice", args, frames)
    # Listings are filtered, not refused: alice sees nothing.
    assert (await secured.as_("alice", MetadataRequest())).result["topics"] == []
    for name in ("orders", "absent"):  # a named topic is refused, known or not
        with pytest.raises(NotAuthorizedError, match=f"describe topic '{name}'"):
            await secured.as_("alice", MetadataRequest([name]))
    assert (await secured.as_("alice", ListTopicsRequest())).result["topics"] == []
    # The super user does all of it; nothing above changed the state.
    await secured.as_("root", ProduceRequest("orders", 0), [_batch()])
    await secured.as_("root", DeleteTopicRequest("orders"))
    assert secured.frontend.stats.errors["NOT_AUTHORIZED"] == len(refused) + 2


async def test_with_the_acl_each_operation_works(secured: Secured) -> None:
    await secured.as_("root", CreateTopicRequest("orders", 1, 1))
    await secured.as_("root", CreateTopicRequest("payments", 1, 1))
    await secured.grant(
        "allow alice produce topic orders",
        "allow bob consume topic ord*",
        "allow bob consume group readers",
        "allow carol create topic team.*",
        "allow carol delete topic team.*",
    )
    await secured.as_("alice", ProduceRequest("orders", 0), [_batch()])
    assert (await secured.as_("alice", InitProducerRequest())).result["producer_id"] >= 1
    with pytest.raises(NotAuthorizedError):
        await secured.as_("alice", ProduceRequest("payments", 0), [_batch()])
    with pytest.raises(NotAuthorizedError):  # produce is not consume
        await secured.as_("alice", FetchRequest("orders", 0, 0, max_wait_ms=0))
    # alice's produce lets her describe the topic (and see it in the metadata).
    assert (await secured.as_("alice", DescribeTopicRequest("orders"))).result["name"] == "orders"
    topics = (await secured.as_("alice", MetadataRequest())).result["topics"]
    assert [t["name"] for t in topics] == ["orders"]

    reply = await secured.as_("bob", FetchRequest("orders", 0, 0, max_wait_ms=0))
    assert reply.frames
    await secured.as_("bob", _join("readers", ["orders"]))
    with pytest.raises(NotAuthorizedError, match="consume topic 'payments'"):
        await secured.as_("bob", _join("readers", ["orders", "payments"]))
    with pytest.raises(NotAuthorizedError, match="consume group 'others'"):
        await secured.as_("bob", _join("others", ["orders"]))
    assert (await secured.as_("bob", ListGroupsRequest())).result["groups"] == ["readers"]
    await secured.as_("root", _join("others", ["payments"]))
    assert (await secured.as_("bob", ListGroupsRequest())).result["groups"] == ["readers"]

    await secured.as_("carol", CreateTopicRequest("team.x", 1, 1))
    with pytest.raises(NotAuthorizedError):
        await secured.as_("carol", CreateTopicRequest("x", 1, 1))
    await secured.as_("carol", DeleteTopicRequest("team.x"))
    await secured.grant("allow carol create cluster cluster")
    await secured.as_("carol", CreateTopicRequest("x", 1, 1))  # cluster create: any topic


async def test_deny_wins_over_allow(secured: Secured) -> None:
    await secured.as_("root", CreateTopicRequest("orders", 1, 1))
    await secured.grant("allow * produce topic *", "deny alice produce topic ord*")
    await secured.as_("bob", ProduceRequest("orders", 0), [_batch()])
    with pytest.raises(NotAuthorizedError):
        await secured.as_("alice", ProduceRequest("orders", 0), [_batch()])
    await secured.as_("root", AclRemoveRequest([_entry("deny alice produce topic ord*").to_wire()]))
    await secured.as_("alice", ProduceRequest("orders", 0), [_batch()])


async def test_offsets_are_filtered_to_describable_topics(secured: Secured) -> None:
    for name in ("orders", "payments"):
        await secured.as_("root", CreateTopicRequest(name, 1, 1))
    await secured.as_("root", CommitOffsetsRequest("g", {"orders": [[0, 3]], "payments": [[0, 4]]}))
    await secured.grant("allow alice describe group g", "allow alice consume topic orders")
    offsets = (await secured.as_("alice", FetchOffsetsRequest("g"))).result["offsets"]
    assert offsets == {"orders": [[0, 3]]}


async def test_acl_admin_operations(secured: Secured) -> None:
    await secured.grant("allow ops admin cluster cluster", "allow alice produce topic t")
    listed = (await secured.as_("ops", AclListRequest())).result["acls"]
    assert [AclEntry.from_wire(e).describe() for e in listed] == [
        "allow alice produce topic t",
        "allow ops admin cluster cluster",
    ]
    only = await secured.as_("ops", AclListRequest(principal="alice"))
    assert len(only.result["acls"]) == 1
    clusters = await secured.as_("ops", AclListRequest(resource_type="cluster"))
    assert len(clusters.result["acls"]) == 1
    added = await secured.as_("ops", AclAddRequest([_entry("allow bob consume topic t").to_wire()]))
    assert added.result == {"added": 1}
    await secured.as_("ops", QuotaSetRequest("bob", fetch_bytes_per_s=10))
    quotas = (await secured.as_("ops", QuotaListRequest())).result["quotas"]
    assert quotas == [{"principal": "bob", "produce_bytes_per_s": None, "fetch_bytes_per_s": 10}]


async def test_produce_and_fetch_quotas_throttle_with_a_time(secured: Secured) -> None:
    await secured.as_("root", CreateTopicRequest("t", 1, 1))
    await secured.grant("allow * produce topic t", "allow * consume topic t")
    await secured.as_("root", QuotaSetRequest("alice", 1000, 1000))
    await secured.as_("alice", ProduceRequest("t", 0), [_batch(1900)])  # into debt, ~1 s
    with pytest.raises(ThrottledError, match="produce quota of 1000 bytes/s") as info:
        await secured.as_("alice", ProduceRequest("t", 0), [_batch()])
    throttle_ms = info.value.details["throttle_ms"]
    assert 900 <= throttle_ms <= 1100
    await secured.as_("bob", ProduceRequest("t", 0), [_batch(5000)])  # bob has no quota
    await secured.as_("bob", ProduceRequest("t", 0), [_batch(5000)])
    secured.now += throttle_ms / 1000
    await secured.as_("alice", ProduceRequest("t", 0), [_batch()])  # waited: admitted

    reply = await secured.as_("alice", FetchRequest("t", 0, 0, max_wait_ms=0))
    assert sum(len(f) for f in reply.frames) > 1000  # one fetch may overdraw
    with pytest.raises(ThrottledError, match="fetch quota"):
        await secured.as_("alice", FetchRequest("t", 0, 0, max_wait_ms=0))
    await secured.as_("bob", FetchRequest("t", 0, 0, max_wait_ms=0))
    secured.now += 60
    await secured.as_("alice", FetchRequest("t", 0, 0, max_wait_ms=0))


async def test_a_throttled_stream_waits_and_heartbeats(secured: Secured) -> None:
    await secured.as_("root", CreateTopicRequest("t", 1, 1))
    await secured.grant("allow alice consume topic t")
    await secured.as_("root", QuotaSetRequest("alice", fetch_bytes_per_s=100))
    await secured.as_("root", ProduceRequest("t", 0), [_batch(500)])
    reply = await secured.as_("alice", SubscribeRequest("t", 0, 0, 1 << 20))
    pushes = secured.conn.stream_queue(reply.result["stream"])
    first = await asyncio.wait_for(pushes.get(), 5)
    assert first.kind == "data"  # admitted: the bucket was full; now ~4 s in debt
    await secured.as_("root", ProduceRequest("t", 0), [_batch(500)])
    for _ in range(3):  # the virtual clock stands still: only heartbeats come
        push = await asyncio.wait_for(pushes.get(), 5)
        assert push.kind == "heartbeat", push
    secured.now += 10
    while (push := await asyncio.wait_for(pushes.get(), 5)).kind != "data":
        pass
    assert push.result["offset"] == 1


async def test_producer_and_fetch_consumer_wait_out_their_throttle() -> None:
    """The real clients, against a real clock: over quota they are THROTTLED, wait the
    time the broker gives, and every record still arrives; none of it takes less time
    than the quota allows."""
    backend = FakeBackend()
    frontend = Frontend(
        backend,
        "tcp://127.0.0.1:*",
        principal_of=lambda msg: "alice",
        super_users=["alice"],
    )
    backend.addr = frontend.addr
    task = asyncio.create_task(frontend.run())
    try:
        await backend.create_topic(CreateTopicRequest("t", 1, 1))
        rate = 40_000
        await backend.set_quota(QuotaLimits("alice", rate, rate))
        total = 120_000  # a second of burst, then two at the rate
        started = time.monotonic()
        async with Producer(frontend.addr, linger_ms=1, batch_bytes=4096) as producer:
            sends = [producer.send("t", b"v" * 1000, partition=0) for _ in range(total // 1000)]
            await asyncio.gather(*sends)
        produce_s = time.monotonic() - started
        assert 0.8 * (total - rate) / rate <= produce_s < 15  # held, and not stuck
        assert frontend.stats.errors.get("THROTTLED", 0) > 0

        throttled = frontend.stats.errors["THROTTLED"]
        started = time.monotonic()
        async with Consumer(frontend.addr, mode="fetch", fetch_max_bytes=8192) as consumer:
            consumer.assign([("t", 0)])
            seen = 0
            while seen < total // 1000:
                record = await asyncio.wait_for(consumer.getone(), 10)
                assert record.offset == seen
                seen += 1
        fetch_s = time.monotonic() - started
        assert 0.8 * (total - rate) / rate <= fetch_s < 15
        assert frontend.stats.errors["THROTTLED"] > throttled
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await frontend.close()


async def test_removing_the_acl_closes_an_open_stream(secured: Secured) -> None:
    await secured.as_("root", CreateTopicRequest("t", 1, 1))
    await secured.grant("allow alice consume topic t")
    reply = await secured.as_("alice", SubscribeRequest("t", 0, 0, 1 << 20))
    pushes = secured.conn.stream_queue(reply.result["stream"])
    assert (await asyncio.wait_for(pushes.get(), 5)).kind == "heartbeat"  # alive, idle
    await secured.as_("root", AclRemoveRequest([_entry("allow alice consume topic t").to_wire()]))
    while (push := await asyncio.wait_for(pushes.get(), 5)).kind != "closed":
        pass
    assert push.result["err"] == ErrorCode.NOT_AUTHORIZED
    assert push.result["resource"] == "t"


async def test_connections_per_principal_are_limited() -> None:
    backend = FakeBackend()
    frontend = Frontend(
        backend,
        "tcp://127.0.0.1:*",
        principal_of=lambda msg: "alice",
        super_users=["alice"],
        max_connections_per_principal=2,
    )
    task = asyncio.create_task(frontend.run())
    conns = [Connection(frontend.addr, timeout_s=5) for _ in range(3)]
    try:
        await conns[0].call(ListTopicsRequest())
        await conns[1].call(ListTopicsRequest())
        with pytest.raises(ThrottledError, match="max_connections_per_principal"):
            await conns[2].call(ListTopicsRequest())
        await conns[0].call(ListTopicsRequest())  # the first two go on
    finally:
        for conn in conns:
            await conn.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await frontend.close()


async def test_a_producer_without_the_acl_fails_fast_with_not_authorized(
    secured: Secured,
) -> None:
    await secured.as_("root", CreateTopicRequest("orders", 1, 1))
    secured.who = "alice"
    async with Producer(secured.frontend.addr, metadata_wait_ms=30_000) as producer:
        with pytest.raises(NotAuthorizedError, match="describe topic 'orders'"):
            # Well before metadata_wait_ms: the refusal is not retried.
            await asyncio.wait_for(producer.send("orders", b"x"), 10)
