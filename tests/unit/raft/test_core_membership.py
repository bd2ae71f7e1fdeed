"""Membership: joint consensus with automatic leave, learners, one change at a time,
a removed leader stepping down, and blank nodes joining."""

from __future__ import annotations

import pytest

from tests.unit.raft.corenet import Net
from zstream.replication import (
    ConfChange,
    ConfChangeInProgressError,
    ConfChangeType,
    ConfigError,
    ConfState,
    MessageType,
    ProposalDroppedError,
    Role,
)

ADD = ConfChangeType.ADD_VOTER
LEARNER = ConfChangeType.ADD_LEARNER
REMOVE = ConfChangeType.REMOVE_NODE


def settle(net: Net, ticks: int = 3) -> None:
    net.stabilize()
    net.tick_stabilize(ticks)


def confs_seen(net: Net, i: int) -> list[ConfState]:
    """Stabilize round by round, recording node i's configuration after each round."""
    seen = [net[i].conf_state]
    for _ in range(100):
        moved = net.process()
        if seen[-1] != net[i].conf_state:
            seen.append(net[i].conf_state)
        if not net.queue and not moved:
            return seen
        net.deliver()
    raise AssertionError("did not settle")


def test_adding_a_voter_goes_through_a_joint_configuration_and_leaves_it() -> None:
    net = Net(blank=(4,))
    net.elect(1)
    net.stabilize()
    net[1].propose_conf_change(ConfChange(((ADD, 4),)))
    seen = confs_seen(net, 1)
    final = ConfState(voters=frozenset({1, 2, 3, 4}))
    joint = ConfState(
        voters=frozenset({1, 2, 3, 4}), voters_outgoing=frozenset({1, 2, 3}), auto_leave=True
    )
    assert seen == [ConfState(voters=frozenset({1, 2, 3})), joint, final]
    net.tick_stabilize(2)
    assert all(net[i].conf_state == final for i in net.nodes)
    assert net.storage[4].snapshot().metadata.conf_state == final
    conf_changes = [e for e in net.applied[4] if e.type.name == "CONF_CHANGE"]
    assert len(conf_changes) == 3  # bootstrap, enter joint, leave joint
    net[1].propose(b"after")
    settle(net)
    assert net.data(4) == [b"after"]


def test_blank_node_rebuilds_the_configuration_from_the_log() -> None:
    net = Net(voters=(1, 2), blank=(3,))
    net.elect(1)
    net[1].propose_batch([b"a", b"b"])
    settle(net)
    net[1].propose_conf_change(ConfChange(((ADD, 3),)))
    settle(net)
    assert net[3].conf_state == ConfState(voters=frozenset({1, 2, 3}))
    # 3 alone can never elect itself: it knows the other voters.
    net.isolate(3)
    for _ in range(50):
        net.tick(ids=(3,))
        net.stabilize()
    assert net[3].role != Role.LEADER
    assert net.data(3) == [b"a", b"b"]


def test_only_one_configuration_change_at_a_time() -> None:
    net = Net(blank=(4, 5))
    net.elect(1)
    net.stabilize()
    net[1].propose_conf_change(ConfChange(((ADD, 4),)))
    with pytest.raises(ConfChangeInProgressError):
        net[1].propose_conf_change(ConfChange(((ADD, 5),)))
    # Once applied the configuration is joint: still no new change until it is left.
    net.process(ids=(1,))
    net.deliver()
    net.process(ids=(2, 3))
    net.deliver()
    net.process(ids=(1,))
    assert net[1].conf_state.voters_outgoing
    with pytest.raises(ConfChangeInProgressError):
        net[1].propose_conf_change(ConfChange(((ADD, 5),)))
    settle(net)
    assert not net[1].conf_state.voters_outgoing
    net[1].propose_conf_change(ConfChange(((ADD, 5),)))
    settle(net)
    assert net[1].conf_state.voters == frozenset({1, 2, 3, 4, 5})


