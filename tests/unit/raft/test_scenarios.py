"""Scripted conversations between a few RaftNodes over the harness's network.

Each test tells one story (an election, a partition that heals, a lost message,
a configuration change under a partition, a snapshot, a transfer, a read) and
checks how it ends; the shared safety checker watches every step on the way.
"""

from __future__ import annotations

import pytest

from tests.unit.raft.harness import Cluster
from zstream.replication import (
    ConfChangeType,
    ConfState,
    EntryType,
    Message,
    MessageType,
    NotLeaderError,
    ProgressState,
    ProposalDroppedError,
    Role,
    Snapshot,
    SnapshotMetadata,
)

MT = MessageType


def run_until_leader(c: Cluster, max_ticks: int = 200) -> int:
    for _ in range(max_ticks):
        c.tick_all()
        c.stabilize()
        leader = c.leader_id()
        if leader is not None:
            return leader
    raise AssertionError(f"no leader after {max_ticks} ticks: {c.roles()}")


# -- elections ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 5])
def test_election_by_timeout_yields_one_leader_that_everyone_follows(size: int) -> None:
    c = Cluster(voters=range(1, size + 1), pre_vote=True, check_quorum=True, seed=size)
    leader = run_until_leader(c)
    term = c.node(leader).term
    for i in range(1, size + 1):
        n = c.node(i)
        assert (n.term, n.leader) == (term, leader)
        assert n.role == (Role.LEADER if i == leader else Role.FOLLOWER)
    c.run(3)
    # The leader's no-op is committed everywhere.
    assert {c.node(i).commit for i in range(1, size + 1)} == {1}


def test_a_lost_vote_response_delays_the_election_by_one_timeout() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.node(1).campaign()
    c.process(1)
    c.deliver_all(MT.VOTE)
    c.process()
    assert c.drop(MT.VOTE_RESP) == 2  # both grants are lost
    assert c.node(1).role == Role.CANDIDATE
    # The candidate times out and tries again in term 2; the same voters grant again.
    for _ in range(20):
        c.tick(1)
        if c.node(1).term == 2:
            break
    assert c.node(1).term == 2
    c.stabilize()
    assert c.node(1).role == Role.LEADER
    assert c.node(2).leader == 1


def test_a_follower_that_crashes_before_its_sync_loses_the_entries_and_catches_up() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.elect(1)
    index, data = c.propose(1)
    c.process(1)
    c.deliver_all(MT.APPEND, to=2)
    c.drop(to=3)
    c.begin(2)  # appended, not yet synced; its acknowledgement waits for the sync
    assert not c.pending(MT.APPEND_RESP)
    assert c.host(2).storage.last_index() == index
    c.crash(2)
    c.restart(2)
    assert c.host(2).storage.last_index() == index - 1, "an unsynced entry survived a crash"
    assert c.node(1).commit < index
    c.tick_all()
    c.stabilize()
    assert c.node(1).commit >= index
    assert data in c.applied(2)


# -- a partitioned leader ---------------------------------------------------------------------


def test_a_partitioned_leader_comes_back_and_its_uncommitted_tail_is_discarded() -> None:
    c = Cluster(voters=(1, 2, 3), pre_vote=True, check_quorum=True)
    c.elect(1)
    c.isolate(1)
    lost_index, lost = c.propose(1)
    c.stabilize()
    # Check-quorum: the old leader notices it lost its majority and steps down.
    for _ in range(40):
        c.tick_all()
        c.stabilize()
    assert c.node(1).role != Role.LEADER
    new = c.leader_id()
    assert new in (2, 3)
    _, kept = c.propose(new)
    c.stabilize()
    c.heal()
    c.run(5)
    assert c.leader_id() == new
    assert c.node(1).leader == new
    assert c.log(1) == c.log(new)
    for i in (1, 2, 3):
        assert kept in c.applied(i)
        assert lost not in c.applied(i)
    assert c.log(1)[lost_index - 1][1] == c.node(new).term


