"""Log replication: commitment, batching and pipelining, in-flight limits, progress
states, fast backtracking, follower truncation and the Figure 8 commit rule."""

from __future__ import annotations

import pytest

from tests.unit.raft.corenet import Net
from zstream.replication import (
    Entry,
    EntryType,
    Message,
    MessageType,
    NotLeaderError,
    ProgressState,
)


def appends(net: Net, to: int | None = None) -> list[Message]:
    return [m for m in net.queue if m.type == MessageType.APPEND and (to is None or m.to == to)]


def test_proposals_commit_and_apply_in_order_on_every_node() -> None:
    net = Net()
    net.elect(1)
    first = net[1].propose_batch([b"a", b"b", b"c"])
    assert first == 2
    assert net[1].propose(b"d") == 5
    net.stabilize()
    net.tick_stabilize(1)  # a heartbeat carries the final commit index
    for i in (1, 2, 3):
        assert net.data(i) == [b"a", b"b", b"c", b"d"]
        assert net[i].commit == 5


def test_follower_refuses_proposals_with_a_leader_hint() -> None:
    net = Net()
    net.elect(1)
    with pytest.raises(NotLeaderError) as err:
        net[2].propose(b"x")
    assert err.value.leader_hint == 1
    assert err.value.retriable


def test_leader_counts_its_own_log_only_once_persisted() -> None:
    net = Net()
    net.elect(1)
    net.down.add(3)
    leader = net[1]
    leader.propose(b"x")
    rd = leader.ready()  # the leader's own entries: not yet advanced
    assert [e.data for e in rd.entries] == [b"x"]
    for m in rd.messages:
        if m.to == 2:
            net[2].step(m)
    net.process(ids=(2,))
    for m in net.queue:
        if m.to == 1:
            leader.step(m)
    net.queue.clear()
    # Follower 2 acknowledged, but 1 of 2 needed acks is the leader's own, not durable.
    assert leader.commit == 1
    net.storage[1].append(rd.entries)
    leader.advance(rd)
    assert leader.commit == 2


def test_appends_are_pipelined_and_batched_in_replicate_state() -> None:
    net = Net()
    net.elect(1)
    net[1].propose(b"a")
    net[1].propose(b"b")
    net.process(ids=(1,))
    # Two APPENDs in flight to each follower without waiting for acknowledgements.
    assert len(appends(net, to=2)) == 2
    assert net[1].progress(2) == (1, 4, ProgressState.REPLICATE)


def test_in_flight_window_is_limited_by_message_count() -> None:
    net = Net(max_inflight_msgs=2)
    net.elect(1)
    for d in (b"a", b"b", b"c", b"d"):
        net[1].propose(d)
    net.process(ids=(1,))
    assert len([m for m in appends(net, to=2) if m.entries]) == 2
    net.stabilize()
    net.tick_stabilize(1)
    assert net.data(2) == [b"a", b"b", b"c", b"d"]


def test_in_flight_window_is_limited_by_bytes() -> None:
    net = Net(max_inflight_bytes=1000)
    net.elect(1)
    for _ in range(5):
        net[1].propose(b"x" * 600)
    net.process(ids=(1,))
    assert len([m for m in appends(net, to=2) if m.entries]) == 2
    net.stabilize()
    assert len(net.data(2)) == 5


def test_messages_respect_max_size_but_carry_at_least_one_entry() -> None:
    net = Net(max_size_per_msg=250)
    net.elect(1)
    net.queue.clear()
    net[1].propose_batch([b"x" * 100] * 5 + [b"y" * 1000])
    net.process(ids=(1,))
    sizes = [[len(e.data) for e in m.entries] for m in appends(net, to=2)]
    assert sizes == [[100, 100], [100, 100], [100], [1000]]


def test_probe_state_sends_one_append_until_answered() -> None:
    net = Net()
    net.down.add(3)
    net.elect(1)
    assert net[1].progress(3) == (0, 1, ProgressState.PROBE)
    for d in (b"a", b"b", b"c"):
        net[1].propose(d)
    net.process(ids=(1,))
    # 3 never answered the APPEND sent on election: nothing more goes to it.
    assert appends(net, to=3) == []
    assert len(appends(net, to=2)) == 3
    net.stabilize()
    net.down.discard(3)
    net.tick_stabilize(2)
    assert net.data(3) == [b"a", b"b", b"c"]
    assert net[1].progress(3) == (4, 5, ProgressState.REPLICATE)


def test_fast_backtracking_skips_a_long_divergent_tail_in_few_round_trips() -> None:
    net = Net(pre_vote=False)
    net.elect(1)
    net.stabilize()
    # 1 leads term 1 and appends 50 entries that only it gets.
    net.isolate(1)
    net[1].propose_batch([b"old"] * 50)
    net.stabilize()
    # 2 leads term 2 with 3 and commits 20 entries.
    net.elect(2)
    net[2].propose_batch([b"new"] * 20)
    net.stabilize()
    net.heal()
    rejections = 0

    def count(m: Message) -> bool:
        nonlocal rejections
        if m.type == MessageType.APPEND_RESP and m.reject:
            rejections += 1
        return True

    net.tick_stabilize(3)
    net.stabilize(keep=count)
    for _ in range(3):
        net.tick()
        net.stabilize(keep=count)
    assert net.data(1)[-20:] == [b"new"] * 20
    assert b"old" not in net.data(1)
    assert rejections <= 3


