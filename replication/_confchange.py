"""Applying a ConfChange to a ConfState (pure).

Any change to the set of voters enters a joint configuration (old voters become
``voters_outgoing``; the leader leaves it automatically, ``auto_leave``), as in the
Raft thesis section 4.3. A voter demoted to learner stays a voter of the outgoing half
and waits in ``learners_next`` until the joint configuration is left. Changes that only
add or remove learners take effect at once, and so does the first configuration of a
blank node (the bootstrap entry at index 1 of every group's log).
"""

from __future__ import annotations

from ._errors import ConfigError
from ._types import ConfChange, ConfChangeType, ConfState


def apply_change(cs: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after ``cc``; raises ConfigError if ``cc`` is not valid now."""
    if not cc.changes:
        if not cs.voters_outgoing:
            raise ConfigError("cannot leave a joint configuration: not joint")
        return ConfState(voters=cs.voters, learners=cs.learners | cs.learners_next)
    if cs.voters_outgoing:
        raise ConfigError("configuration is joint: leave it first")
    voters = set(cs.voters)
    learners = set(cs.learners)
    learners_next: set[int] = set()
    for typ, nid in cc.changes:
        if not isinstance(nid, int) or nid <= 0:
            raise ConfigError(f"invalid node id {nid!r}")
        if typ == ConfChangeType.ADD_VOTER:
            voters.add(nid)
            learners.discard(nid)
            learners_next.discard(nid)
        elif typ == ConfChangeType.ADD_LEARNER:
            voters.discard(nid)
            if nid in cs.voters:
                learners_next.add(nid)
            else:
                learners.add(nid)
        elif typ == ConfChangeType.REMOVE_NODE:
            voters.discard(nid)
            learners.discard(nid)
            learners_next.discard(nid)
        else:
            raise ConfigError(f"unknown change type {typ!r}")
    if not voters:
        raise ConfigError("a configuration needs at least one voter")
    if voters == cs.voters or not cs.voters:
        # Learners only, or a blank node applying the bootstrap configuration.
        return ConfState(voters=frozenset(voters), learners=frozenset(learners))
    return ConfState(
        voters=frozenset(voters),
        learners=frozenset(learners),
        voters_outgoing=cs.voters,
        learners_next=frozenset(learners_next),
        auto_leave=True,
    )
