"""`RaftHost`: many Raft groups driven by one asyncio loop over one `PeerTransport`.

Theory of operation
===================

One task (`RaftHost.run`) owns every group's `RaftNode` and `RaftLog`. A second task,
owned by `run`, only waits on the transport and appends what arrives to the inbox.
The loop sleeps until something happens (an inbox item, a proposal, the tick timer),
then makes one *pass*:

1. step every inbox item into its group (and wake the group if it was quiet);
2. if the tick is due, tick every group that is not quiesced (one timer for all);
3. for every group touched since the last pass that `has_ready()`, take its Ready;
   write changed term/vote to raft-state (worker threads, all groups concurrently)
   BEFORE anything is sent; install a snapshot; append entries (write, no fsync);
   queue ``messages``;
4. flush the transport: one ZeroMQ multipart send per peer for everything queued, so
   the leader's appends leave while its own fsync runs (Ongaro 10.2.1);
5. start an fdatasync of every log written in this pass, concurrently in worker
   threads (group commit: one fsync per dirty log per pass), without waiting;
6. apply at once the Ready's ``committed_entries`` that are durable here already
   (up to the group's last finished fsync, no configuration change, nothing of an
   earlier batch still waiting to be applied): a leader answers what its followers
   committed without waiting for a later fsync of its own. Then complete, oldest
   first, the batches whose fsyncs are done: queue their ``messages_after_append``
   and flush, apply the committed entries not applied early (conf changes via
   `RaftNode.apply_conf_change`, proposal futures, ``on_apply``, commit waiters),
   `advance`. A pass never waits for an fsync (unless 16 batches are in flight), so
   a slow fsync does not hold back the next passes' appends and sends; batches
   complete in order (a later fsync of the same file covers the earlier writes), and
   a pass that must truncate or reset a log first completes every batch in flight
   (storage forbids that during a sync). A group whose advance produced more work is
   in the next pass.

Quiescence and liveness
-----------------------
Every tick the host sends each peer one small liveness heartbeat (not one per group),
carrying its own peer address (so a blank node can learn how to answer its leader). A
leader group with nothing pending, all members' match == last index == commit, for
``quiesce_after_ticks`` ticks, tells its followers to quiesce and stops ticking; a
follower quiesces on that notice from its current leader and term. Any message,
proposal or request for a group wakes it. When a peer has been silent for
``liveness_timeout_ticks``, quiesced followers of groups it led wake with their
election clocks run forward, so they campaign within one randomized timeout.

Wire format (the header of one transport item, msgpack)
-------------------------------------------------------
- Raft message: ``[group_id uint, core_header]`` where core_header is
  `message_to_wire`'s header; the item's payload frames are the entries' data.
- Host control: ``[-1, 0, address str]`` liveness heartbeat from the sender;
  ``[-1, 1, group_id uint, term uint]`` quiesce notice from the group's leader;
  ``[-1, 2, data bin]`` an application message (`RaftHost.send_app`), opaque here
  and handed to the ``on_app_message`` callbacks (at most ``MAX_APP_MESSAGE_BYTES``).

Items that do not decode are counted and dropped; a peer can never crash the host.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import msgpack

from zstream.storage import CorruptBatchError, decode_batch_header

from . import _trace
from ._codec import decode_conf_change, message_from_wire, message_to_wire
from ._errors import CodecError, ConfigError, NotLeaderError, RaftError
from ._raft import RaftConfig, RaftNode
from ._raftlog_disk import RaftLog
from ._transport import PeerMessage, PeerTransport, TransportClosedError
from ._types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    NodeId,
    Ready,
    Role,
    Snapshot,
)

__all__ = [
    "GroupHandle",
    "HostConfig",
    "HostError",
    "HostStats",
    "HostStoppedError",
    "ProposalTimeoutError",
    "RaftHost",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_HOST = -1
_LIVENESS = 0
_QUIESCE = 1
_APP = 2
# An application message rides the peer transport between Raft traffic: small
# notices (a partition leader's report to the controller), never bulk data.
MAX_APP_MESSAGE_BYTES = 64 * 1024
_CONF_CHANGE = EntryType.CONF_CHANGE
_APPEND = MessageType.APPEND
_APPEND_RESP = MessageType.APPEND_RESP
_LEADER = Role.LEADER
# Messages that a quiesced group steps without waking: the tail of the last heartbeat
# round and acknowledgements, which cross the quiesce notice on the wire.
_BENIGN = frozenset({MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESP, MessageType.APPEND_RESP})


class HostError(RaftError):
    """Root of the host's own errors."""


class HostStoppedError(HostError):
    """The host is closed (or the group removed): the request will never complete."""


