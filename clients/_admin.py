"""Admin: topics, consumer groups and cluster inspection."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from zstream.clients._acl import AclEntry, QuotaLimits, ResourceType
from zstream.clients._cluster import ClusterClient
from zstream.clients._credentials import Credentials
from zstream.clients._errors import OffsetOutOfRangeError, ZStreamError
from zstream.clients._protocol import (
    AclAddRequest,
    AclListRequest,
    AclRemoveRequest,
    AddPartitionsRequest,
    AlterTopicRequest,
    CommitOffsetsRequest,
    CreateTopicRequest,
    DecommissionBrokerRequest,
    DeleteGroupRequest,
    DeleteTopicRequest,
    DescribeGroupRequest,
    DescribeTopicRequest,
    FetchOffsetsRequest,
    FetchRequest,
    ListGroupsRequest,
    ListReassignmentsRequest,
    ListTopicsRequest,
    MetadataRequest,
    OffsetsForTimeRequest,
    QuotaListRequest,
    QuotaSetRequest,
    ReassignPartitionRequest,
    RebalanceRequest,
)

__all__ = ["Admin", "partition_bounds"]

# Each broker's report of the partitions it leads (for lag): a dead broker costs this.
_REPORT_TIMEOUT_S = 2.0


async def partition_bounds(cluster: ClusterClient, topic: str, partition: int) -> tuple[int, int]:
    """(log start, high watermark) of one partition, from its leader: a one-byte fetch
    at offset 0, whose OFFSET_OUT_OF_RANGE (once retention moved the start) carries
    the same two figures."""
    probe = FetchRequest(topic, partition, 0, max_bytes=1, max_wait_ms=0)
    try:
        result = (await cluster.call_leader(topic, partition, probe)).result
    except OffsetOutOfRangeError as exc:
        start, end = exc.details.get("start"), exc.details.get("end")
        if isinstance(start, int) and isinstance(end, int):
            return start, end
        raise
    return int(result["log_start"]), int(result["hwm"])


class Admin:
    """``async with Admin("127.0.0.1:7101") as admin: await admin.create_topic(...)``"""

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        *,
        timeout_s: float = 10.0,
        credentials: str | os.PathLike[str] | Credentials | None = None,
        server_key: str | os.PathLike[str] | None = None,
    ) -> None:
        self._cluster = ClusterClient(
            bootstrap, timeout_s=timeout_s, credentials=credentials, server_key=server_key
        )

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int = 1,
        configs: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        request = CreateTopicRequest(name, partitions, replication_factor, dict(configs or {}))
        return (await self._cluster.call_controller(request)).result

    async def alter_topic(self, name: str, configs: Mapping[str, int]) -> dict[str, Any]:
        """Change a topic's configs (merged into its own; see AlterTopicRequest);
        returns the topic's description."""
        request = AlterTopicRequest(name, dict(configs))
        return (await self._cluster.call_controller(request)).result

    async def add_partitions(self, name: str, count: int) -> dict[str, Any]:
        """Grow a topic to ``count`` partitions; returns its description."""
        return (await self._cluster.call_controller(AddPartitionsRequest(name, count))).result

    async def delete_topic(self, name: str) -> None:
        await self._cluster.call_controller(DeleteTopicRequest(name))

    async def list_topics(self) -> list[str]:
        topics: list[str] = (await self._cluster.call_any(ListTopicsRequest())).result["topics"]
        return topics

    async def describe_topic(self, name: str) -> dict[str, Any]:
        return (await self._cluster.call_any(DescribeTopicRequest(name))).result

    # -- consumer groups (the controller answers) -----------------------------------------

    async def list_groups(self) -> list[str]:
        """Every group with members or committed offsets, sorted."""
        groups: list[str] = (await self._cluster.call_controller(ListGroupsRequest())).result[
            "groups"
        ]
        return groups

    async def describe_group(self, name: str) -> dict[str, Any]:
        """The controller's description of the group (members with their assignment,
        target and owned partitions; committed offsets: see DescribeGroupRequest),
        plus ``partitions``: one row per partition the group commits or is assigned,
        sorted::

            {"topic", "partition",
             "member": member_id | None,   # whose target holds it
             "reading": member_id | None,  # who owns it now (differs while it moves)
             "committed": int | None, "log_start": int | None, "hwm": int | None,
             "lag": int | None}

        ``lag`` is the partition leader's high watermark minus the committed offset;
        with no commit, the records a consumer starting at the log start would read
        (hwm - log_start); None when no leader reported the partition's offsets. A
        negative lag means a commit past the partition's end (set by hand, or records
        lost), which the consumer resets by its auto_offset_reset.
        Raises UnknownGroupError."""
        doc = (await self._cluster.call_controller(DescribeGroupRequest(name))).result
        owners: dict[tuple[str, int], str] = {}
        readers: dict[tuple[str, int], str] = {}
        for member in doc["members"]:
            for topic, parts in member["target"].items():
                for p in parts:
                    owners[(topic, p)] = member["member_id"]
            for topic, parts in member["owned"].items():
                for p in parts:
                    readers[(topic, p)] = member["member_id"]
        committed = {
            (topic, p): offset for topic, pairs in doc["offsets"].items() for p, offset in pairs
        }
        keys = sorted(set(owners) | set(readers) | set(committed))
        bounds = await self._leader_offsets(sorted({t for t, _ in keys}))
        rows = []
        for key in keys:
            log_start, hwm = bounds.get(key, (None, None))
            offset = committed.get(key)
            lag = None
            if hwm is not None:
                start = offset if offset is not None else log_start
                lag = None if start is None else hwm - start
            rows.append(
                {
                    "topic": key[0],
                    "partition": key[1],
                    "member": owners.get(key),
                    "reading": readers.get(key),
                    "committed": offset,
                    "log_start": log_start,
                    "hwm": hwm,
                    "lag": lag,
                }
            )
        return {**doc, "partitions": rows}

    async def fetch_offsets(
        self, group: str, topics: Sequence[str] | None = None
    ) -> dict[tuple[str, int], int]:
        """The group's committed offsets (next offset to read) by (topic, partition)."""
        request = FetchOffsetsRequest(group, list(topics) if topics is not None else None)
        result = (await self._cluster.call_controller(request)).result
        return {(t, p): o for t, pairs in result["offsets"].items() for p, o in pairs}

    async def commit_offsets(
        self, group: str, offsets: Mapping[tuple[str, int], int], member_id: str = ""
    ) -> None:
        """Commit offsets; with no ``member_id`` only while the group has no members
        (to set a stopped group's positions). FencedMemberError otherwise."""
        by_topic: dict[str, list[list[int]]] = {}
        for (topic, p), offset in sorted(offsets.items()):
            by_topic.setdefault(topic, []).append([p, offset])
        await self._cluster.call_controller(CommitOffsetsRequest(group, by_topic, member_id))

    async def delete_group(self, group: str) -> None:
        """Delete a group that has no members, with its committed offsets.
        GroupNotEmptyError while it has members; UnknownGroupError if there is none."""
        await self._cluster.call_controller(DeleteGroupRequest(group))

    async def partition_bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        """(log start, high watermark) of every partition of ``topic``, each from its
        leader (a zero-byte fetch, so the figures are the leader's own, not metadata's).
        UnknownTopicError if there is no such topic."""
        await self._cluster.refresh([topic])
        return {p: await partition_bounds(self._cluster, topic, p) for p in self._partitions(topic)}

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        """For every partition of ``topic``, the first offset whose record timestamp is
        >= ``timestamp_ms`` (the high watermark when none is that recent); see
        OffsetsForTimeRequest for how the leader searches."""
        await self._cluster.refresh([topic])
        out: dict[int, int] = {}
        for p in self._partitions(topic):
            request = OffsetsForTimeRequest(topic, p, timestamp_ms)
            out[p] = (await self._cluster.call_leader(topic, p, request)).result["offset"]
        return out

    def _partitions(self, topic: str) -> list[int]:
        return sorted(p["partition"] for p in self._cluster.topic(topic)["partitions"])

    async def _leader_offsets(
        self, topics: Sequence[str]
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """(log start, high watermark) of each partition of ``topics``, as its leader
        reports them (a broker's metadata carries them only for what it leads). Every
        live broker is asked at once, so a dead one costs one timeout, not one each."""
        if not topics:
            return {}
        meta = await self._cluster.refresh()
        request = MetadataRequest(list(topics))
        calls = [
            self._cluster.connection(b["client_addr"]).call(request, timeout_s=_REPORT_TIMEOUT_S)
            for b in meta["brokers"]
            if b["alive"]
        ]
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for reply in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(reply, ZStreamError):
                continue  # that broker's partitions stay unknown
            if isinstance(reply, BaseException):
                raise reply
            for topic in reply.result["topics"]:
                for p in topic["partitions"]:
                    if p.get("hwm") is not None and p.get("log_start") is not None:
                        out[(topic["name"], p["partition"])] = (p["log_start"], p["hwm"])
        return out

    # -- cluster operations (the controller answers) --------------------------------------

    async def reassign_partition(
        self, topic: str, partition: int, replicas: Sequence[int]
    ) -> dict[str, Any]:
        """Move a partition's replicas to ``replicas`` (the first: preferred leader).
        Returns at once, with ``{"topic", "partition", "replicas", "target"}``: the
        partition's leader carries the move out (learners catch up, then a joint
        configuration); watch it with `list_reassignments`. See
        ReassignPartitionRequest for the errors."""
        request = ReassignPartitionRequest(topic, partition, list(replicas))
        return (await self._cluster.call_controller(request)).result

    async def list_reassignments(self) -> list[dict[str, Any]]:
        """Reassignments in progress: ``{"topic", "partition", "group_id", "replicas",
        "target", "adding", "removing"}`` each, sorted by topic and partition."""
        reply = await self._cluster.call_controller(ListReassignmentsRequest())
        rows: list[dict[str, Any]] = reply.result["reassignments"]
        return rows

    async def decommission_broker(self, broker_id: int) -> list[int]:
        """Start moving every replica off ``broker_id``, then remove it for good (see
        DecommissionBrokerRequest). Returns the brokers leaving; watch the progress in
        `describe_cluster` (each broker's ``state`` and ``replicas``)."""
        reply = await self._cluster.call_controller(DecommissionBrokerRequest(broker_id))
        leaving: list[int] = reply.result["decommissioning"]
        return leaving

    async def rebalance(self, dry_run: bool = False) -> dict[str, Any]:
        """Even out replica counts and preferred leaders (see RebalanceRequest); with
        ``dry_run`` only the plan. Returns at once with the controller's reply plus
        ``leader_transfers``: ``[{"topic", "partition", "from", "to"}]``, each partition
        whose leader now (as every live broker reports what it leads) is not the
        preferred leader the plan gives it. Moves show in `list_reassignments`."""
        reply = await self._cluster.call_controller(RebalanceRequest(dry_run))
        doc: dict[str, Any] = dict(reply.result)
        leaders = await self._leaders()
        doc["leader_transfers"] = [
            {"topic": p["topic"], "partition": p["partition"], "from": leader, "to": p["preferred"]}
            for p in doc["preferred_leaders"]
            if (leader := leaders.get((p["topic"], p["partition"]))) is not None
            and leader != p["preferred"]
        ]
        return doc

    async def _leaders(self) -> dict[tuple[str, int], int]:
        """Each partition's leader, as the broker leading it says (a broker's metadata
        names the true leader only of what it hosts). Every live broker at once."""
        meta = await self._cluster.refresh()
        alive = [b for b in meta["brokers"] if b["alive"]]
        calls = [
            self._cluster.connection(b["client_addr"]).call(
                MetadataRequest(None), timeout_s=_REPORT_TIMEOUT_S
            )
            for b in alive
        ]
        out: dict[tuple[str, int], int] = {}
        replies = await asyncio.gather(*calls, return_exceptions=True)
        for b, reply in zip(alive, replies, strict=True):
            if isinstance(reply, ZStreamError):
                continue
            if isinstance(reply, BaseException):
                raise reply
            for topic in reply.result["topics"]:
                for p in topic["partitions"]:
                    if p.get("hwm") is not None:  # it leads this one
                        out[(topic["name"], p["partition"])] = b["id"]
        return out

    # -- ACLs and quotas (the controller answers; see clients/_acl.py) ---------------------

    async def list_acls(
        self, principal: str | None = None, resource_type: ResourceType | str | None = None
    ) -> list[AclEntry]:
        """Every ACL entry, sorted; only ``principal``'s / ``resource_type``'s if given."""
        rtype = None if resource_type is None else ResourceType(resource_type).value
        reply = await self._cluster.call_controller(AclListRequest(principal, rtype))
        return [AclEntry.from_wire(doc) for doc in reply.result["acls"]]

    async def add_acls(self, entries: Iterable[AclEntry]) -> int:
        """Add entries (replicated before the reply); returns how many were new."""
        request = AclAddRequest([e.to_wire() for e in entries])
        added: int = (await self._cluster.call_controller(request)).result["added"]
        return added

    async def remove_acls(self, entries: Iterable[AclEntry]) -> int:
        """Remove exactly these entries; returns how many there were."""
        request = AclRemoveRequest([e.to_wire() for e in entries])
        removed: int = (await self._cluster.call_controller(request)).result["removed"]
        return removed

    async def set_quota(
        self,
        principal: str,
        *,
        produce_bytes_per_s: int | None = None,
        fetch_bytes_per_s: int | None = None,
    ) -> None:
        """Replace ``principal``'s byte rates (``*``: the default for principals with
        no quota of their own); None is no limit, both None removes the quota."""
        request = QuotaSetRequest(principal, produce_bytes_per_s, fetch_bytes_per_s)
        await self._cluster.call_controller(request)

    async def list_quotas(self) -> list[QuotaLimits]:
        result = (await self._cluster.call_controller(QuotaListRequest())).result
        return [
            QuotaLimits(q["principal"], q["produce_bytes_per_s"], q["fetch_bytes_per_s"])
            for q in result["quotas"]
        ]

    async def describe_cluster(self) -> dict[str, Any]:
        """Brokers, controller and every topic's partitions (see ClusterClient)."""
        return await self._cluster.refresh()

    async def close(self) -> None:
        await self._cluster.close()

    async def __aenter__(self) -> Admin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
