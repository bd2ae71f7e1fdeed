"""The ACL model (broker/_acl.py, clients/_acl.py): matching rules, deny wins, super
users, default deny; and the quotas' token buckets (broker/_quota.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zstream.broker._acl import AclTable, Authorizer
from zstream.broker._quota import ConnectionLimit, Direction, Quotas, TokenBucket
from zstream.clients import (
    AclEntry,
    AclOperation,
    AclPermission,
    InvalidRequestError,
    NotAuthorizedError,
    PatternType,
    QuotaLimits,
    ResourceType,
)

ALLOW, DENY = AclPermission.ALLOW, AclPermission.DENY
TOPIC, GROUP = ResourceType.TOPIC, ResourceType.GROUP
LITERAL, PREFIXED = PatternType.LITERAL, PatternType.PREFIXED
P = AclOperation


def _entry(
    permission: AclPermission, principal: str, op: str, name: str, pattern: str, rtype: str
) -> AclEntry:
    return AclEntry(
        principal, ResourceType(rtype), PatternType(pattern), name, AclOperation(op), permission
    )


def allow(
    principal: str, op: str, name: str, pattern: str = "literal", rtype: str = "topic"
) -> AclEntry:
    return _entry(ALLOW, principal, op, name, pattern, rtype)


def deny(
    principal: str, op: str, name: str, pattern: str = "literal", rtype: str = "topic"
) -> AclEntry:
    return _entry(DENY, principal, op, name, pattern, rtype)


# -- examples -----------------------------------------------------------------------------


def test_default_deny_and_a_literal_allow() -> None:
    table = AclTable()
    assert not table.allowed("alice", P.PRODUCE, TOPIC, "orders")
    table.add([allow("alice", "produce", "orders")])
    assert table.allowed("alice", P.PRODUCE, TOPIC, "orders")
    assert not table.allowed("alice", P.PRODUCE, TOPIC, "orders2")  # literal: exact name
    assert not table.allowed("alice", P.CONSUME, TOPIC, "orders")
    assert not table.allowed("bob", P.PRODUCE, TOPIC, "orders")
    assert not table.allowed("alice", P.PRODUCE, GROUP, "orders")  # another resource type


def test_prefix_star_and_any_principal() -> None:
    table = AclTable(
        [
            allow("alice", "consume", "team-a.", "prefixed"),
            allow("*", "describe", "*"),
            allow("bob", "admin", "scratch", rtype="group"),
        ]
    )
    assert table.allowed("alice", P.CONSUME, TOPIC, "team-a.orders")
    assert table.allowed("alice", P.CONSUME, TOPIC, "team-a.")
    assert not table.allowed("alice", P.CONSUME, TOPIC, "team-b.orders")
    assert table.allowed("carol", P.DESCRIBE, TOPIC, "anything")  # * principal, * name
    assert not table.allowed("carol", P.CONSUME, TOPIC, "anything")
    for op in P:  # admin is every operation
        assert table.allowed("bob", op, GROUP, "scratch")


def test_deny_wins_and_allow_implies_describe() -> None:
    table = AclTable(
        [
            allow("alice", "produce", "orders"),
            allow("*", "produce", "*"),
            deny("alice", "produce", "ord", "prefixed"),
        ]
    )
    assert not table.allowed("alice", P.PRODUCE, TOPIC, "orders")
    assert table.allowed("alice", P.PRODUCE, TOPIC, "payments")
    assert table.allowed("alice", P.DESCRIBE, TOPIC, "orders")  # deny produce is only produce
    table.add([deny("*", "admin", "orders")])
    assert not table.allowed("alice", P.DESCRIBE, TOPIC, "orders")  # deny admin is all
    assert not table.allowed("bob", P.PRODUCE, TOPIC, "orders")


def test_removal_takes_effect_through_the_cache() -> None:
    entry = allow("alice", "produce", "orders")
    table = AclTable([entry])
    assert table.allowed("alice", P.PRODUCE, TOPIC, "orders")
    assert table.remove([entry, deny("x", "produce", "y")]) == 1
    assert not table.allowed("alice", P.PRODUCE, TOPIC, "orders")
    assert table.add([entry, entry]) == 1
    assert table.allowed("alice", P.PRODUCE, TOPIC, "orders")
    assert len(table) == 1


def test_allows_any_is_for_producer_ids() -> None:
    table = AclTable([allow("alice", "produce", "o", "prefixed"), allow("bob", "consume", "*")])
    assert table.allows_any("alice", P.PRODUCE, TOPIC)
    assert not table.allows_any("bob", P.PRODUCE, TOPIC)


def test_authorizer_super_users_bypass_and_errors_name_the_resource() -> None:
    table = AclTable([deny("*", "admin", "*")])
    authz = Authorizer(lambda: table, super_users=["root"])
    authz.check("root", P.DELETE, TOPIC, "orders")  # no raise, whatever the entries say
    with pytest.raises(NotAuthorizedError, match="'alice' is not authorized to delete topic") as e:
        authz.check("alice", P.DELETE, TOPIC, "orders")
    assert e.value.details == {
        "operation": "delete",
        "resource_type": "topic",
        "resource": "orders",
    }
    assert not e.value.retriable


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("alice", "topic", "literal", "a b", "produce"), "resource name"),
        (("al/ice", "topic", "literal", "a", "produce"), "principal"),
        (("alice", "table", "literal", "a", "produce"), "resource_type"),
        (("alice", "topic", "regex", "a", "produce"), "pattern"),
        (("alice", "topic", "literal", "a", "write"), "operation"),
        (("alice", "topic", "prefixed", "*", "produce"), "literal"),
        (("alice", "cluster", "literal", "c1", "alter"), "cluster"),
    ],
)
def test_bad_entries_are_refused(args: tuple[str, ...], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        AclEntry(*args)  # type: ignore[arg-type]


def test_entry_wire_round_trip() -> None:
    entry = deny("bob", "alter", "team.", "prefixed", "group")
    assert AclEntry.from_wire(entry.to_wire()) == entry
    assert entry.describe() == "deny bob alter group team.*"
    with pytest.raises(InvalidRequestError, match="lacks"):
        AclEntry.from_wire({"principal": "bob"})


# -- properties, against a model written straight from the rules -------------------------

_principals = st.sampled_from(["alice", "bob", "*"])
_names = st.sampled_from(["a", "ab", "abc", "b", "*"])
_ops = st.sampled_from(list(AclOperation))
_rtypes = st.sampled_from([TOPIC, GROUP])


@st.composite
def _entries(draw: st.DrawFn) -> AclEntry:
    name = draw(_names)
    pattern = LITERAL if name == "*" else draw(st.sampled_from([LITERAL, PREFIXED]))
    return AclEntry(
        draw(_principals),
        draw(_rtypes),
        pattern,
        name,
        draw(_ops),
        draw(st.sampled_from([ALLOW, DENY])),
    )


def _model(entries: set[AclEntry], who: str, op: AclOperation, rt: ResourceType, name: str) -> bool:
    def matches(e: AclEntry) -> bool:
        if e.principal not in (who, "*") or e.resource_type != rt:
            return False
        if e.pattern == PREFIXED:
            return name[: len(e.name)] == e.name
        return e.name in (name, "*")

    matching = [e for e in entries if matches(e)]
    if any(e.permission == DENY and e.operation in (op, P.ADMIN) for e in matching):
        return False
    allows = [e for e in matching if e.permission == ALLOW]
    if op == P.DESCRIBE:
        return bool(allows)
    return any(e.operation in (op, P.ADMIN) for e in allows)


_queries = st.tuples(st.sampled_from(["alice", "bob", "carol"]), _ops, _rtypes, _names)


@given(st.lists(_entries(), max_size=12), st.lists(_queries, min_size=1, max_size=20))
def test_matching_agrees_with_the_model(
    entries: list[AclEntry], queries: list[tuple[str, AclOperation, ResourceType, str]]
) -> None:
    table = AclTable(entries)
    for q in queries:
        assert table.allowed(*q) == _model(set(entries), *q), q


@given(
    st.lists(st.tuples(st.booleans(), st.lists(_entries(), max_size=3)), max_size=10),
    st.lists(_queries, min_size=1, max_size=10),
)
def test_the_cache_follows_every_change(
    changes: list[tuple[bool, list[AclEntry]]],
    queries: list[tuple[str, AclOperation, ResourceType, str]],
) -> None:
    table = AclTable()
    current: set[AclEntry] = set()
    for add, batch in changes:
        if add:
            table.add(batch)
            current |= set(batch)
        else:
            table.remove(batch)
            current -= set(batch)
        for q in queries:  # asked after every change: a stale cached answer would show
            assert table.allowed(*q) == _model(current, *q)
    assert set(table.entries()) == current


@given(st.lists(_entries(), max_size=10), _queries)
def test_a_matching_deny_always_wins(
    entries: list[AclEntry], query: tuple[str, AclOperation, ResourceType, str]
) -> None:
    who, op, rt, name = query
    for d in (
        AclEntry(who, rt, LITERAL, name, op, DENY),
        AclEntry("*", rt, LITERAL, "*", P.ADMIN, DENY),
    ):
        assert not AclTable([*entries, d]).allowed(*query)


@given(st.lists(_entries(), max_size=10), _queries)
def test_an_entry_for_any_principal_is_one_for_each(
    entries: list[AclEntry], query: tuple[str, AclOperation, ResourceType, str]
) -> None:
    who, op, rt, name = query
    with_star = AclTable([*entries, AclEntry("*", rt, LITERAL, name, op, ALLOW)])
    with_own = AclTable([*entries, AclEntry(who, rt, LITERAL, name, op, ALLOW)])
    assert with_star.allowed(*query) == with_own.allowed(*query)


@given(st.text("ab", min_size=1, max_size=4), st.text("ab", min_size=1, max_size=4))
def test_prefixed_matches_exactly_the_names_that_start_with_it(prefix: str, name: str) -> None:
    table = AclTable([allow("alice", "produce", prefix, "prefixed")])
    literal = AclTable([allow("alice", "produce", prefix)])
    assert table.allowed("alice", P.PRODUCE, TOPIC, name) == name.startswith(prefix)
    assert literal.allowed("alice", P.PRODUCE, TOPIC, name) == (name == prefix)


# -- quotas -----------------------------------------------------------------------------


def test_bucket_admits_until_in_debt_then_says_how_long() -> None:
    bucket = TokenBucket(rate=1000, capacity=1000, tokens=1000, stamp=0.0)
    assert bucket.throttle_s(0.0) == 0
    bucket.charge(1500, 0.0)  # a request larger than what is left still goes through
    assert bucket.throttle_s(0.0) == pytest.approx(0.5)
    assert bucket.throttle_s(0.25) == pytest.approx(0.25)
    assert bucket.throttle_s(0.5) == 0
    assert bucket.throttle_s(100.0) == 0
    assert bucket.tokens == 1000  # refilled to its capacity, no more


def _quotas(limits: dict[str, QuotaLimits]) -> Quotas:
    return Quotas(lambda: limits, burst_s=1.0)


def test_quotas_are_per_principal_with_a_default() -> None:
    limits = {
        "alice": QuotaLimits("alice", produce_bytes_per_s=100),
        "*": QuotaLimits("*", fetch_bytes_per_s=50),
    }
    quotas = _quotas(limits)
    quotas.charge("alice", Direction.PRODUCE, 300, 0.0)
    assert quotas.throttle_s("alice", Direction.PRODUCE, 0.0) == pytest.approx(2.0)
    assert quotas.throttle_s("alice", Direction.FETCH, 0.0) == 0  # alice's own: no fetch limit
    assert quotas.rate("bob", Direction.FETCH) == 50
    quotas.charge("bob", Direction.FETCH, 100, 0.0)
    quotas.charge("carol", Direction.FETCH, 10, 0.0)
    assert quotas.throttle_s("bob", Direction.FETCH, 0.0) == pytest.approx(1.0)
    assert quotas.throttle_s("carol", Direction.FETCH, 0.0) == 0  # a bucket of its own
    assert quotas.throttle_s("bob", Direction.PRODUCE, 0.0) == 0
    del limits["alice"]  # quota removed: no more throttling
    assert quotas.throttle_s("alice", Direction.PRODUCE, 0.0) == 0


@given(
    st.integers(100, 10_000),
    st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 20_000)), min_size=1, max_size=60),
)
def test_admitted_bytes_stay_within_rate_times_time_plus_burst(
    rate: int, requests: list[tuple[float, int]]
) -> None:
    """A client that sends whenever it is admitted gets at most rate * T + burst plus
    its last request, whatever the sizes and the timing."""
    quotas = _quotas({"alice": QuotaLimits("alice", produce_bytes_per_s=rate)})
    now, admitted, largest = 0.0, 0, 0
    for gap, size in requests:
        now += gap
        wait = quotas.throttle_s("alice", Direction.PRODUCE, now)
        if wait > 0:
            now += wait  # the client honours the throttle time
            assert quotas.throttle_s("alice", Direction.PRODUCE, now) < 1e-9
        quotas.charge("alice", Direction.PRODUCE, size, now)
        admitted += size
        largest = max(largest, size)
        assert admitted <= rate * now + rate * 1.0 + largest + 1e-6


def test_quota_limits_validate() -> None:
    with pytest.raises(InvalidRequestError, match="> 0"):
        QuotaLimits("alice", produce_bytes_per_s=0)
    with pytest.raises(InvalidRequestError, match="principal"):
        QuotaLimits("a b")
    assert QuotaLimits("*").unlimited


def test_connection_limit_counts_identities_and_forgets_idle_ones() -> None:
    limit = ConnectionLimit(max_per_principal=2, idle_s=10)
    assert limit.admit("alice", b"c1", 0.0)
    assert limit.admit("alice", b"c2", 1.0)
    assert limit.admit("alice", b"c1", 2.0)  # a known connection is always let through
    assert not limit.admit("alice", b"c3", 3.0)
    assert limit.admit("bob", b"c3", 3.0)  # per principal
    assert not limit.admit("alice", b"c3", 11.0)  # nobody idle for 10 s yet
    assert limit.admit("alice", b"c3", 11.5)  # c2 (last seen at 1.0) is gone: c3 fits
    assert limit.connections("alice") == 2
    assert not limit.admit("alice", b"c4", 11.5)
