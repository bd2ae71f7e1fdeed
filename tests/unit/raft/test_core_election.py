"""Elections: randomized timeouts, pre-vote, check-quorum and their interplay."""

from __future__ import annotations

import random

import pytest

from tests.unit.raft.corenet import Net
from zstream.replication import (
    ConfState,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    NotLeaderError,
    RaftConfig,
    RaftNode,
    Role,
)


def test_single_node_elects_itself_and_commits_its_first_entry() -> None:
    net = Net(voters=(1,))
    net.elect(1)
    node = net[1]
    assert node.term == 1
    assert node.leader == 1
    assert node.commit == 1
    # The first entry of a fresh group carries the bootstrap configuration.
    assert net.applied[1][0].type == EntryType.CONF_CHANGE
    assert node.conf_state.voters == frozenset({1})


def test_three_nodes_elect_the_campaigner_and_agree_on_it() -> None:
    net = Net(pre_vote=True)
    net.elect(2)
    assert [net[i].leader for i in (1, 2, 3)] == [2, 2, 2]
    assert [net[i].term for i in (1, 2, 3)] == [1, 1, 1]
    assert net[1].vote == 2
    assert net.leaders() == [2]


@pytest.mark.parametrize("seed", range(5))
def test_election_timeout_is_randomized_within_one_to_two_election_ticks(seed: int) -> None:
    node = RaftNode(
        RaftConfig(id=1, election_tick=10, pre_vote=False),
        MemoryStorage(conf_state=ConfState(voters=frozenset({1, 2, 3}))),
        rng=random.Random(seed),
    )
    ticks = 0
    while node.role == Role.FOLLOWER:
        node.tick()
        ticks += 1
        assert ticks < 20
    assert 10 <= ticks < 20
    assert node.role == Role.CANDIDATE


def test_timeouts_differ_between_seeds() -> None:
    def first_campaign(seed: int) -> int:
        node = RaftNode(
            RaftConfig(id=1),
            MemoryStorage(conf_state=ConfState(voters=frozenset({1, 2, 3}))),
            rng=random.Random(seed),
        )
        for t in range(1, 40):
            node.tick()
            if node.role != Role.FOLLOWER:
                return t
        raise AssertionError("never campaigned")

    assert len({first_campaign(s) for s in range(20)}) > 1


def test_learners_and_blank_nodes_never_campaign() -> None:
    net = Net(voters=(1, 2), learners=(3,), blank=(4,))
    net.tick(ids=(3, 4), n=100)
    assert net[3].role == Role.FOLLOWER
    assert net[4].role == Role.FOLLOWER
    assert net[3].term == 0


def test_pre_vote_keeps_a_partitioned_node_from_raising_its_term() -> None:
    net = Net(pre_vote=True)
    net.elect(1)
    net.isolate(3)
    for _ in range(100):
        net.tick()
        net.stabilize()
    assert net[3].role == Role.PRE_CANDIDATE
    assert net[3].term == 1
    net.heal()
    net.tick_stabilize(3)
    # Rejoining does not disturb the leader.
    assert net[1].role == Role.LEADER
    assert net[1].term == 1
    assert net[3].leader == 1


def test_without_pre_vote_a_rejoining_node_forces_a_new_term() -> None:
    net = Net(pre_vote=False)
    net.elect(1)
    net.isolate(3)
    for _ in range(30):
        net.tick()
        net.stabilize()
    assert net[3].term > 1
    net.heal()
    net.tick_stabilize(30)
    assert len(net.leaders()) == 1
    assert net[1].term == net[3].term > 1


def test_check_quorum_makes_an_isolated_leader_step_down() -> None:
    net = Net(check_quorum=True, pre_vote=True)
    net.elect(1)
    net.isolate(1)
    for _ in range(2 * 10 + 1):
        net.tick(ids=(1,))
        net.stabilize()
    assert net[1].role == Role.FOLLOWER
    assert net[1].leader == 0
    with pytest.raises(NotLeaderError):
        net[1].propose(b"x")


def test_leader_with_a_quorum_keeps_leading_under_check_quorum() -> None:
    net = Net(check_quorum=True, pre_vote=True)
    net.elect(1)
    net.isolate(3)
    net.tick_stabilize(50)
    assert net[1].role == Role.LEADER
    assert net[1].term == 1


