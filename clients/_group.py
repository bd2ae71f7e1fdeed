"""Consumer-group membership, client side (KIP-848 style: the controller assigns).

Theory of operation
-------------------
`Membership` is one member's state with no I/O and no clock: its id, the topics it
subscribes, the partitions it owns (consumes now). It builds each heartbeat and turns
each reply into the work still to do; `Coordinator` does that work and the I/O.

The coordinator is one task (owned by the consumer, ended by `Coordinator.close`). It
heartbeats the controller (``ClusterClient.call_controller`` follows NOT_CONTROLLER
hints) every ``heartbeat_interval_ms`` the controller asked for, and at once after any
change. ``owned`` (what each heartbeat reports) is every partition the member consumes
plus every partition it has *claimed*. On each reply, with ``assignment`` what the
member may consume now and ``sent`` the ``owned`` of the heartbeat it answers::

    release = consumed - assignment   stop their readers and drop their queued records
                                      (generation bump), on_revoke, commit what was
                                      delivered (auto-commit), forget them; owned -=
                                      release; heartbeat at once: that is the release
    take    = claimed & sent          the claim stood: fetch their committed offsets,
              & assignment            start readers there (no commit: auto_offset_reset);
                                      on_assign
    drop    = claimed - assignment    the claim lost (another member had it in owned
                                      first, or the assignor moved it): owned -= drop,
                                      never read, never committed
    claim   = assignment - owned      owned |= claim; heartbeat at once (that heartbeat
                                      is the claim)

Why claim first: the controller knows what a member consumes only from ``owned``. A
member that started reading as soon as a reply assigned it a partition could be
reading it while the controller, not yet told, hands it to a joining member. Claims
are applied one at a time inside the controller's Raft apply, and a reply's
assignment leaves out what another member has in ``owned``: of two claimants, only
the first applied is still assigned the partition in its reply. A reader therefore
starts only when the controller has recorded the partition in this member's ``owned``.

So a commit for a released partition always precedes the heartbeat that releases it,
and a new owner (who only gets the partition after that heartbeat) starts from it.

Failures:
- UNKNOWN_MEMBER (the controller expired or removed us): every owned partition is
  lost: readers stopped, queued records dropped, NO commit (someone else may own them
  now; the commit would be fenced anyway); then join again under a fresh member id,
  so that a stale heartbeat of the old incarnation can never speak for the new one.
- No heartbeat answered for a whole session timeout, counted from when the last
  answered one was SENT (the controller may have heard from us no later than that):
  the controller may have expired us, so the partitions are dropped the same way
  (they may be someone else's). Each request is bounded by what is left of the
  session, the coordinator wakes when it runs out, and the consumer delivers no
  record of a held partition once it has (`Coordinator.stale`).
- NOT_CONTROLLER, timeouts, lost connections (and any other error): retried with
  backoff (0.05 s doubling to 1 s); the member keeps consuming what it owns meanwhile.

``leave`` (on close) sends one heartbeat with ``leave=True`` after the consumer has
committed; the controller frees the partitions at once instead of after the session
timeout. It is sent whenever a heartbeat under the current member id was sent, even
unanswered: a join cut short by close may have been applied all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from zstream.clients._errors import (
    ConnectionLostError,
    FencedMemberError,
    NotAuthorizedError,
    NotControllerError,
    RequestTimedOutError,
    UnavailableError,
    UnknownMemberError,
    ZStreamError,
)
from zstream.clients._protocol import FetchOffsetsRequest, GroupHeartbeatRequest, Reply, RequestArgs

__all__ = ["Coordinator", "GroupHost", "Membership", "Work", "partition_map"]

log = logging.getLogger("zstream.clients.group")

# A partition as (topic, partition); the consumer's TopicPartition is such a tuple.
TP = tuple[str, int]

_RETRIABLE = (NotControllerError, UnavailableError, ConnectionLostError, RequestTimedOutError)


def partition_map(tps: Iterable[TP]) -> dict[str, list[int]]:
    """{topic: [partition, ...]} (sorted), the wire form of a set of partitions."""
    out: dict[str, list[int]] = {}
    for topic, partition in sorted(tps):
        out.setdefault(topic, []).append(partition)
    return out


def _partitions(raw: object) -> set[TP]:
    """The reply's {topic: [p]} as a set; anything malformed counts as nothing."""
    out: set[TP] = set()
    if isinstance(raw, dict):
        for topic, parts in raw.items():
            if isinstance(topic, str) and isinstance(parts, list):
                out.update((topic, p) for p in parts if type(p) is int and p >= 0)
    return out