def test_conflicting_tails_are_repaired_in_a_few_round_trips() -> None:
    # The follower's long tail (terms 2 and 3) conflicts with the leader's (term 4) from
    # index 4; the conflict hint lets the leader skip a whole term per round trip.
    leader_log = [1, 1, 1] + [4] * 40
    follower_log = [1, 1, 1] + [2] * 30 + [3] * 30
    c = Cluster(voters=(1, 2, 3), logs={1: leader_log, 2: follower_log}, terms={1: 8, 2: 7})
    c.node(1).campaign()
    rejections = 0
    for _ in range(200):
        c.process()
        if not c.outbox:
            break
        rejections += sum(1 for m in c.pending(MT.APPEND_RESP, frm=2) if m.reject)
        c.deliver_all()
    assert c.node(1).role == Role.LEADER
    assert c.log(2) == c.log(1)
    assert c.log(2)[-1] == (44, 9)
    assert rejections <= 3, f"{rejections} rejections: no fast backtracking"


def test_reordered_and_duplicated_appends_converge() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.elect(1)
    datas = []
    for _ in range(5):
        datas.append(c.propose(1)[1])
        c.process(1)  # one APPEND per proposal: pipelined
    to2 = c.take(MT.APPEND, to=2)
    assert len(to2) == 5
    c.deliver(*reversed(to2), to2[0], to2[2])  # backwards, then two duplicates
    c.deliver(*(m for m in c.take(MT.APPEND, to=3) for _ in range(2)))  # each twice
    c.stabilize()
    c.tick_all()
    c.stabilize()
    assert c.log(2) == c.log(1) == c.log(3)
    for i in (1, 2, 3):
        assert c.applied(i) == datas


# -- flow control -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inflight_msgs", "inflight_bytes", "most"), [(2, 32 << 20, 2), (256, 250, 3)]
)
def test_the_inflight_window_bounds_unacknowledged_appends(
    inflight_msgs: int, inflight_bytes: int, most: int
) -> None:
    c = Cluster(
        voters=(1, 2, 3), max_inflight_msgs=inflight_msgs, max_inflight_bytes=inflight_bytes
    )
    c.elect(1)
    assert c.node(1).progress(2)[2] == ProgressState.REPLICATE  # type: ignore[index]
    datas = []
    for k in range(6):
        datas.append(c.propose(1, b"%03d" % k + b"x" * 97)[1])  # 100-byte payloads
        c.process(1)
    to2 = c.pending(MT.APPEND, to=2)
    assert 1 <= len(to2) <= most, f"{len(to2)} appends in flight to one follower"
    c.stabilize()  # acknowledgements open the window again
    c.run(1)  # a follower may learn the last commit index only from the next heartbeat
    for i in (1, 2, 3):
        assert c.applied(i) == datas


def test_a_follower_progresses_from_probe_through_snapshot_to_replicate() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.elect(1)
    assert c.node(1).progress(3)[2] == ProgressState.REPLICATE  # type: ignore[index]
    c.isolate(3)
    for _ in range(5):
        c.propose(1)
    c.stabilize()
    snap = c.host(1).compact(keep=0)
    assert snap is not None
    c.heal()
    c.tick(1)  # a heartbeat; the exchanges that follow show 3 is behind the log start
    for _ in range(20):
        c.process()
        if c.pending(MT.SNAPSHOT, to=3):
            break
        c.deliver_all()
    assert c.pending(MT.SNAPSHOT, to=3)
    assert c.node(1).progress(3)[2] == ProgressState.SNAPSHOT  # type: ignore[index]
    c.stabilize()
    match, _, state = c.node(1).progress(3)  # type: ignore[misc]
    assert state in (ProgressState.REPLICATE, ProgressState.PROBE)
    assert match == c.node(1).last_index
    c.propose(1)
    c.stabilize()
    assert c.node(1).progress(3)[2] == ProgressState.REPLICATE  # type: ignore[index]
    assert c.log(3) == c.log(1)


