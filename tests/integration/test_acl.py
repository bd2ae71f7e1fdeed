"""ACLs and quotas on real secured brokers (CURVE; principals from the client key
set): default deny and what each ACL opens, deny over allow, survival of a kill -9
of the controller leader and of a full restart, and a produce quota holding one
principal near its rate while another goes unthrottled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support import wait_until_async
from tests.support.security import ClusterKeys, SecureBroker, secure_brokers
from zstream.clients import (
    AclEntry,
    AclOperation,
    AclPermission,
    Admin,
    ClusterClient,
    Connection,
    Consumer,
    FetchRequest,
    GroupHeartbeatRequest,
    NotAuthorizedError,
    PatternType,
    Producer,
    ProduceRequest,
    QuotaLimits,
    ResourceType,
    TopicPartition,
    ZStreamError,
)
from zstream.storage import encode_batch

pytestmark = pytest.mark.integration

T = TypeVar("T")
PRINCIPALS = ("admin", "alice", "bob")


def acl(text: str) -> AclEntry:
    """``"allow alice produce topic orders"``; a name ending in ``*`` is a prefix."""
    permission, principal, operation, rtype, name = text.split()
    prefixed = name.endswith("*") and name != "*"
    return AclEntry(
        principal,
        ResourceType(rtype),
        PatternType.PREFIXED if prefixed else PatternType.LITERAL,
        name.rstrip("*") if prefixed else name,
        AclOperation(operation),
        AclPermission(permission),
    )


async def eventually(call: Callable[[], Awaitable[T]], timeout_s: float = 20) -> T:
    """``call()`` once every broker applied an ACL change: NOT_AUTHORIZED (a broker
    that has not applied it yet) is retried until the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except NotAuthorizedError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> ClusterKeys:
    return ClusterKeys.make(tmp_path_factory.mktemp("keys"), (1, 2, 3), PRINCIPALS)


@pytest.fixture(scope="module")
def secure_three(
    tmp_path_factory: pytest.TempPathFactory, keys: ClusterKeys
) -> Iterator[list[SecureBroker]]:
    with secure_brokers(
        tmp_path_factory.mktemp("acl"), keys, 3, extra=["--log-level=INFO"]
    ) as brokers:
        yield brokers


class As:
    """Clients of one principal on the secured cluster."""

    def __init__(self, keys: ClusterKeys, brokers: list[SecureBroker], name: str) -> None:
        self.credentials = keys.credentials(name)
        self.bootstrap = ",".join(b.bootstrap for b in brokers)

    def admin(self) -> Admin:
        return Admin(self.bootstrap, timeout_s=5, credentials=self.credentials)

    def cluster(self) -> ClusterClient:
        return ClusterClient(self.bootstrap, timeout_s=5, credentials=self.credentials)

    def producer(self, linger_ms: int = 5, batch_bytes: int = 256 * 1024) -> Producer:
        return Producer(
            self.bootstrap,
            credentials=self.credentials,
            linger_ms=linger_ms,
            batch_bytes=batch_bytes,
        )

    def connection(self, addr: str) -> Connection:
        return Connection(addr, timeout_s=5, credentials=self.credentials)


async def _leader_addr(admin: Admin, topic: str) -> str:
    """Where partition 0 of ``topic`` is led, once it has a leader."""
    found: list[str] = []

    async def elected() -> bool:
        meta = await admin.describe_cluster()
        (doc,) = [t for t in meta["topics"] if t["name"] == topic]
        leader = doc["partitions"][0]["leader"]
        found[:] = [b["client_addr"] for b in meta["brokers"] if b["id"] == leader]
        return bool(found)

    await wait_until_async(elected, 20, f"a leader of {topic}/0")
    return found[0]


