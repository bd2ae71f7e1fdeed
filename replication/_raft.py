"""The Raft core: a deterministic state machine with no I/O and no clock.

Theory of operation
-------------------
Inputs are calls: ``tick()`` (one unit of logical time), ``step(message)`` (a message
from a peer), ``propose*``, ``transfer_leader``, ``read_index``, ``campaign``. Outputs
accumulate until the host calls ``ready()``, which returns a :class:`Ready` listing
what to persist, send and apply; the host does all of it and calls ``advance(ready)``.

Roles and transitions (all in ``_become_*``; each role has its own step function)::

    FOLLOWER --election timeout, pre_vote--> PRE_CANDIDATE --pre-votes won--> CANDIDATE
    FOLLOWER --election timeout / TIMEOUT_NOW--> CANDIDATE --votes won--> LEADER
    any role --message with a higher term--> FOLLOWER
    LEADER --check-quorum failed / removed from the configuration--> FOLLOWER

Terms are handled once, in ``step``, before the role's step function runs:

- a message with a higher term makes us a follower of that term, except a PRE_VOTE
  (which never changes terms), a granted PRE_VOTE_RESP (it carries the future term),
  and a VOTE/PRE_VOTE received while we are in a leader lease (check-quorum: we heard
  from a leader less than an election timeout ago) unless it comes from a leadership
  transfer;
- a message with a lower term is dropped, except that an APPEND/HEARTBEAT from a stale
  leader gets an APPEND_RESP with our term (so it steps down), and a PRE_VOTE gets a
  rejection with our term. Together with forgetting the leader on becoming a
  pre-candidate, these avoid the pre-vote/check-quorum deadlocks etcd-raft documents
  (``prevote_checkquorum``, ``forget_leader``).

Safety rules worth naming:

- the leader commits by counting replicas only entries of its own term (Figure 8),
  and counts its own log only once the host has persisted it (``advance``);
- a follower truncates only from the first conflicting entry, never at or below its
  commit index, and acknowledges ``prev_index + len(entries)``;
- a snapshot whose (index, term) is already in the log only moves the commit index
  (Figure 13); otherwise it replaces the log;
- ReadIndex requests are served only once the leader committed an entry of its term,
  and only after a quorum answered a heartbeat sent after the request arrived;
- at most one configuration change is in flight: none is accepted while an earlier one
  is not applied or while the configuration is joint (except the leave it proposes);
- configurations take effect when applied. A leader being removed accepts no proposals,
  and a voter being removed is sent only entries that a majority of the incoming voters
  already hold durably (and nothing past the leave entry), so that once removed it can
  always vote for some incoming voter (see docs/architecture.md).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ._codec import decode_conf_change, encode_conf_change
from ._confchange import apply_change
from ._errors import (
    CodecError,
    CompactedError,
    ConfChangeInProgressError,
    ConfigError,
    NotLeaderError,
    ProposalDroppedError,
    SnapshotTemporarilyUnavailableError,
    UnavailableError,
)
from ._progress import Inflights, Progress, ProgressState
from ._quorum import VoteResult, committed_index, majority_index, vote_result
from ._raftlog import RaftLog
from ._storage import Storage
from ._types import (
    CAMPAIGN_TRANSFER,
    LOST_ENTRIES,
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Ready,
    Role,
    SoftState,
)
from ._util import entries_size

__all__ = ["ProgressState", "RaftConfig", "RaftNode"]

MiB = 1024 * 1024

_APPEND = MessageType.APPEND
_APPEND_RESP = MessageType.APPEND_RESP
_HEARTBEAT = MessageType.HEARTBEAT
_HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP
_VOTE = MessageType.VOTE
_VOTE_RESP = MessageType.VOTE_RESP
_PRE_VOTE = MessageType.PRE_VOTE
_PRE_VOTE_RESP = MessageType.PRE_VOTE_RESP
_SNAPSHOT = MessageType.SNAPSHOT
_TIMEOUT_NOW = MessageType.TIMEOUT_NOW
_NORMAL = EntryType.NORMAL
_REPLICATE = ProgressState.REPLICATE
_PROBE = ProgressState.PROBE
_LEADER = Role.LEADER

# Responses that acknowledge persisted state: sent only after the Ready's hard state
# and entries are durable.
_AFTER_APPEND = frozenset({_APPEND_RESP, _VOTE_RESP, _PRE_VOTE_RESP})


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Configuration of one member of one Raft group. Times are in ticks."""

    id: NodeId
    # Followers wait a random [election_tick, 2 * election_tick) ticks without hearing
    # from a leader before campaigning; 10 heartbeats, as etcd-raft recommends.
    election_tick: int = 10
    # The leader sends heartbeats every heartbeat_tick ticks (one tick: the host
    # chooses the tick length, and heartbeats are coalesced per peer by the host).
    heartbeat_tick: int = 1
    # Upper bound on entry payload bytes in one APPEND (at least one entry is sent).
    max_size_per_msg: int = 1 * MiB
    # In-flight APPENDs per follower in REPLICATE state: a window by count ...
    max_inflight_msgs: int = 256
    # ... and by payload bytes, so big batches do not flood a slow follower.
    max_inflight_bytes: int = 32 * MiB
    # Pre-vote (thesis 9.6): a partitioned node does not inflate terms on rejoin.
    pre_vote: bool = True
    # Check-quorum: a leader steps down when it has not heard from a quorum for an
    # election timeout; followers in such a lease ignore disruptive votes.
    check_quorum: bool = True
    # Last applied index at restart (committed entries after it are re-delivered).
    applied: int = 0
    # Upper bound on committed entry bytes in one Ready (at least one entry).
    max_committed_size_per_ready: int = 4 * MiB

    def __post_init__(self) -> None:
        if self.id <= 0:
            raise ConfigError(f"id must be > 0, got {self.id}")
        if self.heartbeat_tick <= 0:
            raise ConfigError("heartbeat_tick must be > 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError("election_tick must be greater than heartbeat_tick")
        if self.max_size_per_msg <= 0 or self.max_committed_size_per_ready <= 0:
            raise ConfigError("byte limits must be > 0")
        if self.max_inflight_msgs <= 0 or self.max_inflight_bytes <= 0:
            raise ConfigError("in-flight limits must be > 0")
        if self.applied < 0:
            raise ConfigError("applied must be >= 0")


class RaftNode:
    """One member of one Raft group. See the module docstring for the rules."""

    def __init__(
        self, config: RaftConfig, storage: Storage, rng: random.Random | None = None
    ) -> None:
        self._cfg = config
        self._id = config.id
        self._rng = rng if rng is not None else random.Random()
        hs, cs = storage.initial_state()
        self._log = RaftLog(storage, config.applied, config.max_committed_size_per_ready)
        if hs.commit:
            self._log.commit_to(hs.commit)
            self._log.applied_to(min(self._log.applied, self._log.committed))
        if self._log.applied > self._log.committed:
            self._log.applied = self._log.applying = self._log.committed
        self._term = hs.term
        self._vote = hs.vote
        self._lead = NONE
        self._role = Role.FOLLOWER
        self._conf = ConfState(voters=frozenset())
        self._prs: dict[NodeId, Progress] = {}
        self._votes: dict[NodeId, bool] = {}
        self._msgs: list[Message] = []
        self._msgs_after: list[Message] = []
        self._read_states: list[ReadState] = []
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_tick
        self._lead_transferee = NONE
        self._pending_conf_index = 0
        # Index of the entry leaving the current joint configuration, when the leader's
        # log has one: followers that it removes get no entries past it.
        self._leave_index = 0
        self._term_start = 0  # index of this leader's first entry (its no-op)
        # ReadIndex: requests waiting for the first commit of this term; rounds
        # (seq, index, context) waiting for a quorum of heartbeat acks; acks per voter.
        self._reads_waiting: list[bytes] = []
        self._reads: deque[tuple[int, int, bytes]] = deque()
        self._read_acks: dict[NodeId, int] = {}
        self._read_seq = 0
        # While our last index is below this, we neither vote nor campaign (see
        # set_vote_blocked_until).
        self._vote_blocked_until = 0
        self._switch_to_config(cs)
        self._become_follower(self._term, NONE)
        self._prev_soft = SoftState(self._lead, self._role)
        self._prev_hard = hs

    # -- read-only state ------------------------------------------------------------------

    @property
    def id(self) -> NodeId:
        return self._id

    @property
    def term(self) -> int:
        return self._term

    @property
    def vote(self) -> NodeId:
        return self._vote

    @property
    def commit(self) -> int:
        return self._log.committed

    @property
    def applied(self) -> int:
        return self._log.applied

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader(self) -> NodeId:
        return self._lead

    @property
    def last_index(self) -> int:
        return self._log.last_index()

    @property
    def conf_state(self) -> ConfState:
        return self._conf

    def progress(self, node_id: NodeId) -> tuple[int, int, ProgressState] | None:
        """(match, next, state) of ``node_id`` as this leader tracks it; None when this
        node is not the leader or does not track ``node_id``."""
        if self._role != _LEADER:
            return None
        pr = self._prs.get(node_id)
        if pr is None:
            return None
        return pr.match, pr.next, pr.state

    def set_vote_blocked_until(self, index: int) -> None:
        """Refuse to grant (pre-)votes and to campaign while ``last_index < index``.

        For a node that lost entries it may have acknowledged (a corrupt segment cut
        from its log): until it has caught up from a leader to where its log ended,
        its vote could help elect a leader that lacks committed entries. 0 clears it.
        """
        self._vote_blocked_until = max(index, 0)

    @property
    def vote_blocked_until(self) -> int:
        """The index set by `set_vote_blocked_until`, or 0 once caught up to it."""
        self._vote_blocked()
        return self._vote_blocked_until

    def _vote_blocked(self) -> bool:
        if self._vote_blocked_until and self._log.last_index() >= self._vote_blocked_until:
            self._vote_blocked_until = 0
        return self._vote_blocked_until > 0

    # -- sending --------------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        if msg.type in _AFTER_APPEND:
            self._msgs_after.append(msg)
        else:
            self._msgs.append(msg)

    # -- role transitions -----------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self._term != term:
            self._term = term
            self._vote = NONE
        self._lead = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._cfg.election_tick + self._rng.randrange(
            self._cfg.election_tick
        )
        self._lead_transferee = NONE
        self._votes = {}
        last = self._log.last_index()
        for nid, pr in self._prs.items():
            pr.become_probe()
            pr.match = 0
            pr.next = last + 1
            pr.recent_active = False
            pr.sent_commit = 0
            if nid == self._id:
                pr.match = self._log.stable_last_index()
        self._pending_conf_index = 0
        self._leave_index = 0
        self._reads_waiting.clear()
        self._reads.clear()
        self._read_acks.clear()

    def _become_follower(self, term: int, lead: NodeId) -> None:
        self._reset(term)
        self._role = Role.FOLLOWER
        self._lead = lead

    def _become_pre_candidate(self) -> None:
        # Not a reset: the term and vote stay. Forgetting the leader lets this node
        # grant pre-votes to others (etcd-raft's forget_leader).
        self._role = Role.PRE_CANDIDATE
        self._votes = {}
        self._lead = NONE

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._lead = self._id
        self._role = _LEADER
        me = self._prs.get(self._id)
        if me is not None:
            me.become_replicate()
            me.recent_active = True
        # Conservatively, no configuration change until everything before our term
        # is applied: there may be an unapplied one in the log.
        self._pending_conf_index = self._log.last_index()
        last = self._log.last_index()
        self._term_start = last + 1
        if last == 0 and self._conf.voters:
            # The first leader of a fresh group writes the bootstrap configuration into
            # the log (etcd-raft bootstraps with such entries too): a node that joins
            # later, blank, rebuilds every configuration by applying the log from
            # index 1. The entry also serves as the new term's first entry.
            self._append_entries([self._bootstrap_entry()])
            self._pending_conf_index = 1
        else:
            if self._conf.voters_outgoing:
                self._leave_index = self._find_leave_entry()
            # The no-op of the new term: committing it commits everything before it.
            self._append_entries([Entry(self._term, last + 1, EntryType.NOOP, b"")])

    def _find_leave_entry(self) -> int:
        """Index of the entry in the unapplied part of the log that leaves the joint
        configuration being entered or in force (0 if none)."""
        log = self._log
        found = 0
        lo, hi = max(log.applied + 1, log.first_index()), log.last_index() + 1
        while lo < hi:
            ents = log.slice(lo, hi, 1 << 62)
            for e in ents:
                if e.type == EntryType.CONF_CHANGE:
                    try:
                        # The last leave entry after the last change entering a
                        # joint configuration.
                        found = 0 if decode_conf_change(e.data).changes else e.index
                    except CodecError:
                        continue
            lo = ents[-1].index + 1
        return found

    def _bootstrap_entry(self) -> Entry:
        conf = self._conf
        changes = [(ConfChangeType.ADD_VOTER, n) for n in sorted(conf.voters)]
        changes += [(ConfChangeType.ADD_LEARNER, n) for n in sorted(conf.learners)]
        data = encode_conf_change(ConfChange(tuple(changes)))
        return Entry(self._term, 1, EntryType.CONF_CHANGE, data)

    # -- elections ------------------------------------------------------------------------

    def _promotable(self) -> bool:
        return self._id in self._conf.voters or self._id in self._conf.voters_outgoing

    def campaign(self) -> None:
        """Start an election now (with a pre-vote first when enabled)."""
        if self._role != _LEADER:
            self._campaign(transfer=False)

    def _campaign(self, transfer: bool) -> None:
        if not self._promotable() or self._vote_blocked():
            return
        if self._log.committed > self._log.applied and self._log.unapplied_conf_change():
            # The configuration may be about to change: wait until it is applied.
            return
        if self._cfg.pre_vote and not transfer:
            self._become_pre_candidate()
            vote_type = _PRE_VOTE
            term = self._term + 1
        else:
            self._become_candidate()
            vote_type = _VOTE
            term = self._term
        if self._poll(self._id, True) == VoteResult.WON:
            # A single-voter group wins at once.
            if vote_type == _PRE_VOTE:
                self._start_election(transfer)
            else:
                self._become_leader()
            return
        last = self._log.last_index()
        last_term = self._log.last_term()
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for nid in sorted(self._conf.all_voters()):
            if nid != self._id:
                self._send(
                    Message(
                        vote_type, nid, self._id, term, log_term=last_term, index=last, context=ctx
                    )
                )

    def _start_election(self, transfer: bool) -> None:
        """After winning a pre-vote: the real election."""
        self._become_candidate()
        if self._poll(self._id, True) == VoteResult.WON:
            self._become_leader()
            return
        last = self._log.last_index()
        last_term = self._log.last_term()
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for nid in sorted(self._conf.all_voters()):
            if nid != self._id:
                self._send(
                    Message(
                        _VOTE,
                        nid,
                        self._id,
                        self._term,
                        log_term=last_term,
                        index=last,
                        context=ctx,
                    )
                )

    def _poll(self, nid: NodeId, granted: bool) -> VoteResult:
        self._votes.setdefault(nid, granted)
        return vote_result(self._conf, self._votes)

    # -- ticks ----------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self._role == _LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            if self._vote_blocked():
                # We may not campaign; instead tell the voters we lost entries, so an
                # idle (even quiesced) leader lowers our match and catches us up.
                targets = [self._lead] if self._lead else sorted(self._conf.all_voters())
                for nid in targets:
                    if nid != self._id:
                        self._send_lost(nid)
                return
            self._campaign(transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        cfg = self._cfg
        if self._election_elapsed >= cfg.election_tick:
            self._election_elapsed = 0
            if cfg.check_quorum and not self._quorum_active():
                self._become_follower(self._term, NONE)
                return
            # A transfer that did not finish within an election timeout is abandoned.
            self._lead_transferee = NONE
        if self._heartbeat_elapsed >= cfg.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._retry_snapshots()
            self._bcast_heartbeat(self._read_context())

    def _quorum_active(self) -> bool:
        active: dict[NodeId, bool] = {}
        for nid, pr in self._prs.items():
            if nid == self._id:
                active[nid] = True
            elif not pr.is_learner:
                active[nid] = pr.recent_active
            pr.recent_active = False
        return vote_result(self._conf, active) == VoteResult.WON

    def _retry_snapshots(self) -> None:
        # A snapshot that was lost leaves the follower in SNAPSHOT state; the host has
        # no failure report to give, so retry after an election timeout.
        for nid, pr in self._prs.items():
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_wait += 1
                if pr.snapshot_wait >= self._cfg.election_tick:
                    pr.become_probe()
                    self._send_append(nid)

    # -- step -----------------------------------------------------------------------------

    def step(self, msg: Message) -> None:
        """Process a message from a peer. Messages for another node, from stale terms
        or that make no sense in our role are dropped; this never raises for a message
        a correct peer could send."""
        if msg.to != self._id or msg.frm == self._id or msg.frm == NONE:
            return
        mtype = msg.type
        if msg.term > self._term:
            if mtype in (_VOTE, _PRE_VOTE):
                in_lease = (
                    self._cfg.check_quorum
                    and self._lead != NONE
                    and self._election_elapsed < self._cfg.election_tick
                )
                if in_lease and msg.context != CAMPAIGN_TRANSFER:
                    return
            if mtype == _PRE_VOTE or (mtype == _PRE_VOTE_RESP and not msg.reject):
                pass
            elif mtype in (_APPEND, _HEARTBEAT, _SNAPSHOT):
                self._become_follower(msg.term, msg.frm)
            else:
                self._become_follower(msg.term, NONE)
        elif msg.term < self._term:
            if mtype in (_APPEND, _HEARTBEAT):
                # A stale leader: tell it our term so it steps down. Without this, a node
                # that raised its term while partitioned could never rejoin under
                # check-quorum, which ignores its votes.
                self._send(Message(_APPEND_RESP, msg.frm, self._id, self._term))
            elif mtype == _PRE_VOTE:
                self._send(Message(_PRE_VOTE_RESP, msg.frm, self._id, self._term, reject=True))
            return

        if mtype in (_VOTE, _PRE_VOTE):
            self._handle_vote(msg)
        elif self._role == _LEADER:
            self._step_leader(msg)
        elif self._role == Role.FOLLOWER:
            self._step_follower(msg)
        else:
            self._step_candidate(msg)

    def _handle_vote(self, m: Message) -> None:
        can_vote = (
            self._vote == m.frm
            or (self._vote == NONE and self._lead == NONE)
            or (m.type == _PRE_VOTE and m.term > self._term)
        )
        resp = _VOTE_RESP if m.type == _VOTE else _PRE_VOTE_RESP
        if can_vote and not self._vote_blocked() and self._log.is_up_to_date(m.index, m.log_term):
            # A granted vote carries the candidate's term: for a pre-vote, the future
            # term the pre-candidate will campaign in.
            self._send(Message(resp, m.frm, self._id, m.term))
            if m.type == _VOTE:
                self._election_elapsed = 0
                self._vote = m.frm
        else:
            self._send(Message(resp, m.frm, self._id, self._term, reject=True))

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == _APPEND:
            self._election_elapsed = 0
            self._lead = m.frm
            self._handle_append(m)
        elif t == _HEARTBEAT:
            self._election_elapsed = 0
            self._lead = m.frm
            self._handle_heartbeat(m)
        elif t == _SNAPSHOT:
            self._election_elapsed = 0
            self._lead = m.frm
            self._handle_snapshot(m)
        elif t == _TIMEOUT_NOW:
            # The leader asks us to take over: campaign at once, skipping pre-vote and
            # bypassing the other voters' leases.
            self._campaign(transfer=True)

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t == _APPEND:
            self._become_follower(m.term, m.frm)
            self._handle_append(m)
        elif t == _HEARTBEAT:
            self._become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == _SNAPSHOT:
            self._become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif (t == _PRE_VOTE_RESP and self._role == Role.PRE_CANDIDATE) or (
            t == _VOTE_RESP and self._role == Role.CANDIDATE
        ):
            res = self._poll(m.frm, not m.reject)
            if res == VoteResult.WON:
                if self._role == Role.PRE_CANDIDATE:
                    self._start_election(transfer=False)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif res == VoteResult.LOST:
                self._become_follower(self._term, NONE)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == _APPEND_RESP:
            self._handle_append_resp(m)
        elif t == _HEARTBEAT_RESP:
            self._handle_heartbeat_resp(m)
        # Anything else from our own term (a stale TIMEOUT_NOW, another APPEND) is
        # dropped: at most one leader per term.

    # -- follower side --------------------------------------------------------------------

    def _handle_append(self, m: Message) -> None:
        log = self._log
        if m.index < log.committed:
            self._send(Message(_APPEND_RESP, m.frm, self._id, self._term, index=log.committed))
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(_APPEND_RESP, m.frm, self._id, self._term, index=last_new))
            return
        if self._vote_blocked():
            # We lost entries we may have acknowledged: the leader's match for us is
            # too high and it would never probe below it. Say so.
            self._send_lost(m.frm)
            return
        # Reject with a hint: the last index where our log may match the leader's,
        # assuming the leader's log has m.log_term at m.index.
        hint, hint_term = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
        self._send(
            Message(
                _APPEND_RESP,
                m.frm,
                self._id,
                self._term,
                index=m.index,
                reject=True,
                reject_hint=hint,
                log_term=hint_term,
            )
        )

    def _send_lost(self, to: NodeId) -> None:
        """Reject with LOST_ENTRIES: our log now ends at last_index, whatever we
        acknowledged before (see set_vote_blocked_until)."""
        last = self._log.last_index()
        self._send(
            Message(
                _APPEND_RESP,
                to,
                self._id,
                self._term,
                index=last,
                reject=True,
                reject_hint=last,
                context=LOST_ENTRIES,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        if m.commit > self._log.committed:
            self._log.commit_to(m.commit)
        self._send(Message(_HEARTBEAT_RESP, m.frm, self._id, self._term, context=m.context))
        if m.commit > self._log.last_index():
            # A heartbeat carries min(our match, its commit): the leader counts
            # entries we acknowledged and no longer hold (a cut corrupt segment, or a
            # disk that lost synced writes). Votes stay blocked until we hold them
            # again (we may be part of the only majority that has them), and we say
            # so: an idle leader would never send an append to find out, and a
            # probing one ignores rejections below the match it knows.
            self.set_vote_blocked_until(max(self._vote_blocked_until, m.commit))
            self._send_lost(m.frm)

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        log = self._log
        meta = snap.metadata
        if meta.index <= log.committed:
            self._send(Message(_APPEND_RESP, m.frm, self._id, self._term, index=log.committed))
            return
        if log.match_term(meta.index, meta.term):
            # Figure 13: our log already has the snapshot's last entry; keep the
            # entries after it and only move the commit index.
            log.commit_to(meta.index)
        else:
            log.restore(snap)
            self._switch_to_config(meta.conf_state)
        # Acknowledge the snapshot's index only: a kept suffix after it may still
        # differ from the leader's log.
        self._send(Message(_APPEND_RESP, m.frm, self._id, self._term, index=log.committed))

    # -- leader side ----------------------------------------------------------------------

    def _handle_append_resp(self, m: Message) -> None:
        pr = self._prs.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        log = self._log
        if m.reject and m.context == LOST_ENTRIES:
            # The follower lost entries (a corrupt segment cut from its log): lower
            # its match (commit never moves back) and probe from its last index.
            if pr.match > m.reject_hint:
                pr.match = m.reject_hint
            pr.become_probe()
            pr.next = min(pr.next, m.reject_hint + 1)
            self._send_append(m.frm)
            return
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                # Skip, in one step, every entry of ours whose term is above the
                # follower's term at the hint: none of them can match.
                hint = log.find_conflict_by_term(hint, m.log_term)[0]
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == _REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        if not pr.maybe_update(m.index):
            return
        state = pr.state
        if state == _PROBE:
            pr.become_replicate()
        elif state == ProgressState.SNAPSHOT:
            if pr.match + 1 >= log.first_index():
                pr.become_probe()
                pr.become_replicate()
        else:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._bcast_append()
        else:
            if pr.match < log.last_index():
                self._send_append(m.frm, send_if_empty=False)
            if self._leave_index and m.frm in self._conf.voters:
                self._send_to_leaving()
            if pr.sent_commit < log.committed and pr.sent_commit < pr.match:
                # It holds entries it does not know are committed and nothing else
                # will tell it soon (e.g. its window is full): bump its commit index.
                self._send_commit(m.frm, pr)
        # Fill the window when more entries wait.
        while pr.state == _REPLICATE and pr.next <= log.last_index():
            if not self._send_append(m.frm, send_if_empty=False):
                break
        if m.frm == self._lead_transferee and pr.match == log.last_index():
            self._send(Message(_TIMEOUT_NOW, m.frm, self._id, self._term))

    def _handle_heartbeat_resp(self, m: Message) -> None:
        pr = self._prs.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state == _REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()
        if pr.match < self._log.last_index():
            self._send_append(m.frm)
        if m.context and not pr.is_learner:
            self._ack_read(m.frm, m.context)

    def _maybe_commit(self) -> bool:
        prs = self._prs
        idx = committed_index(self._conf, lambda nid: prs[nid].match if nid in prs else 0)
        if not self._log.maybe_commit(idx, self._term):
            return False
        if self._reads_waiting:
            ctxs = self._reads_waiting
            self._reads_waiting = []
            self._start_read_round(ctxs)
        return True

    def _send_append(self, to: NodeId, send_if_empty: bool = True) -> bool:
        """Send ``to`` the next entries it needs (or a snapshot). Returns whether a
        message was sent."""
        pr = self._prs[to]
        if pr.is_paused():
            return False
        log = self._log
        prev = pr.next - 1
        hi = log.last_index() + 1
        if self._leave_index and self._leaving(to):
            hi = min(hi, self._leaving_limit() + 1)
        try:
            prev_term = log.term(prev)
            ents = log.slice(pr.next, hi, self._cfg.max_size_per_msg)
        except (CompactedError, UnavailableError):
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        n = len(ents)
        size = entries_size(ents) if n else 0
        self._msgs.append(
            Message(
                _APPEND,
                to,
                self._id,
                self._term,
                log_term=prev_term,
                index=prev,
                entries=tuple(ents),
                commit=log.committed,
            )
        )
        pr.sent_entries(prev + n, n, size)
        known = min(log.committed, prev + n)
        if known > pr.sent_commit:
            pr.sent_commit = known
        return True

    # A voter that the pending leave entry removes (outgoing half only, not being
    # demoted to learner) may, once it has applied its removal, still be needed for
    # the outgoing half's vote by the others until they learn the leave is committed;
    # it never campaigns itself. It must then never hold an entry that no viable
    # candidate holds, or it would refuse them all. So it gets (a) nothing past the
    # leave entry, except our term's first entry, which an older term's leave entry
    # needs to commit (Figure 8), and (b) only entries already durable on a majority
    # of the incoming voters, so that some incoming voter is always at least as up
    # to date as it is.

    def _leaving(self, nid: NodeId) -> bool:
        conf = self._conf
        return (
            nid in conf.voters_outgoing and nid not in conf.voters and nid not in conf.learners_next
        )

    def _leaving_limit(self) -> int:
        prs = self._prs
        incoming = majority_index(self._conf.voters, lambda n: prs[n].match if n in prs else 0)
        return min(max(self._leave_index, self._term_start), incoming)

    def _send_to_leaving(self) -> None:
        """The incoming voters' durable majority may have moved: feed the leaving voters."""
        for nid in self._conf.voters_outgoing:
            if nid != self._id and self._leaving(nid) and nid in self._prs:
                self._send_append(nid, send_if_empty=False)

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        try:
            snap = self._log.snapshot()
        except SnapshotTemporarilyUnavailableError:
            return False
        if snap.metadata.index == 0:
            return False
        pr.become_snapshot(snap.metadata.index)
        self._msgs.append(Message(_SNAPSHOT, to, self._id, self._term, snapshot=snap))
        return True

    def _send_commit(self, to: NodeId, pr: Progress) -> None:
        """An empty APPEND after the follower's acknowledged match: it carries our commit
        index without touching the in-flight window."""
        try:
            match_term = self._log.term(pr.match)
        except (CompactedError, UnavailableError):
            return
        commit = self._log.committed
        self._msgs.append(
            Message(
                _APPEND,
                to,
                self._id,
                self._term,
                log_term=match_term,
                index=pr.match,
                commit=commit,
            )
        )
        pr.sent_commit = min(commit, pr.match)

    def _bcast_append(self) -> None:
        me = self._id
        last = self._log.last_index()
        for nid, pr in self._prs.items():
            if nid != me and self._send_append(nid):
                # Pipelining: keep streaming while the window allows.
                while pr.state == _REPLICATE and pr.next <= last:
                    if not self._send_append(nid, send_if_empty=False):
                        break

    def _bcast_heartbeat(self, context: bytes = b"") -> None:
        me = self._id
        commit = self._log.committed
        for nid, pr in self._prs.items():
            if nid != me:
                known = min(pr.match, commit)
                self._msgs.append(
                    Message(_HEARTBEAT, nid, me, self._term, commit=known, context=context)
                )
                if known > pr.sent_commit:
                    pr.sent_commit = known

    def _append_entries(self, ents: list[Entry]) -> None:
        self._log.append(ents)

    # -- proposals ------------------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self._role != _LEADER:
            raise NotLeaderError(self._lead)
        if self._lead_transferee != NONE:
            raise ProposalDroppedError("leadership transfer in progress")
        if self._id not in self._conf.voters:
            # This leader is leaving (it is only in the outgoing half of a joint
            # configuration). Its log must end with the entry that removes it: once that
            # commits and it steps down, the remaining voters hold its whole log, so
            # it can vote for them (it would refuse a shorter log, and it may still be
            # needed for the outgoing majority until they learn the commit).
            raise ProposalDroppedError("this leader is being removed from the configuration")

    def propose(self, data: bytes) -> int:
        """Append ``data`` as a new entry; returns its index (commitment comes later).
        Raises NotLeaderError (with a leader hint) on a non-leader."""
        return self.propose_batch((data,))

    def propose_batch(self, datas: Sequence[bytes]) -> int:
        """Append many entries at once; returns the index of the first."""
        self._check_can_propose()
        start = self._log.last_index() + 1
        if not datas:
            return start
        term = self._term
        ents = [Entry(term, i, _NORMAL, d) for i, d in enumerate(datas, start)]
        self._log.append(ents)
        self._bcast_append()
        return start

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose a membership change; returns the entry's index. Raises
        ConfChangeInProgressError while another is pending or the configuration is joint,
        ConfigError when ``cc`` is not valid for the current configuration."""
        self._check_can_propose()
        if self._pending_conf_index > self._log.applied:
            raise ConfChangeInProgressError("a configuration change is not applied yet")
        if self._conf.voters_outgoing and cc.changes:
            raise ConfChangeInProgressError("the configuration is joint")
        apply_change(self._conf, cc)  # validate now, so the entry will apply cleanly
        return self._append_conf_change(cc)

    def _append_conf_change(self, cc: ConfChange) -> int:
        index = self._log.last_index() + 1
        if not cc.changes:
            self._leave_index = index
        self._log.append([Entry(self._term, index, EntryType.CONF_CHANGE, encode_conf_change(cc))])
        self._pending_conf_index = index
        self._bcast_append()
        return index

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """The host applies a committed CONF_CHANGE entry: returns the configuration now
        in force, which the host persists with the entry. A change that is not valid
        for the current configuration (which every member sees identically) is a
        no-op."""
        try:
            new = apply_change(self._conf, cc)
        except ConfigError:
            return self._conf
        self._switch_to_config(new)
        return new

    def _switch_to_config(self, cs: ConfState) -> None:
        self._conf = cs
        if not cs.voters_outgoing:
            self._leave_index = 0
        members = cs.members()
        last = self._log.last_index()
        for nid in [n for n in self._prs if n not in members]:
            del self._prs[nid]
        learners = cs.learners | cs.learners_next
        added: list[NodeId] = []
        for nid in members:
            pr = self._prs.get(nid)
            if pr is None:
                # Probe from our last entry: a new member is usually empty, and the
                # rejection's hint takes the leader straight to where it matches.
                pr = Progress(
                    max(last, 1),
                    Inflights(self._cfg.max_inflight_msgs, self._cfg.max_inflight_bytes),
                )
                # A new member counts as active until the next check-quorum.
                pr.recent_active = True
                if nid == self._id:
                    pr.match = self._log.stable_last_index()
                    pr.next = last + 1
                self._prs[nid] = pr
                added.append(nid)
            pr.is_learner = nid in learners and nid not in cs.voters
        if self._role != _LEADER:
            return
        if cs.voters_outgoing and not self._leave_index:
            # Entered a joint configuration whose leave entry may already be in our log
            # (appended by an earlier leader).
            self._leave_index = self._find_leave_entry()
        if not self._promotable():
            # Removed (or demoted) leader: step down; the others elect a new leader.
            self._become_follower(self._term, NONE)
            return
        if self._lead_transferee != NONE and self._lead_transferee not in cs.all_voters():
            self._lead_transferee = NONE
        if self._maybe_commit():
            self._bcast_append()
        else:
            for nid in sorted(added):
                if nid != self._id:
                    self._send_append(nid)

    def _maybe_auto_leave(self) -> None:
        conf = self._conf
        if (
            self._role == _LEADER
            and conf.auto_leave
            and conf.voters_outgoing
            and self._pending_conf_index <= self._log.applied
            and self._lead_transferee == NONE
            and self._id in self._prs
        ):
            self._append_conf_change(ConfChange(()))

    # -- leadership transfer --------------------------------------------------------------

    def transfer_leader(self, node_id: NodeId) -> None:
        """Hand leadership to ``node_id``: once its log is up to date it is told to
        campaign at once (TIMEOUT_NOW). Proposals are refused meanwhile; the transfer
        is abandoned after an election timeout."""
        if self._role != _LEADER:
            raise NotLeaderError(self._lead)
        if node_id == self._id:
            return
        pr = self._prs.get(node_id)
        if pr is None or node_id not in self._conf.all_voters():
            raise ConfigError(f"cannot transfer leadership to non-voter {node_id}")
        if self._lead_transferee == node_id:
            return
        self._lead_transferee = node_id
        self._election_elapsed = 0
        if pr.match == self._log.last_index():
            self._send(Message(_TIMEOUT_NOW, node_id, self._id, self._term))
        else:
            self._send_append(node_id)

    # -- ReadIndex ------------------------------------------------------------------------

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point: a ReadState(index, context) appears in a
        later Ready once leadership is confirmed. Raises NotLeaderError on a non-leader."""
        if self._role != _LEADER:
            raise NotLeaderError(self._lead)
        if self._log.term_or_zero(self._log.committed) != self._term:
            # Our commit index may be behind the previous leader's until an entry of
            # our own term commits (thesis 6.4).
            self._reads_waiting.append(context)
            return
        self._start_read_round([context])

    def _start_read_round(self, contexts: list[bytes]) -> None:
        index = self._log.committed
        if self._conf.all_voters() <= {self._id}:
            self._read_states.extend(ReadState(index, c) for c in contexts)
            return
        self._read_seq += 1
        seq = self._read_seq
        for c in contexts:
            self._reads.append((seq, index, c))
        self._bcast_heartbeat(seq.to_bytes(8, "big"))

    def _read_context(self) -> bytes:
        return self._read_seq.to_bytes(8, "big") if self._reads else b""

    def _ack_read(self, nid: NodeId, context: bytes) -> None:
        if len(context) != 8 or not self._reads:
            return
        seq = int.from_bytes(context, "big")
        if seq > self._read_acks.get(nid, 0):
            self._read_acks[nid] = seq
        acks = self._read_acks
        me = self._id
        while self._reads:
            s, index, ctx = self._reads[0]
            votes = {n: True for n, a in acks.items() if a >= s}
            votes[me] = True
            if vote_result(self._conf, votes) != VoteResult.WON:
                break
            self._reads.popleft()
            self._read_states.append(ReadState(index, ctx))

    # -- Ready / advance ------------------------------------------------------------------

    def has_ready(self) -> bool:
        log = self._log
        if self._msgs or self._msgs_after or self._read_states:
            return True
        if log.has_unstable() or log.has_pending_snapshot() or log.has_next_committed():
            return True
        hs = self._prev_hard
        if hs.term != self._term or hs.vote != self._vote or hs.commit != log.committed:
            return True
        soft = self._prev_soft
        return soft.leader != self._lead or soft.role != self._role

    def ready(self) -> Ready:
        """Collect the work for the host (see :class:`Ready`). Everything returned is
        handed out once; call ``advance`` after doing it."""
        log = self._log
        soft_state: SoftState | None = None
        soft = self._prev_soft
        if soft.leader != self._lead or soft.role != self._role:
            soft_state = self._prev_soft = SoftState(self._lead, self._role)
        hard_state: HardState | None = None
        must_sync = False
        hs = self._prev_hard
        if hs.term != self._term or hs.vote != self._vote or hs.commit != log.committed:
            hard_state = HardState(self._term, self._vote, log.committed)
            must_sync = hard_state.term != hs.term or hard_state.vote != hs.vote
            self._prev_hard = hard_state
        snapshot = log.take_snapshot()
        entries = log.take_unstable()
        if entries or snapshot is not None:
            must_sync = True
        rd = Ready(
            soft_state,
            hard_state,
            must_sync,
            snapshot,
            entries,
            log.next_committed(),
            self._msgs,
            self._msgs_after,
            self._read_states,
        )
        self._msgs = []
        self._msgs_after = []
        self._read_states = []
        return rd

    def advance(self, ready: Ready) -> None:
        """The host has persisted and sent everything in ``ready`` and applied its
        committed entries."""
        log = self._log
        if ready.snapshot is not None:
            log.stable_snap_to(ready.snapshot.metadata.index)
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
            if self._role == _LEADER:
                me = self._prs.get(self._id)
                if me is not None and me.maybe_update(log.stable_last_index()):
                    if self._maybe_commit():
                        self._bcast_append()
                    elif self._leave_index and self._id in self._conf.voters:
                        self._send_to_leaving()
        if ready.committed_entries:
            log.applied_to(ready.committed_entries[-1].index)
        self._maybe_auto_leave()
