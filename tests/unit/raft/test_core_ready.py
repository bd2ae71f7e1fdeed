"""The Ready/advance contract, restarts from storage, RaftConfig validation and
MemoryStorage."""

from __future__ import annotations

import pytest

from tests.unit.raft.corenet import Net
from zstream.replication import (
    CompactedError,
    ConfigError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RaftConfig,
    RaftNode,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    UnavailableError,
)

CONF = ConfState(voters=frozenset({1, 2, 3}))


def test_fresh_node_has_nothing_ready() -> None:
    node = RaftNode(RaftConfig(id=1), MemoryStorage(conf_state=CONF))
    assert not node.has_ready()
    assert node.role == Role.FOLLOWER
    assert (node.term, node.vote, node.commit, node.leader) == (0, 0, 0, 0)


def test_campaign_ready_persists_term_and_vote_before_sending() -> None:
    node = RaftNode(RaftConfig(id=1, pre_vote=False), MemoryStorage(conf_state=CONF))
    node.campaign()
    assert node.has_ready()
    rd = node.ready()
    assert rd.soft_state == SoftState(0, Role.CANDIDATE)
    assert rd.hard_state == HardState(1, 1, 0)
    assert rd.must_sync
    assert sorted(m.to for m in rd.messages if m.type == MessageType.VOTE) == [2, 3]
    node.advance(rd)
    assert not node.has_ready()


def test_pre_vote_does_not_need_a_sync() -> None:
    node = RaftNode(RaftConfig(id=1, pre_vote=True), MemoryStorage(conf_state=CONF))
    node.campaign()
    rd = node.ready()
    assert rd.hard_state is None
    assert not rd.must_sync
    assert all(m.type == MessageType.PRE_VOTE and m.term == 1 for m in rd.messages)


def test_commit_only_change_does_not_need_a_sync() -> None:
    net = Net()
    net.elect(1)
    net.stabilize()
    net[1].propose(b"x")
    net.process(ids=(1,))
    net.deliver()
    net.process(ids=(2, 3))
    net.deliver()
    rd = net[1].ready()
    assert rd.hard_state is not None
    assert rd.hard_state.commit == 2
    assert not rd.must_sync
    assert [e.data for e in rd.committed_entries] == [b"x"]


def test_follower_acknowledges_appends_only_after_persisting() -> None:
    net = Net()
    net.elect(1)
    net.stabilize()
    net[1].propose(b"x")
    net.process(ids=(1,))
    net.deliver()
    rd = net[2].ready()
    assert [e.data for e in rd.entries] == [b"x"]
    assert rd.must_sync
    assert [m.type for m in rd.messages_after_append] == [MessageType.APPEND_RESP]
    assert rd.messages == []


def test_entries_are_handed_out_once_even_without_advance() -> None:
    net = Net()
    net.elect(1)
    net.stabilize()
    net[1].propose(b"x")
    rd1 = net[1].ready()
    net[1].propose(b"y")
    rd2 = net[1].ready()
    assert [e.data for e in rd1.entries] == [b"x"]
    assert [e.data for e in rd2.entries] == [b"y"]


def test_committed_entries_per_ready_are_bounded_by_bytes() -> None:
    net = Net(voters=(1,), max_committed_size_per_ready=250)
    net.elect(1)
    net[1].propose_batch([b"x" * 100] * 6)
    sizes: list[int] = []
    for _ in range(10):
        if not net[1].has_ready():
            break
        rd = net[1].ready()
        net.storage[1].append(rd.entries)
        sizes.append(sum(len(e.data) for e in rd.committed_entries))
        net[1].advance(rd)
    assert sum(sizes) == 600
    assert max(sizes) <= 250


def test_restart_recovers_term_vote_commit_and_log() -> None:
    net = Net()
    net.elect(1)
    net[1].propose_batch([b"a", b"b"])
    net.stabilize()
    net.tick_stabilize(1)
    term, last, commit = net[2].term, net[2].last_index, net[2].commit
    net.restart(2)
    node = net[2]
    assert (node.term, node.vote, node.last_index, node.commit) == (term, 1, last, commit)
    assert node.applied == commit
    assert not node.has_ready() or node.ready().committed_entries == []