async def test_each_operation_needs_its_acl_and_deny_wins(
    secure_three: list[SecureBroker], keys: ClusterKeys
) -> None:
    root, alice, bob = (As(keys, secure_three, n) for n in PRINCIPALS)
    async with root.admin() as admin:
        await admin.create_topic("orders", 1, 3)
        leader = await _leader_addr(admin, "orders")

    # Without ACLs alice is refused everything, each refusal naming what it was.
    batch = encode_batch([(None, b"not allowed")])
    async with alice.connection(leader) as conn:
        with pytest.raises(NotAuthorizedError, match="'alice' is not authorized to produce"):
            await conn.call(ProduceRequest("orders", 0), [batch])
        with pytest.raises(NotAuthorizedError, match="to consume topic 'orders'"):
            await conn.call(FetchRequest("orders", 0, 0, max_wait_ms=0))
    async with alice.producer() as producer:
        with pytest.raises(NotAuthorizedError, match="describe topic 'orders'"):
            await producer.send("orders", b"x")
    async with alice.cluster() as cluster:
        join = GroupHeartbeatRequest("billing", "m1", ["orders"], session_timeout_ms=6000)
        with pytest.raises(NotAuthorizedError, match="to consume group 'billing'"):
            await cluster.call_controller(join)
    async with alice.admin() as admin:
        assert await admin.list_topics() == []  # filtered, not refused
        with pytest.raises(NotAuthorizedError, match="to delete topic 'orders'"):
            await admin.delete_topic("orders")
        with pytest.raises(NotAuthorizedError, match="to alter cluster"):
            await admin.add_acls([acl("allow alice admin topic *")])

    # With the ACLs it all works: produce, consume in a group, delete.
    async with root.admin() as admin:
        granted = [
            acl("allow alice produce topic ord*"),
            acl("allow alice consume topic orders"),
            acl("allow alice consume group billing"),
            acl("allow alice delete topic orders"),
        ]
        assert await admin.add_acls(granted) == 4

    async def produce() -> None:
        async with alice.producer() as producer:
            await asyncio.gather(*(producer.send("orders", f"r{i}".encode()) for i in range(10)))

    await eventually(produce)

    async def consume() -> list[bytes]:
        async with Consumer(
            alice.bootstrap, "billing", credentials=alice.credentials, session_timeout_ms=6000
        ) as consumer:
            await consumer.subscribe(["orders"])
            return [(await asyncio.wait_for(consumer.getone(), 20)).value for _ in range(10)]

    assert await eventually(consume) == [f"r{i}".encode() for i in range(10)]
    async with alice.admin() as admin:
        assert await admin.list_topics() == ["orders"]
        await eventually(lambda: admin.delete_topic("orders"))

    # A deny wins over an allow: every principal may produce to payments but bob.
    async with root.admin() as admin:
        await admin.create_topic("payments", 1, 3)
        await admin.add_acls(
            [acl("allow * produce topic payments"), acl("deny bob produce topic payments")]
        )

    async def send_as(who: As) -> None:
        async with who.producer() as producer:
            await producer.send("payments", b"p")

    await eventually(lambda: send_as(alice))
    with pytest.raises(NotAuthorizedError, match="'bob' is not authorized to produce"):
        await send_as(bob)
    async with root.admin() as admin:
        await admin.remove_acls([acl("deny bob produce topic payments")])
    await eventually(lambda: send_as(bob))


async def test_a_consumer_refused_its_topic_raises_not_authorized_and_recovers(
    secure_three: list[SecureBroker], keys: ClusterKeys
) -> None:
    """The broker's NOT_AUTHORIZED reaches the application through getone and
    getmany (not a silent retry forever); once the ACL is granted, the same consumer
    reads on."""
    root, alice = As(keys, secure_three, "admin"), As(keys, secure_three, "alice")
    async with root.admin() as admin:
        await admin.create_topic("audit", 1, 3)
        await admin.add_acls([acl("allow alice describe topic audit")])
    async with root.producer() as producer:
        await producer.send("audit", b"a0")
    tp = TopicPartition("audit", 0)
    async with Consumer(
        alice.bootstrap, credentials=alice.credentials, auto_offset_reset="earliest"
    ) as consumer:
        consumer.assign([tp])
        with pytest.raises(NotAuthorizedError, match="to consume topic 'audit'"):
            await asyncio.wait_for(consumer.getone(), 20)
        with pytest.raises(NotAuthorizedError, match="to consume topic 'audit'"):
            await _getmany_until_refused(consumer)
        async with root.admin() as admin:
            await admin.add_acls([acl("allow alice consume topic audit")])
        record = await eventually(lambda: asyncio.wait_for(consumer.getone(), 20), 30)
        assert (record.offset, record.value) == (0, b"a0")
    # In a group alice may not join: the coordinator's refusal reaches getone too.
    async with Consumer(
        alice.bootstrap, "auditors", credentials=alice.credentials, session_timeout_ms=6000
    ) as member:
        await member.subscribe(["audit"])
        with pytest.raises(NotAuthorizedError, match="to consume group 'auditors'"):
            await asyncio.wait_for(member.getone(), 20)


async def _getmany_until_refused(consumer: Consumer) -> None:
    """getmany until it raises (the reader's next refusal), for at most 20 s."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        await consumer.getmany(timeout_ms=500)


async def _state(who: As) -> tuple[list[AclEntry], list[QuotaLimits]] | None:
    """The controller's ACLs and quotas, or None while no controller answers."""
    try:
        async with who.admin() as admin:
            return await admin.list_acls(), await admin.list_quotas()
    except ZStreamError:
        return None