def test_invalid_configuration_changes_are_refused() -> None:
    net = Net(voters=(1,))
    net.elect(1)
    net.stabilize()
    with pytest.raises(ConfigError):
        net[1].propose_conf_change(ConfChange(((REMOVE, 1),)))
    with pytest.raises(ConfigError):
        net[1].propose_conf_change(ConfChange(()))  # not joint: nothing to leave


def test_learners_receive_the_log_but_do_not_count_toward_commit() -> None:
    net = Net(voters=(1, 2, 3), learners=(4,))
    net.elect(1)
    net.down |= {2, 3}
    net[1].propose(b"x")
    net.stabilize()
    net.tick_stabilize(2)
    assert net[4].last_index == net[1].last_index
    assert net[1].commit == 1  # only the bootstrap entry (committed before 2, 3 went down)
    net.down.clear()
    settle(net)
    assert net.data(4) == [b"x"]


def test_learner_is_promoted_to_voter() -> None:
    net = Net(voters=(1, 2, 3), learners=(4,))
    net.elect(1)
    net.stabilize()
    net[1].propose_conf_change(ConfChange(((ADD, 4),)))
    settle(net, 5)
    assert net[1].conf_state == ConfState(voters=frozenset({1, 2, 3, 4}))


def test_demoting_a_voter_makes_it_a_learner_after_the_joint_configuration() -> None:
    net = Net(voters=(1, 2, 3))
    net.elect(1)
    net.stabilize()
    net[1].propose_conf_change(ConfChange(((LEARNER, 3),)))
    seen = confs_seen(net, 1)
    assert seen[1] == ConfState(
        voters=frozenset({1, 2}),
        voters_outgoing=frozenset({1, 2, 3}),
        learners_next=frozenset({3}),
        auto_leave=True,
    )
    settle(net, 5)
    assert net[1].conf_state == ConfState(voters=frozenset({1, 2}), learners=frozenset({3}))


def test_removed_leader_steps_down_and_the_rest_elect_a_new_one() -> None:
    net = Net(voters=(1, 2, 3), pre_vote=True, check_quorum=True)
    net.elect(1)
    net.stabilize()
    net[1].propose_conf_change(ConfChange(((REMOVE, 1),)))
    settle(net, 5)
    assert net[1].role == Role.FOLLOWER
    assert net[2].conf_state == ConfState(voters=frozenset({2, 3}))
    net.down.add(1)
    net.tick_stabilize(40)
    assert len(net.leaders()) == 1
    new = net.leaders()[0]
    assert new in (2, 3)
    net[new].propose(b"x")
    settle(net)
    assert net.data(2)[-1] == b"x"
    assert net.data(3)[-1] == b"x"


def test_replacing_two_voters_at_once_uses_joint_consensus() -> None:
    net = Net(voters=(1, 2, 3), blank=(4, 5))
    net.elect(1)
    net.stabilize()
    net[1].propose_conf_change(ConfChange(((ADD, 4), (ADD, 5), (REMOVE, 2), (REMOVE, 3))))
    # 2 and 3 go down once the joint configuration is in force: then nothing commits,
    # since the outgoing majority {1, 2, 3} is needed too (the leave entry waits).
    for _ in range(20):
        net.process()
        net.deliver()
        if net[1].conf_state.voters_outgoing:
            break
    assert net[1].conf_state.voters_outgoing == frozenset({1, 2, 3})
    net.down |= {2, 3}
    before = net[1].commit
    net.tick_stabilize(3)
    assert net[1].commit == before
    assert net[1].conf_state.voters_outgoing
    net.down.clear()
    settle(net, 5)
    assert net[1].conf_state == ConfState(voters=frozenset({1, 4, 5}))


