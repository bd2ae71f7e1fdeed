"""ACLs and quotas on real broker processes: they are controller state, so they
survive a kill -9 of the controller leader and a full restart of the cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import bootstrap_of, running_brokers, wait_until_async
from zstream.clients import (
    AclEntry,
    AclOperation,
    AclPermission,
    Admin,
    PatternType,
    QuotaLimits,
    ResourceType,
    ZStreamError,
)

pytestmark = pytest.mark.integration

ENTRIES = [
    AclEntry("alice", ResourceType.TOPIC, PatternType.PREFIXED, "orders.", AclOperation.PRODUCE),
    AclEntry(
        "*",
        ResourceType.GROUP,
        PatternType.LITERAL,
        "*",
        AclOperation.ADMIN,
        AclPermission.DENY,
    ),
]
QUOTA = QuotaLimits("alice", produce_bytes_per_s=1 << 20, fetch_bytes_per_s=None)


async def _state(bootstrap: str) -> tuple[list[AclEntry], list[QuotaLimits]] | None:
    """The controller's ACLs and quotas, or None while no controller answers."""
    try:
        async with Admin(bootstrap, timeout_s=2) as admin:
            return await admin.list_acls(), await admin.list_quotas()
    except ZStreamError:
        return None


async def test_acls_and_quotas_survive_failover_and_full_restart(tmp_path: Path) -> None:
    with running_brokers(tmp_path, extra=["--log-level=INFO"]) as brokers:
        bootstrap = bootstrap_of(brokers)
        async with Admin(bootstrap, timeout_s=5) as admin:
            assert await admin.add_acls(ENTRIES) == 2
            await admin.set_quota("alice", produce_bytes_per_s=QUOTA.produce_bytes_per_s)
            controller = (await admin.describe_cluster())["controller"]
        expected = (sorted(ENTRIES), [QUOTA])
        assert await _state(bootstrap) == expected

        leader = next(b for b in brokers if b.broker_id == controller)
        leader.kill()
        survivors = bootstrap_of([b for b in brokers if b is not leader])

        async def new_controller_has_them() -> bool:
            return await _state(survivors) == expected

        await wait_until_async(new_controller_has_them, 30, "the new controller's ACLs")
        async with Admin(survivors, timeout_s=5) as admin:
            assert (await admin.describe_cluster())["controller"] != controller
            # A change under the new leader is kept as well.
            assert await admin.remove_acls(ENTRIES[1:]) == 1
        expected = (sorted(ENTRIES[:1]), [QUOTA])

        for b in brokers:
            b.stop()
        for b in brokers:
            b.launch()
        for b in brokers:
            b.wait_ready()

        async def restarted_has_them() -> bool:
            return await _state(bootstrap) == expected

        await wait_until_async(restarted_has_them, 30, "the ACLs after a full restart")