async def test_acls_survive_a_controller_failover_and_a_full_restart(
    tmp_path: Path, keys: ClusterKeys
) -> None:
    entries = [acl("allow alice produce topic t*"), acl("deny * admin group *")]
    quota = QuotaLimits("alice", produce_bytes_per_s=1 << 20)
    with secure_brokers(tmp_path, keys, 3, extra=["--log-level=INFO"]) as brokers:
        root, alice = As(keys, brokers, "admin"), As(keys, brokers, "alice")
        async with root.admin() as admin:
            await admin.create_topic("t1", 1, 3)
            assert await admin.add_acls(entries) == 2
            await admin.set_quota("alice", produce_bytes_per_s=quota.produce_bytes_per_s)
            controller = (await admin.describe_cluster())["controller"]
        expected = (sorted(entries), [quota])

        leader = next(b for b in brokers if b.broker_id == controller)
        leader.kill()
        survivors = [b for b in brokers if b is not leader]
        root_left = As(keys, survivors, "admin")

        async def new_controller_has_them() -> bool:
            return await _state(root_left) == expected

        await wait_until_async(new_controller_has_them, 30, "the new controller's ACLs")
        async with root_left.admin() as admin:
            assert (await admin.describe_cluster())["controller"] != controller
            # A change under the new leader is kept as well.
            assert await admin.remove_acls(entries[1:]) == 1
        expected = (sorted(entries[:1]), [quota])

        for b in brokers:
            b.stop()
        for b in brokers:
            b.process.start()
        for b in brokers:
            b.wait_ready()

        async def restarted_has_them() -> bool:
            return await _state(root) == expected

        await wait_until_async(restarted_has_them, 30, "the ACLs after a full restart")

        # And they are enforced: alice may produce to t1 (not to anything else).
        async def produce(topic: str) -> None:
            async with alice.producer() as producer:
                await producer.send(topic, b"after the restart")

        await eventually(lambda: produce("t1"))
        async with root.admin() as admin:
            await admin.create_topic("u1", 1, 3)
        with pytest.raises(NotAuthorizedError):
            await produce("u1")


async def _produce_for(who: As, topic: str, seconds: float, size: int) -> list[tuple[float, int]]:
    """Produce ``size``-byte records as fast as the producer takes them for
    ``seconds``; (acknowledgement time, bytes) of each record."""
    acked: list[tuple[float, int]] = []
    value = b"q" * size
    async with who.producer(linger_ms=2, batch_bytes=32 * 1024) as producer:
        pending: list[asyncio.Future[object]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            future = asyncio.ensure_future(producer.send(topic, value))
            future.add_done_callback(lambda f: acked.append((time.monotonic(), size)))
            pending.append(future)
            if len(pending) >= 256:  # a bounded backlog: 256 KiB queued at most
                await pending.pop(0)
        await asyncio.gather(*pending)
    return acked


def _rate(acked: list[tuple[float, int]], start: float, end: float) -> float:
    return sum(n for t, n in acked if start <= t < end) / (end - start)


async def test_a_produce_quota_holds_its_principal_near_the_rate(
    secure_three: list[SecureBroker], keys: ClusterKeys
) -> None:
    """A functional check with a wide tolerance, not a benchmark: over four seconds
    after the first (the bucket starts with a second of burst), alice's acknowledged
    bytes are within 20 % of her quota, while bob, unthrottled at the same time,
    goes much faster."""
    root, alice, bob = (As(keys, secure_three, n) for n in PRINCIPALS)
    rate = 256 * 1024
    async with root.admin() as admin:
        await admin.create_topic("quota", 1, 3)
        await admin.add_acls([acl("allow * produce topic quota")])
        await admin.set_quota("alice", produce_bytes_per_s=rate)
    await eventually(lambda: _produce_for(alice, "quota", 0.1, 100))  # the ACL is everywhere
    started = time.monotonic()
    alice_acked, bob_acked = await asyncio.gather(
        _produce_for(alice, "quota", 6.0, 1024), _produce_for(bob, "quota", 6.0, 1024)
    )
    window = (started + 1.5, started + 5.5)
    alice_rate, bob_rate = _rate(alice_acked, *window), _rate(bob_acked, *window)
    print(f"quota={rate} B/s alice={alice_rate:.0f} B/s bob={bob_rate:.0f} B/s")
    assert 0.8 * rate <= alice_rate <= 1.2 * rate, (alice_rate, bob_rate)
    assert bob_rate > 2 * rate, (alice_rate, bob_rate)
