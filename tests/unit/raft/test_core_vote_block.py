"""The vote block a host sets on a node that lost log entries to corruption."""

from __future__ import annotations

from replication import MessageType, Role
from tests.unit.raft.harness import Cluster


def test_blocked_node_neither_campaigns_nor_grants_votes_until_caught_up() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.node(1).campaign()
    c.stabilize()
    assert c.leader_id() == 1
    for i in range(3):
        c.propose(1, f"x{i}".encode())
    c.stabilize()
    last = c.node(3).last_index
    c.node(3).set_vote_blocked_until(last + 2)
    assert c.node(3).vote_blocked_until == last + 2

    # Campaigning is refused outright.
    c.node(3).campaign()
    c.process()
    assert c.node(3).role == Role.FOLLOWER
    assert not c.pending(MessageType.VOTE)

    # A vote request gets a rejection.
    c.isolate(1)
    c.node(2).campaign()
    c.stabilize()
    assert c.node(2).role != Role.LEADER
    c.heal()
    c.tick(1)  # its heartbeat meets the higher term: node 1 steps down
    c.stabilize()
    for _ in range(3):  # node 2 voted for itself in the failed term: try again
        if c.leader_id() == 1:
            break
        c.node(1).campaign()
        c.stabilize()
    assert c.leader_id() == 1

    # Once its log reaches the index, the block lifts by itself.
    c.propose(1, b"y1")
    c.propose(1, b"y2")
    c.stabilize()
    assert c.node(3).last_index >= last + 2
    assert c.node(3).vote_blocked_until == 0
    c.isolate(1)
    c.node(2).campaign()
    c.stabilize()
    assert c.node(2).role == Role.LEADER