def new_member_id() -> str:
    return secrets.token_hex(8)


class Work(NamedTuple):
    """What a heartbeat reply asks of the consumer: partitions to release first, then
    partitions to start reading (claims that stood). ``claimed`` and ``dropped``
    changed ``owned`` already (nothing to do but report it)."""

    release: frozenset[TP]
    take: frozenset[TP]
    claimed: frozenset[TP] = frozenset()
    dropped: frozenset[TP] = frozenset()

    @property
    def changes_owned(self) -> bool:
        """The next heartbeat reports a different ``owned``: send it at once."""
        return bool(self.release or self.claimed or self.dropped)


class Membership:
    """One member's view of its group, with no I/O. One heartbeat is in flight at a
    time: `on_reply` answers the one `heartbeat` built last."""

    def __init__(self, group: str, topics: Iterable[str], session_timeout_ms: int) -> None:
        self.group = group
        self.session_timeout_ms = session_timeout_ms
        self.member_id = new_member_id()
        self.topics = sorted(set(topics))
        # The subscription the controller holds (None: none acknowledged yet), and the
        # one the heartbeat in flight establishes once answered.
        self.acked_topics: list[str] | None = None
        self._sent_topics: list[str] | None = None
        # Every partition reported in ``owned``: the consumed ones and the claimed ones.
        self.owned: set[TP] = set()
        self.claimed: set[TP] = set()  # owned but not read yet: the claim is pending
        self._sent_owned: frozenset[TP] = frozenset()  # ``owned`` of the last heartbeat
        self.member_epoch = -1
        self.heartbeat_interval_ms = min(1000, session_timeout_ms // 3)

    @property
    def consumed(self) -> frozenset[TP]:
        """The partitions being read (owned and no longer merely claimed)."""
        return frozenset(self.owned - self.claimed)

    def subscribe(self, topics: Iterable[str]) -> None:
        self.topics = sorted(set(topics))

    def heartbeat(self, *, leave: bool = False) -> GroupHeartbeatRequest:
        self._sent_owned = frozenset(self.owned)
        # topics=None means "unchanged": the reply then acknowledges what the
        # controller already holds, not a subscription changed while it was in flight.
        unchanged = self.acked_topics == self.topics and not leave
        self._sent_topics = self.acked_topics if unchanged else list(self.topics)
        return GroupHeartbeatRequest(
            self.group,
            self.member_id,
            topics=None if unchanged else list(self.topics),
            owned=partition_map(self.owned),
            session_timeout_ms=self.session_timeout_ms,
            leave=leave,
        )

    def on_reply(self, result: Mapping[str, Any]) -> Work:
        """A successful reply to the last `heartbeat`: settle the claims it carried,
        claim what is newly assigned, and say what to release and what to take."""
        self.acked_topics = self._sent_topics
        epoch = result.get("member_epoch")
        if isinstance(epoch, int):
            self.member_epoch = epoch
        interval = result.get("heartbeat_interval_ms")
        if isinstance(interval, int) and interval > 0:
            self.heartbeat_interval_ms = interval
        assignment = _partitions(result.get("assignment"))
        release = self.consumed - assignment
        take = frozenset(self.claimed & self._sent_owned & assignment)
        dropped = frozenset(self.claimed - assignment)
        self.claimed -= dropped
        self.owned -= dropped
        claimed = frozenset(assignment - self.owned)
        self.claimed |= claimed
        self.owned |= claimed
        return Work(release, take, claimed, dropped)

    def released(self, tps: Iterable[TP]) -> None:
        self.owned.difference_update(tps)

    def taken(self, tps: Iterable[TP]) -> None:
        """Readers started for these claimed partitions: they are consumed now."""
        self.claimed.difference_update(tps)

    def lost(self) -> frozenset[TP]:
        """We are no member any more (UNKNOWN_MEMBER, or silent past the session
        timeout): everything consumed is gone, every claim void; join again under a
        fresh id."""
        gone = self.consumed
        self.owned.clear()
        self.claimed.clear()
        self._sent_owned = frozenset()
        self.member_id = new_member_id()
        self.acked_topics = self._sent_topics = None
        self.member_epoch = -1
        return gone


class GroupHost(Protocol):
    """What the coordinator needs from the consumer."""

    def group_take(self, offsets: Mapping[TP, int | None]) -> None:
        """Start reading these partitions, each from its committed offset (None:
        auto_offset_reset)."""

    async def group_release(self, tps: frozenset[TP], *, lost: bool) -> None:
        """Stop reading these partitions and drop their queued records, run
        on_revoke, then, unless ``lost``, commit what was processed (when
        auto-commit is on)."""

    async def group_assigned(self, tps: frozenset[TP]) -> None:
        """The on_assign callback, once the partitions are being read."""

    def group_refused(self, exc: NotAuthorizedError) -> None:
        """The controller refused this member (an ACL): the application must hear of
        it; the coordinator keeps trying."""


Call = Callable[[RequestArgs], Awaitable[Reply]]


class Coordinator:
    """The heartbeat task of one group member."""

    def __init__(self, membership: Membership, call: Call, host: GroupHost) -> None:
        self.membership = membership
        self._call = call
        self._host = host
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # When the last answered heartbeat was SENT: the controller heard from us no
        # earlier than that, so our session runs out at most a session timeout later.
        self._last_ok = time.monotonic()
        self._sent_as: str | None = None  # member id of the last heartbeat sent
        # Set after each reply has been acted on; tests and `Consumer.wait_for_assignment`
        # wait on it.
        self.changed = asyncio.Condition()
        self.joined = False
        self.closed = False
        # Set by close before it cancels the task: Python 3.11's wait_for can swallow a
        # cancellation that coincides with a reply, so the loop checks this too.
        self._closing = False

    @property
    def member_id(self) -> str:
        return self.membership.member_id

    def start(self) -> None:
        if self._task is None:
            self._last_ok = time.monotonic()
            self._task = asyncio.create_task(self._run(), name=f"group {self.membership.group}")

    def wake(self) -> None:
        """Heartbeat now (the subscription changed)."""
        self._wake.set()

    def session_left_s(self) -> float:
        """Seconds until the controller may have expired this member: a session
        timeout after the last answered heartbeat was sent."""
        return self._last_ok + self.membership.session_timeout_ms / 1000 - time.monotonic()

    def stale(self) -> bool:
        """The session may be over while we hold partitions: they may be someone
        else's by now, so their records must not be delivered any more."""
        return bool(self.membership.owned) and self.session_left_s() <= 0

    def _bound_s(self) -> float:
        """How long a request may take: while we hold partitions, the rest of the
        session (past it they are not ours); otherwise a whole session."""
        if self.membership.owned:
            return max(self.session_left_s(), 0.001)
        return self.membership.session_timeout_ms / 1000

    async def _run(self) -> None:
        delay = 0.05
        while not self._closing:
            try:
                now_ok = await self._beat()
            except Exception:  # a bug must not end the membership silently: retry
                log.exception("group %s: heartbeat failed", self.membership.group)
                now_ok = False
            if now_ok is None:  # a change was made: tell the controller at once
                delay = 0.05
                continue
            if now_ok:
                delay = 0.05
                wait = self.membership.heartbeat_interval_ms / 1000
            else:
                wait, delay = delay, min(delay * 2, 1.0)
            if self.membership.owned:  # wake when the session runs out, to drop them
                wait = min(wait, max(self.session_left_s(), 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    async def _beat(self) -> bool | None:
        """One heartbeat and its consequences: True if nothing changed, None if
        something did (heartbeat again at once), False on a retriable failure."""
        m = self.membership
        if self.stale():
            log.warning("group %s: no heartbeat answered for a whole session", m.group)
            await self._lose()
        sent_at = time.monotonic()
        request = m.heartbeat()
        self._sent_as = request.member_id
        try:
            # Bounded by the session: past it the controller has given up on us anyway.
            reply = await asyncio.wait_for(self._call(request), self._bound_s())
        except (UnknownMemberError, FencedMemberError) as exc:
            log.info("group %s: member %s is gone (%s); joining again", m.group, m.member_id, exc)
            await self._lose()
            return None
        except (ZStreamError, TimeoutError) as exc:
            # NOT_CONTROLLER, timeouts, lost connections, and whatever else the
            # controller answers (UNKNOWN_SERVER_ERROR...): back off and retry.
            if isinstance(exc, NotAuthorizedError):
                self._host.group_refused(exc)
            elif not isinstance(exc, (*_RETRIABLE, TimeoutError)):
                log.warning("group %s: heartbeat failed: %r", m.group, exc)
            if self.stale():
                log.warning("group %s: no heartbeat answered for a session (%r)", m.group, exc)
                await self._lose()
            return False
        self._last_ok = sent_at
        work = m.on_reply(reply.result)
        if work.release:
            await self._host.group_release(work.release, lost=False)
            m.released(work.release)
        if work.take:
            try:
                offsets = await self._committed(work.take)
            except (ZStreamError, TimeoutError) as exc:
                # Still claimed: the next reply that assigns them takes them.
                log.warning("group %s: committed offsets unavailable: %r", m.group, exc)
                if isinstance(exc, NotAuthorizedError):
                    self._host.group_refused(exc)
                await self._notify(joined=True)  # the session is fresh again
                return False
            self._host.group_take(offsets)
            m.taken(work.take)
            await self._host.group_assigned(work.take)
        await self._notify(joined=True)
        return None if work.changes_owned else True

    async def _lose(self) -> None:
        gone = self.membership.lost()
        if gone:
            await self._host.group_release(gone, lost=True)
        await self._notify(joined=False)

    async def _notify(self, *, joined: bool) -> None:
        async with self.changed:
            self.joined = joined
            self.changed.notify_all()

    async def _committed(self, tps: frozenset[TP]) -> dict[TP, int | None]:
        m = self.membership
        request = FetchOffsetsRequest(m.group, sorted({t for t, _ in tps}))
        reply = await asyncio.wait_for(self._call(request), self._bound_s())
        found = committed_offsets(reply.result)
        return {tp: found.get(tp) for tp in tps}

    async def close(self, *, leave: bool) -> None:
        """End the task; with ``leave`` tell the controller we are gone (best effort:
        otherwise the session timeout frees the partitions)."""
        task, self._task = self._task, None
        self._closing = True
        self._wake.set()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        async with self.changed:  # nothing will change any more: release the waiters
            self.closed = True
            self.changed.notify_all()
        # Leave whenever the current member id was ever sent: a join still in flight
        # when the task was cancelled may have been applied all the same.
        if leave and self._sent_as == self.membership.member_id:
            request = self.membership.heartbeat(leave=True)
            with contextlib.suppress(ZStreamError, TimeoutError):
                await asyncio.wait_for(self._call(request), 2.0)


def committed_offsets(result: Mapping[str, Any]) -> dict[TP, int]:
    """A fetch_offsets reply's ``offsets`` as {(topic, partition): next_offset}."""
    out: dict[TP, int] = {}
    raw = result.get("offsets")
    if isinstance(raw, dict):
        for topic, pairs in raw.items():
            if not isinstance(topic, str) or not isinstance(pairs, list):
                continue
            for pair in pairs:
                if (
                    isinstance(pair, list | tuple)
                    and len(pair) == 2
                    and all(type(x) is int and x >= 0 for x in pair)
                ):
                    out[(topic, pair[0])] = pair[1]
    return out
