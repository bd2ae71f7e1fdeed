"""The peer transport's wire format: encode/decode round trips, strict validation
and a fuzz invariant (anything either decodes or raises TransportDecodeError)."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zstream import replication
from zstream.replication import (
    TransportConfig,
    TransportDecodeError,
    TransportError,
    decode_peer_frames,
    encode_peer_frames,
    node_routing_id,
)

MAX_NODE_ID = 2**64 - 1

node_ids = st.integers(min_value=1, max_value=MAX_NODE_ID)
items_strategy = st.lists(
    st.tuples(st.binary(max_size=64), st.lists(st.binary(max_size=256), max_size=4)),
    min_size=1,
    max_size=8,
)

# Any value msgpack can carry, to build envelopes that are valid msgpack but
# possibly nonsense as envelopes.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=MAX_NODE_ID)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)


def envelope(*fields: Any) -> bytes:
    packed: bytes = msgpack.packb(list(fields))
    return packed


def test_public_names_are_exported() -> None:
    for name in (
        "PeerMessage",
        "PeerTransport",
        "TransportClosedError",
        "TransportConfig",
        "TransportDecodeError",
        "TransportError",
        "TransportStats",
        "decode_peer_frames",
        "encode_peer_frames",
        "node_routing_id",
    ):
        assert name in replication.__all__
        assert getattr(replication, name) is not None
    assert issubclass(replication.TransportDecodeError, TransportError)
    assert issubclass(replication.TransportClosedError, TransportError)


@given(sender=node_ids, items=items_strategy)
def test_round_trip(sender: int, items: list[tuple[bytes, list[bytes]]]) -> None:
    frames = encode_peer_frames(sender, items)
    assert len(frames) == 1 + sum(len(payloads) for _, payloads in items)
    decoded = decode_peer_frames(node_routing_id(sender), frames)
    assert [(m.from_node, m.header, [bytes(p) for p in m.payloads]) for m in decoded] == [
        (sender, header, payloads) for header, payloads in items
    ]


@settings(max_examples=300)
@given(
    routing_id=st.binary(max_size=24) | st.sampled_from([b"1", b"7", b"18446744073709551615"]),
    frames=st.lists(st.binary(max_size=64), max_size=6),
)
def test_fuzz_random_frames(routing_id: bytes, frames: list[bytes]) -> None:
    try:
        decoded = decode_peer_frames(routing_id, frames)
    except TransportDecodeError:
        return
    assert decoded
    assert sum(len(m.payloads) for m in decoded) == len(frames) - 1


@settings(max_examples=300)
@given(
    fields=st.lists(msgpack_values, max_size=4),
    valid_prefix=st.booleans(),
    extra_frames=st.lists(st.binary(max_size=8), max_size=4),
)
def test_fuzz_msgpack_envelopes(
    fields: list[Any], valid_prefix: bool, extra_frames: list[bytes]
) -> None:
    # Half of the envelopes start with a valid version and sender, so the
    # fuzzer reaches the item checks.
    if valid_prefix:
        fields = [1, 5, *fields[:1]]
    frames = [msgpack.packb(fields), *extra_frames]
    try:
        decoded = decode_peer_frames(b"5", frames)
    except TransportDecodeError:
        return
    assert all(m.from_node == 5 for m in decoded)
    assert sum(len(m.payloads) for m in decoded) == len(extra_frames)


@pytest.mark.parametrize(
    ("routing_id", "frames", "reason"),
    [
        (b"5", [], "empty"),
        (b"5", [b"\xc1"], "msgpack"),
        (b"5", [envelope(1, 5, [[b"h", 0]]) + b"\x00"], "msgpack"),
        (b"5", [msgpack.packb({"v": 1})], "array of 3"),
        (b"5", [envelope(2, 5, [[b"h", 0]])], "version"),
        (b"5", [envelope(True, 5, [[b"h", 0]])], "version"),
        (b"5", [envelope(1, 6, [[b"h", 0]])], "does not match"),
        (b"5", [envelope(1, True, [[b"h", 0]])], "does not match"),
        (b"5", [envelope(1, 5, [])], "non-empty"),
        (b"5", [envelope(1, 5, [[b"h"]])], "array of 2"),
        (b"5", [envelope(1, 5, [["h", 0]])], "bin"),
        (b"5", [envelope(1, 5, [[b"h", -1]])], "int >= 0"),
        (b"5", [envelope(1, 5, [[b"h", False]])], "int >= 0"),
        (b"5", [envelope(1, 5, [[b"h", 2]]), b"p"], "more payload frames"),
        (b"5", [envelope(1, 5, [[b"h", 0]]), b"p"], "1 are present"),
        (b"0", [envelope(1, 0, [[b"h", 0]])], "routing id"),
        (b"05", [envelope(1, 5, [[b"h", 0]])], "routing id"),
        (b"", [envelope(1, 5, [[b"h", 0]])], "routing id"),
        (b"\x00\x01", [envelope(1, 5, [[b"h", 0]])], "routing id"),
        (b"18446744073709551616", [envelope(1, 5, [[b"h", 0]])], "routing id"),
    ],
)
def test_rejects_malformed(routing_id: bytes, frames: list[bytes], reason: str) -> None:
    with pytest.raises(TransportDecodeError, match=reason):
        decode_peer_frames(routing_id, frames)


def test_payload_frames_are_split_in_item_order() -> None:
    frames = encode_peer_frames(3, [(b"a", [b"1", b"2"]), (b"b", []), (b"c", [b"3"])])
    decoded = decode_peer_frames(b"3", frames)
    assert [(m.header, [bytes(p) for p in m.payloads]) for m in decoded] == [
        (b"a", [b"1", b"2"]),
        (b"b", []),
        (b"c", [b"3"]),
    ]


def test_payloads_are_views_not_copies() -> None:
    big = bytearray(b"x" * 4096)
    decoded = decode_peer_frames(b"3", [envelope(1, 3, [[b"h", 1]]), memoryview(big)])
    big[0] = ord("y")
    assert decoded[0].payloads[0][0] == ord("y")


@pytest.mark.parametrize("bad", [0, -1, 2**64, True, 1.0, "1"])
def test_node_ids_are_validated(bad: Any) -> None:
    with pytest.raises(ValueError, match="node id"):
        node_routing_id(bad)
    with pytest.raises(ValueError, match="sender"):
        encode_peer_frames(bad, [(b"h", [])])


def test_routing_id_is_ascii_decimal() -> None:
    assert node_routing_id(1) == b"1"
    assert node_routing_id(MAX_NODE_ID) == str(MAX_NODE_ID).encode()


def test_encode_rejects_empty_and_non_bytes_headers() -> None:
    with pytest.raises(ValueError, match="at least one item"):
        encode_peer_frames(1, [])
    with pytest.raises(TypeError, match="header must be bytes"):
        encode_peer_frames(1, [("text", [])])  # type: ignore[list-item]


def test_config_defaults_are_valid_and_frozen() -> None:
    cfg = TransportConfig()
    assert cfg.reconnect_ivl_ms <= cfg.reconnect_ivl_max_ms
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.send_hwm_msgs = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"send_hwm_msgs": 0},
        {"recv_hwm_msgs": -1},
        {"max_frame_bytes": 100},
        {"max_frame_bytes": 2**31},
        {"reconnect_ivl_ms": 0},
        {"reconnect_ivl_ms": 500, "reconnect_ivl_max_ms": 100},
        {"heartbeat_ivl_ms": 1000, "heartbeat_timeout_ms": 1000},
        {"copy_threshold_bytes": -1},
        {"connect_timeout_ms": -1},
        {"recv_drain_max_msgs": 0},
    ],
)
def test_config_rejects_nonsense(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="TransportConfig"):
        TransportConfig(**kwargs)


def test_config_rejects_non_ints() -> None:
    with pytest.raises(TypeError, match="send_hwm_msgs"):
        TransportConfig(send_hwm_msgs=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="send_hwm_msgs"):
        TransportConfig(send_hwm_msgs=True)