# -- pre-vote and check-quorum ---------------------------------------------------------------


def test_prevote_an_isolated_node_does_not_raise_its_term_or_disrupt_on_return() -> None:
    c = Cluster(voters=(1, 2, 3), pre_vote=True, check_quorum=True)
    c.elect(1)
    c.isolate(3)
    for _ in range(60):
        c.tick(3)
        c.stabilize()
    assert c.node(3).term == 1, "pre-vote: a node that cannot win does not bump its term"
    c.heal()
    c.run(5)
    assert c.leader_id() == 1
    assert c.node(1).term == 1


def test_checkquorum_an_isolated_leader_steps_down() -> None:
    c = Cluster(voters=(1, 2, 3), check_quorum=True)
    c.elect(1)
    c.isolate(1)
    for _ in range(2 * c.election_tick):
        c.tick(1)
        c.stabilize()
    assert c.node(1).role != Role.LEADER


def test_checkquorum_followers_refuse_prevotes_while_their_leader_is_alive() -> None:
    c = Cluster(voters=(1, 2, 3), pre_vote=True, check_quorum=True)
    c.elect(1)
    c.node(3).campaign()
    c.process(3)
    c.deliver_all(MT.PRE_VOTE, to=2)
    c.process(2)
    replies = c.take(MT.PRE_VOTE_RESP, frm=2)
    assert all(m.reject for m in replies), "granted a pre-vote while in the leader's lease"
    c.stabilize()
    assert c.leader_id() == 1
    assert c.node(1).term == 1


def test_prevote_checkquorum_no_deadlock_when_the_leader_dies() -> None:
    # etcd's forget-leader case: 3 lags behind; the leader dies. 3 campaigns first and
    # 2 refuses (it heard from the leader recently). When 2 then campaigns, 3 must
    # grant: having campaigned, it forgot the leader and is not in a lease.
    c = Cluster(voters=(1, 2, 3), pre_vote=True, check_quorum=True)
    c.elect(1)
    c.partition([1, 2], [3])
    _, data = c.propose(1)
    c.stabilize()  # committed on 1 and 2; 3 is behind
    c.crash(1)
    c.heal()
    c.node(3).campaign()
    c.process(3)
    c.deliver_all(MT.PRE_VOTE)
    c.process(2)
    assert all(m.reject for m in c.take(MT.PRE_VOTE_RESP, frm=2))
    c.node(2).campaign()
    c.stabilize()
    assert c.node(2).role == Role.LEADER, c.roles()
    c.run(3)
    assert data in c.applied(3)


# -- membership under a partition ------------------------------------------------------------


def test_a_conf_change_while_a_partition_is_open() -> None:
    c = Cluster(voters=(1, 2, 3), blank=(4,), pre_vote=True, check_quorum=True)
    c.elect(1)
    c.isolate(3)
    # Add 4: C_old {1,2,3} commits it with 1 and 2; the newcomer then catches up.
    c.change(1, (ConfChangeType.ADD_VOTER, 4))
    c.run(3)
    assert c.node(1).conf_state.voters == {1, 2, 3, 4}
    _, data = c.propose(1)
    c.run(3)
    assert data in c.applied(4)
    # Remove 3 while it is still cut off; {1, 2, 4} carry on.
    c.change(1, (ConfChangeType.REMOVE_NODE, 3))
    c.run(3)
    assert c.node(1).conf_state.voters == {1, 2, 4}
    # 3 comes back, unaware of its removal: with pre-vote it cannot disrupt anyone.
    c.heal()
    term = c.node(1).term
    c.run(50)
    assert c.leader_id() == 1
    assert c.node(1).term == term
    _, after = c.propose(1)
    c.run(2)
    assert after in c.applied(4)


