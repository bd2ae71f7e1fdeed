"""The controller's state machine: cluster metadata, replicated on Raft group 0.

Pure: no sockets, no clocks, no asyncio. Commands are msgpack maps; `apply` is
deterministic (same state + same command = same new state and result on every
replica), never raises for a bad command (it returns the error as the result, so a
rejected command is rejected identically everywhere), and the whole state
snapshots to bytes and back.

Command encoding (one msgpack map per Raft entry)::

    {"op": "register_broker", "id": int, "client_addr": str, "peer_addr": str}
    {"op": "create_topic", "name": str, "partitions": int, "replication_factor": int,
     "configs": {str: int}, "live": [int, ...]}
    {"op": "delete_topic", "name": str}
    {"op": "allocate_producer_id"}

``live`` is the proposer's view of the live brokers when it proposed: placement
uses it and only it, so every replica computes the same placement.

Placement: each new partition's preferred leader (its first replica) is the live
broker leading the fewest partitions so far (ties: lowest id), and the other
replicas are the live brokers holding the fewest replicas (ties: lowest id). Over
many partitions this spreads leaders and replicas evenly.

Every partition gets a Raft group id of its own, never reused, so a topic deleted
and created again never meets the old one's data. Group 0 is the controller.

Snapshot: msgpack of {"v": 1, "brokers": ..., "topics": ..., "next_group_id",
"next_producer_id"}. Room is left for consumer groups (a later issue).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from clients import (
    InvalidRequestError,
    TopicExistsError,
    UnavailableError,
    UnknownTopicError,
    ZStreamError,
)

__all__ = [
    "CONTROLLER_GROUP_ID",
    "TOPIC_CONFIG_KEYS",
    "BrokerRecord",
    "ControllerState",
    "PartitionAssignment",
    "TopicRecord",
    "allocate_producer_id_command",
    "create_topic_command",
    "delete_topic_command",
    "register_broker_command",
]

CONTROLLER_GROUP_ID = 0
TOPIC_CONFIG_KEYS = frozenset({"retention_bytes", "retention_ms", "segment_bytes"})
# Bounds that keep one command from asking the cluster for absurd work.
MAX_PARTITIONS = 10_000
_SNAPSHOT_VERSION = 1


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerRecord:
    id: int
    client_addr: str
    peer_addr: str


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionAssignment:
    partition: int
    group_id: int
    replicas: tuple[int, ...]  # the first is the preferred leader


@dataclasses.dataclass(frozen=True, slots=True)
class TopicRecord:
    name: str
    replication_factor: int
    partitions: tuple[PartitionAssignment, ...]
    configs: Mapping[str, int]


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def register_broker_command(broker_id: int, client_addr: str, peer_addr: str) -> bytes:
    return _pack(
        {
            "op": "register_broker",
            "id": broker_id,
            "client_addr": client_addr,
            "peer_addr": peer_addr,
        }
    )


def create_topic_command(
    name: str,
    partitions: int,
    replication_factor: int,
    configs: Mapping[str, int],
    live: Sequence[int],
) -> bytes:
    return _pack(
        {
            "op": "create_topic",
            "name": name,
            "partitions": partitions,
            "replication_factor": replication_factor,
            "configs": dict(configs),
            "live": sorted(live),
        }
    )


def delete_topic_command(name: str) -> bytes:
    return _pack({"op": "delete_topic", "name": name})


def allocate_producer_id_command() -> bytes:
    return _pack({"op": "allocate_producer_id"})


def validate_topic_configs(configs: Mapping[str, object]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in configs.items():
        if key not in TOPIC_CONFIG_KEYS:
            raise InvalidRequestError(
                f"unknown topic config {key!r}: use {', '.join(sorted(TOPIC_CONFIG_KEYS))}"
            )
        if type(value) is not int or value < 0:
            raise InvalidRequestError(f"topic config {key} must be an integer >= 0")
        out[key] = value
    if out.get("segment_bytes", 1 << 20) < 64 * 1024:
        raise InvalidRequestError("segment_bytes must be >= 65536")
    return out


def _int(cmd: Mapping[str, Any], key: str, minimum: int) -> int:
    value = cmd.get(key)
    if type(value) is not int or value < minimum:
        raise InvalidRequestError(f"controller command: {key} must be an integer >= {minimum}")
    return value


def _str(cmd: Mapping[str, Any], key: str) -> str:
    value = cmd.get(key)
    if type(value) is not str or not value:
        raise InvalidRequestError(f"controller command: {key} must be a non-empty string")
    return value


class ControllerState:
    """Brokers, topics with their placement and configs, and id counters."""

    def __init__(self) -> None:
        self.brokers: dict[int, BrokerRecord] = {}
        self.topics: dict[str, TopicRecord] = {}
        self.next_group_id = CONTROLLER_GROUP_ID + 1
        self.next_producer_id = 1
        self.applied_index = 0

    # -- applying commands -------------------------------------------------------------

    def apply(self, index: int, command: bytes) -> object:
        """Apply the command at Raft ``index``; return its result, or the
        ZStreamError explaining its rejection. Entries at or below the last
        applied index (replayed after a snapshot) are ignored."""
        if index <= self.applied_index:
            return None
        self.applied_index = index
        try:
            cmd = msgpack.unpackb(command, raw=False, strict_map_key=True)
            if type(cmd) is not dict:
                raise InvalidRequestError("controller command must be a map")
            op = cmd.get("op")
            if op == "register_broker":
                return self._register_broker(cmd)
            if op == "create_topic":
                return self._create_topic(cmd)
            if op == "delete_topic":
                return self._delete_topic(cmd)
            if op == "allocate_producer_id":
                pid = self.next_producer_id
                self.next_producer_id += 1
                return pid
            raise InvalidRequestError(f"unknown controller command {op!r}")
        except ZStreamError as exc:
            return exc
        except ValueError as exc:  # msgpack's errors
            return InvalidRequestError(f"undecodable controller command: {exc}")

    def _register_broker(self, cmd: Mapping[str, Any]) -> BrokerRecord:
        record = BrokerRecord(_int(cmd, "id", 1), _str(cmd, "client_addr"), _str(cmd, "peer_addr"))
        self.brokers[record.id] = record
        return record

    def _create_topic(self, cmd: Mapping[str, Any]) -> TopicRecord:
        name = _str(cmd, "name")
        count = _int(cmd, "partitions", 1)
        rf = _int(cmd, "replication_factor", 1)
        raw_configs = cmd.get("configs", {})
        live = cmd.get("live", [])
        if type(raw_configs) is not dict:
            raise InvalidRequestError("controller command: configs must be a map")
        if type(live) is not list or not all(type(b) is int for b in live):
            raise InvalidRequestError("controller command: live must be a list of ids")
        configs = validate_topic_configs(raw_configs)
        if name in self.topics:
            raise TopicExistsError(f"topic {name!r} already exists")
        if count > MAX_PARTITIONS:
            raise InvalidRequestError(f"at most {MAX_PARTITIONS} partitions per topic")
        candidates = sorted(b for b in set(live) if b in self.brokers)
        if rf > len(candidates):
            raise UnavailableError(
                f"replication factor {rf} needs {rf} live brokers, {len(candidates)} are live"
            )
        leaders, replicas = self._load()
        assignments = []
        for p in range(count):
            leader = min(candidates, key=lambda b: (leaders.get(b, 0), replicas.get(b, 0), b))
            others = sorted(
                (b for b in candidates if b != leader), key=lambda b: (replicas.get(b, 0), b)
            )[: rf - 1]
            chosen = (leader, *others)
            leaders[leader] = leaders.get(leader, 0) + 1
            for b in chosen:
                replicas[b] = replicas.get(b, 0) + 1
            assignments.append(PartitionAssignment(p, self.next_group_id, chosen))
            self.next_group_id += 1
        topic = TopicRecord(name, rf, tuple(assignments), configs)
        self.topics[name] = topic
        return topic

    def _delete_topic(self, cmd: Mapping[str, Any]) -> TopicRecord:
        name = _str(cmd, "name")
        topic = self.topics.pop(name, None)
        if topic is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        return topic

    def _load(self) -> tuple[dict[int, int], dict[int, int]]:
        leaders: dict[int, int] = {}
        replicas: dict[int, int] = {}
        for topic in self.topics.values():
            for part in topic.partitions:
                leaders[part.replicas[0]] = leaders.get(part.replicas[0], 0) + 1
                for b in part.replicas:
                    replicas[b] = replicas.get(b, 0) + 1
        return leaders, replicas

    # -- queries -----------------------------------------------------------------------

    def partitions_of(self, broker_id: int) -> list[tuple[TopicRecord, PartitionAssignment]]:
        """Every partition with a replica on ``broker_id``."""
        return [
            (topic, part)
            for topic in self.topics.values()
            for part in topic.partitions
            if broker_id in part.replicas
        ]

    # -- snapshots ---------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return _pack(
            {
                "v": _SNAPSHOT_VERSION,
                "applied_index": self.applied_index,
                "brokers": [[b.id, b.client_addr, b.peer_addr] for b in self.brokers.values()],
                "topics": [
                    [
                        t.name,
                        t.replication_factor,
                        [[p.partition, p.group_id, list(p.replicas)] for p in t.partitions],
                        dict(t.configs),
                    ]
                    for t in self.topics.values()
                ],
                "next_group_id": self.next_group_id,
                "next_producer_id": self.next_producer_id,
            }
        )

    @classmethod
    def restore(cls, data: bytes) -> ControllerState:
        """Rebuild from `snapshot` bytes; raises ValueError on anything else."""
        try:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if doc["v"] != _SNAPSHOT_VERSION:
                raise ValueError(f"controller snapshot version {doc['v']} is not supported")
            state = cls()
            state.applied_index = int(doc["applied_index"])
            for bid, client, peer in doc["brokers"]:
                state.brokers[int(bid)] = BrokerRecord(int(bid), str(client), str(peer))
            for name, rf, parts, configs in doc["topics"]:
                state.topics[name] = TopicRecord(
                    str(name),
                    int(rf),
                    tuple(PartitionAssignment(int(p), int(g), tuple(r)) for p, g, r in parts),
                    {str(k): int(v) for k, v in configs.items()},
                )
            state.next_group_id = int(doc["next_group_id"])
            state.next_producer_id = int(doc["next_producer_id"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"bad controller snapshot: {exc!r}") from exc
        return state
