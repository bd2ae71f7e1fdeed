"""The replication codec: round trips, the zero-copy wire split, and fuzzing (any bytes
either decode or raise CodecError)."""

from __future__ import annotations

from collections.abc import Callable

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zstream.replication import (
    CodecError,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    decode_conf_change,
    decode_conf_state,
    decode_hard_state,
    decode_message,
    encode_conf_change,
    encode_conf_state,
    encode_hard_state,
    encode_message,
    message_from_wire,
    message_to_wire,
)

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
small = st.integers(min_value=0, max_value=1 << 40)
ids = st.frozensets(st.integers(min_value=1, max_value=1000), max_size=5)
conf_states = st.builds(ConfState, ids, ids, ids, ids, st.booleans())
entries = st.builds(Entry, small, small, st.sampled_from(EntryType), st.binary(max_size=64))
snapshots = st.builds(
    Snapshot, st.builds(SnapshotMetadata, small, small, conf_states), st.binary(max_size=64)
)
messages = st.builds(
    Message,
    st.sampled_from(MessageType),
    u64,
    u64,
    u64,
    log_term=u64,
    index=u64,
    entries=st.lists(entries, max_size=5).map(tuple),
    commit=u64,
    reject=st.booleans(),
    reject_hint=u64,
    snapshot=st.none() | snapshots,
    context=st.binary(max_size=16),
)


@given(messages)
def test_message_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


@given(messages)
def test_wire_split_round_trip_with_memoryview_payloads(msg: Message) -> None:
    header, payloads = message_to_wire(msg)
    assert payloads == [e.data for e in msg.entries]
    # The header goes through msgpack on its own; payloads travel as separate frames.
    header2 = msgpack.unpackb(msgpack.packb(header))
    assert message_from_wire(header2, [memoryview(p) for p in payloads]) == msg


def test_wire_payloads_are_not_copied() -> None:
    data = b"x" * 1000
    msg = Message(MessageType.APPEND, 2, 1, 1, entries=(Entry(1, 1, EntryType.NORMAL, data),))
    _, payloads = message_to_wire(msg)
    assert payloads[0] is data


@given(conf_states)
def test_conf_state_round_trip(cs: ConfState) -> None:
    assert decode_conf_state(encode_conf_state(cs)) == cs


@given(st.lists(st.tuples(st.sampled_from(ConfChangeType), st.integers(1, 1 << 32))))
def test_conf_change_round_trip(changes: list[tuple[ConfChangeType, int]]) -> None:
    cc = ConfChange(tuple(changes))
    assert decode_conf_change(encode_conf_change(cc)) == cc


@given(
    st.lists(st.tuples(st.sampled_from(ConfChangeType), st.integers(1, 1 << 32))),
    st.binary(max_size=64),
)
def test_conf_change_round_trip_with_context(
    changes: list[tuple[ConfChangeType, int]], context: bytes
) -> None:
    cc = ConfChange(tuple(changes), context)
    assert decode_conf_change(encode_conf_change(cc)) == cc


def test_conf_change_without_context_keeps_the_old_encoding() -> None:
    cc = ConfChange(((ConfChangeType.ADD_VOTER, 2),))
    assert encode_conf_change(cc) == msgpack.packb([0, 2])
    with pytest.raises(CodecError):
        decode_conf_change(msgpack.packb([0, 2, b""]))


@given(u64, u64, u64)
def test_hard_state_round_trip(term: int, vote: int, commit: int) -> None:
    hs = HardState(term, vote, commit)
    assert decode_hard_state(encode_hard_state(hs)) == hs


DECODERS = [
    (decode_message, Message),
    (decode_conf_state, ConfState),
    (decode_conf_change, ConfChange),
    (decode_hard_state, HardState),
]


def decodes_or_codec_error(decode: Callable[[bytes], object], typ: type, buf: bytes) -> None:
    """The fuzz invariant: a value of the right type, or CodecError, nothing else."""
    try:
        value = decode(buf)
    except CodecError:
        return
    assert isinstance(value, typ)


@pytest.mark.parametrize(("decode", "typ"), DECODERS)
@settings(max_examples=300)
@given(buf=st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(decode: Callable[[bytes], object], typ: type, buf: bytes) -> None:
    decodes_or_codec_error(decode, typ, buf)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.binary(max_size=8)
    | st.text(max_size=4)
    | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=14),
    max_leaves=40,
)


@pytest.mark.parametrize(("decode", "typ"), DECODERS)
@settings(max_examples=300)
@given(value=msgpack_values)
def test_fuzz_well_formed_msgpack_of_the_wrong_shape(
    decode: Callable[[bytes], object], typ: type, value: object
) -> None:
    decodes_or_codec_error(decode, typ, msgpack.packb(value))


@given(messages, st.data())
def test_fuzz_mutated_messages(msg: Message, data: st.DataObject) -> None:
    buf = bytearray(encode_message(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    decodes_or_codec_error(decode_message, Message, bytes(buf[:cut]))


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        msgpack.packb([[1] * 13, []]),
        msgpack.packb([[2, 0, 1, 1, 1, 0, 0, 0, False, 0, b"", [], None], []]),  # version
        msgpack.packb([[1, 99, 1, 1, 1, 0, 0, 0, False, 0, b"", [], None], []]),  # type
        msgpack.packb([[1, 0, 1, 1, -1, 0, 0, 0, False, 0, b"", [], None], []]),  # term
        msgpack.packb([[1, 0, 1, 1, 1, 0, 0, 0, False, 0, b"", [1, 1, 0], None], []]),
        msgpack.packb([[1, 0, 1, 1, 1, 0, 0, 0, False, 0, b"", [1, 1, 7], None], [b"x"]]),
    ],
)
def test_specific_bad_messages(bad: bytes) -> None:
    with pytest.raises(CodecError):
        decode_message(bad)


@given(messages)
def test_wire_split_round_trip_in_process(msg: Message) -> None:
    # A transport may hand the header over without encoding it.
    header, payloads = message_to_wire(msg)
    assert message_from_wire(header, payloads) == msg