class ProposalTimeoutError(HostError):
    """The proposal was not committed within ``proposal_timeout_ms``; it may still
    commit later (retry idempotently)."""

    retriable = True


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Configuration of one `RaftHost`; times in milliseconds or ticks, as named."""

    # One tick = 50 ms: with election_tick 10 that is a 0.5-1 s randomized election
    # timeout and 20 heartbeats a second, for a sub-second failover.
    tick_ms: int = 50
    # Defaults for the groups' RaftConfig (add_group copies them in).
    election_tick: int = 10
    heartbeat_tick: int = 1
    # fdatasync each dirty log once per pass; False only for benchmarks/tests that
    # trade durability for speed.
    fsync: bool = True
    # Worker threads for fsyncs and raft-state writes: fsync releases the GIL, so a few
    # dirty logs sync in parallel on one disk queue.
    sync_threads: int = 4
    # A pass with no batch in flight that wrote at most _INLINE_SYNC_LOGS logs fsyncs on
    # the loop itself while the host's recent fsyncs (a moving average) took under this
    # many microseconds: at low load, handing a short fsync to a thread and its result
    # back costs more than the fsync (two thread wake-ups and a GIL hand-off, ~1 ms on
    # a busy 2-core machine against a 0.3 ms fdatasync). A slower disk or a loaded one
    # goes back to the threads by itself. 0 (the default): always in threads, because
    # an fsync that stalls without warning (a disk hiccup) would then stall the whole
    # loop, heartbeats included; measured gain on this project's 2-core machine: a
    # produce p50 of 4.1-4.5 ms instead of 5.5-5.9 at 1,000/s (docs/benchmarks.md).
    inline_sync_us: int = 0
    # Items stepped per pass at most, so one pass stays short under a flood.
    max_batch_entries: int = 8192
    # Proposal bytes handed to one group's core per pass (the rest waits a pass): keeps
    # a pass, and so the gap between ticks and heartbeats, short under a flood. 4 MiB
    # is a few ms of writing and fsyncing.
    max_pass_proposal_bytes: int = 4 * 1024 * 1024
    # A proposal fails with ProposalTimeoutError after this long (it may still commit).
    proposal_timeout_ms: int = 5000
    # A leader group idle this many ticks (1 s) quiesces.
    quiesce_after_ticks: int = 20
    # A peer silent this many ticks is considered down; 0 means election_tick.
    liveness_timeout_ticks: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "fsync":
                if not isinstance(value, bool):
                    raise ConfigError("fsync must be a bool")
            elif type(value) is not int or value < 0:
                raise ConfigError(f"HostConfig.{f.name} must be an int >= 0, got {value!r}")
        for name in (
            "tick_ms",
            "sync_threads",
            "max_batch_entries",
            "quiesce_after_ticks",
            "max_pass_proposal_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"HostConfig.{name} must be >= 1")
        if self.election_tick <= self.heartbeat_tick or self.heartbeat_tick < 1:
            raise ConfigError("need 1 <= heartbeat_tick < election_tick")
        if self.proposal_timeout_ms < 1:
            raise ConfigError("proposal_timeout_ms must be >= 1")

    @property
    def liveness_ticks(self) -> int:
        return self.liveness_timeout_ticks or self.election_tick


@dataclass(slots=True)
class HostStats:
    """Counters since the host started (for tests, metrics and benchmarks)."""

    passes: int = 0
    fsyncs: int = 0
    inline_fsyncs: int = 0  # of which on the loop (inline_sync_us)
    sync_wait_s: float = 0.0  # time passes spent waiting for their fsyncs
    state_writes: int = 0
    messages_sent: int = 0
    items_dropped: int = 0


@dataclass(slots=True)
class _Batch:
    """One pass's Readys while their fsyncs run."""

    work: list[tuple[_Group, Ready]]
    syncs: asyncio.Future[list[int]] | None
    synced: list[_Group]  # the groups whose logs ``syncs`` fsyncs, in its order
    early: list[int]  # per Ready of ``work``: how many committed entries were applied


# Passes whose fsyncs may run at once before a pass waits for the oldest: enough to
# ride out a slow fsync at a high proposal rate, small enough to bound memory.
_MAX_INFLIGHT_BATCHES = 16
# At most this many logs fsync on the loop in one pass (more sync in parallel in threads).
_INLINE_SYNC_LOGS = 2
# Weight of the newest fsync in the moving average that decides inline or threaded.
_SYNC_EWMA_WEIGHT = 0.2