@pytest.mark.parametrize("pre_vote", [False, True])
def test_a_leader_that_removes_itself_leaves_a_group_that_can_elect(pre_vote: bool) -> None:
    # Voters {1, 2} swap 1 for 3: joint {2,3} & {1,2}. Leader 1 commits and applies the
    # entry leaving the joint configuration and steps down, but the messages telling 2 and
    # 3 that it is committed are lost. 2 and 3 still need 1's vote for the old half of the
    # joint configuration, so 1 must not hold a longer log than theirs: a leaving leader
    # takes no more proposals (SIM_FINDINGS #1: it used to, and the group deadlocked).
    c = Cluster(voters=(1, 2), blank=(3,), pre_vote=pre_vote, check_quorum=pre_vote)
    c.elect(1)
    c.change(1, (ConfChangeType.ADD_VOTER, 3), (ConfChangeType.REMOVE_NODE, 1))
    for _ in range(50):
        c.process()
        if c.node(1).conf_state.voters_outgoing:
            break
        c.deliver_all()
    assert c.node(1).conf_state.voters_outgoing == {1, 2}
    leave = c.node(1).last_index  # the entry that leaves the joint configuration
    held: list[Message] = []
    for _ in range(50):
        c.deliver_all(frm=1)
        c.process(2, 3)
        for m in c.take(to=1):
            if m.type == MT.APPEND_RESP and not m.reject and m.index >= leave:
                held.append(m)
            else:
                c.deliver(m)
        c.process(1)
        if all(c.node(i).last_index >= leave for i in (2, 3)) and not c.pending(frm=1):
            break
    assert c.log(2)[-1][0] == c.log(3)[-1][0] == leave
    with pytest.raises(ProposalDroppedError):
        c.propose(1)  # its log must end with `leave`
    c.deliver(*held)
    c.process(1)
    c.drop(frm=1)  # the commit of `leave` never reaches 2 and 3
    assert c.node(1).commit >= leave
    assert c.node(1).role != Role.LEADER
    assert max(c.node(2).commit, c.node(3).commit) < leave
    leader = run_until_leader(c, max_ticks=300)
    assert leader in (2, 3)
    _, data = c.propose(leader)
    c.run(3)
    assert data in c.applied(2)
    assert data in c.applied(3)


def swap_in_3_for_2_with_acks_held(c: Cluster) -> tuple[int, list[Message]]:
    """Voters {1, 2} (leader 1) swap 2 for 3: joint {1,3} & {1,2}. Replicate the entry
    leaving the joint configuration, but hold back every acknowledgement of it, so that
    leader 1 has not committed it yet; return its index and the held messages."""
    c.change(1, (ConfChangeType.ADD_VOTER, 3), (ConfChangeType.REMOVE_NODE, 2))
    for _ in range(50):
        c.process()
        if c.node(1).conf_state.voters_outgoing:
            break
        c.deliver_all()
    assert c.node(1).conf_state.voters_outgoing == {1, 2}
    leave = c.node(1).last_index
    held: list[Message] = []
    for _ in range(50):
        c.deliver_all(frm=1)
        c.process(2, 3)
        for m in c.take(to=1):
            if m.type == MT.APPEND_RESP and not m.reject and m.index >= leave:
                held.append(m)
            else:
                c.deliver(m)
        c.process(1)
        if not c.pending(frm=1):
            break
    return leave, held


def run_until_new_config_leads(c: Cluster, voters: set[int], max_ticks: int = 300) -> int:
    """Tick until a leader of ``voters`` (outside any joint configuration) leads."""
    for _ in range(max_ticks):
        c.tick_all()
        c.stabilize()
        leader = c.leader_id()
        if leader in voters:
            cs = c.node(leader).conf_state
            if cs.voters == voters and not cs.voters_outgoing:
                return leader
    raise AssertionError(f"no leader of {sorted(voters)} after {max_ticks} ticks: {c.roles()}")


