"""Errors of the ``replication`` package: one root, split by who is at fault and
whether retrying helps."""

from __future__ import annotations

from ._types import NodeId


class RaftError(Exception):
    """Root of every error raised by the ``replication`` package."""

    retriable = False


class NotLeaderError(RaftError):
    """This node does not lead the group; ``leader_hint`` names the leader (0: unknown)."""

    retriable = True

    def __init__(self, leader_hint: NodeId) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint})")
        self.leader_hint = leader_hint


class ProposalDroppedError(RaftError):
    """The leader refused a proposal for now (leadership transfer in progress, etc.)."""

    retriable = True


class ConfChangeInProgressError(RaftError):
    """A configuration change is pending or the configuration is joint."""

    retriable = True


class CompactedError(RaftError):
    """The requested entries were compacted into a snapshot."""


class UnavailableError(RaftError):
    """The requested entries are not in storage (past the last index)."""


class SnapshotTemporarilyUnavailableError(RaftError):
    """Storage cannot produce a snapshot right now; the leader retries later."""

    retriable = True


class CodecError(RaftError):
    """Bytes that are not a valid encoding of a replication value."""


class ConfigError(RaftError):
    """An invalid configuration value (RaftConfig, an invalid membership change)."""
