"""Majority arithmetic over one configuration or a joint pair of them."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from enum import IntEnum

from ._types import ConfState, NodeId

_INF = 1 << 63


class VoteResult(IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


def majority_index(voters: Collection[NodeId], acked: Callable[[NodeId], int]) -> int:
    """The highest index acknowledged by a majority of ``voters`` (infinite if empty)."""
    n = len(voters)
    if n == 0:
        return _INF
    if n == 1:
        for v in voters:
            return acked(v)
    vals = sorted(map(acked, voters), reverse=True)
    return vals[n // 2]


def committed_index(conf: ConfState, acked: Callable[[NodeId], int]) -> int:
    """The commit index a joint (or simple) configuration allows."""
    idx = majority_index(conf.voters, acked)
    if conf.voters_outgoing:
        idx = min(idx, majority_index(conf.voters_outgoing, acked))
    return 0 if idx == _INF else idx


def _majority_vote(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    if not voters:
        return VoteResult.WON
    granted = rejected = 0
    for v in voters:
        got = votes.get(v)
        if got is None:
            continue
        if got:
            granted += 1
        else:
            rejected += 1
    q = len(voters) // 2 + 1
    if granted >= q:
        return VoteResult.WON
    if granted + (len(voters) - granted - rejected) >= q:
        return VoteResult.PENDING
    return VoteResult.LOST


def vote_result(conf: ConfState, votes: Mapping[NodeId, bool]) -> VoteResult:
    """Outcome of an election (or any yes/no poll) under ``conf``: both halves of a
    joint configuration must agree."""
    r1 = _majority_vote(conf.voters, votes)
    r2 = _majority_vote(conf.voters_outgoing, votes)
    if r1 == r2:
        return r1
    if VoteResult.LOST in (r1, r2):
        return VoteResult.LOST
    return VoteResult.PENDING