@pytest.mark.parametrize("guards", [False, True])
def test_leaving_leader_refuses_proposals_so_the_rest_can_elect_without_it(guards: bool) -> None:
    # Voters {1, 2} swap 1 for 3: joint {2,3} & {1,2}. 1 commits the leave entry and
    # steps down, but 2 and 3 never hear of the commit: they still need 1's vote for
    # the old half. 1 grants it only if its log is no longer than theirs, which holds
    # because a leaving leader appends nothing after the entry that removes it.
    net = Net(voters=(1, 2), blank=(3,), pre_vote=guards, check_quorum=guards)
    net.elect(1)
    net.stabilize()
    net[1].propose_conf_change(ConfChange(((ADD, 3), (REMOVE, 1))))
    for _ in range(50):
        net.process()
        if net[1].conf_state.voters_outgoing:
            break
        net.deliver()
    assert net[1].conf_state.voters_outgoing == frozenset({1, 2})
    with pytest.raises(ProposalDroppedError):
        net[1].propose(b"late")
    leave = net[1].last_index
    # Replicate the leave entry; drop every message from 1 that would tell 2 or 3 that
    # it is committed.
    for _ in range(50):
        net.process()
        net.deliver(keep=lambda m: m.frm != 1 or m.commit < leave)
    assert net[1].commit >= leave
    assert net[1].role == Role.FOLLOWER
    assert net[2].last_index == net[3].last_index == leave
    assert max(net[2].commit, net[3].commit) < leave
    for _ in range(100):
        net.tick()
        net.stabilize()
        if net.leaders():
            break
    (leader,) = net.leaders()
    assert leader in (2, 3)
    net[leader].propose(b"x")
    settle(net)
    assert net[2].conf_state == net[3].conf_state == ConfState(voters=frozenset({2, 3}))
    assert net.data(2)[-1] == net.data(3)[-1] == b"x"


def test_a_voter_being_removed_gets_no_entries_past_the_leave_entry() -> None:
    # Voters {1, 2} swap 2 for 3: joint {1,3} & {1,2}. Once the leave entry is in the
    # leader's log, 2 gets nothing after it: a removed node whose log ran ahead of the
    # others' would refuse them the vote the outgoing half may still need.
    net = Net(voters=(1, 2), blank=(3,))
    net.elect(1)
    net.stabilize()
    net[1].propose_conf_change(ConfChange(((ADD, 3), (REMOVE, 2))))
    for _ in range(50):
        net.process()
        if net[1].conf_state.voters_outgoing:
            break
        net.deliver()
    leave = net[1].last_index
    net[1].propose(b"x")
    net.process(ids=(1,))
    to2 = [m for m in net.queue if m.type == MessageType.APPEND and m.to == 2]
    assert to2
    assert all(e.index <= leave for m in to2 for e in m.entries)
    settle(net)
    assert net[2].last_index == leave
    assert net[1].conf_state == net[3].conf_state == ConfState(voters=frozenset({1, 3}))
    assert net.data(3) == [b"x"]


def test_a_voter_being_removed_gets_entries_only_once_the_incoming_majority_has_them() -> None:
    # Joint {1,3} & {1,2}: 2 is being removed. While 3 is down, nothing new reaches 2
    # (not even the leave entry): if 2 held an entry that neither 1 nor 3 holds and then
    # applied its removal, it could refuse both the vote they need from it.
    net = Net(voters=(1, 2), blank=(3,))
    net.elect(1)
    net.stabilize()
    net[1].propose_conf_change(ConfChange(((ADD, 3), (REMOVE, 2))))
    for _ in range(50):
        net.process()
        if net[1].conf_state.voters_outgoing:
            break
        net.deliver()
    leave = net[1].last_index
    net.queue.clear()
    net.down.add(3)
    before = net[2].last_index
    net.tick_stabilize(3)
    assert net[2].last_index == before < leave
    assert net[1].commit < leave
    net.down.discard(3)
    settle(net)
    assert net[1].conf_state == net[3].conf_state == ConfState(voters=frozenset({1, 3}))
    assert net[2].last_index == leave