@pytest.mark.parametrize("pre_vote", [False, True])
def test_a_removed_follower_with_a_longer_log_does_not_block_the_election(pre_vote: bool) -> None:
    # Adversarial schedule: once the leave entry L commits, leader 1 appends X and sends
    # the APPENDs (X, commit=L) before its own write is synced (Ongaro 10.2.1), only 2
    # gets them, and 1 crashes, losing X and commit=L. Were 2 to hold X and apply its
    # removal, 1 and 3 (still joint, needing 2's vote for {1,2}) would find 2 refusing
    # them for a longer log, with 2 never campaigning (SIM_FINDINGS #2). The core must
    # never put 2 in that position: the group has to elect and make progress.
    c = Cluster(voters=(1, 2), blank=(3,), pre_vote=pre_vote, check_quorum=pre_vote)
    c.elect(1)
    _, held = swap_in_3_for_2_with_acks_held(c)
    c.deliver(*held)
    c.process(2, 3)
    c.deliver_all(to=1)
    c.propose(1)  # X
    c.begin(1)  # X appended but unsynced; its APPENDs go out now
    c.deliver_all(MT.APPEND, frm=1, to=2)
    c.drop(frm=1)
    c.process(2)
    c.drop(frm=2)
    c.crash(1)  # loses X and the commit it had not synced
    c.restart(1)
    leader = run_until_new_config_leads(c, {1, 3})
    _, data = c.propose(leader)
    c.run(3)
    assert data in c.applied(1)
    assert data in c.applied(3)


def test_a_removed_node_holding_a_lost_first_entry_of_a_new_leader_does_not_block() -> None:
    # The case docs/architecture.md once called residual (SIM_FINDINGS #3). Leader 1
    # commits the leave entry L, sends the commit to 2 only and crashes before syncing
    # it: 2 may apply its removal while 1 and 3 stay joint. 3 then campaigns, and if it
    # wins sends its first entry N to 2 only and crashes before syncing N. 2 must not
    # end up holding an entry that neither 1 nor 3 has: they still need its vote.
    c = Cluster(voters=(1, 2), blank=(3,))
    c.elect(1)
    _, held = swap_in_3_for_2_with_acks_held(c)
    c.deliver(*held)
    c.begin(1)  # the commit of L goes out before 1 has synced it
    c.deliver_all(frm=1, to=2)
    c.drop(frm=1)
    c.crash(1)
    c.restart(1)
    c.process(2)
    c.drop(frm=2)
    c.node(3).campaign()
    for _ in range(2):
        c.process()
        c.deliver_all(MT.VOTE)
        c.deliver_all(MT.VOTE_RESP)
    if c.node(3).role == Role.LEADER:
        c.begin(3)  # its first entry, unsynced; the APPENDs leave
        c.deliver_all(MT.APPEND, frm=3, to=2)
        c.drop(frm=3)
        c.crash(3)
        c.restart(3)
        c.process(2)
        c.drop(frm=2)
    leader = run_until_new_config_leads(c, {1, 3})
    _, data = c.propose(leader)
    c.run(3)
    assert data in c.applied(1)
    assert data in c.applied(3)


# -- snapshots ----------------------------------------------------------------------------------


def test_a_lagging_follower_is_caught_up_by_a_snapshot() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.elect(1)
    for _ in range(5):
        c.propose(1)
    c.stabilize()
    c.isolate(3)
    for _ in range(10):
        c.propose(1)
    c.stabilize()
    snap = c.host(1).compact(keep=0)
    assert snap is not None
    assert c.host(1).storage.first_index() == snap.metadata.index + 1
    c.heal()
    sent: list[Message] = []
    for _ in range(10):
        c.tick_all()
        for _ in range(50):
            c.process()
            if not c.outbox:
                break
            sent.extend(m for m in c.outbox if m.type == MT.SNAPSHOT)
            c.deliver_all()
    assert [m.to for m in sent] == [3]
    got = sent[0].snapshot
    assert got is not None
    assert got.metadata.conf_state.voters == {1, 2, 3}
    assert c.host(3).state == c.host(1).state
    assert c.log(3) == c.log(1)
    _, data = c.propose(1)
    c.stabilize()
    assert data in c.applied(3)


