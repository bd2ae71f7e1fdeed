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
    {"op": "group_join_or_update", "group": str, "member_id": str,
     "topics": [str, ...] | None, "session_timeout_ms": int, "owned": [[str, int], ...]}
    {"op": "group_leave", "group": str, "member_id": str, "now_ms": int}
    {"op": "group_expire", "group": str, "member_id": str, "now_ms": int}
    {"op": "commit_offsets", "group": str, "member_id": str, "offsets": [[str, int, int], ...],
     "now_ms": int}
    {"op": "expire_offsets", "now_ms": int, "retention_ms": int}
    {"op": "group_delete", "group": str}
    {"op": "reassign_partition", "topic": str, "partition": int, "replicas": [int, ...],
     "live": [int, ...], "override": bool}
    {"op": "complete_reassignment", "topic": str, "partition": int, "group_id": int,
     "voters": [int, ...]}
    {"op": "alter_topic_configs", "name": str, "configs": {str: int}}
    {"op": "add_partitions", "name": str, "count": int, "live": [int, ...]}
    {"op": "decommission_broker", "id": int}
    {"op": "remove_broker", "id": int}
    {"op": "rebalance", "phase": "" | "moving" | "electing", "now_ms": int}
    {"op": "acl_add", "entries": [{ACL entry}, ...]}
    {"op": "acl_remove", "entries": [{ACL entry}, ...]}
    {"op": "quota_set", "principal": str, "produce_bytes_per_s": int | None,
     "fetch_bytes_per_s": int | None}

ACL entries and quotas have the wire form of clients/_acl.py. ``acl_add`` and
``acl_remove`` result in how many entries were added (new) or removed (present);
``quota_set`` replaces the principal's quota (both rates None: it has none).

``now_ms`` is the proposer's wall clock (0 or absent: none), as ``live`` below is its
view of the brokers: apply never reads a clock, so every replica agrees.

``live`` is the proposer's view of the live brokers when it proposed: placement
uses it and only it, so every replica computes the same placement.

Placement: each new partition's preferred leader (its first replica) is the live
broker leading the fewest partitions so far (ties: lowest id), and the other
replicas are the live brokers holding the fewest replicas (ties: lowest id). Over
many partitions this spreads leaders and replicas evenly.

Every partition gets a Raft group id of its own, never reused, so a topic deleted
and created again never meets the old one's data. Group 0 is the controller.

Consumer groups (see broker/_groups.py for the model and the assignor):

- ``group_join_or_update``: a member joins (``topics`` required, else
  UNKNOWN_MEMBER) or updates its subscription (``topics`` not None), session
  timeout and ``owned`` partitions (kept only for partitions that exist). A join or
  a subscription change reassigns the group. Result: the member's heartbeat reply.
- ``group_leave`` / ``group_expire``: the member is removed and its partitions
  reassigned (expire is proposed by the controller leader when a member misses its
  session timeout). An unknown member: UNKNOWN_MEMBER, nothing changes.
- ``commit_offsets``: a member may commit a partition in its ``owned`` that no
  other member has in ``owned``; member id "" commits only
  while the group has no members. Otherwise FENCED_MEMBER (or UNKNOWN_MEMBER) and
  nothing is committed. Unknown topics/partitions: UNKNOWN_TOPIC/UNKNOWN_PARTITION.
- ``create_topic``/``delete_topic`` reassign every group subscribing the topic; a
  deleted topic's committed offsets and owned entries go too.
- A group with neither members nor offsets is dropped. ``expire_offsets`` (offsets
  retention, proposed by the controller leader) drops a group with no members whose
  last commit or departure (``now_ms`` of those commands) is older than
  ``retention_ms``.
