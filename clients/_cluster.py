"""Reaching a cluster from a bootstrap list: metadata, one connection per broker,
and retries that follow NOT_LEADER / NOT_CONTROLLER hints.

Metadata (the ``metadata`` reply's result, see docs/protocol.md)::

    {"brokers": [{"id", "client_addr", "alive"}], "controller": id | None,
     "topics": [{"name", "replication_factor", "configs",
                 "partitions": [{"partition", "leader", "leader_epoch", "replicas",
                                 "hwm", "log_start"}]}]}

A broker outside a partition's Raft group can only guess its leader (``leader_epoch``
null). Leaders heard first-hand, from a replica's metadata or its NOT_LEADER hint,
are kept by epoch (the Raft term, as Kafka keeps leader epochs): a guess never
replaces them, a higher epoch does, and a leader that stops answering is forgotten.
Without that a client asking a non-replica for metadata was sent back to the
preferred replica after every NOT_LEADER, and never reached a leader elected
elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq.asyncio

from zstream.clients._connection import Connection, normalize_address
from zstream.clients._credentials import Credentials
from zstream.clients._errors import (
    ConnectionLostError,
    NotControllerError,
    NotLeaderError,
    RequestTimedOutError,
    UnavailableError,
    UnknownTopicError,
    ZStreamError,
)
from zstream.clients._protocol import Buffer, MetadataRequest, Reply, RequestArgs

__all__ = ["ClusterClient", "parse_bootstrap"]


def parse_bootstrap(spec: str | Sequence[str]) -> list[str]:
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    addrs = [normalize_address(p) for p in parts if p.strip()]
    if not addrs:
        raise ValueError("empty bootstrap list")
    return addrs


class ClusterClient:
    """Owns one :class:`Connection` per broker address; `close` ends them all.

    ``credentials`` (the client's secret key file) and ``server_key`` (the cluster's
    client-facing public key file, or a directory holding it) turn on CURVE; see
    `Credentials`."""

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        *,
        timeout_s: float = 10.0,
        retry_for_s: float = 15.0,
        credentials: str | os.PathLike[str] | Credentials | None = None,
        server_key: str | os.PathLike[str] | None = None,
    ) -> None:
        self._bootstrap = parse_bootstrap(bootstrap)
        # Read before any socket exists: a bad key file fails here, not at first use.
        self.credentials = Credentials.resolve(credentials, server_key)
        self._timeout_s = timeout_s
        self._retry_for_s = retry_for_s
        self._ctx = zmq.asyncio.Context()
        self._conns: dict[str, Connection] = {}
        self.metadata: dict[str, Any] = {}
        # (topic, partition) -> (Raft group, leader, epoch) heard first-hand; epoch -1:
        # a hint without one, good until any epoch is heard.
        self._leaders: dict[tuple[str, int], tuple[int | None, int, int]] = {}

    def connection(self, addr: str) -> Connection:
        addr = normalize_address(addr)
        conn = self._conns.get(addr)
        if conn is None:
            conn = Connection(
                addr, timeout_s=self._timeout_s, context=self._ctx, credentials=self.credentials
            )
            self._conns[addr] = conn
        return conn

    def broker_addr(self, broker_id: int | None) -> str | None:
        for b in self.metadata.get("brokers", []):
            if b.get("id") == broker_id:
                addr: str = b["client_addr"]
                return addr
        return None

    def _known_addrs(self) -> list[str]:
        known = [b["client_addr"] for b in self.metadata.get("brokers", []) if b.get("alive", True)]
        return list(dict.fromkeys([*known, *self._bootstrap]))

    async def call_any(
        self, args: RequestArgs, frames: Sequence[Buffer] = (), *, timeout_s: float | None = None
    ) -> Reply:
        """Send to the first broker that answers."""
        last: ZStreamError | None = None
        for addr in self._known_addrs():
            try:
                return await self.connection(addr).call(args, frames, timeout_s=timeout_s)
            except (ConnectionLostError, RequestTimedOutError) as exc:
                last = exc
        raise ConnectionLostError(
            f"no broker reachable at {', '.join(self._known_addrs())}"
        ) from last

    async def refresh(self, topics: Sequence[str] | None = None) -> dict[str, Any]:
        """Fetch the metadata of ``topics`` (every topic when None). A partial answer
        replaces only the topics asked for: the others stay as last known."""
        reply = await self.call_any(MetadataRequest(list(topics) if topics else None))
        fresh: dict[str, Any] = reply.result
        if topics and self.metadata:
            asked = set(topics)
            kept = [t for t in self.metadata.get("topics", []) if t["name"] not in asked]
            fresh = {**fresh, "topics": kept + list(fresh.get("topics", []))}
        self.metadata = fresh
        for t in fresh.get("topics", []):
            for p in t.get("partitions", []):
                key = (t["name"], p["partition"])
                known = self._leaders.get(key)
                if known is not None and known[0] != p.get("group_id"):
                    del self._leaders[key]  # the topic was deleted and made anew
                epoch, leader = p.get("leader_epoch"), p.get("leader")
                if isinstance(epoch, int):
                    self._note_leader(
                        key, p.get("group_id"), leader if isinstance(leader, int) else 0, epoch
                    )
        return self.metadata

    def _note_leader(
        self, key: tuple[str, int], group: int | None, leader: int, epoch: int
    ) -> None:
        known = self._leaders.get(key)
        if known is not None and epoch < known[2]:
            return
        if leader > 0:
            self._leaders[key] = (group, leader, epoch)
        elif known is not None and epoch > known[2]:
            del self._leaders[key]  # a newer term with no leader yet

    def _group_of(self, topic: str, partition: int) -> int | None:
        for t in self.metadata.get("topics", []):
            if t["name"] == topic:
                for p in t.get("partitions", []):
                    if p["partition"] == partition:
                        group: int | None = p.get("group_id")
                        return group
        return None

    def leader_failed(
        self, topic: str, partition: int, broker: int | None, exc: ZStreamError
    ) -> None:
        """What a failed request to ``broker``, taken for the partition's leader,
        says about the leader: a NOT_LEADER hint names the one to try next; a broker
        that did not answer is forgotten, so that the next metadata can say anew."""
        key = (topic, partition)
        known = self._leaders.get(key)
        if isinstance(exc, NotLeaderError):
            epoch = exc.details.get("leader_epoch")
            if not isinstance(epoch, int):  # a hint for the epoch already known
                epoch = known[2] if known is not None else -1
            if exc.leader is not None or epoch >= 0:
                self._note_leader(key, self._group_of(topic, partition), exc.leader or 0, epoch)
        elif (
            isinstance(exc, ConnectionLostError | RequestTimedOutError)
            and known is not None
            and known[1] == broker
        ):
            del self._leaders[key]

    def topic(self, name: str) -> dict[str, Any]:
        for t in self.metadata.get("topics", []):
            if t["name"] == name:
                return dict(t)
        raise UnknownTopicError(f"unknown topic {name!r}")

    def leader_of(self, topic: str, partition: int) -> int | None:
        """The partition's leader: the one heard first-hand in the highest epoch, else
        the last metadata's (None when unknown)."""
        for p in self.topic(topic)["partitions"]:
            if p["partition"] == partition:
                known = self._leaders.get((topic, partition))
                leader: int | None = known[1] if known is not None else p.get("leader")
                return leader
        return None

    async def call_controller(self, args: RequestArgs, *, timeout_s: float | None = None) -> Reply:
        """Topic operations: follow NOT_CONTROLLER hints until the controller answers."""
        return await self._with_hints(args, (), lambda: self.metadata.get("controller"), timeout_s)

    async def call_leader(
        self,
        topic: str,
        partition: int,
        args: RequestArgs,
        frames: Sequence[Buffer] = (),
        *,
        timeout_s: float | None = None,
    ) -> Reply:
        """A partition request, sent to its leader; NOT_LEADER hints are followed."""

        return await self._with_hints(
            args,
            frames,
            lambda: self.leader_of(topic, partition),
            timeout_s,
            lambda broker, exc: self.leader_failed(topic, partition, broker, exc),
        )

    async def _with_hints(
        self,
        args: RequestArgs,
        frames: Sequence[Buffer],
        target: Any,
        timeout_s: float | None,
        failed: Callable[[int | None, ZStreamError], None] | None = None,
    ) -> Reply:
        deadline = time.monotonic() + self._retry_for_s
        hint: int | None = None
        delay = 0.05
        while True:
            if not self.metadata:
                await self.refresh()
            broker = hint if hint is not None else target()
            addr = self.broker_addr(broker)
            try:
                return await self._call_at(addr, args, frames, timeout_s)
            except (
                NotLeaderError,
                NotControllerError,
                UnavailableError,
                ConnectionLostError,
                RequestTimedOutError,
            ) as e:
                if failed is not None:
                    failed(broker, e)
                # A timeout may mean the broker died: look again where the leader is.
                # (For a produce the batch may still commit: a retry is at least once.)
                if time.monotonic() >= deadline:
                    raise
                details_hint = e.details.get("leader")
                hint = details_hint if isinstance(details_hint, int) and details_hint > 0 else None
                if hint is None or isinstance(e, ConnectionLostError | RequestTimedOutError):
                    hint = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    try:
                        await self.refresh()
                    except (ConnectionLostError, RequestTimedOutError):
                        if time.monotonic() >= deadline:
                            raise

    async def _call_at(
        self, addr: str | None, args: RequestArgs, frames: Sequence[Buffer], timeout_s: float | None
    ) -> Reply:
        if addr is None:
            raise UnavailableError("no leader known yet")
        return await self.connection(addr).call(args, frames, timeout_s=timeout_s)

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await conn.close()
        self._ctx.term()

    async def __aenter__(self) -> ClusterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