@pytest.mark.parametrize("matches", [True, False])
def test_figure_13_a_snapshot_keeps_the_log_after_it_only_if_index_and_term_match(
    matches: bool,
) -> None:
    c = Cluster(voters=(1, 2, 3), logs={1: [1, 1, 1, 1, 1]}, terms={1: 2})
    term = 1 if matches else 2
    records = tuple((1, int(EntryType.NORMAL), b"h%d.1" % i) for i in range(1, 4))
    data = c.registry.add(records)
    snap = Snapshot(SnapshotMetadata(3, term, ConfState(voters=frozenset({1, 2, 3}))), data)
    c.deliver(Message(MT.SNAPSHOT, to=1, frm=2, term=2, snapshot=snap))
    c.process(1)
    if matches:
        assert c.log(1)[-2:] == [(4, 1), (5, 1)], "log after a matching snapshot was dropped"
    else:
        assert c.log(1) == []
        assert c.host(1).storage.first_index() == 4
        assert c.host(1).applied_index == 3
    assert c.node(1).commit >= 3
    replies = c.take(MT.APPEND_RESP, frm=1)
    assert replies
    assert not replies[-1].reject
    # Only the snapshot's index is known to match the leader's log: entries 4 and 5
    # may differ from the leader's, so acknowledging them would be unsafe.
    assert replies[-1].index == 3


# -- leadership transfer -------------------------------------------------------------------------


def test_leadership_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.elect(1)
    c.isolate(3)
    datas = [c.propose(1)[1] for _ in range(3)]
    c.stabilize()
    c.heal()
    c.node(1).transfer_leader(3)
    with pytest.raises(ProposalDroppedError):
        c.propose(1)  # no proposals while leadership is being handed over
    for _ in range(5):
        c.tick_all()
        c.stabilize()
        if c.leader_id() == 3:
            break
    assert c.leader_id() == 3
    assert c.node(3).term == 2
    for d in datas:
        assert d in c.applied(3)
    assert c.node(1).leader == 3


def test_leadership_transfer_to_an_up_to_date_follower_is_immediate() -> None:
    c = Cluster(voters=(1, 2, 3), pre_vote=True, check_quorum=True)
    c.elect(1)
    c.node(1).transfer_leader(2)
    c.stabilize()
    assert c.leader_id() == 2
    assert c.node(1).role == Role.FOLLOWER


# -- ReadIndex -------------------------------------------------------------------------------------


def test_read_index_is_answered_with_the_commit_index_after_a_heartbeat_round() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.elect(1)
    index, _ = c.propose(1)
    c.stabilize()
    c.node(1).read_index(b"r1")
    c.stabilize()
    assert c.read_states.get(1) == [(index, b"r1")]
    with pytest.raises(NotLeaderError) as err:
        c.node(2).read_index(b"r2")
    assert err.value.leader_hint == 1


def test_read_index_waits_for_the_new_leader_to_commit_in_its_term() -> None:
    c = Cluster(voters=(1, 2, 3), logs={1: [1, 1], 2: [1, 1], 3: [1, 1]}, terms={1: 1, 2: 1, 3: 1})
    c.node(1).campaign()
    c.process(1)
    c.deliver_all(MT.VOTE)
    c.process()
    c.deliver_all(MT.VOTE_RESP)
    assert c.node(1).role == Role.LEADER
    c.node(1).read_index(b"early")
    c.process(1)
    assert not c.read_states.get(1), "read served before the leader committed in its term"
    c.stabilize()
    c.tick_all()
    c.stabilize()
    got = c.read_states.get(1)
    assert got is not None
    assert got[0][1] == b"early"
    assert got[0][0] >= 3  # covers the no-op of term 2


def test_read_index_is_not_served_by_a_leader_cut_off_from_its_majority() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.elect(1)
    c.isolate(1)
    c.node(1).read_index(b"stale")
    c.stabilize()
    c.tick(1, 3)
    c.stabilize()
    assert not c.read_states.get(1)
