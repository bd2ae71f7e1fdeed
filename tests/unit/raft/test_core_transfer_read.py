"""Leadership transfer (TIMEOUT_NOW) and ReadIndex."""

from __future__ import annotations

import pytest

from tests.unit.raft.corenet import Net
from zstream.replication import (
    ConfigError,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    ReadState,
    Role,
)


def test_transfer_to_an_up_to_date_follower() -> None:
    net = Net(pre_vote=True, check_quorum=True)
    net.elect(1)
    net.stabilize()
    net[1].transfer_leader(2)
    net.stabilize()
    assert net[2].role == Role.LEADER
    assert net[2].term == 2
    assert net[1].role == Role.FOLLOWER
    assert net[1].leader == 2


def test_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    net = Net()
    net.elect(1)
    net.down.add(3)
    net[1].propose_batch([b"a", b"b"])
    net.stabilize()
    net.down.discard(3)
    net[1].transfer_leader(3)
    with pytest.raises(ProposalDroppedError):
        net[1].propose(b"during")
    net.tick_stabilize(2)
    assert net[3].role == Role.LEADER
    assert net.data(3) == [b"a", b"b"]


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    net = Net()
    net.elect(1)
    net.stabilize()
    net.down.add(2)
    net[1].transfer_leader(2)
    with pytest.raises(ProposalDroppedError):
        net[1].propose(b"x")
    net.tick_stabilize(10)
    assert net[1].role == Role.LEADER
    assert net[1].propose(b"x") > 0


def test_transfer_preconditions() -> None:
    net = Net(voters=(1, 2), learners=(3,))
    net.elect(1)
    with pytest.raises(NotLeaderError):
        net[2].transfer_leader(1)
    with pytest.raises(ConfigError):
        net[1].transfer_leader(3)  # a learner cannot lead
    net[1].transfer_leader(1)  # already the leader: nothing to do
    assert net[1].propose(b"x") > 0


def test_read_index_waits_for_a_quorum_of_heartbeat_acks() -> None:
    net = Net()
    net.elect(1)
    net[1].propose(b"x")
    net.stabilize()
    commit = net[1].commit
    net[1].read_index(b"r1")
    net.process(ids=(1,))
    assert not net.read_states[1]
    beats = [m for m in net.queue if m.type == MessageType.HEARTBEAT]
    assert {m.to for m in beats} == {2, 3}
    assert all(m.context for m in beats)
    net.stabilize()
    assert net.read_states[1] == [ReadState(commit, b"r1")]


def test_read_index_is_not_served_without_a_quorum() -> None:
    net = Net()
    net.elect(1)
    net.stabilize()
    net.down |= {2, 3}
    net[1].read_index(b"r")
    net.tick_stabilize(3)
    assert net.read_states[1] == []
    net.down.clear()
    net.tick_stabilize(1)
    assert [r.context for r in net.read_states[1]] == [b"r"]


def test_read_index_waits_for_the_first_commit_of_the_term() -> None:
    net = Net()
    net.elect(1)
    net.stabilize()
    net.down.add(1)
    net[2].campaign()
    net.stabilize(keep=lambda m: m.type != MessageType.APPEND)
    leader = net[2]
    assert leader.role == Role.LEADER
    # The APPENDs were dropped: the new term's first entry is not committed, so the
    # read waits (no ReadIndex heartbeat round yet).
    assert leader.commit < leader.last_index
    leader.read_index(b"early")
    net.process(ids=(2,))
    assert not [m for m in net.queue if m.type == MessageType.HEARTBEAT and m.context]
    assert net.read_states[2] == []
    net.tick_stabilize(2)
    assert leader.commit == leader.last_index
    assert [(r.index, r.context) for r in net.read_states[2]] == [(leader.commit, b"early")]


def test_read_index_on_a_follower_raises_not_leader() -> None:
    net = Net()
    net.elect(1)
    with pytest.raises(NotLeaderError) as err:
        net[2].read_index(b"r")
    assert err.value.leader_hint == 1


def test_single_voter_read_index_is_immediate() -> None:
    net = Net(voters=(1,))
    net.elect(1)
    net.stabilize()
    net[1].read_index(b"r")
    net.process()
    assert net.read_states[1] == [ReadState(net[1].commit, b"r")]
