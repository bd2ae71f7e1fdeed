"""Member discovery: who exists, and where.

etcd holds exactly one kind of key, ``/zstream/<cluster>/brokers/<id>``, whose
value is a small JSON document naming the broker's client and peer addresses.
Each broker writes its own key under a lease that it keeps alive, and watches
the prefix to learn of the others. etcd takes no part in any decision about
the log; when it is unreachable, brokers keep the membership they last saw and
re-register once it returns.

:class:`StaticRegistry` serves a fixed list of peers for clusters run without
etcd. Both implement :class:`Registry`, the narrow interface the broker uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

import aetcd
import aetcd.exceptions

log = logging.getLogger("zstream.discovery")

__all__ = [
    "BrokerInfo",
    "DiscoveryError",
    "EtcdRegistry",
    "Registry",
    "StaticRegistry",
    "parse_endpoints",
]


class DiscoveryError(Exception):
    """Bad discovery configuration or data."""


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerInfo:
    id: int
    client_addr: str
    peer_addr: str

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> BrokerInfo:
        try:
            doc = json.loads(raw)
            info = cls(int(doc["id"]), str(doc["client_addr"]), str(doc["peer_addr"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DiscoveryError(f"bad broker registration {raw[:200]!r}") from exc
        if info.id <= 0:
            raise DiscoveryError(f"bad broker id {info.id}")
        return info


Members = Mapping[int, BrokerInfo]


class Registry(Protocol):
    """What the broker needs from discovery."""

    @property
    def members(self) -> Members:
        """The live brokers as last known (never emptied by an etcd outage)."""
        ...

    async def run(self) -> None:
        """Register and follow membership until cancelled."""
        ...

    async def wait_for(self, predicate: Callable[[Members], bool]) -> Members: ...


class _MembershipMixin:
    def __init__(self) -> None:
        self._members: dict[int, BrokerInfo] = {}
        self._changed = asyncio.Condition()
        self._listeners: list[Callable[[Members], None]] = []

    @property
    def members(self) -> Members:
        return dict(self._members)

    def add_listener(self, listener: Callable[[Members], None]) -> None:
        self._listeners.append(listener)

    async def wait_for(self, predicate: Callable[[Members], bool]) -> Members:
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self._members))
            return dict(self._members)

    async def _set_members(self, members: dict[int, BrokerInfo]) -> None:
        if members == self._members:
            return
        self._members = members
        log.info("membership brokers=%s", sorted(members))
        for listener in self._listeners:
            listener(dict(members))
        async with self._changed:
            self._changed.notify_all()


class StaticRegistry(_MembershipMixin):
    """A fixed membership, for clusters run from a list of peers."""

    def __init__(self, brokers: Sequence[BrokerInfo]) -> None:
        super().__init__()
        self._initial = {b.id: b for b in brokers}

    async def run(self) -> None:
        await self._set_members(dict(self._initial))
        await asyncio.Event().wait()  # until cancelled


def parse_endpoints(spec: str) -> list[tuple[str, int]]:
    """``"host:port[,host:port...]"`` to a list of (host, port)."""
    endpoints = []
    for part in spec.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DiscoveryError(f"bad etcd endpoint {part!r}: expected host:port")
        endpoints.append((host, int(port)))
    if not endpoints:
        raise DiscoveryError("no etcd endpoints given")
    return endpoints


# Everything aetcd and grpc raise when etcd is away or misbehaves.
_ETCD_ERRORS: tuple[type[BaseException], ...] = (
    aetcd.exceptions.ClientError,
    OSError,
    TimeoutError,
)


class EtcdRegistry(_MembershipMixin):
    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        cluster: str,
        me: BrokerInfo,
        *,
        lease_ttl_s: int = 5,
        retry_max_s: float = 2.0,
    ) -> None:
        """``lease_ttl_s``: how long a dead broker's key outlives it. 5 s keeps
        discovery quick while tolerating a few lost keep-alives."""
        super().__init__()
        if not endpoints:
            raise DiscoveryError("no etcd endpoints given")
        if lease_ttl_s < 2:
            raise DiscoveryError("lease_ttl_s must be >= 2")
        self._endpoints = list(endpoints)
        self._prefix = f"/zstream/{cluster}/brokers/".encode()
        self._me = me
        self._ttl_s = lease_ttl_s
        self._retry_max_s = retry_max_s
        self.registered = asyncio.Event()
        self.connected = False

    @property
    def key(self) -> bytes:
        return self._prefix + str(self._me.id).encode()

    async def run(self) -> None:
        attempt = 0
        while True:
            host, port = self._endpoints[attempt % len(self._endpoints)]
            client = aetcd.Client(host, port, timeout=self._ttl_s)
            try:
                await self._session(client)
            except _ETCD_ERRORS as exc:
                if self.connected:
                    log.warning("etcd lost endpoint=%s:%d error=%r", host, port, exc)
                self.connected = False
                self.registered.clear()
            finally:
                await _bounded(client.close())
            attempt += 1
            await asyncio.sleep(min(self._retry_max_s, 0.1 * 2 ** min(attempt, 5)))

    async def _session(self, client: aetcd.Client) -> None:
        lease = await client.lease(self._ttl_s)
        await client.put(self.key, self._me.to_json(), lease=lease)
        listing = await client.get_prefix(self._prefix)
        members = self._parse_listing(listing)
        revision = _header_revision(listing)
        self.connected = True
        self.registered.set()
        log.info("etcd registered id=%d key=%s", self._me.id, self.key.decode())
        await self._set_members(members)
        watch = await client.watch_prefix(
            self._prefix, start_revision=revision + 1 if revision else None
        )
        _raise_if_cancel_was_swallowed()
        await _first_failure(self._keep_alive(lease), self._follow(watch, members))

    async def _keep_alive(self, lease: Any) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            reply = await lease.refresh()
            ttl = getattr(reply, "TTL", 1)
            if ttl <= 0:
                raise aetcd.exceptions.ClientError("lease expired; registering again")

    async def _follow(self, watch: Any, members: dict[int, BrokerInfo]) -> None:
        members = dict(members)
        try:
            async for event in watch:
                key_id = self._id_from_key(event.kv.key)
                if key_id is None:
                    continue
                if str(event.kind).endswith("DELETE"):
                    members.pop(key_id, None)
                else:
                    try:
                        members[key_id] = BrokerInfo.from_json(event.kv.value)
                    except DiscoveryError as exc:
                        log.warning("etcd ignoring bad registration: %s", exc)
                        continue
                await self._set_members(dict(members))
        finally:
            await _bounded(watch.cancel())
        raise aetcd.exceptions.ClientError("watch ended")

    def _id_from_key(self, key: bytes) -> int | None:
        tail = key[len(self._prefix) :]
        return int(tail) if key.startswith(self._prefix) and tail.isdigit() else None

    def _parse_listing(self, listing: Any) -> dict[int, BrokerInfo]:
        members: dict[int, BrokerInfo] = {}
        for kv in listing:
            key_id = self._id_from_key(kv.key)
            if key_id is None:
                continue
            try:
                members[key_id] = BrokerInfo.from_json(kv.value)
            except DiscoveryError as exc:
                log.warning("etcd ignoring bad registration: %s", exc)
        return members

    async def deregister(self) -> None:
        """Remove this broker's key now (graceful shutdown), best effort."""
        host, port = self._endpoints[0]
        with contextlib.suppress(*_ETCD_ERRORS):
            async with aetcd.Client(host, port, timeout=2) as client:
                await client.delete(self.key)


def _raise_if_cancel_was_swallowed() -> None:
    """aetcd waits with ``asyncio.wait_for``, which on Python 3.11 can swallow a
    cancellation that arrives as the awaited result does (fixed in 3.12). The
    task still counts the request, so honour it here instead of running on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _bounded(cleanup: Coroutine[Any, Any, Any], timeout_s: float = 2.0) -> None:
    """Await an aetcd clean-up step for at most ``timeout_s``. Cancelling a watch or
    closing a channel can wait on a stream that never answers (seen when a
    registry is cancelled right after an etcd outage); shutdown must not."""
    with contextlib.suppress(*_ETCD_ERRORS):
        await asyncio.wait_for(cleanup, timeout_s)


async def _first_failure(*coros: Coroutine[Any, Any, None]) -> None:
    """Run ``coros`` until the first one ends; cancel and await the others, then
    re-raise the first one's exception as itself (no ExceptionGroup), so the
    caller's plain ``except`` sees aetcd's errors."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


def _header_revision(listing: Any) -> int:
    header = getattr(listing, "header", None)
    revision = getattr(header, "revision", 0)
    return int(revision) if isinstance(revision, int) else 0