class _Group:
    __slots__ = (
        "applied",
        "deferred",
        "durable",
        "handle",
        "id",
        "idle_ticks",
        "leader",
        "leader_callbacks",
        "log",
        "node",
        "on_apply",
        "on_snapshot",
        "pending",
        "pending_futs",
        "pending_ts",
        "proposals",
        "quiesced",
        "read_seq",
        "reads",
        "saved_term_vote",
        "timeouts",
        "waiter_seq",
        "waiters",
    )

    def __init__(
        self,
        group_id: int,
        node: RaftNode,
        log: RaftLog,
        on_apply: Callable[[list[Entry]], None] | None,
        on_snapshot: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.id = group_id
        self.node = node
        self.log = log
        self.on_apply = on_apply
        self.on_snapshot = on_snapshot
        self.applied = node.applied
        # The highest index known durable in this node's log (a finished fsync), and
        # how many batches in flight still hold committed entries of this group to
        # apply: committed entries are applied early only up to ``durable`` and only
        # when none is waiting ahead of them (see `RaftHost._apply_early`).
        self.durable = log.last_index()
        self.deferred = 0
        self.proposals: dict[int, tuple[int, asyncio.Future[int]]] = {}
        self.pending: list[bytes] = []
        self.pending_futs: list[asyncio.Future[int]] = []
        self.pending_ts: list[int] = []  # when each was queued; only while tracing
        # (deadline, first index, last index) of each batch of proposals, in order.
        self.timeouts: deque[tuple[float, int, int]] = deque()
        self.waiters: list[tuple[int, int, asyncio.Future[int]]] = []
        self.waiter_seq = 0
        self.reads: dict[bytes, asyncio.Future[int]] = {}
        self.read_seq = 0
        self.quiesced = False
        self.idle_ticks = 0
        self.leader = 0
        self.leader_callbacks: list[Callable[[NodeId, int], None]] = []
        hs, _ = log.initial_state()
        self.saved_term_vote = (hs.term, hs.vote)
        self.handle = GroupHandle(self)


class GroupHandle:
    """The application's view of one group on this host (see RaftHost.add_group)."""

    def __init__(self, group: _Group) -> None:
        self._g = group
        self._host: RaftHost | None = None

    # -- requests ------------------------------------------------------------------------

    def propose(self, data: bytes) -> asyncio.Future[int]:
        """Propose ``data``; the future gives its index once committed and applied here,
        or fails with NotLeaderError(leader_hint), ProposalTimeoutError,
        ProposalDroppedError or HostStoppedError. For a partition group ``data`` must
        be a record batch (storage's format). Proposals made between two passes go to
        the core in one `propose_batch`."""
        host = self._live_host()
        g = self._g
        if g.node.role != _LEADER:
            return _failed(NotLeaderError(g.node.leader))
        if g.log.records:
            try:
                decode_batch_header(data)
            except CorruptBatchError as exc:
                return _failed(exc)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        g.pending.append(data)
        g.pending_futs.append(fut)
        if _trace.trace is not None:
            g.pending_ts.append(time.monotonic_ns())
        host._wake(g)
        host._touch(g)
        return fut

    def propose_conf_change(self, cc: ConfChange) -> asyncio.Future[int]:
        """Propose a membership change; resolves like `propose` once applied here."""
        host = self._live_host()
        return host._propose(self._g, lambda: self._g.node.propose_conf_change(cc))

    def transfer_leader(self, node_id: NodeId) -> None:
        """Ask the leader to hand leadership to ``node_id`` (raises NotLeaderError)."""
        host = self._live_host()
        host._wake(self._g)
        self._g.node.transfer_leader(node_id)
        host._touch(self._g)

    def campaign(self) -> None:
        """Start an election now (bootstrap and tests)."""
        host = self._live_host()
        host._wake(self._g)
        self._g.node.campaign()
        host._touch(self._g)

    def read_index(self) -> asyncio.Future[int]:
        """A linearizable read point: the future gives a commit index once this leader
        confirmed its leadership; serve the read after `wait_committed` of it."""
        host = self._live_host()
        g = self._g
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        g.read_seq += 1
        ctx = g.read_seq.to_bytes(8, "big")
        host._wake(g)
        try:
            g.node.read_index(ctx)
        except RaftError as exc:
            fut.set_exception(exc)
            return fut
        g.reads[ctx] = fut
        host._touch(g)
        return fut

    async def wait_committed(self, index: int) -> int:
        """Wait until the entries up to ``index`` are committed and applied here;
        returns the applied index."""
        g = self._g
        if g.applied >= index:
            return g.applied
        host = self._live_host()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        g.waiter_seq += 1
        heapq.heappush(g.waiters, (index, g.waiter_seq, fut))
        del host
        return await fut

    def on_leader_change(self, callback: Callable[[NodeId, int], None]) -> None:
        """Call ``callback(leader, term)`` whenever this node learns a new leader
        (0 = unknown) for the group."""
        self._g.leader_callbacks.append(callback)

    # -- state ---------------------------------------------------------------------------

    @property
    def group_id(self) -> int:
        return self._g.id

    @property
    def log(self) -> RaftLog:
        return self._g.log

    @property
    def leader(self) -> NodeId:
        return self._g.node.leader

    @property
    def is_leader(self) -> bool:
        return self._g.node.role == _LEADER

    @property
    def role(self) -> Role:
        return self._g.node.role

    @property
    def term(self) -> int:
        return self._g.node.term

    @property
    def commit_index(self) -> int:
        return self._g.node.commit

    @property
    def applied_index(self) -> int:
        return self._g.applied

    @property
    def last_index(self) -> int:
        return self._g.node.last_index

    @property
    def conf_state(self) -> ConfState:
        return self._g.node.conf_state

    def progress(self) -> dict[NodeId, tuple[int, int, str]]:
        """On the leader, each member's (match, next, replication state); else {}."""
        node = self._g.node
        out: dict[NodeId, tuple[int, int, str]] = {}
        for nid in sorted(node.conf_state.members()):
            pr = node.progress(nid)
            if pr is not None:
                out[nid] = (pr[0], pr[1], pr[2].name)
        return out

    @property
    def quiesced(self) -> bool:
        return self._g.quiesced

    def _live_host(self) -> RaftHost:
        host = self._host
        if host is None or host._stopped:
            raise HostStoppedError("the host is stopped or the group was removed")
        return host


def _failed(exc: BaseException) -> asyncio.Future[int]:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    return fut


class RaftHost:
    """Many Raft groups on one asyncio loop (see the module docstring).

    The host does not own the transport or the logs: the caller starts the transport
    (and adds peers it knows), opens the logs, and closes both after `close()`.
    """

    def __init__(self, node_id: NodeId, transport: PeerTransport, config: HostConfig) -> None:
        self._id = node_id
        self._transport = transport
        self._cfg = config
        self._groups: dict[int, _Group] = {}
        self._active: dict[int, _Group] = {}
        self._dirty: dict[int, _Group] = {}
        self._inbox: list[PeerMessage] = []
        self._wake_event = asyncio.Event()
        self._inline_sync_s = config.inline_sync_us / 1e6
        self._sync_avg_s = 0.0  # moving average of fsync times (see inline_sync_us)
        self._stopped = False
        self._pass_lock = asyncio.Lock()
        # The passes' Readys whose fsyncs run (or ran), oldest first; finished in order.
        self._inflight: deque[_Batch] = deque()
        self._tick_due = False
        self._running = False
        self._done = asyncio.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            config.sync_threads, thread_name_prefix=f"raft-sync-{node_id}"
        )
        self._last_heard: dict[NodeId, float] = {}
        self._down: set[NodeId] = set()
        self._peer_callbacks: list[Callable[[NodeId, str], None]] = []
        self._app_callbacks: list[Callable[[NodeId, bytes], None]] = []
        self._liveness_header = msgpack.packb([_HOST, _LIVENESS, transport.address])
        self._stats = HostStats()

    # -- groups --------------------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self._id

    def add_group(
        self,
        group_id: int,
        log: RaftLog,
        raft_config: RaftConfig,
        *,
        on_apply: Callable[[list[Entry]], None] | None = None,
        on_snapshot: Callable[[Snapshot], None] | None = None,
    ) -> GroupHandle:
        """Host a group whose durable log is ``log``. ``raft_config.id`` must be this
        host's node id; its ``applied`` is taken from the log. ``on_apply`` is called
        with each pass's committed entries, in order, after they are applied;
        ``on_snapshot`` with each snapshot installed from the leader, once it is
        durable and before any entry after it is applied (a state machine replaces
        its state with ``snapshot.data``)."""
        if self._stopped:
            raise HostStoppedError("the host is stopped")
        if group_id in self._groups or group_id < 0:
            raise ConfigError(f"group {group_id} exists already or is negative")
        if raft_config.id != self._id:
            raise ConfigError(f"raft_config.id {raft_config.id} is not this host {self._id}")
        cfg = replace(raft_config, applied=log.applied_index)
        node = RaftNode(cfg, log)
        if log.recovering_until:
            node.set_vote_blocked_until(log.recovering_until)
        g = _Group(group_id, node, log, on_apply, on_snapshot)
        g.handle._host = self
        self._groups[group_id] = g
        self._active[group_id] = g
        self._touch(g)
        return g.handle

    def remove_group(self, group_id: int) -> None:
        """Stop hosting a group; its pending requests fail with HostStoppedError."""
        g = self._groups.pop(group_id, None)
        if g is None:
            return
        self._active.pop(group_id, None)
        self._dirty.pop(group_id, None)
        g.handle._host = None
        _fail_group(g, HostStoppedError(f"group {group_id} removed"))

    def group(self, group_id: int) -> GroupHandle | None:
        g = self._groups.get(group_id)
        return g.handle if g is not None else None

    def on_peer_address(self, callback: Callable[[NodeId, str], None]) -> None:
        """Call ``callback(node_id, address)`` for each liveness heartbeat from a peer the
        transport does not know; the callback decides whether to add it (a blank node
        learns its leader's address this way)."""
        self._peer_callbacks.append(callback)

    def down_peers(self) -> frozenset[NodeId]:
        """Peers silent for longer than the liveness timeout (as quiescence sees them)."""
        return frozenset(self._down)

    def on_app_message(self, callback: Callable[[NodeId, bytes], None]) -> None:
        """Call ``callback(node_id, data)`` for each `send_app` message from a peer. The
        data is whatever the peer sent: the callback validates it (and must not raise)."""
        self._app_callbacks.append(callback)

    def send_app(self, peer: NodeId, data: bytes) -> bool:
        """Send ``data`` to ``peer``'s `on_app_message` callbacks within a tick, best
        effort (lost if the peer is unknown, down or at its high-water mark: the caller
        retries).
        Returns False when it was not even queued."""
        if self._stopped or peer == self._id or len(data) > MAX_APP_MESSAGE_BYTES:
            return False
        if peer not in self._transport.peers():
            return False
        # Queued only: the next tick's liveness flush sends it (within one tick), and a
        # flush from here could not tell which Raft messages are safe to send yet.
        self._transport.send(peer, msgpack.packb([_HOST, _APP, data]))
        return True

    @property
    def stats(self) -> HostStats:
        """A copy of the counters."""
        return replace(self._stats)

    def active_group_count(self) -> int:
        """Groups that are ticking (not quiesced)."""
        return len(self._active)

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Drive every group until `close()` (or cancellation)."""
        if self._running:
            raise HostError("the host is already running")
        if self._stopped:
            return  # closed before it ever ran
        self._running = True
        loop = asyncio.get_running_loop()
        recv = asyncio.create_task(self._receive(), name=f"raft-recv-{self._id}")
        tick_s = self._cfg.tick_ms / 1000
        next_tick = loop.time() + tick_s
        # The timer callback marks the tick due: uvloop may fire a timer up to a
        # millisecond before loop.time() reaches its deadline, so comparing times
        # here could miss a tick and leave no timer armed.
        timer = loop.call_at(next_tick, self._on_timer)
        try:
            while not self._stopped:
                if not self._inbox and not self._dirty and not self._sync_done():
                    await self._wake_event.wait()
                self._wake_event.clear()
                if self._stopping():
                    break
                if self._tick_due:
                    self._tick_due = False
                    now = loop.time()
                    next_tick += tick_s
                    if next_tick <= now:  # the loop fell behind: skip, do not burst
                        next_tick = now + tick_s
                    timer = loop.call_at(next_tick, self._on_timer)
                    self._tick(now)
                await self._pass()
        finally:
            timer.cancel()
            recv.cancel()
            with contextlib.suppress(asyncio.CancelledError, TransportClosedError):
                await recv
            self._shutdown()

    async def close(self) -> None:
        """Stop the loop; every pending request fails with HostStoppedError."""
        if self._stopped:
            return
        self._stopped = True
        self._wake_event.set()
        if self._running:
            await self._done.wait()
        else:
            self._shutdown()

    def _sync_done(self) -> bool:
        """The oldest batch in flight has its fsyncs finished: complete it now."""
        inflight = self._inflight
        return bool(inflight) and (inflight[0].syncs is None or inflight[0].syncs.done())

    def _on_timer(self) -> None:
        self._tick_due = True
        self._wake_event.set()

    def _stopping(self) -> bool:
        return self._stopped

    def _shutdown(self) -> None:
        self._stopped = True
        err = HostStoppedError("the host stopped")
        for g in self._groups.values():
            _fail_group(g, err)
        self._pool.shutdown(wait=True)
        self._done.set()

    async def _receive(self) -> None:
        transport = self._transport
        while True:
            items = await transport.recv_batch()
            self._inbox.extend(items)
            self._wake_event.set()

    # -- internals used by GroupHandle ---------------------------------------------------

    def _touch(self, g: _Group) -> None:
        self._dirty[g.id] = g
        self._wake_event.set()

    def _wake(self, g: _Group) -> None:
        g.idle_ticks = 0
        if g.quiesced:
            g.quiesced = False
            self._active[g.id] = g

    def _propose(self, g: _Group, do: Callable[[], int]) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._wake(g)
        try:
            index = do()
        except RaftError as exc:
            fut.set_exception(exc)
            return fut
        g.proposals[index] = (g.node.term, fut)
        g.timeouts.append((loop.time() + self._cfg.proposal_timeout_ms / 1000, index, index))
        self._touch(g)
        return fut

    def _flush_proposals(self, g: _Group, now: float) -> None:
        """Hand the proposals queued since the last pass to the core in one call."""
        datas, futs = g.pending, g.pending_futs
        budget = self._cfg.max_pass_proposal_bytes
        n = 0
        for data in datas:
            budget -= len(data)
            n += 1
            if budget <= 0:
                break
        queued = g.pending_ts
        if n < len(datas):
            g.pending, g.pending_futs = datas[n:], futs[n:]
            g.pending_ts = queued[n:]
            datas, futs, queued = datas[:n], futs[:n], queued[:n]
            self._dirty[g.id] = g
        else:
            g.pending, g.pending_futs, g.pending_ts = [], [], []
        try:
            first = g.node.propose_batch(datas)
        except RaftError as exc:
            for fut in futs:
                if not fut.done():
                    fut.set_exception(exc)
            return
        tr = _trace.trace
        if tr is not None:
            for index, t_ns in enumerate(queued, first):
                tr.mark("queued", g.id, index, t_ns)
            tr.mark_range("proposed", g.id, first, first + len(futs) - 1)
        term = g.node.term
        proposals = g.proposals
        for index, fut in enumerate(futs, first):
            proposals[index] = (term, fut)
        deadline = now + self._cfg.proposal_timeout_ms / 1000
        g.timeouts.append((deadline, first, first + len(futs) - 1))

    # -- one pass ------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        cfg = self._cfg
        transport = self._transport
        # Liveness: one small heartbeat per peer per tick, and who went silent.
        timeout_s = cfg.liveness_ticks * cfg.tick_ms / 1000
        for peer in transport.peers():
            transport.send(peer, self._liveness_header)
            heard = self._last_heard.setdefault(peer, now)
            if now - heard > timeout_s and peer not in self._down:
                self._down.add(peer)
                self._peer_down(peer)
        transport.flush()
        quiesce_after = cfg.quiesce_after_ticks
        for g in list(self._active.values()):
            g.node.tick()
            self._dirty[g.id] = g
            if g.timeouts:
                self._expire(g, now)
            if g.node.role == _LEADER:
                if self._idle(g):
                    g.idle_ticks += 1
                    if g.idle_ticks >= quiesce_after:
                        self._quiesce(g)
                else:
                    g.idle_ticks = 0

    def _idle(self, g: _Group) -> bool:
        node = g.node
        last = node.last_index
        if g.proposals or g.pending or g.reads or node.commit != last or g.applied != last:
            return False
        for nid in node.conf_state.members():
            if nid != self._id:
                pr = node.progress(nid)
                if pr is None or pr[0] != last or nid in self._down:
                    return False
        return True

    def _quiesce(self, g: _Group) -> None:
        g.quiesced = True
        self._active.pop(g.id, None)
        header = msgpack.packb([_HOST, _QUIESCE, g.id, g.node.term])
        for nid in g.node.conf_state.members():
            if nid != self._id:
                self._transport.send(nid, header)
        self._transport.flush()

    def _peer_down(self, peer: NodeId) -> None:
        """Quiesced followers of groups ``peer`` led wake, their clocks run forward."""
        et = self._cfg.election_tick
        for g in self._groups.values():
            if g.quiesced and g.node.leader == peer:
                self._wake(g)
                for _ in range(et - 1):
                    g.node.tick()
                self._dirty[g.id] = g

    def _expire(self, g: _Group, now: float) -> None:
        timeouts = g.timeouts
        while timeouts and timeouts[0][0] <= now:
            _, lo, hi = timeouts.popleft()
            if not g.proposals:  # every proposal resolved already: nothing to walk
                continue
            for index in range(lo, hi + 1):
                p = g.proposals.pop(index, None)
                if p is not None and not p[1].done():
                    p[1].set_exception(ProposalTimeoutError(f"proposal {index} not committed"))

    def _deliver(self, items: list[PeerMessage]) -> None:
        groups = self._groups
        now = asyncio.get_running_loop().time()
        heard = self._last_heard
        for item in items:
            frm = item.from_node
            heard[frm] = now
            if frm in self._down:
                self._down.discard(frm)
            try:
                h = _decode_header(item.header)
                gid = h[0]
                if gid == _HOST:
                    self._host_message(frm, h)
                    continue
                g = groups.get(gid)
                if g is None:
                    self._stats.items_dropped += 1
                    continue
                msg = message_from_wire(h[1], item.payloads)
            except (CodecError, ValueError, TypeError, IndexError, msgpack.UnpackException):
                self._bad_item(frm)
                continue
            if msg.frm != frm:
                self._bad_item(frm)
                continue
            if _trace.trace is not None and msg.type == _APPEND and msg.entries:
                first, last = msg.entries[0].index, msg.entries[-1].index
                _trace.trace.mark_range("received", gid, first, last)
            if g.quiesced and not (
                msg.type in _BENIGN and msg.term == g.node.term and not msg.reject
            ):
                self._wake(g)
            g.node.step(msg)
            self._dirty[gid] = g

    def _bad_item(self, frm: NodeId) -> None:
        stats = self._stats
        stats.items_dropped += 1
        n = stats.items_dropped
        if n & (n - 1) == 0:  # 1, 2, 4, 8...: rate-limited
            _log.warning("dropping a bad item from node %s (%d dropped so far)", frm, n)

    def _host_message(self, frm: NodeId, h: list[Any]) -> None:
        kind = h[1]
        if kind == _LIVENESS and len(h) == 3 and type(h[2]) is bytes:
            addr = h[2].decode(errors="replace")
            if not addr.startswith("tcp://"):
                raise ValueError("bad peer address")
            if self._peer_callbacks and frm not in self._transport.peers():
                for cb in self._peer_callbacks:
                    cb(frm, addr)
        elif kind == _QUIESCE and len(h) == 4 and type(h[2]) is int and type(h[3]) is int:
            g = self._groups.get(h[2])
            if (
                g is not None
                and g.node.leader == frm
                and g.node.term == h[3]
                and g.node.role != _LEADER
            ):
                g.quiesced = True
                self._active.pop(g.id, None)
        elif kind == _APP and len(h) == 3 and type(h[2]) is bytes:
            if len(h[2]) > MAX_APP_MESSAGE_BYTES:
                raise ValueError("application message too large")
            for app in self._app_callbacks:
                app(frm, h[2])
        else:
            raise ValueError("unknown host message")

    def _send_all(self, g: _Group, msgs: Iterable[Message]) -> None:
        send = self._transport.send
        gid = g.id
        pack = msgpack.packb
        n = 0
        for m in msgs:
            hdr, payloads = message_to_wire(m)
            send(m.to, pack([gid, hdr]), payloads)
            n += 1
        self._stats.messages_sent += n

    async def _pass(self) -> None:
        async with self._pass_lock:
            await self._pass_locked()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold off passes: inside, no fsync or state write of the host is running, so
        the caller may truncate or compact a group's log (RaftLog.compact)."""
        async with self._pass_lock:
            await self._finish_inflight()
            yield

    async def _pass_locked(self) -> None:
        loop = asyncio.get_running_loop()
        if self._inbox:
            limit = self._cfg.max_batch_entries
            inbox = self._inbox
            if len(inbox) > limit:
                self._inbox = inbox[limit:]
                inbox = inbox[:limit]
            else:
                self._inbox = []
            self._deliver(inbox)
        dirty = self._dirty
        self._dirty = {}
        work: list[tuple[_Group, Ready]] = []
        now = loop.time()
        for g in dirty.values():
            if g.pending:
                self._flush_proposals(g, now)
            if g.node.has_ready():
                work.append((g, g.node.ready()))
        if work:
            await self._write(work)
        elif self._sync_done():
            await self._finish_synced()

    async def _write(self, work: list[tuple[_Group, Ready]]) -> None:
        """Steps 3-5 for this pass's Readys; the previous pass's batch completes (step 6)
        once its fsyncs are done, after this pass's writes left, so one batch's fsync
        overlaps the next batch's writes and sends."""
        loop = asyncio.get_running_loop()
        stats = self._stats
        stats.passes += 1
        # 3. Term/vote durable before anything leaves (all groups concurrently).
        writes = []
        for g, rd in work:
            hs = rd.hard_state
            if hs is not None and (hs.term, hs.vote) != g.saved_term_vote:
                g.saved_term_vote = (hs.term, hs.vote)
                writes.append(loop.run_in_executor(self._pool, g.log.save_hard_state, hs))
        if writes:
            stats.state_writes += len(writes)
            await asyncio.gather(*writes)
        synced: list[_Group] = []
        tr = _trace.trace
        for g, rd in work:
            if rd.soft_state is not None:
                self._leader_changed(g, rd.soft_state.leader)
            truncates = rd.entries and rd.entries[0].index <= g.log.last_index()
            if (rd.snapshot is not None or truncates) and self._inflight:
                # Storage forbids truncating or resetting a log while a sync runs.
                await self._finish_inflight()
            if rd.snapshot is not None:
                # Several fsyncs (state, reset marker, new segment): off the loop, like
                # every other durable write of the pass. No sync runs now (see above).
                await loop.run_in_executor(self._pool, g.log.apply_snapshot, rd.snapshot)
                g.durable = rd.snapshot.metadata.index
                g.applied = max(g.applied, rd.snapshot.metadata.index)
                if g.on_snapshot is not None:
                    try:
                        g.on_snapshot(rd.snapshot)
                    except Exception:  # noqa: BLE001 - as for on_apply
                        _log.exception("group %s: on_snapshot failed", g.id)
                _release_waiters(g)
            if rd.entries:
                if truncates:
                    g.durable = min(g.durable, rd.entries[0].index - 1)
                g.log.append(rd.entries)
                synced.append(g)
                if tr is not None:
                    tr.mark_range("appended", g.id, rd.entries[0].index, rd.entries[-1].index)
                if not self._cfg.fsync:
                    g.durable = g.log.last_index()
            if rd.hard_state is not None:
                g.log.set_commit(rd.hard_state.commit)
                if tr is not None:
                    tr.mark("committed", g.id, rd.hard_state.commit)
            if rd.messages:
                self._send_all(g, rd.messages)
        # 4. The leader's appends leave now, while its own fsync runs.
        self._transport.flush()
        # 5. Group commit: one fsync per log written in this pass, in worker threads
        # (or on the loop when short and nothing else is in flight: see inline_sync_us).
        syncs: asyncio.Future[list[int]] | None = None
        if synced and self._cfg.fsync:
            stats.fsyncs += len(synced)
            if (
                not self._inflight
                and len(synced) <= _INLINE_SYNC_LOGS
                and self._sync_avg_s < self._inline_sync_s
            ):
                stats.inline_fsyncs += len(synced)
                syncs = loop.create_future()
                try:
                    syncs.set_result([self._sync(g) for g in synced])
                except Exception as exc:  # noqa: BLE001 - failed as a thread's sync fails
                    syncs.set_exception(exc)
            else:
                pool = self._pool
                syncs = asyncio.gather(*(loop.run_in_executor(pool, self._sync, g) for g in synced))
                syncs.add_done_callback(self._wake_on_sync)
        # Committed entries durable here already need not wait for this pass's fsync.
        early = [self._apply_early(g, rd) for g, rd in work]
        # 6. Batches complete in order, each once its fsyncs are done: a slow fsync
        # holds back only the batches behind it, never the next pass's appends and
        # sends (up to _MAX_INFLIGHT_BATCHES, then the pass waits for the oldest).
        self._inflight.append(_Batch(work, syncs, synced, early))
        if len(self._inflight) > _MAX_INFLIGHT_BATCHES:
            await self._finish_oldest()
        await self._finish_synced()

    def _apply_early(self, g: _Group, rd: Ready) -> int:
        """Apply now, before this pass's fsyncs, the leading committed entries of ``rd``
        that are durable here already (so applied <= durable holds exactly as when
        applying after the fsync), when nothing of an earlier batch waits to be applied
        and there is no snapshot; a configuration change and what follows it wait for
        the batch's completion. A leader thus answers what is committed and on its disk
        without waiting for a later fsync of its own. Returns how many were applied."""
        entries = rd.committed_entries
        if not entries:
            return 0
        n = 0
        if rd.snapshot is None and g.deferred == 0 and self._groups.get(g.id) is g:
            durable = g.durable
            for e in entries:
                if e.index > durable or e.type == _CONF_CHANGE:
                    break
                n += 1
            if n:
                self._apply(g, entries if n == len(entries) else entries[:n])
        if n < len(entries):
            g.deferred += 1
        return n

    def _wake_on_sync(self, fut: asyncio.Future[list[int]]) -> None:
        self._wake_event.set()

    def _sync(self, g: _Group) -> int:
        """fdatasync ``g``'s log (on the loop or in a worker thread); returns the index
        now durable and keeps the moving average of fsync times."""
        started = time.perf_counter()
        durable = g.log.sync()
        took = time.perf_counter() - started
        # Racy across worker threads by design: an average, not an account.
        self._sync_avg_s += (took - self._sync_avg_s) * _SYNC_EWMA_WEIGHT
        if _trace.trace is not None:
            _trace.trace.mark("synced", g.id, durable)
        return durable

    async def _finish_inflight(self) -> None:
        """Complete every batch in flight, waiting for their fsyncs."""
        while self._inflight:
            await self._finish_oldest()

    async def _finish_synced(self) -> None:
        """Complete the batches at the front whose fsyncs are done, without waiting."""
        while self._sync_done():
            await self._finish_oldest()

    async def _finish_oldest(self) -> None:
        """Step 6 for the oldest batch in flight: wait for its fsyncs, then
        acknowledge, apply what was not applied early, and advance."""
        batch = self._inflight[0]
        work, syncs = batch.work, batch.syncs
        if syncs is not None:
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                durable = await syncs
            finally:
                self._inflight.popleft()
                self._stats.sync_wait_s += loop.time() - started
            for g, index in zip(batch.synced, durable, strict=True):
                g.durable = max(g.durable, index)
        else:
            self._inflight.popleft()
        groups = self._groups
        live = [
            (g, rd, early)
            for (g, rd), early in zip(work, batch.early, strict=True)
            if groups.get(g.id) is g
        ]
        tr = _trace.trace
        for g, rd, _ in live:
            if rd.messages_after_append:
                self._send_all(g, rd.messages_after_append)
                if tr is not None:
                    for m in rd.messages_after_append:
                        if m.type == _APPEND_RESP and not m.reject:
                            tr.mark("acked", g.id, m.index)
        self._transport.flush()
        conf_saves: list[_Group] = []
        for g, rd, early in live:
            if early < len(rd.committed_entries):
                g.deferred -= 1
                if self._apply(g, rd.committed_entries[early:]):
                    conf_saves.append(g)
            if rd.read_states:
                for rs in rd.read_states:
                    fut = g.reads.pop(rs.context, None)
                    if fut is not None and not fut.done():
                        fut.set_result(rs.index)
            g.node.advance(rd)
            if g.node.has_ready():
                self._dirty[g.id] = g
        if conf_saves:
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(loop.run_in_executor(self._pool, g.log.save_state) for g in conf_saves)
            )

    def _apply(self, g: _Group, entries: list[Entry]) -> bool:
        """Apply committed entries; returns whether a configuration changed."""
        conf_changed = False
        node, log = g.node, g.log
        for e in entries:
            if e.type == _CONF_CHANGE:
                try:
                    cc = decode_conf_change(e.data)
                except CodecError:
                    _log.error("group %s: undecodable conf change at %s", g.id, e.index)
                    continue
                cs = node.apply_conf_change(cc)
                log.record_conf_state(e.index, cs)
                conf_changed = True
        last = entries[-1].index
        if _trace.trace is not None:
            _trace.trace.mark("applied", g.id, last)
        if g.proposals:
            proposals = g.proposals
            for e in entries:
                p = proposals.pop(e.index, None)
                if p is not None:
                    term, fut = p
                    if fut.done():
                        continue
                    if term == e.term:
                        fut.set_result(e.index)
                    else:
                        fut.set_exception(NotLeaderError(node.leader))
        g.applied = last
        log.set_applied(last)
        if g.on_apply is not None:
            try:
                g.on_apply(entries)
            except Exception:  # noqa: BLE001 - the application's bug must not stop the host
                _log.exception("group %s: on_apply failed", g.id)
        _release_waiters(g)
        return conf_changed

    def _leader_changed(self, g: _Group, leader: NodeId) -> None:
        node = g.node
        if node.role != _LEADER and g.pending:
            err = NotLeaderError(leader)
            for fut in g.pending_futs:
                if not fut.done():
                    fut.set_exception(err)
            g.pending.clear()
            g.pending_futs.clear()
            g.pending_ts.clear()
        if node.role != _LEADER and g.proposals:
            err = NotLeaderError(leader)
            for _, fut in g.proposals.values():
                if not fut.done():
                    fut.set_exception(err)
            g.proposals.clear()
            g.timeouts.clear()
        if node.role != _LEADER and g.reads:
            err = NotLeaderError(leader)
            for fut in g.reads.values():
                if not fut.done():
                    fut.set_exception(err)
            g.reads.clear()
        if leader != g.leader:
            g.leader = leader
            for cb in g.leader_callbacks:
                try:
                    cb(leader, node.term)
                except Exception:  # noqa: BLE001 - the application's bug must not stop the host
                    _log.exception("group %s: leader callback failed", g.id)


def _release_waiters(g: _Group) -> None:
    waiters = g.waiters
    applied = g.applied
    while waiters and waiters[0][0] <= applied:
        _, _, fut = heapq.heappop(waiters)
        if not fut.done():
            fut.set_result(applied)


def _decode_header(buf: bytes) -> list[Any]:
    h = msgpack.unpackb(buf, raw=True)
    if type(h) is not list or len(h) < 2 or type(h[0]) is not int:
        raise TypeError("not [group_id, ...]")
    return h


def _fail_group(g: _Group, err: Exception) -> None:
    for fut in g.pending_futs:
        if not fut.done():
            fut.set_exception(err)
    g.pending.clear()
    g.pending_futs.clear()
    g.pending_ts.clear()
    for _, fut in g.proposals.values():
        if not fut.done():
            fut.set_exception(err)
    g.proposals.clear()
    g.timeouts.clear()
    for fut in g.reads.values():
        if not fut.done():
            fut.set_exception(err)
    g.reads.clear()
    for _, _, fut in g.waiters:
        if not fut.done():
            fut.set_exception(err)
    g.waiters.clear()
