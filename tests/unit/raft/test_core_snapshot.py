"""Snapshots: a follower behind the leader's compacted log is caught up by a snapshot;
Figure 13's rule decides whether the log after the snapshot survives."""

from __future__ import annotations

from tests.unit.raft.corenet import Net
from zstream.replication import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    ProgressState,
    Snapshot,
    SnapshotMetadata,
)


def test_lagging_follower_is_caught_up_by_a_snapshot() -> None:
    net = Net()
    net.elect(1)
    net.down.add(3)
    net[1].propose_batch([b"e%d" % i for i in range(10)])
    net.stabilize()
    net.tick_stabilize(1)
    st = net.storage[1]
    applied = net[1].applied
    st.create_snapshot(applied, net[1].conf_state, b"state@%d" % applied)
    st.compact(applied)
    net.down.discard(3)
    sent: list[Message] = []

    def spy(m: Message) -> bool:
        if m.type == MessageType.SNAPSHOT:
            sent.append(m)
        return True

    for _ in range(3):
        net.tick()
        net.stabilize(keep=spy)
    assert len(sent) == 1
    snap = sent[0].snapshot
    assert snap is not None
    assert snap.metadata.index == applied
    assert net.storage[3].snapshot().data == b"state@%d" % applied
    assert net[3].commit == applied
    assert net[1].progress(3) == (applied, applied + 1, ProgressState.REPLICATE)
    net[1].propose(b"after")
    net.stabilize()
    net.tick_stabilize(1)
    assert net.data(3) == [b"after"]  # applied after the snapshot
    assert net[3].conf_state == net[1].conf_state


def test_snapshot_whose_last_entry_is_in_the_log_keeps_the_suffix() -> None:
    net = Net()
    node = net[2]
    ents = tuple(Entry(1, i, EntryType.NORMAL, b"%d" % i) for i in range(1, 6))
    node.step(Message(MessageType.APPEND, 2, 1, term=1, index=0, log_term=0, entries=ents))
    net.process(ids=(2,))
    net.queue.clear()
    conf = ConfState(voters=frozenset({1, 2, 3}))
    snap = Snapshot(SnapshotMetadata(3, 1, conf), b"s")
    node.step(Message(MessageType.SNAPSHOT, 2, 1, term=1, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot is None  # Figure 13: matching entry, keep the log
    assert node.last_index == 5
    assert node.commit == 3
    # Only the snapshot's index is acknowledged: entries 4..5 may differ from the
    # leader's.
    (ack,) = [m for m in rd.messages_after_append if m.type == MessageType.APPEND_RESP]
    assert (ack.index, ack.reject) == (3, False)


def test_snapshot_with_a_different_term_replaces_the_log() -> None:
    net = Net()
    node = net[2]
    ents = tuple(Entry(1, i, EntryType.NORMAL, b"%d" % i) for i in range(1, 6))
    node.step(Message(MessageType.APPEND, 2, 1, term=1, index=0, log_term=0, entries=ents))
    net.process(ids=(2,))
    net.queue.clear()
    conf = ConfState(voters=frozenset({1, 2, 3, 4}))
    snap = Snapshot(SnapshotMetadata(4, 2, conf), b"s")
    node.step(Message(MessageType.SNAPSHOT, 2, 3, term=2, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot == snap
    assert rd.must_sync
    assert node.last_index == 4
    assert node.commit == 4
    assert node.conf_state == conf
    (ack,) = rd.messages_after_append
    assert (ack.type, ack.index, ack.reject) == (MessageType.APPEND_RESP, 4, False)


def test_stale_snapshot_is_acknowledged_with_the_commit_index() -> None:
    net = Net()
    node = net[2]
    ents = tuple(Entry(1, i, EntryType.NORMAL, b"") for i in range(1, 6))
    node.step(
        Message(MessageType.APPEND, 2, 1, term=1, index=0, log_term=0, entries=ents, commit=5)
    )
    net.process(ids=(2,))
    net.queue.clear()
    snap = Snapshot(SnapshotMetadata(3, 1, ConfState(voters=frozenset({1, 2, 3}))), b"")
    node.step(Message(MessageType.SNAPSHOT, 2, 1, term=1, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot is None
    assert [m.index for m in rd.messages_after_append] == [5]


def test_lost_snapshot_is_sent_again() -> None:
    net = Net()
    net.elect(1)
    net.down.add(3)
    net[1].propose_batch([b"x"] * 5)
    net.stabilize()
    st = net.storage[1]
    st.create_snapshot(net[1].applied, net[1].conf_state, b"s")
    st.compact(net[1].applied)
    net.down.discard(3)
    sent = 0

    def drop_snapshots(m: Message) -> bool:
        nonlocal sent
        if m.type == MessageType.SNAPSHOT:
            sent += 1
            return sent > 1  # the first one is lost
        return True

    for _ in range(3 * 10):
        net.tick()
        net.stabilize(keep=drop_snapshots)
    assert sent == 2
    assert net[3].commit == net[1].commit


def test_node_can_campaign_while_a_received_snapshot_is_being_persisted() -> None:
    net = Net(pre_vote=False)
    node = net[2]
    conf = ConfState(voters=frozenset({1, 2, 3}))
    snap = Snapshot(SnapshotMetadata(10, 1, conf), b"s")
    node.step(Message(MessageType.SNAPSHOT, 2, 1, term=1, snapshot=snap))
    rd = node.ready()  # the host is still installing it: no advance yet
    assert rd.snapshot == snap
    node.campaign()
    assert node.role.name == "CANDIDATE"
    assert node.term == 2
    net.storage[2].apply_snapshot(snap)
    node.advance(rd)
    assert node.applied == 10
