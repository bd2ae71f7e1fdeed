"""Authorization: which principal may do what to which resource. Pure: no I/O, no
clock; the entries come from the controller's state machine (broker/_controller.py),
replicated on group 0 like KRaft's ACL records.

Theory of operation
-------------------
A request is allowed when security is off (no principal: the front end never asks),
or when its principal is a super user, or when some ``allow`` entry matches it and
no ``deny`` entry does: deny wins, and with no matching entry the answer is no
(default deny). An entry matches a request when:

- its principal is the request's principal or ``*``;
- its resource type is the request's, and its name is the request's resource name
  (literal), ``*`` (literal: every resource of the type), or a prefix of it
  (prefixed);
- its operation is the request's, or ``admin`` (every operation); an ``allow`` of
  any operation also allows ``describe`` (so a producer may read the metadata of
  the topics it writes). A ``deny`` implies nothing beyond its own operation
  (``deny admin`` denies all of them).

`AclTable.allowed` caches its decisions per (principal, operation, resource) until
the table changes, so a secured hot path (one produce after another) costs one dict
lookup per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from zstream.clients import NotAuthorizedError
from zstream.clients._acl import (
    ANY_PRINCIPAL,
    AclEntry,
    AclOperation,
    AclPermission,
    PatternType,
    ResourceType,
)

__all__ = ["AclTable", "Authorizer"]

# Cached decisions kept before the cache starts over: a bound on what a client
# naming ever new topics can make the broker remember.
_CACHE_ENTRIES = 65_536

_Key = tuple[str, ResourceType]


class AclTable:
    """A set of ACL entries, indexed by (principal, resource type)."""

    def __init__(self, entries: Iterable[AclEntry] = ()) -> None:
        self._entries: set[AclEntry] = set()
        self._index: dict[_Key, list[AclEntry]] = {}
        self._cache: dict[tuple[str, AclOperation, ResourceType, str], bool] = {}
        self.add(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry: object) -> bool:
        return entry in self._entries

    def entries(self) -> list[AclEntry]:
        """Every entry, sorted (the snapshot's order, and `acl list`'s)."""
        return sorted(self._entries)

    def add(self, entries: Iterable[AclEntry]) -> int:
        """Add entries; returns how many were new."""
        added = 0
        for e in entries:
            if e not in self._entries:
                self._entries.add(e)
                self._index.setdefault((e.principal, e.resource_type), []).append(e)
                added += 1
        if added:
            self._cache.clear()
        return added

    def remove(self, entries: Iterable[AclEntry]) -> int:
        """Remove entries (absent ones are ignored); returns how many went."""
        removed = 0
        for e in entries:
            if e in self._entries:
                self._entries.discard(e)
                bucket = self._index[(e.principal, e.resource_type)]
                bucket.remove(e)
                if not bucket:
                    del self._index[(e.principal, e.resource_type)]
                removed += 1
        if removed:
            self._cache.clear()
        return removed

    def allowed(self, principal: str, op: AclOperation, rtype: ResourceType, name: str) -> bool:
        """Deny wins; no matching entry: no."""
        key = (principal, op, rtype, name)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        decision = self._decide(principal, op, rtype, name)
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = decision
        return decision

    def _decide(self, principal: str, op: AclOperation, rtype: ResourceType, name: str) -> bool:
        allow = False
        for e in self._candidates(principal, rtype):
            if not _name_matches(e, name):
                continue
            if e.permission is AclPermission.DENY:
                if e.operation is op or e.operation is AclOperation.ADMIN:
                    return False
            elif e.operation is op or e.operation is AclOperation.ADMIN:
                allow = True
            elif op is AclOperation.DESCRIBE:
                allow = True  # any allowed operation implies describe
        return allow

    def allows_any(self, principal: str, op: AclOperation, rtype: ResourceType) -> bool:
        """Does some ``allow`` entry give ``principal`` ``op`` on some resource of
        ``rtype``? (Kafka's test for an idempotent producer id: WRITE on any topic.)"""
        return any(
            e.permission is AclPermission.ALLOW
            and (e.operation is op or e.operation is AclOperation.ADMIN)
            for e in self._candidates(principal, rtype)
        )

    def _candidates(self, principal: str, rtype: ResourceType) -> list[AclEntry]:
        own = self._index.get((principal, rtype), [])
        if principal == ANY_PRINCIPAL:
            return own
        return own + self._index.get((ANY_PRINCIPAL, rtype), [])


def _name_matches(entry: AclEntry, name: str) -> bool:
    if entry.pattern is PatternType.PREFIXED:
        return name.startswith(entry.name)
    return entry.name == name or entry.name == "*"


class Authorizer:
    """The broker's decisions: super users, then the current `AclTable` (read through
    ``table`` on every call, so a replicated change applies to the next request)."""

    def __init__(self, table: Callable[[], AclTable], super_users: Iterable[str] = ()) -> None:
        self._table = table
        self.super_users = frozenset(super_users)

    def allowed(self, principal: str, op: AclOperation, rtype: ResourceType, name: str) -> bool:
        if principal in self.super_users:
            return True
        return self._table().allowed(principal, op, rtype, name)

    def allows_any(self, principal: str, op: AclOperation, rtype: ResourceType) -> bool:
        if principal in self.super_users:
            return True
        return self._table().allows_any(principal, op, rtype)

    def check(self, principal: str, op: AclOperation, rtype: ResourceType, name: str) -> None:
        """Raise NotAuthorizedError (naming the operation and the resource) unless
        ``principal`` may."""
        if not self.allowed(principal, op, rtype, name):
            raise not_authorized(principal, op, rtype, name)


def not_authorized(
    principal: str, op: AclOperation, rtype: ResourceType, name: str
) -> NotAuthorizedError:
    return NotAuthorizedError(
        f"principal {principal!r} is not authorized to {op} {rtype} {name!r}",
        operation=op.value,
        resource_type=rtype.value,
        resource=name,
    )
