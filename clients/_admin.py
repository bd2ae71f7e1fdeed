"""Admin: topics, consumer groups and cluster inspection."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from zstream.clients._acl import AclEntry, QuotaLimits, ResourceType
from zstream.clients._cluster import ClusterClient
from zstream.clients._credentials import Credentials
from zstream.clients._errors import ZStreamError
from zstream.clients._protocol import (
    AclAddRequest,
    AclListRequest,
    AclRemoveRequest,
    CommitOffsetsRequest,
    CreateTopicRequest,
    DeleteTopicRequest,
    DescribeGroupRequest,
    DescribeTopicRequest,
    FetchOffsetsRequest,
    ListGroupsRequest,
    ListTopicsRequest,
    MetadataRequest,
    QuotaListRequest,
    QuotaSetRequest,
)

__all__ = ["Admin"]

# Each broker's report of the partitions it leads (for lag): a dead broker costs this.
_REPORT_TIMEOUT_S = 2.0


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
