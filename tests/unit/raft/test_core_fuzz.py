"""Property test: arbitrary sequences of ticks, proposals and messages from peers never
crash the core with anything but its own invariant error (RaftError) for messages no
correct peer could send, and never leak a storage error."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from zstream.replication import (
    CompactedError,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    RaftConfig,
    RaftError,
    RaftNode,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)

CONF = ConfState(voters=frozenset({1, 2, 3}))
small = st.integers(min_value=0, max_value=8)


@st.composite
def peer_messages(draw: st.DrawFn) -> Message:
    mtype = draw(st.sampled_from(MessageType))
    term = draw(small)
    index = draw(small)
    n = draw(st.integers(0, 3))
    ents = tuple(
        Entry(draw(st.integers(0, term)), index + 1 + i, EntryType.NORMAL, b"d") for i in range(n)
    )
    snap = None
    if mtype == MessageType.SNAPSHOT:
        snap = Snapshot(SnapshotMetadata(draw(small), draw(small), CONF), b"")
    return Message(
        mtype,
        1,
        draw(st.sampled_from([2, 3])),
        term,
        log_term=draw(small),
        index=index,
        entries=ents,
        commit=draw(small),
        reject=draw(st.booleans()),
        reject_hint=draw(small),
        snapshot=snap,
        context=draw(st.sampled_from([b"", b"transfer", bytes(8)])),
    )


actions = st.lists(
    st.one_of(
        peer_messages(),
        st.just("tick"),
        st.just("propose"),
        st.just("campaign"),
        st.just("ready"),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(actions, st.booleans())
def test_random_inputs_never_crash_the_core(seq: list[object], pre_vote: bool) -> None:
    st_ = MemoryStorage(conf_state=CONF)
    node = RaftNode(
        RaftConfig(id=1, election_tick=3, pre_vote=pre_vote, check_quorum=pre_vote),
        st_,
        rng=random.Random(0),
    )
    for act in seq:
        try:
            if act == "tick":
                node.tick()
            elif act == "propose":
                node.propose(b"p")
            elif act == "campaign":
                node.campaign()
            elif act == "ready":
                rd = node.ready()
                if rd.snapshot is not None:
                    st_.apply_snapshot(rd.snapshot)
                st_.append(rd.entries)
                if rd.hard_state is not None:
                    st_.set_hard_state(rd.hard_state)
                node.advance(rd)
            else:
                assert isinstance(act, Message)
                node.step(act)
        except (NotLeaderError, ProposalDroppedError):
            pass
        except (CompactedError, UnavailableError):
            raise
        except RaftError:
            # Only a message contradicting a committed entry may trip the core's
            # invariant check; a correct peer never sends one.
            assert isinstance(act, Message)
        assert node.commit <= node.last_index