def test_follower_truncates_only_from_the_first_conflict() -> None:
    net = Net()
    node = net[2]
    e = [Entry(1, i, EntryType.NORMAL, b"%d" % i) for i in range(1, 6)]
    node.step(Message(MessageType.APPEND, 2, 1, term=1, index=0, log_term=0, entries=tuple(e)))
    net.process(ids=(2,))
    assert node.last_index == 5
    # A reordered, older APPEND (a prefix) must not truncate anything.
    node.step(Message(MessageType.APPEND, 2, 1, term=1, index=0, log_term=0, entries=tuple(e[:2])))
    net.process(ids=(2,))
    assert node.last_index == 5
    acks = [m.index for m in net.queue if m.type == MessageType.APPEND_RESP]
    assert acks == [5, 2]  # prev_index + len(entries)
    # A new leader's conflicting tail from index 4 replaces only 4..5.
    new = (Entry(2, 4, EntryType.NORMAL, b"n4"),)
    node.step(Message(MessageType.APPEND, 2, 3, term=2, index=3, log_term=1, entries=new))
    rd = node.ready()
    assert [x.index for x in rd.entries] == [4]
    assert node.last_index == 4


def test_follower_never_truncates_committed_entries() -> None:
    net = Net()
    node = net[2]
    e = tuple(Entry(1, i, EntryType.NORMAL, b"") for i in range(1, 4))
    node.step(Message(MessageType.APPEND, 2, 1, term=1, index=0, log_term=0, entries=e, commit=3))
    assert node.commit == 3
    # A stale APPEND from below the commit index is answered with the commit index.
    node.step(Message(MessageType.APPEND, 2, 1, term=1, index=1, log_term=1, entries=e[1:2]))
    net.process(ids=(2,))
    resp = [m for m in net.queue if m.type == MessageType.APPEND_RESP]
    assert resp[-1].index == 3
    assert not resp[-1].reject
    # Even a conflicting entry at a committed index is never written.
    bad = (Entry(2, 3, EntryType.NORMAL, b"x"),)
    node.step(Message(MessageType.APPEND, 2, 1, term=2, index=2, log_term=1, entries=bad))
    assert node.ready().entries == []
    assert net.storage[2].term(3) == 1


def test_rejection_carries_a_conflict_hint() -> None:
    net = Net()
    node = net[2]
    e = tuple(Entry(1, i, EntryType.NORMAL, b"") for i in range(1, 4))
    node.step(Message(MessageType.APPEND, 2, 1, term=1, index=0, log_term=0, entries=e))
    net.process(ids=(2,))
    net.queue.clear()
    node.step(Message(MessageType.APPEND, 2, 1, term=3, index=10, log_term=3))
    net.process(ids=(2,))
    (resp,) = [m for m in net.queue if m.type == MessageType.APPEND_RESP]
    assert resp.reject
    assert resp.index == 10
    assert (resp.reject_hint, resp.log_term) == (3, 1)


def test_figure_8_leader_does_not_commit_old_term_entries_by_counting() -> None:
    # An entry of an older term that a later leader replicates to a majority is not
    # committed by counting replicas; it commits with the leader's own term's entry.
    net = Net(voters=(1, 2, 3, 4, 5))
    net.elect(1)
    net.stabilize()
    base = net[1].commit
    net.isolate(1)
    net[1].propose(b"old")  # term 1, index base+1, only on 1
    net.process(ids=(1,))
    net.queue.clear()
    # 1 learns of a higher term and steps down, then wins a later term with the votes
    # of 3 and 4, still cut off from 2 and 5.
    net[1].step(Message(MessageType.APPEND_RESP, 1, 2, term=2))
    assert net[1].role.name == "FOLLOWER"
    net.heal()
    for j in (2, 5):
        net.cut |= {(1, j), (j, 1)}
    net[1].campaign()
    net.stabilize(keep=lambda m: m.type != MessageType.APPEND)  # votes only
    leader = net[1]
    assert leader.role.name == "LEADER"
    # Deliver only the term-1 entry (not the new term's no-op) to 3 and 4, so that
    # "old" is on a majority.
    old_index = base + 1
    (old,) = net.storage[1].entries(old_index, old_index + 1, 1 << 20)
    for j in (3, 4):
        net[j].step(
            Message(
                MessageType.APPEND,
                j,
                1,
                term=leader.term,
                index=base,
                log_term=1,
                entries=(old,),
                commit=leader.commit,
            )
        )
    net.process(ids=(3, 4))
    net.deliver(keep=lambda m: m.to == 1)
    # The old entry is on 1, 3 and 4 (a majority of 5) but it is of term 1: no commit.
    assert leader.commit < old_index
    leader.propose(b"new")
    net.stabilize()
    assert leader.role.name == "LEADER"
    assert leader.commit == old_index + 2  # committed with the term's own entries


@pytest.mark.parametrize("window", [{"max_inflight_bytes": 250}, {"max_inflight_msgs": 1}])
def test_followers_learn_the_commit_index_without_waiting_for_a_heartbeat(
    window: dict[str, int],
) -> None:
    net = Net(max_size_per_msg=100, **window)
    net.elect(1)
    net.stabilize()
    for _ in range(6):
        net[1].propose(b"x" * 100)
    net.stabilize()  # no tick: no heartbeat
    assert net[1].commit == net[1].last_index
    assert [net[i].commit for i in (2, 3)] == [net[1].commit] * 2