def test_follower_in_lease_ignores_a_vote_request() -> None:
    net = Net(check_quorum=True, pre_vote=False)
    net.elect(1)
    last = net[2].last_index
    net[2].step(
        Message(MessageType.VOTE, 2, 3, term=5, index=last + 10, log_term=5)
    )  # a disruptive (e.g. removed) node
    assert net[2].term == 1
    assert net[2].leader == 1
    net.process()
    assert not [m for m in net.queue if m.type == MessageType.VOTE_RESP]


def test_pre_vote_check_quorum_voters_grant_after_losing_the_leader() -> None:
    # etcd-raft testdata/prevote_checkquorum: while followers hear from the leader
    # they refuse pre-votes; once one of them has not heard from it for an election
    # timeout (it becomes a pre-candidate and forgets the leader) it grants them.
    net = Net(check_quorum=True, pre_vote=True, election_tick=10)
    net.elect(1)
    net[2].campaign()
    net.stabilize()
    assert net[2].role == Role.PRE_CANDIDATE
    assert net[1].role == Role.LEADER
    # The leader dies; 2 (a pre-candidate, leader forgotten) grants 3's pre-vote.
    net.down.add(1)
    net[3].campaign()
    net.stabilize()
    assert net[3].role == Role.LEADER
    assert net[3].term == 2


def test_quorum_of_pre_candidates_can_replace_a_live_leader() -> None:
    net = Net(check_quorum=True, pre_vote=True)
    net.elect(3)
    net[1].campaign()
    net.stabilize()
    assert net[1].role == Role.PRE_CANDIDATE
    net[2].campaign()
    net.stabilize()
    assert net[2].role == Role.LEADER
    assert net[2].term == 2


def test_stale_term_leader_steps_down_when_answered_with_a_higher_term() -> None:
    # 3 raised its term while cut off (no pre-vote); check-quorum voters ignore its
    # votes, so without an answer to the leader's lower-term APPEND it would be stuck.
    net = Net(check_quorum=True, pre_vote=False)
    net.elect(1)
    net.isolate(3)
    for _ in range(30):
        net.tick(ids=(3,))
        net.stabilize()
    high = net[3].term
    assert high > 1
    net.heal()
    net.tick_stabilize(60)
    assert len(net.leaders()) == 1
    assert {net[i].term for i in (1, 2, 3)} == {net[net.leaders()[0]].term}
    assert net[1].term >= high


def test_lower_term_pre_vote_is_rejected_with_our_term() -> None:
    net = Net(pre_vote=True)
    net.elect(1)
    net[2].step(Message(MessageType.PRE_VOTE, 2, 3, term=0, index=0, log_term=0))
    net.process(ids=(2,))
    resp = [m for m in net.queue if m.type == MessageType.PRE_VOTE_RESP]
    assert resp
    assert resp[0].reject
    assert resp[0].term == 1


def test_vote_is_granted_only_to_an_up_to_date_log() -> None:
    net = Net()
    net.elect(1)
    net[1].propose(b"a")
    net.stabilize()
    last = net[2].last_index
    net[2].step(Message(MessageType.VOTE, 2, 3, term=9, index=last - 1, log_term=1))
    net.process(ids=(2,))
    (resp,) = [m for m in net.queue if m.type == MessageType.VOTE_RESP]
    assert resp.reject
    assert net[2].vote == 0
    assert net[2].term == 9


def test_one_vote_per_term() -> None:
    net = Net()
    node = net[1]
    node.step(Message(MessageType.VOTE, 1, 2, term=3, index=0, log_term=0))
    node.step(Message(MessageType.VOTE, 1, 3, term=3, index=0, log_term=0))
    net.process(ids=(1,))
    resps = {m.to: m.reject for m in net.queue if m.type == MessageType.VOTE_RESP}
    assert resps == {2: False, 3: True}
    assert node.vote == 2


def test_vote_response_is_sent_only_after_persisting() -> None:
    net = Net()
    node = net[1]
    node.step(Message(MessageType.VOTE, 1, 2, term=3, index=0, log_term=0))
    rd = node.ready()
    assert rd.must_sync
    assert rd.hard_state is not None
    assert rd.hard_state.vote == 2
    assert [m.type for m in rd.messages_after_append] == [MessageType.VOTE_RESP]
    assert not rd.messages
