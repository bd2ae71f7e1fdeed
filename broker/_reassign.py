"""Partition reassignment: how a partition's leader walks its Raft configuration
towards the controller's target replica set (pure), and the report a leader sends
the controller once the group stands on the target.

Theory of operation
===================

The controller only records intent: a partition's ``target`` replica set
(`ControllerState`, command ``reassign_partition``). Every broker that leads a
partition with a target calls `next_step` on each pass of its reassignment loop
with what its Raft group looks like now, and does what it returns:

=========================  =============================================  ===================
configuration now          step                                           why
=========================  =============================================  ===================
joint                      None (wait: the core leaves it by itself)      one change at once
a learner not in target    remove it (learners only: at once)             an older walk's
a target member not in it  add every such member as a learner             they catch up first
a target learner behind    None (wait)                                    no voter that lags
leader not in target       promote the target learners (no removal),      the leader never
                           then transfer leadership to a target voter     removes itself
otherwise                  one joint change: promote the target           Raft thesis 4.3
                           learners, remove the voters outside it
voters == target           `Reached`                                      report it
=========================  =============================================  ===================

The decision depends only on the configuration, the target and the members'
progress, never on what happened before, so a walk survives any restart or
failover: the next leader calls `next_step` on whatever configuration the group
is in. A joint configuration needs a majority of the old voters and of the new,
and a voter is only removed in the same step that promotes its replacement, so at
no step does the partition depend on fewer live voters than before.

Report wire format (the payload of a host app message, ``RaftHost.send_app``)::

    msgpack map {"op": "reassigned", "topic": str, "partition": int >= 0,
                 "group_id": int >= 1, "voters": [int >= 1, ...]}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import msgpack

from zstream.clients import InvalidRequestError
from zstream.clients._protocol import validate_topic_name
from zstream.replication import ConfChange, ConfChangeType, ConfState

__all__ = [
    "MAX_REPORT_BYTES",
    "Reached",
    "ReassignedReport",
    "Step",
    "Transfer",
    "decode_report",
    "encode_report",
    "next_step",
]

# A report is a few ids; anything larger is not one.
MAX_REPORT_BYTES = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class Transfer:
    """Hand leadership to ``to`` before going on (the leader is being removed)."""

    to: int


@dataclasses.dataclass(frozen=True, slots=True)
class Reached:
    """The group's voters are the target: tell the controller."""


Step = ConfChange | Transfer | Reached | None


def next_step(
    conf: ConfState,
    leader: int,
    target: frozenset[int],
    matches: Mapping[int, int],
    commit: int,
    max_lag_entries: int,
    down: frozenset[int] = frozenset(),
) -> Step:
    """The next move of the walk from ``conf`` towards ``target`` (see the table in
    the module docstring). ``matches`` is each member's match index as the leader
    ``leader`` sees it, ``commit`` the group's commit index; a member counts as
    caught up once its match is within ``max_lag_entries`` of ``commit`` and it is not
    in ``down`` (peers the host has not heard from lately: a dead learner is never
    promoted, and leadership never handed to a dead voter)."""
    if not target:
        raise ValueError("a target replica set needs at least one broker")
    if conf.joint:
        return None
    stale = sorted(conf.learners - target)
    if stale:
        return ConfChange(tuple((ConfChangeType.REMOVE_NODE, n) for n in stale))
    missing = sorted(target - conf.voters - conf.learners)
    if missing:
        return ConfChange(tuple((ConfChangeType.ADD_LEARNER, n) for n in missing))

    def caught_up(n: int) -> bool:
        return n == leader or (n not in down and matches.get(n, 0) + max_lag_entries >= commit)

    learners = sorted(conf.learners & target)
    if not all(caught_up(n) for n in learners):
        return None
    if conf.voters == target:
        return Reached()
    promote = tuple((ConfChangeType.ADD_VOTER, n) for n in learners)
    if leader not in target:
        if promote:
            return ConfChange(promote)
        # Every target member is a voter now: hand over to one that is caught up.
        ready = [n for n in sorted(target & conf.voters) if caught_up(n)]
        return Transfer(ready[0]) if ready else None
    remove = tuple((ConfChangeType.REMOVE_NODE, n) for n in sorted(conf.voters - target))
    return ConfChange(promote + remove)


@dataclasses.dataclass(frozen=True, slots=True)
class ReassignedReport:
    """A partition leader's word that the group's voters are ``voters``."""

    topic: str
    partition: int
    group_id: int
    voters: tuple[int, ...]


def encode_report(report: ReassignedReport) -> bytes:
    packed: bytes = msgpack.packb(
        {
            "op": "reassigned",
            "topic": report.topic,
            "partition": report.partition,
            "group_id": report.group_id,
            "voters": list(report.voters),
        },
        use_bin_type=True,
    )
    return packed


def decode_report(data: bytes) -> ReassignedReport:
    """Raises InvalidRequestError for anything but an `encode_report` payload."""
    if len(data) > MAX_REPORT_BYTES:
        raise InvalidRequestError("reassignment report too large")
    try:
        doc: Any = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise InvalidRequestError(f"undecodable reassignment report: {exc}") from exc
    if type(doc) is not dict or doc.get("op") != "reassigned":
        raise InvalidRequestError("not a reassignment report")
    topic, partition, group_id, voters = (
        doc.get("topic"),
        doc.get("partition"),
        doc.get("group_id"),
        doc.get("voters"),
    )
    if type(topic) is not str or type(partition) is not int or partition < 0:
        raise InvalidRequestError("reassignment report: bad topic or partition")
    if type(group_id) is not int or group_id < 1:
        raise InvalidRequestError("reassignment report: bad group_id")
    if type(voters) is not list or not voters or not all(type(v) is int and v >= 1 for v in voters):
        raise InvalidRequestError("reassignment report: bad voters")
    return ReassignedReport(validate_topic_name(topic), partition, group_id, tuple(voters))
