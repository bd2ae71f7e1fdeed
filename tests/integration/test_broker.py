"""The broker as a real process, with a real etcd: produce and consume, crashes
and restarts, an etcd outage, and malformed frames.

This build runs single-broker clusters (the replicated controller and partition
groups wait for replication.RaftHost), so each test runs one broker; the
replicated variants of these tests (replication factor 3, leader kill) come with
the host.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aetcd
import pytest
import zmq
from hypothesis import HealthCheck, given, settings

import storage
from clients import (
    Acks,
    Admin,
    ClusterClient,
    ConnectionLostError,
    ErrorCode,
    FetchRequest,
    MetadataRequest,
    ProduceRequest,
    RequestTimedOutError,
    UnavailableError,
    UnknownTopicError,
)
from clients._protocol import decode_reply, encode_request
from tests.support import BrokerProcess, EtcdServer, wait_until_async
from tests.support.malformed import malformed_messages

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path, etcd: EtcdServer) -> Iterator[BrokerProcess]:
    node = BrokerProcess(tmp_path, 1, etcd=etcd.endpoint)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
async def cluster(broker: BrokerProcess) -> AsyncIterator[ClusterClient]:
    client = ClusterClient(broker.bootstrap, timeout_s=2, retry_for_s=20)
    try:
        yield client
    finally:
        await client.close()


def _batch(*values: bytes) -> bytes:
    return storage.encode_batch([(None, v) for v in values])


async def _produce(cluster: ClusterClient, topic: str, partition: int, *values: bytes) -> int:
    request = ProduceRequest(topic, partition, Acks.ALL, timeout_ms=5000)
    reply = await cluster.call_leader(topic, partition, request, [_batch(*values)])
    base: int = reply.result["base_offset"]
    return base


async def _consume_all(cluster: ClusterClient, topic: str, partition: int) -> list[storage.Record]:
    records: list[storage.Record] = []
    offset = 0
    while True:
        request = FetchRequest(topic, partition, offset, max_bytes=64 * 1024, max_wait_ms=0)
        reply = await cluster.call_leader(topic, partition, request)
        for frame in reply.frames:
            records.extend(r for r in storage.decode_records(frame) if r.offset >= offset)
        if records:
            offset = records[-1].offset + 1
        if offset >= reply.result["hwm"]:
            return records


async def test_three_partitions_round_trip_in_order(broker: BrokerProcess) -> None:
    async with Admin(broker.bootstrap) as admin:
        doc = await admin.create_topic("orders", partitions=3, replication_factor=1)
        assert [p["replicas"] for p in doc["partitions"]] == [[1], [1], [1]]
        assert await admin.list_topics() == ["orders"]
    async with ClusterClient(broker.bootstrap, timeout_s=5) as cluster:
        await cluster.refresh()
        for i in range(20):
            for p in range(3):
                await _produce(cluster, "orders", p, f"{p}-{i}a".encode(), f"{p}-{i}b".encode())
        for p in range(3):
            records = await _consume_all(cluster, "orders", p)
            assert [r.offset for r in records] == list(range(40))
            expected = [f"{p}-{i}{s}".encode() for i in range(20) for s in "ab"]
            assert [r.value for r in records] == expected


async def test_crash_while_producing_loses_nothing_acknowledged(
    broker: BrokerProcess, cluster: ClusterClient
) -> None:
    async with Admin(broker.bootstrap) as admin:
        await admin.create_topic("events", partitions=1)
    acked: list[bytes] = []
    acked_before_crash = 0

    async def producer() -> None:
        for i in range(150):
            value = f"r{i}".encode()
            while True:  # retry until acknowledged: at least once
                try:
                    await _produce(cluster, "events", 0, value)
                except (RequestTimedOutError, ConnectionLostError, UnavailableError):
                    await asyncio.sleep(0.05)
                    continue
                acked.append(value)
                break

    task = asyncio.create_task(producer())
    try:
        await wait_until_async(_holds(lambda: len(acked) >= 50), 30, "50 acknowledged records")
        broker.kill()  # SIGKILL: no goodbye, no flush beyond what was fsynced
        acked_before_crash = len(acked)
        await asyncio.to_thread(broker.start)
        await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(acked) == 150
    assert acked_before_crash < 150  # production resumed after the restart
    values = [r.value for r in await _consume_all(cluster, "events", 0)]
    # Everything acknowledged is there, in order; a retried batch may appear twice.
    first_seen = list(dict.fromkeys(values))
    assert first_seen == acked


async def test_restart_with_same_id_rejoins_with_its_data(
    broker: BrokerProcess, cluster: ClusterClient
) -> None:
    async with Admin(broker.bootstrap) as admin:
        await admin.create_topic("kept", partitions=2)
    await _produce(cluster, "kept", 1, b"before")
    assert broker.stop() == 0  # SIGTERM: a clean, graceful exit
    broker.start()
    await _produce(cluster, "kept", 1, b"after")
    assert [r.value for r in await _consume_all(cluster, "kept", 1)] == [b"before", b"after"]
    meta = (await cluster.call_any(MetadataRequest())).result
    assert [(b["id"], b["alive"]) for b in meta["brokers"]] == [(1, True)]
    async with Admin(broker.bootstrap) as admin:
        await admin.delete_topic("kept")
        with pytest.raises(UnknownTopicError):
            await admin.describe_topic("kept")


async def _registered(etcd: EtcdServer, key: bytes) -> bool:
    host, port = etcd.endpoint.split(":")
    try:
        async with aetcd.Client(host, int(port), timeout=2) as client:
            return await client.get(key) is not None
    except (aetcd.exceptions.ClientError, OSError):
        return False


async def test_etcd_outage_service_continues_and_registration_recovers(
    broker: BrokerProcess, cluster: ClusterClient, etcd: EtcdServer
) -> None:
    key = b"/zstream/zstream/brokers/1"
    await wait_until_async(lambda: _registered(etcd, key), 20, "broker 1 in etcd")
    async with Admin(broker.bootstrap) as admin:
        await admin.create_topic("survives", partitions=1)
    etcd.stop()
    await _produce(cluster, "survives", 0, b"during outage")
    etcd.start()
    await wait_until_async(lambda: _registered(etcd, key), 30, "broker 1 registered again")
    await _produce(cluster, "survives", 0, b"after outage")
    values = [r.value for r in await _consume_all(cluster, "survives", 0)]
    assert values == [b"during outage", b"after outage"]


def _holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


@pytest.fixture(scope="module")
def lone_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    node = BrokerProcess(
        tmp_path_factory.mktemp("fuzz"), 1, extra=["--log-level=WARNING", "--no-fsync"]
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def raw_client(lone_broker: BrokerProcess) -> Iterator[zmq.Socket[bytes]]:
    async def create() -> None:
        async with Admin(lone_broker.bootstrap) as admin:
            await admin.create_topic("fuzz", partitions=1)

    asyncio.run(create())
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(lone_broker.addr)
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
    raw_client.send_multipart(encode_request(probe, ProduceRequest("fuzz", 0), [_batch(b"valid")]))
    while True:
        reply = decode_reply(raw_client.recv_multipart())
        if reply.corr_id == probe:
            assert reply.error == ErrorCode.NONE, reply.message
            return
        assert reply.error not in (ErrorCode.NONE, ErrorCode.UNKNOWN_SERVER_ERROR), reply


def test_metrics_endpoint_serves_prometheus_text(lone_broker: BrokerProcess) -> None:
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
