"""A client's CURVE credentials: its key pair and the cluster's server key.

Files are pyzmq ``zmq.auth`` certificates, as ``zstream keys generate`` writes
them. ``credentials`` is the client's secret key file (``alice.key_secret``; the
broker knows the client as principal ``alice`` from ``alice.key`` in its
``client_credentials_dir``). ``server_key`` is the cluster's client-facing public
key: every broker of a cluster serves clients under the same key pair, so one
key reaches them all. It is a ``.key`` file, or a directory holding ``server.key``
(or exactly one ``.key`` file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq.auth
import zmq.utils.z85

__all__ = ["Credentials", "CredentialsError"]

_Z85_KEY_LEN = 40


class CredentialsError(ValueError):
    """A credentials or server key file is missing or holds no valid CURVE key."""


def _key(value: bytes | None, path: Path, what: str) -> bytes:
    if value is None or len(value) != _Z85_KEY_LEN:
        raise CredentialsError(f"{path}: no valid CURVE {what} key")
    try:
        zmq.utils.z85.decode(value)
    except (ValueError, KeyError) as exc:
        raise CredentialsError(f"{path}: the {what} key is not Z85") from exc
    return value


def _load(path: Path) -> tuple[bytes | None, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"cannot read key file {path}: {exc}") from exc


def _server_key_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    named = path / "server.key"
    if named.is_file():
        return named
    found = sorted(path.glob("*.key"))
    if len(found) != 1:
        raise CredentialsError(f"{path}: expected server.key or exactly one .key file")
    return found[0]


@dataclass(frozen=True, slots=True)
class Credentials:
    """Z85 keys: the client's pair and the server's public key."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes

    @classmethod
    def load(
        cls, credentials: str | os.PathLike[str], server_key: str | os.PathLike[str]
    ) -> Credentials:
        own = Path(credentials)
        public, secret = _load(own)
        if secret is None:
            raise CredentialsError(f"{own} holds no secret key (give NAME.key_secret)")
        server = _server_key_file(Path(server_key))
        server_public, _ = _load(server)
        return cls(
            _key(public, own, "public"),
            _key(secret, own, "secret"),
            _key(server_public, server, "server public"),
        )

    @classmethod
    def resolve(
        cls,
        credentials: str | os.PathLike[str] | Credentials | None,
        server_key: str | os.PathLike[str] | None,
    ) -> Credentials | None:
        """What clients accept: both paths (CURVE), neither (no security), or a
        ready `Credentials`."""
        if isinstance(credentials, Credentials):
            return credentials
        if credentials is None and server_key is None:
            return None
        if credentials is None or server_key is None:
            raise CredentialsError("CURVE needs both credentials and server_key")
        return cls.load(credentials, server_key)
