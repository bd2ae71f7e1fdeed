"""The front end with CURVE: each request reaches the authorization point with the
principal its client key is named by; with security off there is no principal and
the authorization point is never reached (nothing to check, nothing paid). This is
the contract the ACL checks (test_frontend_authz.py) build on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.support.security import ClusterKeys
from tests.unit.broker.fakes import FakeBackend
from zstream.broker._config import ClientSecurity
from zstream.broker._frontend import Frontend
from zstream.clients import ClusterClient, ListTopicsRequest
from zstream.clients._protocol import RequestArgs


class RecordingFrontend(Frontend):
    """Records who asked for what at the authorization hook."""

    def __init__(self, security: ClientSecurity | None) -> None:
        super().__init__(FakeBackend(), "tcp://127.0.0.1:*", security=security)
        self.seen: list[tuple[str | None, str]] = []

    def _authorize(self, principal: str | None, args: RequestArgs) -> None:
        self.seen.append((principal, args.op))


@asynccontextmanager
async def serving(security: ClientSecurity | None) -> AsyncIterator[RecordingFrontend]:
    frontend = RecordingFrontend(security)
    task = asyncio.create_task(frontend.run())
    try:
        yield frontend
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await frontend.close()


@pytest.fixture
def keys(tmp_path: Path) -> ClusterKeys:
    return ClusterKeys.make(tmp_path, (1,))


@pytest.mark.parametrize("principal", ["alice", "admin"])
async def test_each_request_carries_its_key_s_principal(keys: ClusterKeys, principal: str) -> None:
    public, secret = keys.pair("server")
    security = ClientSecurity(public, secret, keys.client_credentials_dir)
    creds = keys.credentials(principal)
    async with (
        serving(security) as frontend,
        ClusterClient(frontend.addr, timeout_s=5, credentials=creds) as client,
    ):
        await client.call_any(ListTopicsRequest())
        await client.call_any(ListTopicsRequest())
    assert frontend.seen == [(principal, "list_topics")] * 2


async def test_without_security_nothing_is_checked() -> None:
    async with serving(None) as frontend, ClusterClient(frontend.addr, timeout_s=5) as client:
        assert (await client.call_any(ListTopicsRequest())).result == {"topics": []}
    assert frontend.seen == []
