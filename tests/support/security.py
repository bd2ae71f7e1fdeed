"""CURVE keys for a test cluster, laid out as docs/security.md describes.

``ClusterKeys.make(dir, broker_ids)`` writes every broker's peer key pair, the
peer key set, the client-facing key pair and the client key set (``admin`` and
``alice`` by default), plus one key pair nobody trusts (``stranger``)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterable
from pathlib import Path

import zmq
import zmq.auth

from zstream.broker._keys import generate_key_pair
from zstream.clients import Credentials

__all__ = ["ClusterKeys", "curve_dealer"]


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
