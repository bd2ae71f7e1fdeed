"""The vote block a host sets on a node that lost log entries to corruption."""

from __future__ import annotations

from tests.unit.raft.harness import Cluster
from zstream.replication import (
    LOST_ENTRIES,
    ConfState,
    MemoryStorage,
    Message,
    MessageType,
    RaftConfig,
    RaftNode,
    Role,
)


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


def test_leader_lowers_the_match_of_a_follower_that_lost_entries() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.node(1).campaign()
    c.stabilize()
    for i in range(4):
        c.propose(1, f"x{i}".encode())
    c.stabilize()
    last = c.node(1).last_index
    match, _, _ = c.node(1).progress(3) or (0, 0, None)
    assert match == last
    lost = Message(
        MessageType.APPEND_RESP,
        1,
        3,
        c.node(1).term,
        index=2,
        reject=True,
        reject_hint=2,
        context=LOST_ENTRIES,
    )
    c.deliver(lost)
    progress = c.node(1).progress(3)
    assert progress is not None
    assert progress[0] == 2  # match lowered
    sent = c.process(1)
    appends = [m for m in sent if m.type == MessageType.APPEND and m.to == 3]
    assert appends
    assert appends[0].index == 2  # probing right after what the follower still has


def test_a_blocked_follower_reports_lost_entries_to_heartbeats_and_timeouts() -> None:
    storage = MemoryStorage(conf_state=ConfState(voters=frozenset({1, 2, 3})))
    node = RaftNode(RaftConfig(id=3, election_tick=5), storage)
    node.set_vote_blocked_until(10)
    node.step(Message(MessageType.HEARTBEAT, 3, 1, 1, commit=8))
    rd = node.ready()
    lost = [m for m in rd.messages_after_append if m.context == LOST_ENTRIES]
    assert [(m.to, m.reject, m.reject_hint) for m in lost] == [(1, True, 0)]
    node.advance(rd)
    # A blocked follower never campaigns; at its election timeout it tells the leader.
    for _ in range(20):
        node.tick()
    rd = node.ready()
    assert node.role == Role.FOLLOWER
    assert not [m for m in rd.messages if m.type in (MessageType.VOTE, MessageType.PRE_VOTE)]
    assert [m.to for m in rd.messages_after_append if m.context == LOST_ENTRIES]


def test_a_heartbeat_above_the_log_means_lost_acknowledged_entries() -> None:
    """No corruption was detected (a disk that lost synced writes, cut mid-entry like a
    torn write), yet the leader's heartbeat commit, min(match, commit), is above our
    log: we acknowledged entries we no longer hold. Block votes and say so."""
    storage = MemoryStorage(conf_state=ConfState(voters=frozenset({1, 2, 3})))
    node = RaftNode(RaftConfig(id=3, election_tick=5), storage)
    assert node.vote_blocked_until == 0
    node.step(Message(MessageType.HEARTBEAT, 3, 1, 1, commit=8))
    rd = node.ready()
    lost = [m for m in rd.messages_after_append if m.context == LOST_ENTRIES]
    assert [(m.to, m.reject, m.reject_hint) for m in lost] == [(1, True, 0)]
    assert node.vote_blocked_until == 8
    node.advance(rd)
    # A heartbeat within the log is the ordinary case: no report, no block.
    healthy = RaftNode(
        RaftConfig(id=3, election_tick=5),
        MemoryStorage(conf_state=ConfState(voters=frozenset({1, 2, 3}))),
    )
    healthy.step(Message(MessageType.HEARTBEAT, 3, 1, 1, commit=0))
    rd = healthy.ready()
    assert not [m for m in rd.messages_after_append if m.context == LOST_ENTRIES]
    assert healthy.vote_blocked_until == 0
