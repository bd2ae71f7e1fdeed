"""Admin: topics and cluster inspection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clients._cluster import ClusterClient
from clients._protocol import (
    CreateTopicRequest,
    DeleteTopicRequest,
    DescribeTopicRequest,
    ListTopicsRequest,
)

__all__ = ["Admin"]


class Admin:
    """``async with Admin("127.0.0.1:7101") as admin: await admin.create_topic(...)``"""

    def __init__(self, bootstrap: str | Sequence[str], *, timeout_s: float = 10.0) -> None:
        self._cluster = ClusterClient(bootstrap, timeout_s=timeout_s)

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

    async def describe_cluster(self) -> dict[str, Any]:
        """Brokers, controller and every topic's partitions (see ClusterClient)."""
        return await self._cluster.refresh()

    async def close(self) -> None:
        await self._cluster.close()

    async def __aenter__(self) -> Admin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
