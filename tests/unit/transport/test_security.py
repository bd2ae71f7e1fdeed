"""CURVE on the peer transport: only keys of the peer key set get through, and a
node id is the one its key is named by, whatever the connection claims."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import zmq
import zmq.auth

from zstream.replication import (
    KeySet,
    PeerSecurity,
    PeerTransport,
    TransportError,
    encode_peer_frames,
    load_key_pair,
    load_public_key,
)

from .helpers import LOOPBACK, recv_items, send_until_received, wait_connected, wait_for


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """Key pairs of nodes 1..3 in ``secret/``, their public keys in ``peers/``."""
    secret, peers = tmp_path / "secret", tmp_path / "peers"
    secret.mkdir()
    peers.mkdir()
    for node in (1, 2, 3):
        public_file, _ = zmq.auth.create_certificates(secret, str(node))
        Path(public_file).rename(peers / f"{node}.key")
    zmq.auth.create_certificates(secret, "stranger")
    return tmp_path


def security(keys: Path, name: str) -> PeerSecurity:
    return PeerSecurity.from_files(keys / "secret" / f"{name}.key_secret", keys / "peers")


@asynccontextmanager
async def secure_mesh(keys: Path, ids: tuple[int, ...]) -> AsyncIterator[list[PeerTransport]]:
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                PeerTransport(i, LOOPBACK, security=security(keys, str(i)))
            )
            for i in ids
        ]
        for a in nodes:
            for b in nodes:
                if a is not b:
                    a.add_peer(b.local_id, b.address)
        for a in nodes:
            for b in nodes:
                if a is not b:
                    await wait_connected(a, b.local_id)
        yield nodes


@contextmanager
def curve_dealer(
    addr: str, server_key: bytes, pair: tuple[bytes, bytes] | None, routing_id: bytes | None
) -> Iterator[zmq.Socket[bytes]]:
    """A raw DEALER: CURVE with ``pair`` (or no security at all when None)."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.reconnect_ivl = 10
    if routing_id is not None:
        sock.routing_id = routing_id
    if pair is not None:
        sock.curve_serverkey = server_key
        sock.curve_publickey, sock.curve_secretkey = pair
    sock.connect(addr)
    try:
        yield sock
    finally:
        sock.close()


async def test_secure_peers_exchange_items_under_their_own_ids(keys: Path) -> None:
    async with secure_mesh(keys, (1, 2)) as (a, b):
        assert a.secure
        assert b.secure
        got = await send_until_received(a, b, b"hello", [b"payload"])
        assert got.from_node == 1
        assert [bytes(p) for p in got.payloads] == [b"payload"]
        got = await send_until_received(b, a, b"back", [])
        assert got.from_node == 2


@pytest.mark.parametrize("who", ["plain", "stranger"])
async def test_a_dealer_without_a_peer_key_gets_nothing_through(keys: Path, who: str) -> None:
    async with secure_mesh(keys, (1, 2)) as (a, b):
        pair = None if who == "plain" else load_key_pair(keys / "secret" / "stranger.key_secret")
        server_key = load_public_key(keys / "peers" / "2.key")
        with curve_dealer(b.address, server_key, pair, b"1") as dealer:
            for _ in range(20):
                dealer.send_multipart(encode_peer_frames(1, [(b"forged", [])]), zmq.NOBLOCK)
            # The real peer keeps being served while the intruder knocks.
            for i in range(5):
                got = await send_until_received(a, b, f"real {i}".encode(), [])
                assert got.from_node == 1
            drained = b.recv_batch_nowait()
            assert all(m.header != b"forged" for m in drained)
        assert b.stats.decode_errors == 0  # refused at the handshake, never decoded


