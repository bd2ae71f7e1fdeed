"""Brokers as real processes with a real etcd: a three-broker cluster with
replication factor 3, a leader killed mid-produce, an etcd outage, a broker
restarted with the same id, malformed frames, metrics."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aetcd
import pytest
import zmq
from hypothesis import HealthCheck, given, settings

from tests.support import EtcdServer, wait_until_async
from tests.support.malformed import malformed_messages
from tests.support.security import ClusterKeys, SecureBroker, curve_dealer
from zstream import storage
from zstream.clients import (
    Acks,
    Admin,
    ClusterClient,
    ConnectionLostError,
    ErrorCode,
    FetchRequest,
    MetadataRequest,
    NotLeaderError,
    ProduceRequest,
    RequestTimedOutError,
    SubscribeRequest,
    UnavailableError,
    UnknownTopicError,
    UnsubscribeRequest,
)
from zstream.clients._protocol import decode_reply, encode_request
from zstream.testing import Broker, Cluster, cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def three(tmp_path: Path, etcd: EtcdServer) -> Iterator[Cluster]:
    with cluster(3, path=tmp_path, etcd=etcd.endpoint) as brokers:
        yield brokers


@pytest.fixture
async def client(three: Cluster) -> AsyncIterator[ClusterClient]:
    cluster = ClusterClient(three.bootstrap, timeout_s=2, retry_for_s=30)
    try:
        yield cluster
    finally:
        await cluster.close()


def _batch(*values: bytes) -> bytes:
    return storage.encode_batch([(None, v) for v in values])


async def _produce(client: ClusterClient, topic: str, partition: int, *values: bytes) -> int:
    request = ProduceRequest(topic, partition, Acks.ALL, timeout_ms=5000)
    reply = await client.call_leader(topic, partition, request, [_batch(*values)])
    base: int = reply.result["base_offset"]
    return base


async def _consume_all(client: ClusterClient, topic: str, partition: int) -> list[storage.Record]:
    records: list[storage.Record] = []
    offset = 0
    while True:
        request = FetchRequest(topic, partition, offset, max_bytes=64 * 1024, max_wait_ms=0)
        reply = await client.call_leader(topic, partition, request)
        for frame in reply.frames:
            records.extend(r for r in storage.decode_records(frame) if r.offset >= offset)
        if records:
            offset = records[-1].offset + 1
        if offset >= reply.result["hwm"]:
            return records


async def _create(bootstrap: str, name: str, partitions: int, rf: int) -> dict[str, object]:
    async with Admin(bootstrap) as admin:
        return await admin.create_topic(name, partitions=partitions, replication_factor=rf)


def _holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


async def _leader_of(client: ClusterClient, topic: str, partition: int) -> int:
    """Ask until some broker reports a leader for the partition."""
    leader = 0

    async def known() -> bool:
        nonlocal leader
        try:
            meta = await client.refresh([topic])
        except (ConnectionLostError, RequestTimedOutError):
            return False
        reported = client.topic(topic)["partitions"][partition]["leader"]
        alive = {b["id"] for b in meta["brokers"] if b["alive"]}
        leader = reported if reported in alive else 0
        return leader > 0

    await wait_until_async(known, 30, f"a leader for {topic}/{partition}")
    return leader


async def test_three_partitions_replicated_three_ways_round_trip_in_order(
    three: Cluster, client: ClusterClient
) -> None:
    doc = await _create(three.bootstrap, "orders", 3, 3)
    parts = doc["partitions"]
    assert isinstance(parts, list)
    assert sorted(p["replicas"][0] for p in parts) == [1, 2, 3]  # leaders spread evenly
    assert all(sorted(p["replicas"]) == [1, 2, 3] for p in parts)
    await client.refresh()
    for i in range(20):
        for p in range(3):
            await _produce(client, "orders", p, f"{p}-{i}a".encode(), f"{p}-{i}b".encode())
    for p in range(3):
        records = await _consume_all(client, "orders", p)
        assert [r.offset for r in records] == list(range(40))
        assert [r.value for r in records] == [
            f"{p}-{i}{s}".encode() for i in range(20) for s in "ab"
        ]


async def test_leader_killed_while_producing_loses_nothing_acknowledged(
    three: Cluster, client: ClusterClient
) -> None:
    await _create(three.bootstrap, "events", 1, 3)
    first_leader = await _leader_of(client, "events", 0)
    acked: list[bytes] = []

    async def producer() -> None:
        for i in range(200):
            value = f"r{i}".encode()
            while True:  # retry until acknowledged: at least once
                try:
                    await _produce(client, "events", 0, value)
                except (
                    RequestTimedOutError,
                    ConnectionLostError,
                    UnavailableError,
                    NotLeaderError,
                ):
                    continue
                acked.append(value)
                break

    task = asyncio.create_task(producer())
    try:
        await wait_until_async(_holds(lambda: len(acked) >= 60), 30, "60 acknowledged records")
        three.kill(first_leader)  # SIGKILL the partition's leader
        acked_at_kill = len(acked)
        await asyncio.wait_for(task, 90)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(acked) == 200
    assert acked_at_kill < 200
    new_leader = await _leader_of(client, "events", 0)
    assert new_leader != first_leader  # production resumed on another broker
    values = [r.value for r in await _consume_all(client, "events", 0)]
    # Everything acknowledged is there, in order; a retried batch may appear twice.
    assert list(dict.fromkeys(values)) == acked


async def test_broker_restarted_with_same_id_rejoins_and_catches_up(
    three: Cluster, client: ClusterClient
) -> None:
    await _create(three.bootstrap, "kept", 1, 3)
    await _produce(client, "kept", 0, b"before")
    leader = await _leader_of(client, "kept", 0)
    # Stop the partition's leader gracefully: it hands leadership to another replica
    # before it exits, and snapshots the controller state.
    follower = three.broker(leader)
    assert follower.stop() == 0  # SIGTERM
    assert (follower.data_dir / "controller-state").exists()
    assert await _leader_of(client, "kept", 0) != leader
    for i in range(30):
        await _produce(client, "kept", 0, f"while away {i}".encode())
    follower.start()
    hwm = 31

    async def caught_up() -> bool:
        conn = client.connection(follower.client_addr)
        try:
            meta = (await conn.call(MetadataRequest(["kept"]), timeout_s=2)).result
        except (ConnectionLostError, RequestTimedOutError):
            return False
        part = meta["topics"][0]["partitions"][0]
        alive = {b["id"]: b["alive"] for b in meta["brokers"]}
        return part["local_end"] == hwm and alive.get(follower.broker_id) is True

    await wait_until_async(caught_up, 30, f"broker {follower.broker_id} to catch up")
    values = [r.value for r in await _consume_all(client, "kept", 0)]
    assert values[0] == b"before"
    assert len(values) == hwm


async def _registered(etcd: EtcdServer, key: bytes) -> bool:
    host, port = etcd.endpoint.split(":")
    try:
        async with aetcd.Client(host, int(port), timeout=2) as client:
            return await client.get(key) is not None
    except (aetcd.exceptions.ClientError, OSError):
        return False


async def test_etcd_outage_service_continues_and_registration_recovers(
    three: Cluster, client: ClusterClient, etcd: EtcdServer
) -> None:
    keys = [f"/zstream/zstream/brokers/{i}".encode() for i in (1, 2, 3)]
    for key in keys:
        await wait_until_async(lambda k=key: _registered(etcd, k), 20, f"{key!r} in etcd")
    await _create(three.bootstrap, "survives", 2, 3)
    etcd.stop()
    await _produce(client, "survives", 0, b"during outage")
    await _produce(client, "survives", 1, b"during outage")
    meta = await client.refresh()
    assert all(b["alive"] for b in meta["brokers"])  # the membership last known
    etcd.start()
    for key in keys:
        await wait_until_async(lambda k=key: _registered(etcd, k), 30, f"{key!r} again")
    await _produce(client, "survives", 0, b"after outage")
    values = [r.value for r in await _consume_all(client, "survives", 0)]
    assert values == [b"during outage", b"after outage"]
    async with Admin(three.bootstrap) as admin:
        await admin.delete_topic("survives")
        with pytest.raises(UnknownTopicError):
            await admin.describe_topic("survives")


@pytest.fixture(scope="module")
def lone_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One embedded broker (no etcd, no peers): the single-node default."""
    node = Broker(
        tmp_path_factory.mktemp("fuzz"), 1, extra_args=["--no-fsync"], log_level="WARNING"
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def secure_lone_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """The same, with CURVE on its sockets."""
    keys = ClusterKeys.make(tmp_path_factory.mktemp("fuzz-keys"), (1,))
    node = SecureBroker(
        tmp_path_factory.mktemp("fuzz-secure"), 1, keys, ["--log-level=WARNING", "--no-fsync"]
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module", params=["plain", "curve"])
def raw_client(request: pytest.FixtureRequest) -> Iterator[zmq.Socket[bytes]]:
    """A raw DEALER on a lone broker, plain or (as a known client key) over CURVE."""
    secure = request.param == "curve"
    broker: Broker | SecureBroker = request.getfixturevalue(
        "secure_lone_broker" if secure else "lone_broker"
    )
    creds = broker.credentials if isinstance(broker, SecureBroker) else None

    async def create() -> None:
        async with Admin(broker.bootstrap, credentials=creds) as admin:
            await admin.create_topic("fuzz", partitions=1, replication_factor=1)

    asyncio.run(create())
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pair = (creds.public_key, creds.secret_key) if creds is not None else None
    server_key = creds.server_key if creds is not None else None
    addr = broker.addr if isinstance(broker, SecureBroker) else broker.client_addr
    sock = curve_dealer(ctx, addr, server_key=server_key, pair=pair)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        yield sock
    finally:
        sock.close()
        ctx.term()


_probe = iter(range(10**6, 10**7))
_MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # the broker's default


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(malformed_messages("fuzz", _MAX_MESSAGE_BYTES + 1))
def test_malformed_frames_never_stop_a_real_broker(
    raw_client: zmq.Socket[bytes], frames: list[bytes]
) -> None:
    raw_client.send_multipart(frames)
    probe = next(_probe)
    valid = encode_request(probe, ProduceRequest("fuzz", 0), [_batch(b"valid")])
    while True:
        raw_client.send_multipart(valid)
        reply = decode_reply(raw_client.recv_multipart())
        while reply.corr_id != probe:
            assert reply.error not in (ErrorCode.NONE, ErrorCode.UNKNOWN_SERVER_ERROR), reply
            reply = decode_reply(raw_client.recv_multipart())
        if reply.error != ErrorCode.NOT_LEADER:  # only while the first election runs
            assert reply.error == ErrorCode.NONE, reply.message
            return


def test_metrics_endpoint_serves_prometheus_text(lone_broker: Broker) -> None:
    url = f"http://127.0.0.1:{lone_broker.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
    for name in (
        "zstream_requests_total",
        "zstream_request_latency_seconds",
        "zstream_raft_commit_latency_seconds",
        "zstream_bytes_in_total",
        "zstream_leader_partitions",
        "zstream_under_replicated_partitions",
    ):
        assert name in body


async def test_static_peers_cluster_without_etcd(tmp_path: Path) -> None:
    with cluster(3, path=tmp_path) as brokers:
        bootstrap = brokers.bootstrap
        await _create(bootstrap, "static", 1, 3)
        async with ClusterClient(bootstrap, timeout_s=2, retry_for_s=30) as client:
            await client.refresh()
            await _produce(client, "static", 0, b"no etcd needed")
            values = [r.value for r in await _consume_all(client, "static", 0)]
            assert values == [b"no etcd needed"]


async def test_push_stream_on_a_real_broker(lone_broker: Broker) -> None:
    await _create(lone_broker.bootstrap, "pushed", 1, 1)
    async with ClusterClient(lone_broker.bootstrap, timeout_s=5, retry_for_s=20) as client:
        await client.refresh()
        await _produce(client, "pushed", 0, b"first")
        conn = client.connection(lone_broker.client_addr)
        reply = await conn.call(SubscribeRequest("pushed", 0, 0, credit_bytes=1 << 20))
        queue = conn.stream_queue(reply.result["stream"])
        seen: list[bytes] = []
        await _produce(client, "pushed", 0, b"second")
        while len(seen) < 2:
            push = await asyncio.wait_for(queue.get(), 10)
            if push.kind == "data":
                seen.extend(r.value for f in push.frames for r in storage.decode_records(f))
        assert seen == [b"first", b"second"]
        await conn.call(UnsubscribeRequest(reply.result["stream"]))


async def test_fetch_of_batches_larger_than_the_byte_budget(lone_broker: Broker) -> None:
    await _create(lone_broker.bootstrap, "big", 1, 1)
    async with ClusterClient(lone_broker.bootstrap, timeout_s=5, retry_for_s=20) as client:
        await client.refresh()
        for i in range(3):
            await _produce(client, "big", 0, *[f"{i}-{j}".encode() * 20 for j in range(1000)])
        for max_bytes in (1024, 10 * 1024 * 1024):
            offset, seen = 0, 0
            while offset < 3000:
                request = FetchRequest("big", 0, offset, max_bytes=max_bytes, max_wait_ms=0)
                reply = await client.call_leader("big", 0, request)
                assert reply.frames  # at least one batch, even past the budget
                records = [r for f in reply.frames for r in storage.decode_records(f)]
                seen += len(records)
                offset = records[-1].offset + 1
            assert seen == 3000