def test_restart_with_applied_zero_replays_committed_entries() -> None:
    st = MemoryStorage(conf_state=CONF)
    ents = [Entry(1, i, EntryType.NORMAL, b"%d" % i) for i in range(1, 4)]
    st.append(ents)
    st.set_hard_state(HardState(1, 1, 2))
    node = RaftNode(RaftConfig(id=2), st)
    rd = node.ready()
    assert rd.committed_entries == ents[:2]
    assert rd.entries == []
    node.advance(rd)
    assert node.applied == 2


def test_deterministic_given_the_seed() -> None:
    def run(seed: int) -> list[tuple[int, int]]:
        net = Net(pre_vote=True, check_quorum=True, seed=seed)
        out = []
        for _ in range(60):
            net.tick()
            net.stabilize()
            out.append((net[1].term, net[1].leader))
        return out

    assert run(3) == run(3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"id": 0},
        {"id": 1, "election_tick": 1, "heartbeat_tick": 1},
        {"id": 1, "heartbeat_tick": 0},
        {"id": 1, "max_size_per_msg": 0},
        {"id": 1, "max_inflight_msgs": 0},
        {"id": 1, "max_inflight_bytes": 0},
        {"id": 1, "applied": -1},
        {"id": 1, "max_committed_size_per_ready": 0},
    ],
)
def test_config_rejects_nonsense(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        RaftConfig(**kwargs)


def test_messages_for_someone_else_are_ignored() -> None:
    net = Net()
    net.elect(1)
    net.stabilize()
    before = (net[2].term, net[2].last_index)
    net[2].step(Message(MessageType.APPEND, 3, 1, term=9, index=0))
    net[2].step(Message(MessageType.VOTE, 2, 2, term=9))
    assert (net[2].term, net[2].last_index) == before


# -- MemoryStorage ---------------------------------------------------------------------


def _ents(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, b"x" * size) for i in range(lo, hi)]


def test_memory_storage_ranges_and_limits() -> None:
    st = MemoryStorage(conf_state=CONF)
    assert (st.first_index(), st.last_index(), st.term(0)) == (1, 0, 0)
    st.append(_ents(1, 11))
    assert len(st.entries(1, 11, 35)) == 3
    assert len(st.entries(1, 11, 1)) == 1  # at least one
    assert st.entries(3, 3, 100) == []
    with pytest.raises(UnavailableError):
        st.entries(5, 13, 100)
    with pytest.raises(UnavailableError):
        st.term(11)
    st.append(_ents(5, 7, term=2))  # truncates the conflicting suffix
    assert st.last_index() == 6
    assert st.term(6) == 2
    snap = st.create_snapshot(4, CONF, b"s")
    st.compact(4)
    assert (st.first_index(), st.term(4), st.snapshot()) == (5, 1, snap)
    with pytest.raises(CompactedError):
        st.entries(4, 6, 100)
    with pytest.raises(CompactedError):
        st.term(3)
    with pytest.raises(UnavailableError):
        st.append(_ents(9, 10))  # a gap
    assert st.initial_state() == (HardState(), CONF)


def test_memory_storage_apply_snapshot_replaces_the_log() -> None:
    st = MemoryStorage(conf_state=CONF)
    st.append(_ents(1, 6))
    conf = ConfState(voters=frozenset({1, 2}))
    st.apply_snapshot(Snapshot(SnapshotMetadata(10, 3, conf), b"d"))
    assert (st.first_index(), st.last_index(), st.term(10)) == (11, 10, 3)
    assert st.initial_state()[1] == conf
    st.apply_snapshot(Snapshot(SnapshotMetadata(8, 3, conf), b"old"))  # older: ignored
    assert st.snapshot().data == b"d"