async def test_a_peer_key_claiming_another_node_id_is_refused(
    keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with secure_mesh(keys, (1, 2, 3)) as (n1, n2, n3):
        two = load_key_pair(keys / "secret" / "2.key_secret")
        server_key = load_public_key(keys / "peers" / "1.key")
        with curve_dealer(n1.address, server_key, two, b"3") as dealer:
            for _ in range(3):
                dealer.send_multipart(encode_peer_frames(3, [(b"forged", [])]))

            def refused() -> bool:
                n1.recv_batch_nowait()  # the counters move as the ROUTER is drained
                return n1.stats.decode_errors >= 3

            await wait_for(refused, "the forged messages refused")
            # Node 3's own connection was not taken over: it still gets through.
            for i in range(5):
                got = await send_until_received(n3, n1, f"from 3 #{i}".encode(), [])
                assert got.from_node == 3
            n2.send(1, b"from 2", [])
            n2.flush()
            (item,) = await recv_items(n1, 1)
            assert (item.from_node, item.header) == (2, b"from 2")
        assert n1.stats.decode_errors == 3
        assert any("peer key of node 2" in r.getMessage() for r in caplog.records)


async def test_peer_without_a_key_file_cannot_be_added(keys: Path) -> None:
    async with PeerTransport(1, LOOPBACK, security=security(keys, "1")) as t:
        with pytest.raises(TransportError, match="no public key for peer 9"):
            t.add_peer(9, "tcp://127.0.0.1:1")


async def test_own_key_must_be_the_one_the_key_set_names(keys: Path) -> None:
    t = PeerTransport(1, LOOPBACK, security=security(keys, "2"))
    with pytest.raises(TransportError, match="not this node's public key"):
        await t.start()
    await t.close()


async def test_a_key_added_later_is_accepted_without_restart(keys: Path) -> None:
    (keys / "peers" / "3.key").rename(keys / "3.key.away")
    async with PeerTransport(1, LOOPBACK, security=security(keys, "1")) as n1:
        (keys / "3.key.away").rename(keys / "peers" / "3.key")
        async with PeerTransport(3, LOOPBACK, security=security(keys, "3")) as n3:
            n3.add_peer(1, n1.address)
            await wait_connected(n3, 1)
            got = await send_until_received(n3, n1, b"late", [])
            assert got.from_node == 3


def test_key_set_names_keys_and_skips_bad_files(keys: Path) -> None:
    (keys / "peers" / "junk.key").write_text("not a key\n")
    (keys / "peers" / "07.key").write_bytes((keys / "peers" / "1.key").read_bytes())
    ks = KeySet(keys / "peers", accept_name=lambda n: n.isdigit() and not n.startswith("0"))
    one = load_public_key(keys / "peers" / "1.key")
    assert ks.name_of(one) == "1"
    assert sorted(ks.names().values()) == ["1", "2", "3"]
    assert ks.key_of("07") is None


def test_peer_security_from_files_reports_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read key file"):
        PeerSecurity.from_files(tmp_path / "nope.key_secret", tmp_path)


async def test_nothing_leaks_when_closing_a_secure_transport(keys: Path) -> None:
    t = PeerTransport(1, LOOPBACK, security=security(keys, "1"))
    await t.start()
    await t.close()
    await asyncio.sleep(0)


def _rotate_key_of_2(keys: Path) -> PeerSecurity:
    """A new key pair for node 2, its public key put in the key set in place."""
    (keys / "new").mkdir()
    public_file, secret_file = zmq.auth.create_certificates(keys / "new", "2")
    Path(public_file).replace(keys / "peers" / "2.key")
    return PeerSecurity.from_files(secret_file, keys / "peers")


async def test_a_rotated_peer_key_is_picked_up_without_restarting_the_others(
    keys: Path,
) -> None:
    async with AsyncExitStack() as stack:
        n1 = await stack.enter_async_context(
            PeerTransport(1, LOOPBACK, security=security(keys, "1"))
        )
        n2 = PeerTransport(2, LOOPBACK, security=security(keys, "2"))
        addr = await n2.start()
        n1.add_peer(2, addr)
        n2.add_peer(1, n1.address)
        assert (await send_until_received(n1, n2, b"old key", [])).from_node == 1
        await n2.close()
        # Node 2 gets a new key pair; the key set is updated in place; node 1 runs on.
        rotated = _rotate_key_of_2(keys)
        n2 = await stack.enter_async_context(PeerTransport(2, addr, security=rotated))
        n2.add_peer(1, n1.address)
        assert (await send_until_received(n2, n1, b"new key in", [])).from_node == 2
        assert (await send_until_received(n1, n2, b"new key out", [])).from_node == 1
