"""Real child processes for integration tests.

`ManagedProcess`, `free_port` and `wait_until` are zstream.testing's own (one
``free_port`` for the whole run, so the suite's brokers, etcd servers and lognodes
never get the same port handed out twice); this module adds the async wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from zstream.testing._process import ManagedProcess, free_port, wait_until

__all__ = ["ManagedProcess", "free_port", "wait_until", "wait_until_async"]


async def wait_until_async(
    condition: Callable[[], Awaitable[bool]],
    timeout_s: float,
    what: str,
    interval_s: float = 0.02,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await condition():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.1f}s waiting for {what}")
        await asyncio.sleep(interval_s)