- ``group_delete`` (an operator's ``zstream group delete``) drops a group with no
  members, its committed offsets with it: GROUP_NOT_EMPTY while it has members,
  UNKNOWN_GROUP if there is no such group. A snapshot simply no longer lists it.

Reassignment (see broker/_reassign.py for how a partition's leader carries it out):

- ``reassign_partition`` records ``replicas`` as the partition's target: distinct
  registered brokers, at least one, every broker it adds live in the proposer's
  ``live``; at most one reassignment per partition (the same target again is
  accepted and changes nothing; ``override`` true, sent only by the controller
  leader to move a target off a dead or leaving broker, replaces it), no new replica
  on a decommissioning broker, and at most MAX_MOVES_PER_BROKER reassignments
  adding a replica to any one broker (UNAVAILABLE: retry once one finishes). A
  target holding the same brokers as the replica set only reorders it (the first
  is the preferred leader), at once. Result: the partition's assignment.
- ``complete_reassignment`` (proposed by the controller leader when the partition's
  leader reports that the group's voters are ``voters``) makes the target the
  replica set, if ``voters`` are the target's brokers; otherwise it is stale and
  rejected. Replicas outside the new set close their group and delete its data.

Growing a topic: ``add_partitions`` raises a topic's partition count to ``count``,
placing the new partitions as ``create_topic`` does, and reassigns the groups that
subscribe to it. Result: the topic.

Topic configs: ``alter_topic_configs`` merges validated ``configs`` into a topic's
(result: the topic); each replica hands its log the new settings when it next
reconciles.

Decommission:

- ``decommission_broker`` marks a registered broker as leaving (refused when the
  other placeable brokers could not hold the widest partition): no new replica goes
  there, and the controller leader reassigns its replicas a few at a time
  (`decommission_moves`). Result: the brokers leaving.
- ``remove_broker`` (the controller leader, once the broker holds no replica) removes
  it for good: it leaves ``brokers``, and ``register_broker`` refuses its id after.

Rebalance (an operator's ``zstream cluster rebalance``, or ``auto_rebalance``):

- ``rebalance`` sets the rebalance phase (result: the phase). ``moving``: the
  controller leader proposes the moves of `rebalance_moves` (broker/_balance.py's
  plan, bounded like any reassignment by MAX_MOVES_PER_BROKER) pass after pass until
  the plan is empty and no reassignment is in flight; then ``electing`` (``now_ms``
  recorded as ``rebalance_since_ms``): each partition's leader hands leadership to
  the partition's first replica when that one is a live, caught-up voter; after
  REBALANCE_ELECTION_MS the controller leader ends it (``""``). Outside that window a
  leader stays where elections put it (no automatic leader rebalance).

Snapshot: msgpack of {"v": 6, "applied_index", "brokers", "topics",
"next_group_id", "next_producer_id", "groups", "decommissioning", "removed", "acls",
"quotas", "rebalance"}, where
``groups`` is ``[[name, epoch, members, offsets, active_ms], ...]`` sorted by name, each member
``[member_id, [topic, ...], session_timeout_ms, member_epoch, target, owned]``
with ``target``/``owned`` sorted ``[[topic, partition], ...]``, and ``offsets``
sorted ``[[topic, partition, next_offset], ...]``. Each topic is ``[name, rf, partitions,
configs]``, each partition ``[partition, group_id, replicas, target]``. ``acls`` is
``[[principal, resource_type, pattern, name, operation, permission], ...]`` sorted,
``quotas`` ``[[principal, produce_bytes_per_s, fetch_bytes_per_s], ...]`` sorted by
principal, ``rebalance`` ``[phase, since_ms]``. A version 1 snapshot (no ``groups``)
restores with no groups, a version 2 one (no ``active_ms``) with 0, a version 3 one
(partitions without ``target``) with no reassignments; versions 1-4 (4: reassignment
targets, ``decommissioning``, ``removed``) restore with no ACLs and no quotas,
versions 1-5 with no rebalance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgpack

from zstream.broker._acl import AclTable
from zstream.broker._balance import Move, plan_rebalance
from zstream.broker._groups import Group, Member, TopicPartition, partition_map, rebalance
from zstream.clients import (
    FencedMemberError,
    GroupNotEmptyError,
    InvalidRequestError,
    TopicExistsError,
    UnavailableError,
    UnknownGroupError,
    UnknownMemberError,
    UnknownPartitionError,
    UnknownTopicError,
    ZStreamError,
)
from zstream.clients._acl import AclEntry, QuotaLimits
from zstream.clients._protocol import (
    MAX_MEMBER_ID_CHARS,
    MAX_SESSION_TIMEOUT_MS,
    MIN_SESSION_TIMEOUT_MS,
    validate_group_name,
    validate_topic_name,
)

__all__ = [
    "CONTROLLER_GROUP_ID",
    "TOPIC_CONFIG_KEYS",
    "BrokerRecord",
    "ControllerState",
    "PartitionAssignment",
    "TopicRecord",
    "acl_add_command",
    "acl_remove_command",
    "add_partitions_command",
    "allocate_producer_id_command",
    "alter_topic_configs_command",
    "commit_offsets_command",
    "complete_reassignment_command",
    "create_topic_command",
    "decommission_broker_command",
    "delete_topic_command",
    "group_delete_command",
    "group_expire_command",
    "group_join_or_update_command",
    "group_leave_command",
    "heartbeat_interval_ms",
    "quota_set_command",
    "reassign_partition_command",
    "rebalance_command",
    "register_broker_command",
    "remove_broker_command",
]

CONTROLLER_GROUP_ID = 0
TOPIC_CONFIG_KEYS = frozenset({"retention_bytes", "retention_ms", "segment_bytes"})
# Bounds that keep one command from asking the cluster for absurd work.
MAX_PARTITIONS = 10_000
# A member's subscription; far above any real use, it bounds one command's work.
MAX_MEMBER_TOPICS = 1_000
# Bounds on group state, which every replica keeps in memory and every snapshot
# carries: a client joining under ever new member ids, or committing into ever new
# group names, meets a clear error instead of growing the controller without end.
MAX_GROUP_MEMBERS = 1_000
MAX_GROUPS = 10_000
# Reassignments a broker may be receiving at once (each one a new replica catching up
# from its leader): a decommission moves replicas a few at a time instead of flooding
# the disks and links of the brokers that take them.
MAX_MOVES_PER_BROKER = 2
# ACL entries and quotas: each replica keeps them in memory and checks every request
# against them; thousands cover any real deployment, and the bound keeps one admin
# client from growing every broker without end.
MAX_ACLS = 10_000
MAX_ACLS_PER_COMMAND = 1_000
MAX_QUOTAS = 10_000
# A rebalance's leader elections: how long partition leaders keep handing leadership
# to their preferred replicas. Long enough for a restarted preferred replica to catch
# up and for a transfer retried after a failure (every 2 s); short enough that the
# cluster does not keep moving leaders back on its own afterwards.
REBALANCE_ELECTION_MS = 30_000
REBALANCE_PHASES = ("", "moving", "electing")
# 5 adds ACLs and quotas to version 4 (reassignment targets, decommissioning, removed);
# 6 adds the rebalance phase.
_SNAPSHOT_VERSION = 6
_SNAPSHOT_VERSIONS = (1, 2, 3, 4, 5, 6)


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
    # A reassignment in progress: the replica set the partition's leader walks its
    # Raft configuration towards (broker/_reassign.py); empty when none.
    target: tuple[int, ...] = ()


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


def group_join_or_update_command(
    group: str,
    member_id: str,
    topics: Sequence[str] | None,
    session_timeout_ms: int,
    owned: Iterable[TopicPartition],
) -> bytes:
    return _pack(
        {
            "op": "group_join_or_update",
            "group": group,
            "member_id": member_id,
            "topics": None if topics is None else sorted(set(topics)),
            "session_timeout_ms": session_timeout_ms,
            "owned": [list(tp) for tp in sorted(set(owned))],
        }
    )


def group_leave_command(group: str, member_id: str, now_ms: int = 0) -> bytes:
    return _pack({"op": "group_leave", "group": group, "member_id": member_id, "now_ms": now_ms})


def group_expire_command(group: str, member_id: str, now_ms: int = 0) -> bytes:
    return _pack({"op": "group_expire", "group": group, "member_id": member_id, "now_ms": now_ms})


def group_delete_command(group: str) -> bytes:
    return _pack({"op": "group_delete", "group": group})


def commit_offsets_command(
    group: str, member_id: str, offsets: Iterable[tuple[str, int, int]], now_ms: int = 0
) -> bytes:
    return _pack(
        {
            "op": "commit_offsets",
            "group": group,
            "member_id": member_id,
            "offsets": [list(o) for o in offsets],
            "now_ms": now_ms,
        }
    )


def expire_offsets_command(now_ms: int, retention_ms: int) -> bytes:
    return _pack({"op": "expire_offsets", "now_ms": now_ms, "retention_ms": retention_ms})


def reassign_partition_command(
    topic: str,
    partition: int,
    replicas: Sequence[int],
    live: Sequence[int],
    *,
    override: bool = False,
) -> bytes:
    return _pack(
        {
            "op": "reassign_partition",
            "topic": topic,
            "partition": partition,
            "replicas": list(replicas),
            "live": sorted(live),
            "override": override,
        }
    )


def complete_reassignment_command(
    topic: str, partition: int, group_id: int, voters: Iterable[int]
) -> bytes:
    return _pack(
        {
            "op": "complete_reassignment",
            "topic": topic,
            "partition": partition,
            "group_id": group_id,
            "voters": sorted(voters),
        }
    )


def add_partitions_command(name: str, count: int, live: Sequence[int]) -> bytes:
    return _pack({"op": "add_partitions", "name": name, "count": count, "live": sorted(live)})


def alter_topic_configs_command(name: str, configs: Mapping[str, int]) -> bytes:
    return _pack({"op": "alter_topic_configs", "name": name, "configs": dict(configs)})


def decommission_broker_command(broker_id: int) -> bytes:
    return _pack({"op": "decommission_broker", "id": broker_id})


def remove_broker_command(broker_id: int) -> bytes:
    return _pack({"op": "remove_broker", "id": broker_id})


def rebalance_command(phase: str, now_ms: int = 0) -> bytes:
    return _pack({"op": "rebalance", "phase": phase, "now_ms": now_ms})


def acl_add_command(entries: Iterable[AclEntry]) -> bytes:
    return _pack({"op": "acl_add", "entries": [e.to_wire() for e in entries]})


def acl_remove_command(entries: Iterable[AclEntry]) -> bytes:
    return _pack({"op": "acl_remove", "entries": [e.to_wire() for e in entries]})


def quota_set_command(quota: QuotaLimits) -> bytes:
    return _pack({"op": "quota_set", **quota.to_wire()})


def heartbeat_interval_ms(session_timeout_ms: int) -> int:
    """How often a member should heartbeat: a third of its session, at most 1 s."""
    return min(1000, session_timeout_ms // 3)


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


def _now_ms(cmd: Mapping[str, Any]) -> int:
    """The proposer's wall clock in a command, or 0 when it carries none."""
    value = cmd.get("now_ms", 0)
    if type(value) is not int or value < 0:
        raise InvalidRequestError("controller command: now_ms must be an integer >= 0")
    return value


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


def _group_name(cmd: Mapping[str, Any]) -> str:
    value = cmd.get("group")
    if type(value) is not str:
        raise InvalidRequestError("controller command: group must be a string")
    return validate_group_name(value)


def _member_id(cmd: Mapping[str, Any], *, allow_empty: bool) -> str:
    value = cmd.get("member_id")
    if type(value) is not str or len(value) > MAX_MEMBER_ID_CHARS or not (value or allow_empty):
        raise InvalidRequestError("controller command: bad member_id")
    return value


def _topic(value: object) -> str:
    if type(value) is not str:
        raise InvalidRequestError("controller command: a topic must be a string")
    return validate_topic_name(value)


def _topics(cmd: Mapping[str, Any]) -> tuple[str, ...] | None:
    value = cmd.get("topics")
    if value is None:
        return None
    if type(value) is not list or len(value) > MAX_MEMBER_TOPICS:
        raise InvalidRequestError(
            f"controller command: topics must be a list of at most {MAX_MEMBER_TOPICS}"
        )
    return tuple(sorted({_topic(t) for t in value}))


def _rows(value: object, width: int, what: str) -> list[tuple[str, list[int]]]:
    """``[[topic, int, ...], ...]`` with ``width`` integers >= 0 after the topic."""
    if type(value) is not list:
        raise InvalidRequestError(f"controller command: {what} must be a list")
    out: list[tuple[str, list[int]]] = []
    for row in value:
        if (
            type(row) is not list
            or len(row) != width + 1
            or not all(type(v) is int and v >= 0 for v in row[1:])
        ):
            raise InvalidRequestError(f"controller command: bad {what} entry")
        out.append((_topic(row[0]), row[1:]))
    return out


def _owned_rows(value: object) -> list[TopicPartition]:
    return [(topic, ints[0]) for topic, ints in _rows(value, 1, "owned")]


def _offset_rows(value: object) -> list[tuple[str, int, int]]:
    return [(topic, ints[0], ints[1]) for topic, ints in _rows(value, 2, "offsets")]


def _acl_entries(cmd: Mapping[str, Any]) -> list[AclEntry]:
    value = cmd.get("entries")
    if type(value) is not list or len(value) > MAX_ACLS_PER_COMMAND:
        raise InvalidRequestError(
            f"controller command: entries must be a list of at most {MAX_ACLS_PER_COMMAND}"
        )
    out = []
    for doc in value:
        if type(doc) is not dict:
            raise InvalidRequestError("controller command: an ACL entry must be a map")
        out.append(AclEntry.from_wire(doc))
    return out


def _describe_tps(tps: Iterable[TopicPartition]) -> str:
    shown = sorted(tps)
    text = ", ".join(f"{t}/{p}" for t, p in shown[:8])
    return text + (f" and {len(shown) - 8} more" if len(shown) > 8 else "")


class ControllerState:
    """Brokers, topics with their placement and configs, id counters, and
    consumer groups."""

    def __init__(self) -> None:
        self.brokers: dict[int, BrokerRecord] = {}
        self.topics: dict[str, TopicRecord] = {}
        self.groups: dict[str, Group] = {}
        self.next_group_id = CONTROLLER_GROUP_ID + 1
        self.next_producer_id = 1
        self.applied_index = 0
        # Decommission: brokers whose replicas are moving off, and brokers removed for
        # good (refused registration; their ids are never reused).
        self.decommissioning: set[int] = set()
        self.removed: set[int] = set()
        self.acls = AclTable()
        self.quotas: dict[str, QuotaLimits] = {}
        # Rebalance: "" (none), "moving" or "electing" since rebalance_since_ms.
        self.rebalance = ""
        self.rebalance_since_ms = 0

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
            if op == "group_join_or_update":
                return self._group_join_or_update(cmd)
            if op in ("group_leave", "group_expire"):
                self._group_remove(cmd)
                return None
            if op == "commit_offsets":
                self._commit_offsets(cmd)
                return None
            if op == "expire_offsets":
                return self._expire_offsets(cmd)
            if op == "group_delete":
                self._group_delete(cmd)
                return None
            if op == "reassign_partition":
                return self._reassign_partition(cmd)
            if op == "complete_reassignment":
                return self._complete_reassignment(cmd)
            if op == "add_partitions":
                return self._add_partitions(cmd)
            if op == "alter_topic_configs":
                return self._alter_topic_configs(cmd)
            if op == "decommission_broker":
                return self._decommission_broker(cmd)
            if op == "remove_broker":
                return self._remove_broker(cmd)
            if op == "rebalance":
                return self._rebalance(cmd)
            if op == "acl_add":
                return self._acl_add(cmd)
            if op == "acl_remove":
                return self.acls.remove(_acl_entries(cmd))
            if op == "quota_set":
                self._quota_set(cmd)
                return None
            raise InvalidRequestError(f"unknown controller command {op!r}")
        except ZStreamError as exc:
            return exc
        except ValueError as exc:  # msgpack's errors
            return InvalidRequestError(f"undecodable controller command: {exc}")

    def _register_broker(self, cmd: Mapping[str, Any]) -> BrokerRecord:
        record = BrokerRecord(_int(cmd, "id", 1), _str(cmd, "client_addr"), _str(cmd, "peer_addr"))
        if record.id in self.removed:
            raise InvalidRequestError(
                f"broker {record.id} was decommissioned and removed: it may not join again"
            )
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
        candidates = sorted(b for b in set(live) if self.placeable(b))
        if rf > len(candidates):
            raise UnavailableError(
                f"replication factor {rf} needs {rf} live brokers, {len(candidates)} are live"
            )
        assignments = self._place(range(count), rf, candidates)
        topic = TopicRecord(name, rf, tuple(assignments), configs)
        self.topics[name] = topic
        for group in self.groups.values():
            if any(name in m.topics for m in group.members.values()):
                rebalance(group, self._partition_counts())
        return topic

    def _delete_topic(self, cmd: Mapping[str, Any]) -> TopicRecord:
        name = _str(cmd, "name")
        topic = self.topics.pop(name, None)
        if topic is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        for group in list(self.groups.values()):
            group.offsets = {tp: o for tp, o in group.offsets.items() if tp[0] != name}
            touched = False
            for m in group.members.values():
                touched = touched or name in m.topics or any(t == name for t, _ in m.target)
                m.owned = {tp for tp in m.owned if tp[0] != name}
            if touched:
                rebalance(group, self._partition_counts())
            self._drop_if_empty(group)
        return topic

    # -- consumer groups ---------------------------------------------------------------

    def _partition_counts(self) -> dict[str, int]:
        return {name: len(t.partitions) for name, t in self.topics.items()}

    def _existing(self, tps: Iterable[TopicPartition]) -> set[TopicPartition]:
        """The partitions among ``tps`` that exist."""
        out = set()
        for topic, p in tps:
            record = self.topics.get(topic)
            if record is not None and p < len(record.partitions):
                out.add((topic, p))
        return out

    def _drop_if_empty(self, group: Group) -> None:
        if group.is_empty():
            del self.groups[group.name]

    def _group_join_or_update(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        name = _group_name(cmd)
        member_id = _member_id(cmd, allow_empty=False)
        topics = _topics(cmd)
        timeout = _int(cmd, "session_timeout_ms", MIN_SESSION_TIMEOUT_MS)
        if timeout > MAX_SESSION_TIMEOUT_MS:
            raise InvalidRequestError(f"session_timeout_ms must be <= {MAX_SESSION_TIMEOUT_MS}")
        owned = self._existing(_owned_rows(cmd.get("owned", [])))
        group = self.groups.get(name)
        member = group.members.get(member_id) if group is not None else None
        if member is None:
            if topics is None:
                raise UnknownMemberError(
                    f"group {name!r} has no member {member_id!r}: join again with topics"
                )
            if group is None:
                group = self.groups[name] = self._new_group(name)
            elif len(group.members) >= MAX_GROUP_MEMBERS:
                raise InvalidRequestError(
                    f"group {name!r} is full: at most {MAX_GROUP_MEMBERS} members"
                )
            group.epoch += 1
            member = Member(member_id, topics, timeout, member_epoch=group.epoch, owned=owned)
            group.members[member_id] = member
            rebalance(group, self._partition_counts())
        else:
            assert group is not None
            member.session_timeout_ms = timeout
            member.owned = owned
            if topics is not None and topics != member.topics:
                member.topics = topics
                rebalance(group, self._partition_counts())
        return self.heartbeat_reply(name, member_id)

    def _new_group(self, name: str) -> Group:
        if len(self.groups) >= MAX_GROUPS:
            raise InvalidRequestError(f"at most {MAX_GROUPS} consumer groups per cluster")
        return Group(name)

    def _group_remove(self, cmd: Mapping[str, Any]) -> None:
        name = _group_name(cmd)
        member_id = _member_id(cmd, allow_empty=False)
        group = self.groups.get(name)
        if group is None or member_id not in group.members:
            raise UnknownMemberError(f"group {name!r} has no member {member_id!r}")
        now_ms = _now_ms(cmd)
        del group.members[member_id]
        group.epoch += 1
        if now_ms:
            group.active_ms = now_ms
        rebalance(group, self._partition_counts())
        self._drop_if_empty(group)

    def _commit_offsets(self, cmd: Mapping[str, Any]) -> None:
        name = _group_name(cmd)
        member_id = _member_id(cmd, allow_empty=True)
        rows = _offset_rows(cmd.get("offsets"))
        for topic, p, _ in rows:
            record = self.topics.get(topic)
            if record is None:
                raise UnknownTopicError(f"unknown topic {topic!r}")
            if p >= len(record.partitions):
                raise UnknownPartitionError(f"topic {topic!r} has no partition {p}")
        group = self.groups.get(name)
        if member_id == "":
            if group is not None and group.members:
                raise FencedMemberError(
                    f"group {name!r} has members: only a member may commit, and only "
                    "for partitions it owns"
                )
        else:
            member = group.members.get(member_id) if group is not None else None
            if group is None or member is None:
                raise UnknownMemberError(f"group {name!r} has no member {member_id!r}")
            # Owned (claimed in a heartbeat), not merely targeted: a member consumes a
            # partition only after the controller saw its claim, so a commit for one
            # it does not own comes from a member that is not reading it.
            others = group.owned_by_others(member_id)
            bad = {(t, p) for t, p, _ in rows if (t, p) not in member.owned or (t, p) in others}
            if bad:
                raise FencedMemberError(
                    f"member {member_id!r} of group {name!r} does not own {_describe_tps(bad)}"
                )
        if not rows:
            return
        now_ms = _now_ms(cmd)
        if group is None:
            group = self.groups[name] = self._new_group(name)
        for topic, p, offset in rows:
            group.offsets[(topic, p)] = offset
        if now_ms:
            group.active_ms = now_ms

    def _expire_offsets(self, cmd: Mapping[str, Any]) -> list[str]:
        """Offsets retention (Kafka's offsets.retention.minutes): drop every group with
        no members whose last commit or departure is older than ``retention_ms`` before
        the proposer's ``now_ms``. A group whose time is unknown (an older snapshot)
        starts its clock now instead. Returns the dropped names."""
        now_ms = _int(cmd, "now_ms", 1)
        retention_ms = _int(cmd, "retention_ms", 0)
        dropped = []
        for name in sorted(self.groups):
            group = self.groups[name]
            if group.members:
                continue
            if not group.active_ms:
                group.active_ms = now_ms
            elif now_ms - group.active_ms > retention_ms:
                del self.groups[name]
                dropped.append(name)
        return dropped

    def _group_delete(self, cmd: Mapping[str, Any]) -> None:
        name = _group_name(cmd)
        group = self.groups.get(name)
        if group is None:
            raise UnknownGroupError(f"unknown group {name!r}")
        if group.members:
            raise GroupNotEmptyError(
                f"group {name!r} has {len(group.members)} member(s): stop its consumers "
                "(or wait for their session timeout) before deleting it"
            )
        del self.groups[name]

    def expired_offsets(self, now_ms: int, retention_ms: int) -> bool:
        """Would `expire_offsets` at ``now_ms`` change anything? (The leader asks before
        proposing, so an idle cluster writes no entries.)"""
        return any(
            not g.members and (not g.active_ms or now_ms - g.active_ms > retention_ms)
            for g in self.groups.values()
        )

    # -- ACLs and quotas ---------------------------------------------------------------

    def _acl_add(self, cmd: Mapping[str, Any]) -> int:
        entries = _acl_entries(cmd)
        new = {e for e in entries if e not in self.acls}
        if len(self.acls) + len(new) > MAX_ACLS:
            raise InvalidRequestError(f"at most {MAX_ACLS} ACL entries per cluster")
        return self.acls.add(entries)

    def _quota_set(self, cmd: Mapping[str, Any]) -> None:
        quota = QuotaLimits(
            cmd.get("principal"),  # type: ignore[arg-type]  # checked by QuotaLimits
            cmd.get("produce_bytes_per_s"),
            cmd.get("fetch_bytes_per_s"),
        )
        if quota.unlimited:
            self.quotas.pop(quota.principal, None)
            return
        if quota.principal not in self.quotas and len(self.quotas) >= MAX_QUOTAS:
            raise InvalidRequestError(f"at most {MAX_QUOTAS} quotas per cluster")
        self.quotas[quota.principal] = quota

    def _load(self) -> tuple[dict[int, int], dict[int, int]]:
        leaders: dict[int, int] = {}
        replicas: dict[int, int] = {}
        for topic in self.topics.values():
            for part in topic.partitions:
                leaders[part.replicas[0]] = leaders.get(part.replicas[0], 0) + 1
                for b in part.replicas:
                    replicas[b] = replicas.get(b, 0) + 1
        return leaders, replicas

    # -- reassignment --------------------------------------------------------------------

    def _partition(self, cmd: Mapping[str, Any]) -> tuple[TopicRecord, PartitionAssignment]:
        topic = self.topics.get(_topic(cmd.get("topic")))
        if topic is None:
            raise UnknownTopicError(f"unknown topic {cmd.get('topic')!r}")
        p = _int(cmd, "partition", 0)
        if p >= len(topic.partitions):
            raise UnknownPartitionError(f"topic {topic.name!r} has no partition {p}")
        return topic, topic.partitions[p]

    def _set_partition(self, topic: TopicRecord, part: PartitionAssignment) -> None:
        parts = list(topic.partitions)
        parts[part.partition] = part
        self.topics[topic.name] = dataclasses.replace(topic, partitions=tuple(parts))

    def moves_into(self, broker_id: int) -> int:
        """Reassignments in progress that add a replica on ``broker_id``."""
        return sum(
            1
            for t in self.topics.values()
            for p in t.partitions
            if p.target and broker_id in p.target and broker_id not in p.replicas
        )

    def _reassign_partition(self, cmd: Mapping[str, Any]) -> PartitionAssignment:
        topic, part = self._partition(cmd)
        raw, live = cmd.get("replicas"), cmd.get("live", [])
        if (
            type(raw) is not list
            or not raw
            or len(raw) > max(1, len(self.brokers))
            or not all(type(b) is int for b in raw)
        ):
            raise InvalidRequestError(
                "replicas must be a non-empty list of broker ids, at most one per broker"
            )
        if type(live) is not list or not all(type(b) is int for b in live):
            raise InvalidRequestError("controller command: live must be a list of ids")
        replicas = tuple(raw)
        if len(set(replicas)) != len(replicas):
            raise InvalidRequestError(f"replicas {list(replicas)} name a broker twice")
        unknown = [b for b in replicas if b not in self.brokers]
        if unknown:
            raise InvalidRequestError(f"replicas name unknown broker(s) {unknown}")
        override = cmd.get("override", False) is True
        if part.target:
            if part.target == replicas:
                return part  # asked again (a retry): nothing changes
            if not override:
                raise InvalidRequestError(
                    f"{topic.name}/{part.partition} is already being reassigned to "
                    f"{list(part.target)}: wait until it finishes"
                )
        elif set(replicas) == set(part.replicas):
            # The same brokers: only the preferred leader changes, no data moves.
            part = dataclasses.replace(part, replicas=replicas)
            self._set_partition(topic, part)
            return part
        added = [b for b in replicas if b not in part.replicas]
        dead = [b for b in added if b not in live]
        if dead:
            raise UnavailableError(f"broker(s) {dead} are not live: a new replica must be")
        leaving = [b for b in added if not self.placeable(b)]
        if leaving:
            raise InvalidRequestError(f"broker(s) {leaving} are being decommissioned")
        busy = [
            b for b in added if b not in part.target and self.moves_into(b) >= MAX_MOVES_PER_BROKER
        ]
        if busy:
            raise UnavailableError(
                f"broker(s) {busy} already receive {MAX_MOVES_PER_BROKER} reassignments: "
                "retry once one finishes"
            )
        part = dataclasses.replace(part, target=replicas)
        self._set_partition(topic, part)
        return part

    def _complete_reassignment(self, cmd: Mapping[str, Any]) -> PartitionAssignment:
        topic, part = self._partition(cmd)
        group_id = _int(cmd, "group_id", 1)
        voters = cmd.get("voters")
        if type(voters) is not list or not all(type(v) is int for v in voters):
            raise InvalidRequestError("controller command: voters must be a list of ids")
        if group_id != part.group_id or not part.target or set(voters) != set(part.target):
            raise InvalidRequestError(
                f"stale reassignment report for {topic.name}/{part.partition}: voters "
                f"{sorted(voters)}, target {list(part.target)}"
            )
        part = dataclasses.replace(part, replicas=part.target, target=())
        self._set_partition(topic, part)
        return part

    def _place(
        self, partitions: Iterable[int], rf: int, candidates: Sequence[int]
    ) -> list[PartitionAssignment]:
        """New partitions placed as the module docstring says, each with a new group id."""
        leaders, replicas = self._load()
        assignments = []
        for p in partitions:
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
        return assignments

    def _add_partitions(self, cmd: Mapping[str, Any]) -> TopicRecord:
        name = _str(cmd, "name")
        count = _int(cmd, "count", 1)
        live = cmd.get("live", [])
        if type(live) is not list or not all(type(b) is int for b in live):
            raise InvalidRequestError("controller command: live must be a list of ids")
        topic = self.topics.get(name)
        if topic is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        have = len(topic.partitions)
        if count <= have:
            raise InvalidRequestError(
                f"topic {name!r} has {have} partitions: the new count must be larger"
            )
        if count > MAX_PARTITIONS:
            raise InvalidRequestError(f"at most {MAX_PARTITIONS} partitions per topic")
        candidates = sorted(b for b in set(live) if self.placeable(b))
        rf = topic.replication_factor
        if rf > len(candidates):
            raise UnavailableError(
                f"replication factor {rf} needs {rf} live brokers, {len(candidates)} are live"
            )
        added = self._place(range(have, count), rf, candidates)
        topic = dataclasses.replace(topic, partitions=(*topic.partitions, *added))
        self.topics[name] = topic
        for group in self.groups.values():
            if any(name in m.topics for m in group.members.values()):
                rebalance(group, self._partition_counts())
        return topic

    # -- topic configs -------------------------------------------------------------------

    def _alter_topic_configs(self, cmd: Mapping[str, Any]) -> TopicRecord:
        name = _str(cmd, "name")
        raw = cmd.get("configs")
        if type(raw) is not dict or not raw:
            raise InvalidRequestError("controller command: configs must be a non-empty map")
        topic = self.topics.get(name)
        if topic is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        merged = validate_topic_configs({**topic.configs, **raw})
        topic = dataclasses.replace(topic, configs=merged)
        self.topics[name] = topic
        return topic

    # -- decommission --------------------------------------------------------------------

    def placeable(self, broker_id: int) -> bool:
        """May new replicas go to ``broker_id`` (registered, not leaving)?"""
        return broker_id in self.brokers and broker_id not in self.decommissioning

    def replica_counts(self) -> dict[int, int]:
        """Replicas per broker, counting where reassignments are taking them."""
        counts: dict[int, int] = {}
        for t in self.topics.values():
            for p in t.partitions:
                for b in set(p.replicas) | set(p.target):
                    counts[b] = counts.get(b, 0) + 1
        return counts

    def _decommission_broker(self, cmd: Mapping[str, Any]) -> list[int]:
        broker_id = _int(cmd, "id", 1)
        if broker_id in self.removed:
            raise InvalidRequestError(f"broker {broker_id} is removed already")
        if broker_id not in self.brokers:
            raise InvalidRequestError(f"unknown broker {broker_id}")
        if broker_id not in self.decommissioning:
            remaining = [b for b in self.brokers if self.placeable(b) and b != broker_id]
            widest = max(
                (len(p.replicas) for t in self.topics.values() for p in t.partitions), default=0
            )
            if len(remaining) < widest:
                raise UnavailableError(
                    f"broker {broker_id} cannot leave: a partition has {widest} replicas "
                    f"and only {len(remaining)} other brokers would remain"
                )
            self.decommissioning.add(broker_id)
        return sorted(self.decommissioning)

    def _remove_broker(self, cmd: Mapping[str, Any]) -> int:
        broker_id = _int(cmd, "id", 1)
        if broker_id not in self.decommissioning:
            raise InvalidRequestError(f"broker {broker_id} is not being decommissioned")
        held = [p for t in self.topics.values() for p in t.partitions if broker_id in p.replicas]
        if held or any(broker_id in p.target for t in self.topics.values() for p in t.partitions):
            raise UnavailableError(f"broker {broker_id} still holds {len(held)} replica(s)")
        self.decommissioning.discard(broker_id)
        self.removed.add(broker_id)
        self.brokers.pop(broker_id, None)
        return broker_id

    def decommission_moves(
        self, live: Iterable[int]
    ) -> list[tuple[str, int, tuple[int, ...], bool]]:
        """The reassignments that move replicas off decommissioning brokers now (see
        `replacement_moves`)."""
        return self.replacement_moves(self.decommissioning, live)

    def replacement_moves(
        self, leaving: Iterable[int], live: Iterable[int]
    ) -> list[tuple[str, int, tuple[int, ...], bool]]:
        """The reassignments that move replicas off the ``leaving`` brokers (being
        decommissioned, or dead for too long), as the controller leader would propose
        them now: (topic, partition, new replicas, override) for each partition
        holding such a replica, when enough ``live`` placeable brokers exist to keep
        its replica count. A partition being reassigned already is only touched when
        its target names a leaving broker: the target is then replaced (``override``),
        so a move towards a broker that died does not wait for it forever. The leaving
        broker's place goes to the live placeable broker with the fewest replicas
        (ties: lowest id) not in the partition; the order of the others is kept, so a
        leaving preferred leader hands that role to the next replica."""
        gone = set(leaving)
        live_set = set(live) - gone
        counts = self.replica_counts()
        moves = []
        for t in sorted(self.topics.values(), key=lambda t: t.name):
            for p in t.partitions:
                base = p.target or p.replicas
                out = [b for b in base if b in gone]
                if not out:
                    continue
                keep = [b for b in base if b not in gone]
                spare = sorted(
                    (
                        b
                        for b in live_set
                        if self.placeable(b) and b not in p.replicas and b not in p.target
                    ),
                    key=lambda b: (counts.get(b, 0), b),
                )
                if len(spare) < len(out):
                    continue
                chosen = spare[: len(out)]
                for b in chosen:
                    counts[b] = counts.get(b, 0) + 1
                moves.append((t.name, p.partition, (*keep, *chosen), bool(p.target)))
        return moves

    # -- rebalance -----------------------------------------------------------------------

    def _rebalance(self, cmd: Mapping[str, Any]) -> str:
        phase = cmd.get("phase")
        if type(phase) is not str or phase not in REBALANCE_PHASES:
            raise InvalidRequestError(f"rebalance phase must be one of {REBALANCE_PHASES}")
        since_ms = _now_ms(cmd)
        self.rebalance, self.rebalance_since_ms = phase, since_ms
        return phase

    def rebalance_plan(self, live: Iterable[int]) -> list[Move]:
        """broker/_balance.py's plan over the live placeable brokers: partitions being
        reassigned count where they are going and stay as they are."""
        parts = {
            (t.name, p.partition): p.target or p.replicas
            for t in self.topics.values()
            for p in t.partitions
        }
        fixed = [
            (t.name, p.partition) for t in self.topics.values() for p in t.partitions if p.target
        ]
        return plan_rebalance(parts, [b for b in set(live) if self.placeable(b)], fixed)

    def rebalance_moves(self, live: Iterable[int]) -> list[tuple[str, int, tuple[int, ...], bool]]:
        """`rebalance_plan` in `replacement_moves`' shape (never an override)."""
        return [(m.topic, m.partition, m.target, False) for m in self.rebalance_plan(live)]

    def rebalance_reply(self, plan: Sequence[Move], dry_run: bool) -> dict[str, Any]:
        """The RebalanceRequest reply: the plan's moves and every partition's preferred
        leader once the plan is carried out."""
        after = {(m.topic, m.partition): m.target for m in plan}
        return {
            "dry_run": dry_run,
            "phase": self.rebalance,
            "moves": [
                {
                    "topic": m.topic,
                    "partition": m.partition,
                    "replicas": list(m.replicas),
                    "target": list(m.target),
                }
                for m in plan
            ],
            "preferred_leaders": [
                {
                    "topic": t.name,
                    "partition": p.partition,
                    "preferred": after.get((t.name, p.partition), p.target or p.replicas)[0],
                }
                for t in sorted(self.topics.values(), key=lambda t: t.name)
                for p in t.partitions
            ],
        }

    def reassignments(self) -> list[dict[str, Any]]:
        """Every reassignment in progress (the ListReassignmentsRequest reply rows)."""
        return [
            {
                "topic": t.name,
                "partition": p.partition,
                "group_id": p.group_id,
                "replicas": list(p.replicas),
                "target": list(p.target),
                "adding": [b for b in p.target if b not in p.replicas],
                "removing": [b for b in p.replicas if b not in p.target],
            }
            for t in sorted(self.topics.values(), key=lambda t: t.name)
            for p in t.partitions
            if p.target
        ]

    # -- queries -----------------------------------------------------------------------

    def partitions_of(self, broker_id: int) -> list[tuple[TopicRecord, PartitionAssignment]]:
        """Every partition with a replica on ``broker_id``, or one being added there by
        a reassignment (its target)."""
        return [
            (topic, part)
            for topic in self.topics.values()
            for part in topic.partitions
            if broker_id in part.replicas or broker_id in part.target
        ]

    def heartbeat_reply(self, group: str, member_id: str) -> dict[str, Any]:
        """The reply to a member's heartbeat; raises UnknownMemberError."""
        record = self.groups.get(group)
        member = record.members.get(member_id) if record is not None else None
        if record is None or member is None:
            raise UnknownMemberError(
                f"group {group!r} has no member {member_id!r}: join again with topics"
            )
        return {
            "member_id": member_id,
            "member_epoch": member.member_epoch,
            "heartbeat_interval_ms": heartbeat_interval_ms(member.session_timeout_ms),
            "assignment": partition_map(record.assignment(member_id)),
        }

    def has_member(self, group: str, member_id: str) -> bool:
        record = self.groups.get(group)
        return record is not None and member_id in record.members

    def heartbeat_changes_nothing(
        self,
        group: str,
        member_id: str,
        topics: Sequence[str] | None,
        session_timeout_ms: int,
        owned: Iterable[TopicPartition],
    ) -> bool:
        """True when this heartbeat, applied, would change no state (a known member
        reporting what the state already holds): it needs no Raft proposal."""
        record = self.groups.get(group)
        member = record.members.get(member_id) if record is not None else None
        return (
            member is not None
            and (topics is None or tuple(sorted(set(topics))) == member.topics)
            and session_timeout_ms == member.session_timeout_ms
            and self._existing(owned) == member.owned
        )

    def list_groups(self) -> list[str]:
        return sorted(self.groups)

    def members(self) -> list[tuple[str, str, int]]:
        """Every (group, member_id, session_timeout_ms)."""
        return [
            (g.name, m.member_id, m.session_timeout_ms)
            for g in self.groups.values()
            for m in g.members.values()
        ]

    def describe_group(self, name: str) -> dict[str, Any]:
        """The DescribeGroupRequest reply (see clients/_protocol.py)."""
        group = self.groups.get(name)
        if group is None:
            raise UnknownGroupError(f"unknown group {name!r}")
        return {
            "group": name,
            "epoch": group.epoch,
            "members": [
                {
                    "member_id": m.member_id,
                    "member_epoch": m.member_epoch,
                    "topics": list(m.topics),
                    "session_timeout_ms": m.session_timeout_ms,
                    "assignment": partition_map(group.assignment(m.member_id)),
                    "target": partition_map(m.target),
                    "owned": partition_map(m.owned),
                }
                for m in sorted(group.members.values(), key=lambda m: m.member_id)
            ],
            "offsets": self._offsets_doc(group, None),
        }

    def fetch_offsets(self, name: str, topics: Sequence[str] | None) -> dict[str, Any]:
        """The FetchOffsetsRequest reply: no offsets for an unknown group."""
        group = self.groups.get(name)
        return {"offsets": {} if group is None else self._offsets_doc(group, topics)}

    @staticmethod
    def _offsets_doc(group: Group, topics: Sequence[str] | None) -> dict[str, list[list[int]]]:
        wanted = None if topics is None else set(topics)
        out: dict[str, list[list[int]]] = {}
        for (topic, p), offset in sorted(group.offsets.items()):
            if wanted is None or topic in wanted:
                out.setdefault(topic, []).append([p, offset])
        return out

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
                        [
                            [p.partition, p.group_id, list(p.replicas), list(p.target)]
                            for p in t.partitions
                        ],
                        dict(t.configs),
                    ]
                    for t in self.topics.values()
                ],
                "next_group_id": self.next_group_id,
                "next_producer_id": self.next_producer_id,
                "decommissioning": sorted(self.decommissioning),
                "removed": sorted(self.removed),
                "groups": [
                    [
                        g.name,
                        g.epoch,
                        [
                            [
                                m.member_id,
                                list(m.topics),
                                m.session_timeout_ms,
                                m.member_epoch,
                                [list(tp) for tp in sorted(m.target)],
                                [list(tp) for tp in sorted(m.owned)],
                            ]
                            for m in sorted(g.members.values(), key=lambda m: m.member_id)
                        ],
                        [[t, p, o] for (t, p), o in sorted(g.offsets.items())],
                        g.active_ms,
                    ]
                    for g in sorted(self.groups.values(), key=lambda g: g.name)
                ],
                "acls": [
                    [
                        e.principal,
                        e.resource_type.value,
                        e.pattern.value,
                        e.name,
                        e.operation.value,
                        e.permission.value,
                    ]
                    for e in self.acls.entries()
                ],
                "quotas": [
                    [q.principal, q.produce_bytes_per_s, q.fetch_bytes_per_s]
                    for _, q in sorted(self.quotas.items())
                ],
                "rebalance": [self.rebalance, self.rebalance_since_ms],
            }
        )

    @classmethod
    def restore(cls, data: bytes) -> ControllerState:
        """Rebuild from `snapshot` bytes; raises ValueError on anything else."""
        try:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if doc["v"] not in _SNAPSHOT_VERSIONS:
                raise ValueError(f"controller snapshot version {doc['v']} is not supported")
            state = cls()
            state.applied_index = int(doc["applied_index"])
            for bid, client, peer in doc["brokers"]:
                state.brokers[int(bid)] = BrokerRecord(int(bid), str(client), str(peer))
            for name, rf, parts, configs in doc["topics"]:
                state.topics[name] = TopicRecord(
                    str(name),
                    int(rf),
                    tuple(
                        # v4 adds the reassignment target; older versions have none.
                        PartitionAssignment(
                            int(p), int(g), tuple(r), tuple(int(b) for b in (rest or [[]])[0])
                        )
                        for p, g, r, *rest in parts
                    ),
                    {str(k): int(v) for k, v in configs.items()},
                )
            state.next_group_id = int(doc["next_group_id"])
            state.next_producer_id = int(doc["next_producer_id"])
            state.decommissioning = {int(b) for b in doc.get("decommissioning", [])}
            state.removed = {int(b) for b in doc.get("removed", [])}
            for name, epoch, members, offsets, *rest in doc.get("groups", []):
                group = Group(str(name), int(epoch), active_ms=int(rest[0]) if rest else 0)
                for mid, topics, timeout, member_epoch, target, owned in members:
                    group.members[str(mid)] = Member(
                        str(mid),
                        tuple(str(t) for t in topics),
                        int(timeout),
                        int(member_epoch),
                        {(str(t), int(p)) for t, p in target},
                        {(str(t), int(p)) for t, p in owned},
                    )
                group.offsets = {(str(t), int(p)): int(o) for t, p, o in offsets}
                state.groups[group.name] = group
            state.acls = AclTable(AclEntry(*row) for row in doc.get("acls", []))
            for principal, produce, fetch in doc.get("quotas", []):
                quota = QuotaLimits(principal, produce, fetch)
                state.quotas[quota.principal] = quota
            phase, since_ms = doc.get("rebalance", ["", 0])
            if phase not in REBALANCE_PHASES:
                raise ValueError(f"bad controller snapshot: rebalance phase {phase!r}")
            state.rebalance, state.rebalance_since_ms = str(phase), int(since_ms)
        except ZStreamError as exc:  # an entry that does not validate
            raise ValueError(f"bad controller snapshot: {exc}") from exc
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"bad controller snapshot: {exc!r}") from exc
        return state
