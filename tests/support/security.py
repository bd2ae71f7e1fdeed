"""CURVE keys for a test cluster, laid out as docs/security.md describes.

``ClusterKeys.make(dir, broker_ids)`` writes every broker's peer key pair, the
peer key set, the client-facing key pair and the client key set (``admin`` and
``alice`` by default), plus one key pair nobody trusts (``stranger``).
`secure_brokers` runs a cluster of `SecureBroker` processes with them."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import zmq
import zmq.auth

from tests.support.proc import ManagedProcess, free_port, wait_until
from zstream.broker._keys import generate_key_pair
from zstream.clients import Credentials, MetadataRequest, ZStreamError
from zstream.clients._protocol import decode_reply, encode_request

__all__ = [
    "ClusterKeys",
    "SecureBroker",
    "answers_metadata_curve",
    "curve_dealer",
    "secure_brokers",
]


@dataclasses.dataclass(frozen=True)
class ClusterKeys:
    root: Path

    @classmethod
    def make(
        cls,
        root: Path,
        broker_ids: Iterable[int],
        principals: Iterable[str] = ("admin", "alice"),
    ) -> ClusterKeys:
        keys = cls(root)
        for i in broker_ids:
            generate_key_pair(str(i), keys.secret_dir)
            keys.peer_keys_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(keys.secret_dir / f"{i}.key", keys.peer_keys_dir / f"{i}.key")
        generate_key_pair("server", keys.secret_dir)
        for name in principals:
            generate_key_pair(name, keys.secret_dir)
            keys.client_credentials_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(
                keys.secret_dir / f"{name}.key", keys.client_credentials_dir / f"{name}.key"
            )
        generate_key_pair("stranger", keys.secret_dir)
        return keys

    @property
    def secret_dir(self) -> Path:
        return self.root / "secret"

    @property
    def peer_keys_dir(self) -> Path:
        return self.root / "peers"

    @property
    def client_credentials_dir(self) -> Path:
        return self.root / "clients"

    @property
    def server_key(self) -> Path:
        return self.secret_dir / "server.key"

    def secret_file(self, name: str) -> Path:
        return self.secret_dir / f"{name}.key_secret"

    def broker_flags(self, broker_id: int, super_users: str = "admin") -> list[str]:
        return [
            f"--curve-secret-key-file={self.secret_file(str(broker_id))}",
            f"--peer-keys-dir={self.peer_keys_dir}",
            f"--client-secret-key-file={self.secret_file('server')}",
            f"--client-credentials-dir={self.client_credentials_dir}",
            f"--super-users={super_users}",
        ]

    def credentials(self, name: str = "admin") -> Credentials:
        """A client's credentials: its own pair and the cluster's server key."""
        return Credentials.load(self.secret_file(name), self.server_key)

    def pair(self, name: str) -> tuple[bytes, bytes]:
        public, secret = zmq.auth.load_certificate(self.secret_file(name))
        assert secret is not None
        return public, secret


def curve_dealer(
    ctx: zmq.Context[zmq.Socket[bytes]],
    addr: str | None,
    *,
    server_key: bytes | None = None,
    pair: tuple[bytes, bytes] | None = None,
    routing_id: bytes | None = None,
) -> zmq.Socket[bytes]:
    """A raw DEALER connected to ``addr`` (None: not yet): a CURVE client when
    ``pair`` is given."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    if pair is not None:
        assert server_key is not None
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, pair[0])
        sock.setsockopt(zmq.CURVE_SECRETKEY, pair[1])
    if addr is not None:
        sock.connect(addr)
    return sock


def answers_metadata_curve(addr: str, credentials: Credentials, timeout_ms: int = 300) -> bool:
    """One metadata request over CURVE on a fresh DEALER: does the broker answer it?"""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = curve_dealer(
        ctx,
        addr,
        server_key=credentials.server_key,
        pair=(credentials.public_key, credentials.secret_key),
    )
    try:
        sock.send_multipart(encode_request(1, MetadataRequest()))
        if not sock.poll(timeout_ms):
            return False
        return decode_reply(sock.recv_multipart()).error == 0
    except ZStreamError:
        return False
    finally:
        sock.close()


class SecureBroker:
    """``zstream broker`` with CURVE (its own peer key pair, the cluster's key sets)
    in a child process, on free loopback ports; readiness is checked as ``admin``.
    Kept apart from the plain broker helpers, whose readiness probe speaks no CURVE."""

    def __init__(
        self, workdir: Path, broker_id: int, keys: ClusterKeys, extra: Sequence[str] = ()
    ) -> None:
        self.broker_id = broker_id
        self.keys = keys
        self.credentials = keys.credentials("admin")
        self.client_port = free_port()
        self.peer_port = free_port()
        self.metrics_port = free_port()
        self.data_dir = workdir / f"broker-{broker_id}"
        argv = [
            sys.executable,
            "-m",
            "zstream.broker.cli",
            "broker",
            f"--id={broker_id}",
            f"--data-dir={self.data_dir}",
            f"--client-addr=127.0.0.1:{self.client_port}",
            f"--peer-addr=127.0.0.1:{self.peer_port}",
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            "--log-level=DEBUG",
            *keys.broker_flags(broker_id),
            *extra,
        ]
        self.process = ManagedProcess(f"broker-{broker_id}", argv, workdir)

    @property
    def addr(self) -> str:
        return f"tcp://127.0.0.1:{self.client_port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, timeout_s: float = 30.0) -> None:
        self.process.start()
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        try:
            wait_until(
                lambda: (
                    not self.process.running()
                    or answers_metadata_curve(self.addr, self.credentials)
                ),
                timeout_s,
                f"broker {self.broker_id} to serve on {self.addr}",
            )
        except TimeoutError:
            self.process.stop()  # never leave a half-started child running
            raise
        if not self.process.running():
            raise RuntimeError(f"broker {self.broker_id} exited:\n{self.process.tail()}")

    def stop(self) -> int | None:
        return self.process.stop(grace_s=20)

    def kill(self) -> None:
        self.process.kill()


@contextmanager
def secure_brokers(
    workdir: Path,
    keys: ClusterKeys,
    count: int = 3,
    *,
    extra: Sequence[str] = (),
    ready_timeout_s: float = 30.0,
) -> Iterator[list[SecureBroker]]:
    """``count`` CURVE brokers (ids 1..count, in ``keys``) forming one cluster through
    a static peer list (a lone broker runs embedded), stopped by PID on the way out."""
    brokers = [SecureBroker(workdir, i, keys, extra) for i in range(1, count + 1)]
    if count > 1:
        peers = ",".join(
            f"{b.broker_id}@127.0.0.1:{b.client_port}@127.0.0.1:{b.peer_port}" for b in brokers
        )
        for b in brokers:
            b.process.argv.append(f"--peers={peers}")
    try:
        for b in brokers:
            b.process.start()
        for b in brokers:
            b.wait_ready(ready_timeout_s)
        yield brokers
    finally:
        for b in brokers:
            b.stop()
