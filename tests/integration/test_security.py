"""CURVE on real brokers: who gets an answer on the client port, who gets through
the peer port, a stolen peer key posing as another broker, the loopback-only
default, and produce / group consume / leader kill -9 with security on."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from tests.support import free_port, wait_until
from tests.support.security import ClusterKeys, SecureBroker, curve_dealer, secure_brokers
from zstream import Admin, Consumer, Producer
from zstream.clients import MetadataRequest
from zstream.clients._protocol import decode_reply, encode_request
from zstream.replication import encode_peer_frames

pytestmark = pytest.mark.integration


def _public(keys: ClusterKeys, name: str) -> bytes:
    return keys.pair(name)[0]


def _answer(sock: zmq.Socket[bytes], timeout_ms: int) -> bool:
    """Send one metadata request; True if any reply comes back in time."""
    try:
        sock.send_multipart(encode_request(7, MetadataRequest()), zmq.NOBLOCK)
    except zmq.Again:  # no connection to queue it on: refused at the handshake
        return False
    if not sock.poll(timeout_ms):
        return False
    return decode_reply(sock.recv_multipart()).corr_id == 7


def _handshake_events(sock: zmq.Socket[bytes], addr: str, timeout_s: float) -> set[int]:
    """Connect ``sock`` to ``addr`` and monitor it until its first handshake ends,
    one way or the other (the monitor is attached first, so nothing is missed)."""
    monitor = sock.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    )
    seen: set[int] = set()
    sock.connect(addr)
    deadline = time.monotonic() + timeout_s
    try:
        while not seen and time.monotonic() < deadline:
            if monitor.poll(100):
                seen.add(int(recv_monitor_message(monitor)["event"]))
    finally:
        sock.disable_monitor()
        monitor.close()
    return seen


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> ClusterKeys:
    return ClusterKeys.make(tmp_path_factory.mktemp("keys"), (1, 2, 3))


@pytest.fixture(scope="module")
def secure_three(
    tmp_path_factory: pytest.TempPathFactory, keys: ClusterKeys
) -> Iterator[list[SecureBroker]]:
    with secure_brokers(
        tmp_path_factory.mktemp("secure"), keys, 3, extra=["--no-fsync"]
    ) as brokers:
        yield brokers


def _bootstrap(brokers: list[SecureBroker]) -> str:
    return ",".join(b.bootstrap for b in brokers)


# -- the client port ---------------------------------------------------------------------


@pytest.mark.parametrize("who", ["no CURVE", "unknown key"])
async def test_client_port_answers_only_known_keys(
    secure_three: list[SecureBroker], keys: ClusterKeys, who: str
) -> None:
    broker = secure_three[0]
    server = _public(keys, "server")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        pair = None if who == "no CURVE" else keys.pair("stranger")
        intruder = curve_dealer(ctx, None, server_key=server, pair=pair)
        events = _handshake_events(intruder, broker.addr, 10)
        assert events, "the handshake neither failed nor succeeded"
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in events, events
        assert not _answer(intruder, 1000)
        # The broker goes on serving a known key, on the raw socket and from a client.
        alice = curve_dealer(ctx, broker.addr, server_key=server, pair=keys.pair("alice"))
        wait_until(lambda: _answer(alice, 500), 20, "an answer to alice")
        async with Admin(
            _bootstrap(secure_three),
            credentials=keys.secret_file("admin"),
            server_key=keys.server_key,
        ) as admin:
            assert isinstance(await admin.list_topics(), list)
    finally:
        ctx.destroy(linger=0)
    if who == "unknown key":
        assert "zstream-client: refused a CURVE key" in broker.process.output()


# -- the peer port -----------------------------------------------------------------------


def test_a_client_key_cannot_connect_to_the_peer_port(
    secure_three: list[SecureBroker], keys: ClusterKeys
) -> None:
    broker = secure_three[0]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = curve_dealer(
            ctx, None, server_key=_public(keys, "1"), pair=keys.pair("admin"), routing_id=b"2"
        )
        events = _handshake_events(sock, f"tcp://127.0.0.1:{broker.peer_port}", 10)
    finally:
        ctx.destroy(linger=0)
    assert events == {zmq.EVENT_HANDSHAKE_FAILED_AUTH}, events
    wait_until(
        lambda: "zstream-peer: refused a CURVE key" in broker.process.output(),
        10,
        "the refusal in broker 1's log",
    )


async def test_broker_2_key_claiming_id_3_is_refused_and_replication_goes_on(
    secure_three: list[SecureBroker], keys: ClusterKeys
) -> None:
    creds = {"credentials": keys.secret_file("admin"), "server_key": keys.server_key}
    bootstrap = _bootstrap(secure_three)
    async with Admin(bootstrap, **creds) as admin:
        await admin.create_topic("attacked", partitions=1, replication_factor=3)
    commits: list[float] = []
    attacking = asyncio.Event()
    stop = asyncio.Event()

    async def produce() -> None:
        async with Producer(bootstrap, linger_ms=0, **creds) as producer:
            while not stop.is_set():
                await producer.send("attacked", b"x" * 100, partition=0)
                if attacking.is_set():
                    commits.append(time.monotonic())

    producing = asyncio.create_task(produce())
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        # The stolen key of broker 2, presented as node 3 to brokers 1 and 3.
        victims = [b for b in secure_three if b.broker_id != 2]
        socks = [
            curve_dealer(
                ctx,
                None,
                server_key=_public(keys, str(b.broker_id)),
                pair=keys.pair("2"),
                routing_id=b"3",
            )
            for b in victims
        ]
        # The key is valid: the handshake succeeds; only the claimed id is refused.
        for sock, b in zip(socks, victims, strict=True):
            events = _handshake_events(sock, f"tcp://127.0.0.1:{b.peer_port}", 10)
            assert events == {zmq.EVENT_HANDSHAKE_SUCCEEDED}, events
        attacking.set()
        started = time.monotonic()
        forged = encode_peer_frames(3, [(b"\x92\x01\x02", [b"forged entry"])])
        while time.monotonic() - started < 3.0:
            for sock in socks:
                sock.send_multipart(forged, zmq.NOBLOCK)
            await asyncio.sleep(0.005)
        attacking.clear()
        ended = time.monotonic()
    finally:
        stop.set()
        await producing
        ctx.destroy(linger=0)
    assert producing.exception() is None
    # Replication went on: acks=all commits all through the attack, no long stall.
    assert len(commits) >= 20, f"only {len(commits)} commits in 3 s of attack"
    marks = [started, *commits, ended]
    longest = max(b - a for a, b in itertools.pairwise(marks))
    assert longest < 2.0, f"replication stalled for {longest:.2f} s during the attack"
    for b in victims:
        out = b.process.output()
        assert "refusing a message from the peer key of node 2" in out, b.broker_id


# -- the loopback-only default -----------------------------------------------------------


def test_broker_refuses_to_bind_outside_loopback_without_security(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "zstream.broker.cli",
        "broker",
        "--id=1",
        f"--data-dir={tmp_path / 'd'}",
        f"--client-addr=0.0.0.0:{free_port()}",
        f"--peer-addr=127.0.0.1:{free_port()}",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "outside 127.0.0.0/8" in lines[0]
    assert "--insecure" in lines[0]


# -- end to end --------------------------------------------------------------------------


async def test_secure_produce_group_consume_and_leader_kill(
    tmp_path: Path, keys: ClusterKeys
) -> None:
    creds = {"credentials": keys.secret_file("admin"), "server_key": keys.server_key}
    with secure_brokers(tmp_path, keys, 3) as brokers:
        bootstrap = _bootstrap(brokers)
        async with Admin(bootstrap, **creds) as admin:
            doc = await admin.create_topic("e2e", partitions=3, replication_factor=3)
        sent: set[bytes] = set()
        async with Producer(bootstrap, request_timeout_ms=3000, **creds) as producer:
            futures = [producer.send("e2e", f"a{i}".encode()) for i in range(150)]
            for f in futures:
                await f
            sent.update(f"a{i}".encode() for i in range(150))
            # kill -9 the first leader; the cluster goes on under CURVE.
            async with Admin(bootstrap, **creds) as admin:
                doc = await admin.describe_topic("e2e")
            leader = next(p["leader"] for p in doc["partitions"] if p["leader"])
            victim = next(b for b in brokers if b.broker_id == leader)
            victim.kill()
            futures = [producer.send("e2e", f"b{i}".encode()) for i in range(150)]
            for f in futures:
                await f
            sent.update(f"b{i}".encode() for i in range(150))
        got: set[bytes] = set()
        async with Consumer(
            bootstrap, group="readers", stream_silence_ms=2000, **creds
        ) as consumer:
            await consumer.subscribe(["e2e"])
            async with asyncio.timeout(60):
                while got != sent:
                    record = await consumer.getone()
                    got.add(record.value)
            await consumer.commit()
        assert got == sent
