"""Value types of the Raft core: log entries, messages, configuration, and the
``Ready`` batch of work the core hands to its host.

Every value that crosses the core's boundary is a frozen, slotted dataclass or
an IntEnum, so it can be shared between nodes of a simulation without copying
and hashed or compared in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

NodeId = int
"""A Raft member's id. 0 is never a valid id: it means "none"."""

NONE: NodeId = 0


class EntryType(IntEnum):
    """The kind of a log entry (numbers match storage's EntryKind DATA/CONFIG/NOOP)."""

    NORMAL = 0
    CONF_CHANGE = 1
    NOOP = 2


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. Its size for every byte limit is ``len(data)``."""

    term: int
    index: int
    type: EntryType
    data: bytes


class MessageType(IntEnum):
    """Raft messages between peers. The numbers are part of the wire format."""

    APPEND = 0
    APPEND_RESP = 1
    HEARTBEAT = 2
    HEARTBEAT_RESP = 3
    VOTE = 4
    VOTE_RESP = 5
    PRE_VOTE = 6
    PRE_VOTE_RESP = 7
    SNAPSHOT = 8
    TIMEOUT_NOW = 9


@dataclass(frozen=True, slots=True)
class ConfState:
    """A group's membership. ``voters_outgoing`` non-empty means a joint configuration:
    decisions then need a majority of ``voters`` and a majority of ``voters_outgoing``.
    ``learners_next`` holds voters being demoted: they become learners when the joint
    configuration is left. ``auto_leave``: the leader proposes leaving by itself."""

    voters: frozenset[NodeId]
    learners: frozenset[NodeId] = frozenset()
    voters_outgoing: frozenset[NodeId] = frozenset()
    learners_next: frozenset[NodeId] = frozenset()
    auto_leave: bool = False

    @property
    def joint(self) -> bool:
        return bool(self.voters_outgoing)

    def all_voters(self) -> frozenset[NodeId]:
        """Voters of either half of a joint configuration."""
        return self.voters | self.voters_outgoing

    def members(self) -> frozenset[NodeId]:
        """Every node that receives the log: voters (both halves) and learners."""
        return self.voters | self.voters_outgoing | self.learners | self.learners_next


EMPTY_CONF_STATE = ConfState(voters=frozenset())


class ConfChangeType(IntEnum):
    ADD_VOTER = 0
    ADD_LEARNER = 1
    REMOVE_NODE = 2


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A membership change. Empty ``changes`` means "leave the joint configuration".

    Any change to the set of voters goes through a joint configuration (Raft thesis
    section 4.3), which the leader leaves automatically once the joint configuration is
    applied. Changes that only touch learners take effect directly. ``context`` is
    opaque to the core and travels with the entry (e.g. a new member's address)."""

    changes: tuple[tuple[ConfChangeType, NodeId], ...] = ()
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it leaves the node."""

    term: int = 0
    vote: NodeId = 0
    commit: int = 0


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting to the host: the leader (0 = unknown) and our role."""

    leader: NodeId
    role: Role


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    index: int
    term: int
    conf_state: ConfState


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine at ``metadata.index``; ``data`` is opaque to the core."""

    metadata: SnapshotMetadata
    data: bytes = b""


EMPTY_SNAPSHOT = Snapshot(SnapshotMetadata(0, 0, EMPTY_CONF_STATE), b"")


@dataclass(frozen=True, slots=True)
class Message:
    """A message between two members of one group.

    - APPEND: ``index``/``log_term`` name the entry before ``entries``; ``commit`` is the
      leader's commit index.
    - APPEND_RESP: ``index`` is the last index now known to match the leader's log
      (prev index + len(entries)); on ``reject``, ``index`` is the rejected prev index and
      ``reject_hint``/``log_term`` give the follower's guess of the last matching entry;
      a ``context`` of ``LOST_ENTRIES`` says the follower lost entries and its log now
      ends at ``reject_hint`` (the leader lowers its match).
    - VOTE/PRE_VOTE: ``index``/``log_term`` describe the candidate's last entry; a
      ``context`` of ``CAMPAIGN_TRANSFER`` marks an election started by a leadership
      transfer (it bypasses the leader lease).
    - HEARTBEAT/HEARTBEAT_RESP: ``context`` carries a ReadIndex round id.
    - SNAPSHOT: ``snapshot`` is set.
    """

    type: MessageType
    to: NodeId
    frm: NodeId
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


CAMPAIGN_TRANSFER = b"transfer"
# APPEND_RESP rejection context from a follower that lost entries it may have
# acknowledged (its votes are blocked until it caught up): the leader lowers its match.
LOST_ENTRIES = b"lost"


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the host has applied up to ``index``."""

    index: int
    context: bytes


@dataclass(slots=True)
class Ready:
    """Work the host must do, in this order: persist ``snapshot``, ``entries`` and
    ``hard_state`` (fsync when ``must_sync``); send ``messages`` (allowed as soon as
    ``hard_state`` is durable, even while ``entries`` are being written); send
    ``messages_after_append`` once everything of this Ready is durable; apply
    ``committed_entries``; then call ``advance(ready)``."""

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    must_sync: bool = False
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    messages_after_append: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
