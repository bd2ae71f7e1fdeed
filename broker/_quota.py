"""Per-principal byte-rate quotas: a token bucket per (principal, direction) on the
broker that serves the request. Pure: time is an input (monotonic seconds).

Theory of operation
-------------------
A bucket holds up to ``burst_s`` seconds of its rate in tokens (bytes) and refills
at the rate. A request is admitted while the bucket is not in debt, and its bytes
are then taken, which may put the bucket in debt (a batch larger than the tokens
left still goes through whole). While in debt, requests are refused with the time
the debt takes to repay (`throttle_s`): the front end answers THROTTLED with that
``throttle_ms`` and the client waits as long before it sends again, as Kafka's
clients honour ``throttle_time_ms``. Over any interval of T seconds a principal
that keeps asking gets at most ``rate * T + burst`` bytes plus one request, and
(since it is refused only while in debt) not much less.

Limits come from the controller state (``quota_set``), read on every call, so a
change applies to the next request. A principal without a quota of its own takes
the ``*`` quota when there is one; each principal has its own buckets either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from enum import StrEnum

from zstream.clients._acl import ANY_PRINCIPAL, QuotaLimits

__all__ = ["ConnectionLimit", "Direction", "Quotas", "TokenBucket"]

# One second of burst: a producer that was idle may send a second's worth at once,
# and a rate is held to within a second's worth over any interval.
DEFAULT_BURST_S = 1.0


class Direction(StrEnum):
    PRODUCE = "produce"
    FETCH = "fetch"


@dataclasses.dataclass(slots=True)
class TokenBucket:
    rate: float  # bytes per second, > 0
    capacity: float  # bytes
    tokens: float
    stamp: float  # when tokens was last brought up to date

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def throttle_s(self, now: float) -> float:
        """How long until the bucket is out of debt (0: admit now)."""
        self.refill(now)
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def charge(self, nbytes: int, now: float) -> None:
        self.refill(now)
        self.tokens -= nbytes


class Quotas:
    """Every principal's buckets on this broker."""

    def __init__(
        self, limits: Callable[[], Mapping[str, QuotaLimits]], burst_s: float = DEFAULT_BURST_S
    ) -> None:
        self._limits = limits
        self._burst_s = burst_s
        self._buckets: dict[tuple[str, Direction], TokenBucket] = {}

    def _rate(self, principal: str, direction: Direction) -> int | None:
        limits = self._limits()
        if not limits:
            return None
        quota = limits.get(principal) or limits.get(ANY_PRINCIPAL)
        if quota is None:
            return None
        if direction is Direction.PRODUCE:
            return quota.produce_bytes_per_s
        return quota.fetch_bytes_per_s

    def _bucket(self, principal: str, direction: Direction, now: float) -> TokenBucket | None:
        rate = self._rate(principal, direction)
        key = (principal, direction)
        if rate is None:
            self._buckets.pop(key, None)
            return None
        bucket = self._buckets.get(key)
        capacity = rate * self._burst_s
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(rate, capacity, capacity, now)
        elif bucket.rate != rate:  # the quota changed: keep the debt, not the old rate
            bucket.refill(now)
            bucket.rate, bucket.capacity = rate, capacity
            bucket.tokens = min(bucket.tokens, capacity)
        return bucket

    def throttle_s(self, principal: str, direction: Direction, now: float) -> float:
        """0 to admit a request now, else how long the principal must wait."""
        bucket = self._bucket(principal, direction, now)
        return 0.0 if bucket is None else bucket.throttle_s(now)

    def charge(self, principal: str, direction: Direction, nbytes: int, now: float) -> None:
        bucket = self._bucket(principal, direction, now)
        if bucket is not None:
            bucket.charge(nbytes, now)

    def rate(self, principal: str, direction: Direction) -> int | None:
        """The principal's limit in bytes per second (None: unlimited)."""
        return self._rate(principal, direction)


class ConnectionLimit:
    """At most ``max_per_principal`` client connections per principal on this broker.

    A ROUTER socket does not tell the application when a peer connects or goes away;
    what it gives is each connection's routing identity with every message. So a
    connection here is an identity that sent a request within the last ``idle_s``
    seconds (Kafka closes connections idle for ``connections.max.idle.ms``, 10 min by
    default). Only a new identity costs more than one dict update: when its principal
    is at the limit, the idle ones are dropped first. Time is an input.
    """

    def __init__(self, max_per_principal: int, idle_s: float) -> None:
        self.max_per_principal = max_per_principal
        self._idle_s = idle_s
        self._seen: dict[str, dict[bytes, float]] = {}

    def admit(self, principal: str, identity: bytes, now: float) -> bool:
        """Record a request of ``identity``; False if it is a connection too many."""
        seen = self._seen.get(principal)
        if seen is None:
            seen = self._seen[principal] = {}
        if identity in seen or len(seen) < self.max_per_principal:
            seen[identity] = now
            return True
        cutoff = now - self._idle_s
        for idle in [i for i, t in seen.items() if t < cutoff]:
            del seen[idle]
        if len(seen) >= self.max_per_principal:
            return False
        seen[identity] = now
        return True

    def connections(self, principal: str) -> int:
        return len(self._seen.get(principal, ()))
