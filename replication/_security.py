"""CURVE keys and the ZAP handler that maps a public key to a name.

Key files are pyzmq's ``zmq.auth`` certificates: ``NAME.key`` holds a public key,
``NAME.key_secret`` the pair (mode 0600). A *key set* is a directory of public
key files named by who holds them: broker public keys named by node id
(``1.key``, ``2.key``) for the peer sockets, client public keys named by
principal (``alice.key``) for the client sockets.

`KeyAuthenticator` is pyzmq's ZAP authenticator with one change: the
ZeroMQ User-Id of an accepted connection is the key's *name* in the key set, not
the key itself, so every message received from it carries its name
(``frame.get("User-Id")``). Unknown keys are refused during the CURVE handshake;
a refused peer never gets a message through. The handler runs only at handshake
time (once per connection), never per message.

The key set is read from disk at start and again at a handshake when the last
read is more than ``reload_interval_s`` old, so that adding, replacing or
removing a key takes effect for new connections without a restart (connections
already authenticated stay up until they close).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.asyncio
import zmq.auth
import zmq.utils.z85
from zmq.auth.base import Authenticator

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
# The ZAP task also looks at its socket this often without a wake-up.
_ZAP_POLL_MS: Final = 200


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
        """The name holding this public key, or None.

        The directory is re-read first when the last read is older than the
        reload interval, so a key added or removed there counts for the next
        handshake a second later at most (handshakes are rare: this is no hot path).
        """
        if self._clock() >= self._next_reload:
            self.reload()
        return self._by_key.get(z85_key)

    def key_of(self, name: str) -> bytes | None:
        """The public key named ``name``, read from its file now (None when absent)."""
        path = self.directory / f"{name}.key"
        if not self._accept(name) or not path.is_file():
            return None
        return load_public_key(path)

    def names(self) -> dict[bytes, str]:
        return dict(self._by_key)


class KeyAuthenticator(Authenticator):
    """pyzmq's ZAP authenticator (``zmq.auth``) on this event loop, accepting CURVE
    keys of one `KeySet` and setting each connection's User-Id to the key's name.

    One per ZeroMQ context (ZAP is bound per context at inproc://zeromq.zap.01),
    serving the CURVE server sockets whose ZMQ_ZAP_DOMAIN is ``domain``. Start it
    before binding them: a CURVE server with no ZAP handler accepts every key.

    Like pyzmq's ``AsyncioAuthenticator``, but its task is owned and ended by
    `aclose`, which waits for the task before closing the ZAP socket: closing a
    socket whose descriptor the loop still watches leaves the loop blind to the
    next socket given the same descriptor number."""

    def __init__(self, context: zmq.Context[Any], keys: KeySet, domain: str) -> None:
        super().__init__(context, log=logging.getLogger(f"zstream.zap.{domain}"))
        self._keys = keys
        self._what = domain
        self._task: asyncio.Task[None] | None = None
        self.refused = 0
        # Only the socket with this ZMQ_ZAP_DOMAIN is served; any other is refused.
        self.configure_curve_callback(domain, credentials_provider=self)

    def start(self) -> None:
        """Bind the ZAP socket and serve it from a task (call inside the loop)."""
        super().start()
        self._task = asyncio.get_running_loop().create_task(self._serve(), name=f"zap-{self._what}")

    async def _serve(self) -> None:
        # An asyncio view of the same libzmq socket, for waiting. Replies go out on
        # the plain socket, and any operation on a ZeroMQ socket may consume the
        # edge its descriptor signals: so drain until EAGAIN after each wake-up,
        # and look again every _ZAP_POLL_MS in any case.
        sock = zmq.asyncio.Socket.shadow(self.zap_socket.underlying)
        while True:
            await sock.poll(_ZAP_POLL_MS)
            while True:
                try:
                    msg = self.zap_socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    await self.handle_zap_message(msg)
                except zmq.ZMQError:
                    _log.exception("%s: ZAP reply failed", self._what)

    async def aclose(self) -> None:
        """End the task, then close the ZAP socket. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.zap_socket is not None:
            self.stop()

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
