"""Hypothesis strategies for malformed client messages: random frames, envelopes
with wrong types, truncated batches and batches claiming huge lengths."""

from __future__ import annotations

import msgpack
from hypothesis import strategies as st

from zstream import storage
from zstream.clients import ZStreamError
from zstream.clients._protocol import decode_request

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
)
_ops = st.sampled_from(
    [
        "produce",
        "fetch",
        "metadata",
        "subscribe",
        "credit",
        "create_topic",
        "offsets_for_time",
        "delete_group",
        "reassign_partition",
        "list_reassignments",
        "decommission_broker",
        "rebalance",
        "alter_topic",
        "add_partitions",
        "acl_add",
        "acl_remove",
        "acl_list",
        "quota_set",
        "nope",
        "",
    ]
)
_envelopes = st.fixed_dictionaries(
    {"v": st.one_of(st.just(1), _scalars), "id": st.one_of(st.integers(0, 1000), _scalars)},
    optional={
        "op": st.one_of(_ops, _scalars),
        "args": st.one_of(st.dictionaries(st.text(max_size=12), _scalars, max_size=4), _scalars),
    },
).map(lambda d: msgpack.packb(d, use_bin_type=True))


def _truncated_batch(cut: int) -> bytes:
    batch = storage.encode_batch([(None, b"value")])
    return batch[: cut % len(batch)]


def _huge_length(length: int) -> bytes:
    batch = bytearray(storage.encode_batch([(None, b"v")]))
    batch[8:12] = length.to_bytes(4, "big", signed=True)
    return bytes(batch)


def malformed_messages(topic: str, too_large_bytes: int) -> st.SearchStrategy[list[bytes]]:
    """Messages (lists of frames) that no broker may accept."""
    produce = msgpack.packb(
        {"v": 1, "id": 5, "op": "produce", "args": {"topic": topic, "partition": 0}}
    )
    bad_batches = st.one_of(
        st.binary(max_size=200),
        st.integers(0, 200).map(_truncated_batch),
        st.integers(-(2**31), 2**31 - 1).map(_huge_length),
        st.just(b"\0" * too_large_bytes),
    ).map(lambda b: [produce, b])
    return st.one_of(
        st.lists(st.binary(max_size=64), min_size=1, max_size=4),
        _envelopes.map(lambda e: [e]),
        bad_batches,
    ).filter(_rejected)


def _rejected(frames: list[bytes]) -> bool:
    """Random envelopes can spell a valid request ({"v": 1, "id": 3, "op": "metadata"}
    is one; unknown arguments are ignored): such a message is not malformed, and a
    test expecting only error replies would fail on its success."""
    try:
        request = decode_request(frames)
    except ZStreamError:
        return True
    if request.frames:  # a produce: the broker verifies its batch next
        try:
            storage.verify_batch(request.frames[0])
        except storage.CorruptBatchError:
            return True
    return False
