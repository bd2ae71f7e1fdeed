"""Broker registration and discovery against a real etcd on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.support import EtcdServer
from zstream.broker._discovery import BrokerInfo, EtcdRegistry, Members, parse_endpoints

pytestmark = pytest.mark.integration


def _broker(n: int) -> BrokerInfo:
    return BrokerInfo(n, f"tcp://127.0.0.1:{9000 + n}", f"tcp://127.0.0.1:{9100 + n}")


@asynccontextmanager
async def _running(registry: EtcdRegistry) -> AsyncIterator[EtcdRegistry]:
    task = asyncio.create_task(registry.run())
    try:
        yield registry
    finally:
        task.cancel()
        # Bounded, so that a registry that swallows cancellation fails here.
        done, _ = await asyncio.wait([task], timeout=10)
        if not done:
            stack = "".join(f"\n  {where}" for where in _await_chain(task))
            raise AssertionError(f"registry did not stop within 10 s of cancellation:{stack}")
        assert task.cancelled()


def _await_chain(task: asyncio.Task[None]) -> list[str]:
    """Where a stuck task waits: its coroutine and everything it awaits, innermost last."""
    chain: list[str] = []
    current: object = task.get_coro()
    while current is not None and len(chain) < 40:
        code = getattr(current, "cr_code", None) or getattr(current, "ag_code", None)
        frame = getattr(current, "cr_frame", None) or getattr(current, "ag_frame", None)
        if code is not None and frame is not None:
            chain.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
        else:
            chain.append(repr(current)[:200])
        current = getattr(current, "cr_await", None) or getattr(current, "ag_await", None)
    return chain


def _ids(n: int) -> set[int]:
    return set(range(1, n + 1))


async def _until(registry: EtcdRegistry, ids: set[int], timeout_s: float = 15.0) -> Members:
    return await asyncio.wait_for(registry.wait_for(lambda m: set(m) == ids), timeout_s)


async def test_brokers_see_each_other_and_a_dead_one_leaves(etcd: EtcdServer) -> None:
    endpoints = parse_endpoints(etcd.endpoint)
    regs = [EtcdRegistry(endpoints, "t1", _broker(n), lease_ttl_s=2) for n in (1, 2, 3)]
    async with _running(regs[0]), _running(regs[1]):
        async with _running(regs[2]):
            seen = await _until(regs[0], _ids(3))
            assert seen[3] == _broker(3)
            await _until(regs[2], _ids(3))
        # Broker 3 stopped without deregistering: its lease runs out.
        await _until(regs[0], _ids(2))
        await _until(regs[1], _ids(2))


async def test_membership_survives_an_etcd_outage_and_registration_recovers(
    etcd: EtcdServer,
) -> None:
    endpoints = parse_endpoints(etcd.endpoint)
    regs = [EtcdRegistry(endpoints, "t2", _broker(n), lease_ttl_s=2) for n in (1, 2)]
    async with _running(regs[0]), _running(regs[1]):
        await _until(regs[0], _ids(2))
        await asyncio.to_thread(etcd.stop)
        await asyncio.wait_for(_wait_disconnected(regs[0]), 15)
        assert set(regs[0].members) == _ids(2), "last known membership is kept"
        await asyncio.to_thread(etcd.start)
        await asyncio.wait_for(regs[0].registered.wait(), 20)
        await asyncio.wait_for(regs[1].registered.wait(), 20)
        await _until(regs[0], _ids(2))
        # A newcomer after the outage sees both re-registered brokers.
        late = EtcdRegistry(endpoints, "t2", _broker(3), lease_ttl_s=2)
        async with _running(late):
            await _until(late, _ids(3))
            await _until(regs[1], _ids(3))


async def _wait_disconnected(registry: EtcdRegistry) -> None:
    while registry.registered.is_set():  # noqa: ASYNC110 - polling a flag owned by the registry
        await asyncio.sleep(0.05)


async def test_deregister_removes_the_key_at_once(etcd: EtcdServer) -> None:
    endpoints = parse_endpoints(etcd.endpoint)
    one = EtcdRegistry(endpoints, "t3", _broker(1), lease_ttl_s=30)
    two = EtcdRegistry(endpoints, "t3", _broker(2), lease_ttl_s=30)
    async with _running(one):
        async with _running(two):
            await _until(one, _ids(2))
        await two.deregister()
        # With a 30 s lease, only the explicit delete can make this quick.
        await _until(one, {1}, timeout_s=5)


def test_bad_endpoints_are_rejected() -> None:
    from zstream.broker._discovery import DiscoveryError

    for bad in ("", "host", "host:x", ":2379", "h:0"):
        with pytest.raises(DiscoveryError):
            parse_endpoints(bad)
    assert parse_endpoints("a:1, b:2") == [("a", 1), ("b", 2)]
