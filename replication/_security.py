"""CURVE keys and the ZAP handler that maps a public key to a name.

Key files are pyzmq's ``zmq.auth`` certificates: ``NAME.key`` holds a public key,
``NAME.key_secret`` the pair (mode 0600). A *key set* is a directory of public
key files named by who holds them: broker public keys named by node id
(``1.key``, ``2.key``) for the peer sockets, client public keys named by
principal (``alice.key``) for the client sockets.

`KeyAuthenticator` is pyzmq's asyncio ZAP authenticator with one change: the
ZeroMQ User-Id of an accepted connection is the key's *name* in the key set, not
the key itself, so every message received from it carries its name
(``frame.get("User-Id")``). Unknown keys are refused during the CURVE handshake;
a refused peer never gets a message through. The handler runs only at handshake
time (once per connection), never per message.

The key set is read from disk at start and again, at most once per
``reload_interval_s``, when a key it does not know knocks, so that adding a
broker or a client needs no restart of the brokers already running.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.asyncio import AsyncioAuthenticator

__all__ = [
    "KeyAuthenticator",
    "KeyFileError",
    "KeySet",
    "PeerSecurity",
    "load_key_pair",
    "load_public_key",
]

_log = logging.getLogger(__name__)

_Z85_KEY_LEN: Final = 40  # a 32-byte CURVE key in Z85
# A knock by an unknown key re-reads the key set at most this often: adding a key
# takes effect within a second, and a flood of unknown keys costs one directory
# listing a second.
_RELOAD_INTERVAL_S: Final = 1.0


class KeyFileError(ValueError):
    """A key file or key directory is missing or does not hold a CURVE key."""


def _check_z85(key: bytes | None, path: Path, what: str) -> bytes:
    if key is None or len(key) != _Z85_KEY_LEN:
        raise KeyFileError(f"{path}: no valid CURVE {what} key")
    try:
        zmq.utils.z85.decode(key)
    except (ValueError, KeyError) as exc:
        raise KeyFileError(f"{path}: {what} key is not Z85") from exc
    return key


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The Z85 public key of a ``.key`` (or ``.key_secret``) file."""
    p = Path(path)
    try:
        public, _ = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {p}: {exc}") from exc
    return _check_z85(public, p, "public")


def load_key_pair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret), both Z85, from a ``.key_secret`` file."""
    p = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {p}: {exc}") from exc
    return _check_z85(public, p, "public"), _check_z85(secret, p, "secret")


class KeySet:
    """Public keys in a directory, each named by its file (``NAME.key``).

    ``accept_name`` filters the names (the peer key set takes node ids only);
    files it refuses or cannot read are skipped with a warning.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        accept_name: Callable[[str], bool] | None = None,
        reload_interval_s: float = _RELOAD_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise KeyFileError(f"key directory {self.directory} does not exist")
        self._accept = accept_name or (lambda name: True)
        self._interval_s = reload_interval_s
        self._clock = clock
        self._by_key: dict[bytes, str] = {}
        self._next_reload = 0.0
        self.reload()

    def reload(self) -> None:
        by_key: dict[bytes, str] = {}
        for path in sorted(self.directory.glob("*.key")):
            name = path.name[: -len(".key")]
            if not self._accept(name):
                _log.warning("key set %s: ignoring %s (not a valid name)", self.directory, path)
                continue
            try:
                key = load_public_key(path)
            except KeyFileError as exc:
                _log.warning("key set %s: ignoring %s", self.directory, exc)
                continue
            other = by_key.get(key)
            if other is not None:
                _log.warning("key set %s: %s repeats the key of %s", self.directory, path, other)
                continue
            by_key[key] = name
        self._by_key = by_key
        self._next_reload = self._clock() + self._interval_s

    def name_of(self, z85_key: bytes) -> str | None:
        """The name holding this public key, or None (after a re-read, rate-limited)."""
        name = self._by_key.get(z85_key)
        if name is None and self._clock() >= self._next_reload:
            self.reload()
            name = self._by_key.get(z85_key)
        return name

    def key_of(self, name: str) -> bytes | None:
        """The public key named ``name``, read from its file now (None when absent)."""
        path = self.directory / f"{name}.key"
        if not self._accept(name) or not path.is_file():
            return None
        return load_public_key(path)

    def names(self) -> dict[bytes, str]:
        return dict(self._by_key)


class KeyAuthenticator(AsyncioAuthenticator):
    """pyzmq's asyncio ZAP handler, accepting CURVE keys of one `KeySet` and
    setting each connection's User-Id to the key's name.

    One per ZeroMQ context (ZAP is bound per context at inproc://zeromq.zap.01),
    serving the CURVE server sockets whose ZMQ_ZAP_DOMAIN is ``domain``. Start it
    before binding them: a CURVE server with no ZAP handler accepts every key."""

    def __init__(self, context: zmq.Context[Any], keys: KeySet, domain: str) -> None:
        super().__init__(context, log=logging.getLogger(f"zstream.zap.{domain}"))
        self._keys = keys
        self._what = domain
        self.refused = 0
        # Only the socket with this ZMQ_ZAP_DOMAIN is served; any other is refused.
        self.configure_curve_callback(domain, credentials_provider=self)

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """zmq.auth's credentials-provider hook: is this key in the key set?"""
        if self._keys.name_of(z85_key) is not None:
            return True
        self.refused += 1
        _log.warning("%s: refused a CURVE key not in %s", self._what, self._keys.directory)
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        name = self._keys.name_of(zmq.utils.z85.encode(client_public_key))
        # callback() accepted this key a moment ago; a key removed in between gets
        # no name, which the receiving side refuses.
        return name if name is not None else ""


def _is_node_id(name: str) -> bool:
    return name.isdigit() and not name.startswith("0") and 1 <= int(name) <= 2**64 - 1


@dataclass(frozen=True, slots=True)
class PeerSecurity:
    """CURVE on the peer sockets: this node's key pair and the cluster's peer key
    set (``peer_keys_dir``: broker public keys named by node id, ``1.key``...).

    Trust comes from this key set only. `PeerTransport` checks at start that
    ``public_key`` is the one the key set holds for its own node id."""

    public_key: bytes
    secret_key: bytes
    peer_keys_dir: Path

    @classmethod
    def from_files(
        cls, secret_key_file: str | os.PathLike[str], peer_keys_dir: str | os.PathLike[str]
    ) -> PeerSecurity:
        public, secret = load_key_pair(secret_key_file)
        directory = Path(peer_keys_dir)
        if not directory.is_dir():
            raise KeyFileError(f"peer key directory {directory} does not exist")
        return cls(public, secret, directory)

    def key_set(self) -> KeySet:
        return KeySet(self.peer_keys_dir, accept_name=_is_node_id)
