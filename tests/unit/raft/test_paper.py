"""The Raft paper's rules, one test (or table) per rule, named after the section
(Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm", 2014).

Each test scripts a small cluster through ``harness.Cluster``; the simulator's
safety checker watches every step as well.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from tests.unit.raft.harness import Cluster, history
from zstream.replication import (
    ConfChangeInProgressError,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RaftConfig,
    RaftNode,
    Role,
)

MT = MessageType


def append(
    to: int, frm: int, term: int, prev: tuple[int, int], ents: list[Entry], commit: int = 0
) -> Message:
    return Message(
        MT.APPEND,
        to=to,
        frm=frm,
        term=term,
        index=prev[0],
        log_term=prev[1],
        entries=tuple(ents),
        commit=commit,
    )


def vote(to: int, frm: int, term: int, last: tuple[int, int], pre: bool = False) -> Message:
    return Message(
        MT.PRE_VOTE if pre else MT.VOTE, to=to, frm=frm, term=term, index=last[0], log_term=last[1]
    )


def one_reply(c: Cluster, i: int, type: MessageType) -> Message:
    c.process(i)
    replies = c.take(type, frm=i)
    assert len(replies) == 1, replies
    return replies[0]


def win(c: Cluster, i: int, attempts: int = 3) -> None:
    """Node ``i`` campaigns, exchanging only votes, until it leads (a few terms at most)."""
    for _ in range(attempts):
        c.node(i).campaign()
        for _ in range(2):
            c.process()
            c.deliver_all(MT.VOTE)
            c.deliver_all(MT.VOTE_RESP)
        if c.node(i).role == Role.LEADER:
            return
    raise AssertionError(f"node {i} could not win: {c.roles()}")


# -- 5.1 Raft basics ------------------------------------------------------------------


def test_5_1_nodes_start_as_followers_in_term_0() -> None:
    c = Cluster(voters=(1, 2, 3))
    for i in (1, 2, 3):
        n = c.node(i)
        assert (n.role, n.term, n.vote, n.leader, n.commit) == (Role.FOLLOWER, 0, 0, 0, 0)


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
def test_5_1_a_higher_term_turns_any_role_into_follower(role: Role) -> None:
    c = Cluster(voters=(1, 2, 3))
    if role == Role.CANDIDATE:
        c.node(1).campaign()
        c.process(1)
    elif role == Role.LEADER:
        c.elect(1)
    assert c.node(1).role == role
    c.deliver(append(1, 2, 5, (0, 0), []))
    n = c.node(1)
    assert (n.role, n.term, n.leader) == (Role.FOLLOWER, 5, 2)


def test_5_1_a_stale_term_is_refused_and_answered_with_the_current_term() -> None:
    c = Cluster(voters=(1, 2, 3), logs={1: [1, 3]}, terms={1: 3})
    c.deliver(append(1, 2, 2, (2, 3), history([1, 3, 2])[2:], commit=3))
    n = c.node(1)
    assert (n.term, n.role, n.commit) == (3, Role.FOLLOWER, 0)
    assert c.log(1) == [(1, 1), (2, 3)]
    c.process(1)
    # A reply is optional; if there is one it must teach the stale leader the new term.
    assert all(m.term == 3 for m in c.take(frm=1))


# -- 5.2 Leader election ----------------------------------------------------------------


def test_5_2_a_follower_campaigns_after_its_election_timeout() -> None:
    c = Cluster(voters=(1, 2, 3), election_tick=10)
    c.tick(1, 9)
    assert c.node(1).role == Role.FOLLOWER, "campaigned before election_tick"
    for _ in range(11):  # up to 2 * election_tick - 1 in all
        c.tick(1)
        if c.node(1).role != Role.FOLLOWER:
            break
    n = c.node(1)
    assert (n.role, n.term, n.vote) == (Role.CANDIDATE, 1, 1)
    c.process(1)
    votes = c.take(MT.VOTE)
    assert sorted(m.to for m in votes) == [2, 3]
    assert all((m.term, m.index, m.log_term) == (1, 0, 0) for m in votes)
    assert c.host(1).durable_vote == 1, "vote for self not persisted"


def test_5_2_election_timeouts_are_randomized_in_one_to_two_election_ticks() -> None:
    seen = set()
    for seed in range(40):
        node = RaftNode(
            RaftConfig(id=1, election_tick=10, pre_vote=False, check_quorum=False),
            MemoryStorage(conf_state=ConfState(voters=frozenset({1, 2, 3}))),
            rng=random.Random(seed),
        )
        ticks = 0
        while node.role == Role.FOLLOWER:
            node.tick()
            ticks += 1
            assert ticks < 20, "no campaign within 2 * election_tick"
        seen.add(ticks)
    assert min(seen) >= 10
    assert len(seen) >= 4, f"timeouts barely vary: {sorted(seen)}"


@pytest.mark.parametrize(
    ("size", "granted", "role"),
    [
        (1, set(), Role.LEADER),
        (3, {2}, Role.LEADER),
        (3, {2, 3}, Role.LEADER),
        (3, set(), Role.CANDIDATE),
        (5, {2, 3}, Role.LEADER),
        (5, {2}, Role.CANDIDATE),
    ],
)
def test_5_2_a_candidate_wins_with_votes_from_a_majority(
    size: int, granted: set[int], role: Role
) -> None:
    c = Cluster(voters=range(1, size + 1))
    c.node(1).campaign()
    c.process(1)
    requests = c.take(MT.VOTE)
    assert sorted(m.to for m in requests) == list(range(2, size + 1))
    c.deliver(*(m for m in requests if m.to in granted))
    c.process()
    c.deliver_all(MT.VOTE_RESP)
    assert c.node(1).role == role
    assert c.node(1).term == 1


def test_5_2_a_follower_votes_for_at_most_one_candidate_per_term() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.deliver(vote(1, 2, 1, (0, 0)))
    assert not one_reply(c, 1, MT.VOTE_RESP).reject
    assert c.host(1).durable_vote == 2
    c.deliver(vote(1, 3, 1, (0, 0)))
    assert one_reply(c, 1, MT.VOTE_RESP).reject, "granted a second vote in term 1"
    c.deliver(vote(1, 2, 1, (0, 0)))
    assert not one_reply(c, 1, MT.VOTE_RESP).reject, "a repeated request must be re-granted"


def test_5_2_a_vote_is_durable_before_it_is_sent() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.deliver(vote(1, 2, 1, (0, 0)))
    early = c.begin(1)
    assert c.host(1).durable_vote == 2
    assert not [m for m in early if m.type == MT.VOTE_RESP], "vote sent before it was durable"
    late = c.finish(1)
    assert [m.type for m in late if m.to == 2] == [MT.VOTE_RESP]


def test_5_2_a_candidate_steps_down_for_a_leader_of_its_term() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.node(1).campaign()
    c.process(1)
    c.drop()
    assert c.node(1).role == Role.CANDIDATE
    c.deliver(append(1, 2, 1, (0, 0), []))
    n = c.node(1)
    assert (n.role, n.term, n.leader) == (Role.FOLLOWER, 1, 2)


def test_5_2_a_leader_sends_heartbeats_every_heartbeat_tick() -> None:
    c = Cluster(voters=(1, 2, 3), heartbeat_tick=1)
    c.elect(1)
    c.tick(1)
    c.process(1)
    beats = c.take(frm=1)
    assert sorted(m.to for m in beats if m.type in (MT.HEARTBEAT, MT.APPEND)) == [2, 3]
    assert all(m.term == 1 for m in beats)


# -- 5.3 Log replication ------------------------------------------------------------------


def test_5_3_the_leader_appends_a_proposal_and_replicates_it() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.elect(1)  # the no-op of term 1 is entry 1, committed
    index, data = c.propose(1)
    assert index == 2
    c.process(1)
    sends = c.take(MT.APPEND, frm=1)
    assert sorted(m.to for m in sends) == [2, 3]
    for m in sends:
        assert (m.term, m.index, m.log_term, m.commit) == (1, 1, 1, 1)
        assert [(e.index, e.term, e.data) for e in m.entries] == [(2, 1, data)]


@pytest.mark.parametrize(
    ("acks", "committed"), [((), False), ((2,), False), ((2, 3), True), ((2, 3, 4, 5), True)]
)
def test_5_3_an_entry_commits_once_a_majority_stores_it(
    acks: tuple[int, ...], committed: bool
) -> None:
    c = Cluster(voters=(1, 2, 3, 4, 5))
    c.elect(1)
    index, data = c.propose(1)
    c.process(1)
    c.deliver(*(m for m in c.take(MT.APPEND, frm=1) if m.to in acks))
    c.process()
    c.deliver_all(MT.APPEND_RESP)
    assert (c.node(1).commit >= index) == committed
    c.process(1)
    assert (data in c.applied(1)) == committed


def test_5_3_the_leader_counts_its_own_entry_only_once_it_is_durable() -> None:
    c = Cluster(voters=(1, 2, 3, 4, 5))
    c.elect(1)
    index, _ = c.propose(1)
    c.begin(1)  # the APPENDs leave while the leader's own write is not yet synced
    c.deliver(*(m for m in c.take(MT.APPEND, frm=1) if m.to in (2, 3)))
    c.process(2, 3)
    c.deliver_all(MT.APPEND_RESP)
    assert c.node(1).commit < index, "committed on two followers + an unsynced leader"
    c.finish(1)
    c.process(1)
    assert c.node(1).commit >= index


def test_5_3_a_follower_commits_what_the_leader_says_is_committed() -> None:
    c = Cluster(voters=(1, 2, 3), logs={1: [1, 1, 1]}, terms={1: 1})
    ents = history([1, 1, 1, 1])
    c.deliver(append(1, 2, 1, (3, 1), ents[3:], commit=2))
    assert c.node(1).commit == 2
    c.deliver(append(1, 2, 1, (4, 1), [], commit=9))
    assert c.node(1).commit == 4, "commit is capped by the last entry the leader sent"
    c.process(1)
    assert c.host(1).applied_index == 4


@pytest.mark.parametrize(
    ("prev", "accept"),
    [((0, 0), True), ((1, 1), True), ((2, 2), True), ((2, 1), False), ((3, 2), False)],
)
def test_5_3_a_follower_refuses_an_append_whose_previous_entry_it_lacks(
    prev: tuple[int, int], accept: bool
) -> None:
    c = Cluster(voters=(1, 2, 3), logs={1: [1, 2]}, terms={1: 2})
    c.deliver(append(1, 2, 2, prev, []))
    reply = one_reply(c, 1, MT.APPEND_RESP)
    assert reply.reject == (not accept)
    if accept:
        assert reply.index == prev[0]
    else:
        assert reply.index == prev[0], "a rejection names the rejected index"
        assert reply.reject_hint <= 2


@pytest.mark.parametrize(
    ("prev", "terms", "after"),
    [
        ((2, 2), [3], [1, 2, 3]),  # plain append
        ((1, 1), [3, 4], [1, 3, 4]),  # conflict at 2: truncate from there
        ((0, 0), [1], [1, 2]),  # already there: keep the rest
        ((0, 0), [3], [3]),  # conflict at 1
        ((1, 1), [2], [1, 2]),  # a duplicate of what is stored changes nothing
    ],
)
def test_5_3_a_follower_truncates_only_from_the_first_conflict(
    prev: tuple[int, int], terms: list[int], after: list[int]
) -> None:
    c = Cluster(voters=(1, 2, 3), logs={1: [1, 2]}, terms={1: 2})
    # Same payload format as ``history``: an entry equal to a stored one is identical.
    ents = [
        Entry(t, i, EntryType.NORMAL, b"h%d.%d" % (i, t)) for i, t in enumerate(terms, prev[0] + 1)
    ]
    c.deliver(append(1, 2, 4, prev, ents))
    reply = one_reply(c, 1, MT.APPEND_RESP)
    assert not reply.reject
    assert reply.index == prev[0] + len(ents), "acknowledge prev_index + len(entries)"
    assert [t for _, t in c.log(1)] == after


def test_5_3_a_stale_append_neither_truncates_nor_lowers_the_commit() -> None:
    c = Cluster(voters=(1, 2, 3), logs={1: [1, 1, 1]}, terms={1: 1})
    c.deliver(append(1, 2, 1, (3, 1), [], commit=3))
    assert c.node(1).commit == 3
    c.process(1)
    c.drop()
    # A delayed copy of the leader's first append arrives after the others.
    c.deliver(append(1, 2, 1, (0, 0), history([1]), commit=1))
    assert c.log(1) == [(1, 1), (2, 1), (3, 1)]
    assert c.node(1).commit == 3
    reply = one_reply(c, 1, MT.APPEND_RESP)
    assert not reply.reject
    assert reply.index in (1, 3)  # prev + len(entries), or what it knows matches


FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7 = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FIGURE_7))
def test_5_3_figure_7_the_leader_brings_every_follower_log_into_line(case: str) -> None:
    c = Cluster(
        voters=(1, 2, 3),
        logs={1: FIGURE_7_LEADER, 2: FIGURE_7[case]},
        terms={1: 8, 2: 7, 3: 7},
    )
    c.elect(1)  # node 3 (empty log) votes for it
    assert c.node(1).term == 9
    c.propose(1)
    c.stabilize()
    want = [(i, t) for i, t in enumerate([*FIGURE_7_LEADER, 9, 9], 1)]
    assert c.log(1) == want
    assert c.log(2) == want
    assert c.log(3) == want
    assert c.node(2).commit == c.node(1).commit == 12


def test_5_3_the_leader_commits_the_entries_of_earlier_terms_with_its_own() -> None:
    c = Cluster(voters=(1, 2, 3), logs={1: [1, 2, 2], 2: [1, 2]}, terms={1: 2, 2: 2})
    c.elect(1)
    c.stabilize()
    assert c.node(1).commit == 4
    assert [t for t, _, _ in c.host(1).state] == [1, 2, 2, 3]
    assert c.host(2).state == c.host(1).state


# -- 5.4 Safety -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log", "last", "grant"),
    [
        ([1], (1, 1), True),
        ([1], (2, 1), True),
        ([1, 1], (1, 1), False),  # same last term, shorter log
        ([1, 1], (1, 2), True),
        ([1, 1], (3, 2), True),
        ([2], (1, 1), False),  # lower last term
        ([2], (5, 1), False),  # lower last term, however long
    ],
)
def test_5_4_1_a_voter_refuses_a_candidate_with_a_less_up_to_date_log(
    log: list[int], last: tuple[int, int], grant: bool
) -> None:
    c = Cluster(voters=(1, 2, 3), logs={1: log}, terms={1: 2})
    c.deliver(vote(1, 2, 3, last))
    reply = one_reply(c, 1, MT.VOTE_RESP)
    assert reply.reject == (not grant)
    assert reply.term == 3


def test_5_4_1_a_vote_request_carries_the_candidates_last_entry() -> None:
    c = Cluster(voters=(1, 2, 3), logs={1: [1, 1, 2]}, terms={1: 2})
    c.node(1).campaign()
    c.process(1)
    for m in c.take(MT.VOTE):
        assert (m.term, m.index, m.log_term) == (3, 3, 2)


def test_5_4_2_figure_8_a_leader_does_not_commit_an_old_entry_by_counting_replicas() -> None:
    # Node 1 leads term 3 with an entry of term 2 that it did not commit.
    c = Cluster(voters=(1, 2, 3), logs={1: [1, 2]}, terms={1: 2})
    c.node(1).campaign()
    c.process(1)
    c.deliver_all(MT.VOTE)
    c.process()
    c.deliver_all(MT.VOTE_RESP)
    assert (c.node(1).role, c.node(1).term) == (Role.LEADER, 3)
    c.process(1)
    c.drop()
    # Followers acknowledge entry 2 (of term 2): a majority stores it, yet no commit.
    for f in (2, 3):
        c.deliver(Message(MT.APPEND_RESP, to=1, frm=f, term=3, index=2))
    c.process(1)
    assert c.node(1).commit == 0, "an entry of an earlier term committed by counting"
    # Once the leader's own no-op (entry 3, term 3) is on a majority, 1..3 commit.
    c.deliver(Message(MT.APPEND_RESP, to=1, frm=2, term=3, index=3))
    c.process(1)
    assert c.node(1).commit == 3


def test_figure_8_the_paper_scenario_never_loses_a_committed_entry() -> None:
    # S1..S5; max_size_per_msg=1 sends one entry per append so that S1 can get its
    # old entry onto a majority without its own no-op (the paper's step c).
    c = Cluster(voters=(1, 2, 3, 4, 5), max_size_per_msg=1, max_inflight_msgs=1)
    c.elect(1)
    # (a) S1 leads; entry 2 reaches only S2.
    c.partition([1, 2], [3], [4], [5])
    idx2, data2 = c.propose(1)
    c.stabilize()
    assert c.log(2)[-1] == (idx2, c.node(1).term)
    old_term = c.node(1).term
    # (b) S1 crashes; S5 wins with S3 and S4 and stores its own entry 2 alone.
    c.crash(1)
    c.partition([3, 4, 5], [2])
    win(c, 5)
    c.process(5)
    c.drop()
    assert c.log(5)[-1] == (2, c.node(5).term)
    c.crash(5)
    # (c) S1 restarts, wins in a later term with S2, S3, S4 and copies entry 2 to S3.
    c.restart(1)
    c.heal()
    c.partition([1, 2, 3, 4], [5])
    win(c, 1)
    # Let only entry 2 (not S1's new no-op) through to S2 and S3.
    for _ in range(10):
        c.process()
        for m in c.take(frm=1):
            if m.to in (2, 3):
                c.deliver(
                    dataclasses.replace(m, entries=tuple(e for e in m.entries if e.index <= 2))
                )
        c.process(2, 3)
        c.deliver_all(MT.APPEND_RESP)
        c.drop()
        if (2, old_term) in c.log(3):
            break
    assert (2, old_term) in c.log(3)
    c.process(1)
    assert c.node(1).commit < 2, "entry 2 of an old term committed on a majority of replicas"
    # (d) S1 crashes; S5 comes back, wins and overwrites entry 2 everywhere: legal,
    # because it was never committed (the checker would flag it otherwise).
    c.crash(1)
    c.restart(5)
    c.heal()
    c.partition([2, 3, 4, 5], [1])
    win(c, 5)
    c.stabilize()
    c.propose(5)
    c.stabilize()
    assert c.log(3)[1][1] != old_term
    assert data2 not in c.applied(5)


# -- 6 Cluster membership changes ---------------------------------------------------------


def test_6_a_new_voter_catches_up_and_then_counts_toward_commit() -> None:
    c = Cluster(voters=(1, 2, 3), blank=(4,))
    c.elect(1)
    for _ in range(3):
        c.propose(1)
    c.change(1, (ConfChangeType.ADD_VOTER, 4))
    c.stabilize()
    assert c.node(1).conf_state.voters == {1, 2, 3, 4}
    assert c.node(4).conf_state.voters == {1, 2, 3, 4}
    assert c.log(4) == c.log(1)
    # With 4 voters a commit needs 3 of them: 1, 2 and the newcomer 4 suffice.
    c.isolate(3)
    index, data = c.propose(1)
    c.stabilize()
    assert c.node(1).commit >= index
    assert data in c.applied(4)


def test_6_joint_consensus_needs_a_majority_of_both_configurations() -> None:
    c = Cluster(voters=(1, 2, 3), blank=(4,), pre_vote=True)
    c.elect(1)
    # Replace 3 by 4: a joint configuration C_old,new = {1,2,3} and {1,2,4}.
    c.change(1, (ConfChangeType.ADD_VOTER, 4), (ConfChangeType.REMOVE_NODE, 3))
    for _ in range(20):
        c.process()
        c.deliver_all()
        if c.node(1).conf_state.voters_outgoing:
            break
    cs = c.node(1).conf_state
    assert cs.voters_outgoing == {1, 2, 3}, cs
    assert cs.voters == {1, 2, 4}
    # Only 1 and 3 answer: a majority of the old configuration, not of the new.
    c.partition([1, 3], [2], [4])
    index, _ = c.propose(1)
    c.stabilize()
    assert c.node(1).commit < index, "committed without a majority of C_new"
    # 4 is reachable again: {1, 3} of C_old and {1, 4} of C_new.
    c.partition([1, 3, 4], [2])
    c.run(5)
    assert c.node(1).commit >= index
    # Leaving the joint configuration is automatic.
    c.heal()
    c.stabilize()
    c.run(3)
    final = c.node(1).conf_state
    assert final.voters == {1, 2, 4}
    assert not final.voters_outgoing


def test_6_only_one_configuration_change_is_in_flight() -> None:
    c = Cluster(voters=(1, 2, 3), blank=(4, 5))
    c.elect(1)
    c.change(1, (ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(ConfChangeInProgressError):
        c.change(1, (ConfChangeType.ADD_LEARNER, 5))
    c.stabilize()
    c.change(1, (ConfChangeType.ADD_LEARNER, 5))  # the first one is applied: accepted
    c.stabilize()
    assert c.node(1).conf_state.learners == {4, 5}


def test_6_a_leader_removed_from_the_configuration_steps_down() -> None:
    c = Cluster(voters=(1, 2, 3))
    c.elect(1)
    c.change(1, (ConfChangeType.REMOVE_NODE, 1))
    c.stabilize()
    assert c.node(1).conf_state.voters == {2, 3}
    assert c.node(1).role != Role.LEADER
    c.crash(1)
    c.run(40)
    leader = c.leader_id()
    assert leader in (2, 3)
    assert c.node(2).conf_state.voters == {2, 3}
    _, data = c.propose(leader)
    c.stabilize()
    assert data in c.applied(2)
    assert data in c.applied(3)


def test_6_a_learner_receives_the_log_but_neither_votes_nor_counts() -> None:
    c = Cluster(voters=(1, 2, 3), learners=(4,))
    c.elect(1)
    index, data = c.propose(1)
    c.stabilize()
    assert data in c.applied(4)
    # The learner never campaigns, however long it waits.
    c.isolate(4)
    c.tick(4, 100)
    assert c.node(4).role == Role.FOLLOWER
    # Its acknowledgement does not make a majority: 1 + learner 4 of voters {1,2,3}.
    c.partition([1, 4], [2], [3])
    index, data = c.propose(1)
    c.stabilize()
    assert c.node(1).commit < index
    assert c.node(4).last_index >= index
