"""The client wire protocol: round trips, validation, and fuzzing of every decoder."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zstream.clients import (
    Acks,
    AclAddRequest,
    AclListRequest,
    AclRemoveRequest,
    CommitOffsetsRequest,
    CreateTopicRequest,
    DeleteGroupRequest,
    DescribeGroupRequest,
    ErrorCode,
    FencedMemberError,
    FetchOffsetsRequest,
    FetchRequest,
    GroupHeartbeatRequest,
    InvalidRequestError,
    ListGroupsRequest,
    NotLeaderError,
    OffsetOutOfRangeError,
    OffsetsForTimeRequest,
    ProduceRequest,
    QuotaListRequest,
    QuotaSetRequest,
    UnknownMemberError,
    UnknownServerError,
    UnsupportedVersionError,
    ZStreamError,
    error_for_code,
)
from zstream.clients._protocol import (
    PROTOCOL_VERSION,
    AddPartitionsRequest,
    AlterTopicRequest,
    DecommissionBrokerRequest,
    ListReassignmentsRequest,
    Push,
    ReassignPartitionRequest,
    Reply,
    decode_incoming,
    decode_push,
    decode_reply,
    decode_request,
    encode_error_reply,
    encode_push,
    encode_reply,
    encode_request,
    peek_correlation_id,
)


def _envelope(**fields: Any) -> bytes:
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def test_produce_round_trip_keeps_batch_frame_untouched() -> None:
    batch = memoryview(b"\x00" * 8 + b"opaque batch bytes")
    frames = encode_request(7, ProduceRequest("orders", 2, Acks.LEADER, 1500), [batch])
    request = decode_request(frames)
    assert request.corr_id == 7
    assert request.op == "produce"
    assert request.args == ProduceRequest("orders", 2, Acks.LEADER, 1500)
    assert request.frames == (batch,)


def test_defaults_fill_missing_optional_arguments() -> None:
    frames = [_envelope(v=1, id=1, op="fetch", args={"topic": "t", "partition": 0, "offset": 5})]
    args = decode_request(frames).args
    assert args == FetchRequest("t", 0, 5)
    assert args.max_bytes == 1024 * 1024


def test_create_topic_with_configs() -> None:
    args = CreateTopicRequest("t", 3, 3, {"retention_ms": 60_000})
    assert decode_request(encode_request(1, args)).args == args


@pytest.mark.parametrize(
    ("envelope", "fragment"),
    [
        ({"v": 1, "id": 1, "op": "nope", "args": {}}, "unknown operation"),
        ({"v": 1, "op": "list_topics", "args": {}}, "correlation id"),
        ({"v": 1, "id": -1, "op": "list_topics"}, "correlation id"),
        ({"v": 1, "id": 1, "op": "fetch", "args": {"topic": "t"}}, "missing argument"),
        (
            {
                "v": 1,
                "id": 1,
                "op": "fetch",
                "args": {"topic": "t", "partition": True, "offset": 0},
            },
            "partition must be an integer",
        ),
        (
            {"v": 1, "id": 1, "op": "fetch", "args": {"topic": "t", "partition": 0, "offset": -4}},
            "offset must be >= 0",
        ),
        (
            {
                "v": 1,
                "id": 1,
                "op": "create_topic",
                "args": {"name": "a/b", "partitions": 1, "replication_factor": 1},
            },
            "invalid topic name",
        ),
        (
            {
                "v": 1,
                "id": 1,
                "op": "produce",
                "args": {"topic": "t", "partition": 0, "acks": "some"},
            },
            "acks must be one of",
        ),
        ({"v": 1, "id": 1, "op": "list_topics", "args": []}, "args must be a map"),
    ],
)
def test_bad_requests_name_their_fault(envelope: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        decode_request([_envelope(**envelope)])


def test_produce_needs_exactly_one_batch_frame() -> None:
    frames = encode_request(3, ProduceRequest("t", 0))
    with pytest.raises(InvalidRequestError, match="data frames"):
        decode_request(frames)
    with pytest.raises(InvalidRequestError, match="data frames"):
        decode_request([*frames, b"a", b"b"])


def test_unknown_version_is_its_own_error() -> None:
    with pytest.raises(UnsupportedVersionError):
        decode_request([_envelope(v=PROTOCOL_VERSION + 1, id=1, op="list_topics")])


def test_correlation_id_is_recovered_from_a_bad_request() -> None:
    frames = [_envelope(v=99, id=42, op="???")]
    assert peek_correlation_id(frames) == 42
    assert peek_correlation_id([b"\xc1garbage"]) is None
    assert peek_correlation_id([]) is None


def test_error_reply_raises_the_matching_exception_with_details() -> None:
    frames = encode_error_reply(9, NotLeaderError("not the leader", leader=3))
    reply = decode_reply(frames)
    assert reply.error == ErrorCode.NOT_LEADER
    with pytest.raises(NotLeaderError) as caught:
        reply.raise_for_error()
    assert caught.value.leader == 3
    assert caught.value.retriable

    frames = encode_error_reply(10, OffsetOutOfRangeError("out of range", start=4, end=9))
    with pytest.raises(OffsetOutOfRangeError) as out:
        decode_reply(frames).raise_for_error()
    assert out.value.details == {"start": 4, "end": 9}
    assert not out.value.retriable


def test_ok_reply_and_push_are_told_apart() -> None:
    reply = decode_incoming(encode_reply(5, {"offset": 10}, [b"x"]))
    assert reply == Reply(5, ErrorCode.NONE, "", {"offset": 10}, (b"x",))
    reply.raise_for_error()  # success raises nothing
    push = decode_incoming(encode_push(8, "data", {"hw": 3}, [b"b1", b"b2"]))
    assert push == Push(8, "data", {"hw": 3}, (b"b1", b"b2"))
    assert decode_push(encode_push(8, "heartbeat")).kind == "heartbeat"


def test_unknown_error_numbers_still_surface_as_zstream_errors() -> None:
    assert error_for_code(9999) is UnknownServerError
    reply = decode_reply([_envelope(v=1, id=1, err=9999, msg="from the future")])
    with pytest.raises(ZStreamError, match="from the future"):
        reply.raise_for_error()


def test_every_error_code_maps_to_a_class_with_that_code() -> None:
    for code in ErrorCode:
        if code is ErrorCode.NONE:
            continue
        assert error_for_code(code).code is code


# -- fuzzing: bytes either decode or raise the protocol's own error ----------

_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)

_envelopes = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1"]), "id": st.integers(-5, 2**64 - 1)},
    optional={
        "op": st.sampled_from(
            [
                "produce",
                "fetch",
                "create_topic",
                "subscribe",
                "credit",
                "group_heartbeat",
                "commit_offsets",
                "fetch_offsets",
                "describe_group",
                "delete_group",
                "offsets_for_time",
                "reassign_partition",
                "list_reassignments",
                "acl_list",
                "acl_add",
                "acl_remove",
                "quota_set",
                "quota_list",
                "x",
            ]
        )
        | st.text(max_size=10),
        "args": st.dictionaries(
            st.sampled_from(
                [
                    "topic",
                    "partition",
                    "offset",
                    "name",
                    "acks",
                    "stream",
                    "credit_bytes",
                    "partitions",
                    "replication_factor",
                    "configs",
                    "group",
                    "replicas",
                    "member_id",
                    "topics",
                    "owned",
                    "offsets",
                    "session_timeout_ms",
                    "leave",
                    "timestamp_ms",
                    "entries",
                    "principal",
                    "resource_type",
                    "produce_bytes_per_s",
                    "fetch_bytes_per_s",
                ]
            ),
            _msgpack_values,
            max_size=6,
        )
        | _msgpack_values,
        "err": _msgpack_values,
        "res": _msgpack_values,
        "stream": _msgpack_values,
    },
)


def _each_decoder(frames: list[bytes]) -> None:
    for decoder in (decode_request, decode_reply, decode_push, decode_incoming):
        with contextlib.suppress(ZStreamError):
            decoder(frames)
    peek_correlation_id(frames)


@settings(max_examples=400)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_fuzz_random_bytes(frames: list[bytes]) -> None:
    _each_decoder(frames)


@settings(max_examples=600)
@given(_envelopes, st.lists(st.binary(max_size=16), max_size=3))
def test_fuzz_structured_envelopes(envelope: dict[str, Any], body: list[bytes]) -> None:
    _each_decoder([msgpack.packb(envelope, use_bin_type=True), *body])


# -- consumer groups ----------------------------------------------------------


def test_group_requests_round_trip() -> None:
    requests = [
        GroupHeartbeatRequest("g", "m-1", ["a", "b"], {"a": [0, 2]}, 3000),
        GroupHeartbeatRequest("g", "m-1", leave=True),
        CommitOffsetsRequest("g", {"a": [[0, 10], [2, 7]]}, "m-1"),
        CommitOffsetsRequest("g", {"a": [[1, 0]]}),
        FetchOffsetsRequest("g", ["a"]),
        FetchOffsetsRequest("g"),
        ListGroupsRequest(),
        DescribeGroupRequest("g"),
        DeleteGroupRequest("g"),
        OffsetsForTimeRequest("t", 2, 1_700_000_000_000),
    ]
    for args in requests:
        assert decode_request(encode_request(7, args)).args == args


def _group_request(op: str, **args: Any) -> list[bytes]:
    return [msgpack.packb({"v": 1, "id": 1, "op": op, "args": args})]


@pytest.mark.parametrize(
    ("op", "args", "fragment"),
    [
        ("group_heartbeat", {"group": "g"}, "missing argument 'member_id'"),
        ("group_heartbeat", {"group": "g", "member_id": ""}, "invalid member id"),
        ("group_heartbeat", {"group": "g", "member_id": "x" * 65}, "invalid member id"),
        ("group_heartbeat", {"group": "a/b", "member_id": "m"}, "invalid group name"),
        (
            "group_heartbeat",
            {"group": "g", "member_id": "m", "session_timeout_ms": 10},
            "session_timeout_ms must be within",
        ),
        (
            "group_heartbeat",
            {"group": "g", "member_id": "m", "owned": {"t": [-1]}},
            "partition must be >= 0",
        ),
        ("group_heartbeat", {"group": "g", "member_id": "m", "leave": 1}, "must be a boolean"),
        ("commit_offsets", {"group": "g", "offsets": {"t": [[0]]}}, "pairs"),
        ("commit_offsets", {"group": "g", "offsets": {"t": [[0, -1]]}}, "offset must be >= 0"),
        ("commit_offsets", {"group": "g", "offsets": {"t": [0, 1]}}, "must be a list"),
        ("fetch_offsets", {"group": "g", "topics": ["a b"]}, "invalid topic name"),
        ("describe_group", {}, "missing argument 'group'"),
        ("delete_group", {"group": ""}, "invalid group name"),
        ("delete_group", {"group": 7}, "must be a string"),
        ("offsets_for_time", {"topic": "t", "partition": 0}, "missing argument 'timestamp_ms'"),
        (
            "offsets_for_time",
            {"topic": "t", "partition": 0, "timestamp_ms": -1},
            "timestamp_ms must be >= 0",
        ),
        (
            "offsets_for_time",
            {"topic": "t", "partition": 0, "timestamp_ms": 1.5},
            "must be an integer",
        ),
    ],
)
def test_bad_group_requests_name_their_fault(op: str, args: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        decode_request(_group_request(op, **args))


def test_group_errors_have_their_own_codes() -> None:
    reply = decode_reply(encode_error_reply(3, FencedMemberError("not yours", member_id="m")))
    with pytest.raises(FencedMemberError, match="not yours"):
        reply.raise_for_error()
    assert error_for_code(int(ErrorCode.UNKNOWN_MEMBER)) is UnknownMemberError
    assert not UnknownMemberError.retriable
    assert not FencedMemberError.retriable


# -- cluster operations ----------------------------------------------------------


def test_reassignment_requests_round_trip() -> None:
    for args in (
        ReassignPartitionRequest("t", 2, [1, 2, 4]),
        ListReassignmentsRequest(),
        DecommissionBrokerRequest(3),
        AlterTopicRequest("t", {"retention_ms": 60_000}),
        AddPartitionsRequest("t", 6),
    ):
        assert decode_request(encode_request(9, args)).args == args


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"topic": "t", "partition": 0}, "missing argument 'replicas'"),
        ({"topic": "t", "partition": 0, "replicas": []}, "replicas must name"),
        ({"topic": "t", "partition": 0, "replicas": list(range(1, 18))}, "replicas must name"),
        ({"topic": "t", "partition": 0, "replicas": [1, 1]}, "distinct"),
        ({"topic": "t", "partition": 0, "replicas": [0]}, "must be > 0"),
        ({"topic": "t", "partition": -1, "replicas": [1]}, "partition must be >= 0"),
        ({"topic": "t", "partition": 0, "replicas": ["1"]}, "must be an integer"),
        ({"topic": "t", "partition": 0, "replicas": 1}, "must be a list"),
    ],
)
def test_bad_reassign_requests_name_their_fault(args: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        decode_request(_group_request("reassign_partition", **args))


@pytest.mark.parametrize(
    ("op", "args", "fragment"),
    [
        ("decommission_broker", {"broker_id": 0}, "broker_id must be > 0"),
        ("decommission_broker", {}, "missing argument 'broker_id'"),
        ("alter_topic", {"name": "t", "configs": {}}, "at least one"),
        ("add_partitions", {"name": "t", "count": 0}, "count must be > 0"),
        ("alter_topic", {"name": "t", "configs": {"retention_ms": "x"}}, "integer"),
    ],
)
def test_bad_cluster_requests_name_their_fault(
    op: str, args: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        decode_request(_group_request(op, **args))


# -- ACLs and quotas ------------------------------------------------------------


_ENTRY = {
    "principal": "alice",
    "resource_type": "topic",
    "pattern": "prefixed",
    "name": "orders.",
    "operation": "produce",
    "permission": "deny",
}


def test_acl_and_quota_requests_round_trip() -> None:
    requests = [
        AclListRequest(),
        AclListRequest("alice", "group"),
        AclAddRequest([_ENTRY]),
        AclRemoveRequest([_ENTRY, {**_ENTRY, "permission": "allow"}]),
        QuotaSetRequest("*", 100, None),
        QuotaSetRequest("bob"),
        QuotaListRequest(),
    ]
    for args in requests:
        assert decode_request(encode_request(7, args)).args == args
    (entry,) = AclAddRequest([_ENTRY]).acl_entries()
    assert entry.to_wire() == _ENTRY


@pytest.mark.parametrize(
    ("op", "args", "fragment"),
    [
        ("acl_add", {}, "missing argument 'entries'"),
        ("acl_add", {"entries": []}, "give 1-1000 ACL entries"),
        ("acl_add", {"entries": [{"principal": "a"}]}, "lacks"),
        ("acl_add", {"entries": [{**_ENTRY, "operation": "write"}]}, "operation"),
        ("acl_add", {"entries": [{**_ENTRY, "principal": 3}]}, "must be a string"),
        ("acl_remove", {"entries": [{**_ENTRY, "name": "a b"}]}, "resource name"),
        ("acl_list", {"resource_type": "table"}, "resource_type must be one of"),
        ("acl_list", {"principal": "a/b"}, "invalid principal"),
        ("quota_set", {"principal": "a", "fetch_bytes_per_s": 0}, "must be an integer > 0"),
        ("quota_set", {}, "missing argument 'principal'"),
    ],
)
def test_bad_acl_requests_name_their_fault(op: str, args: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        decode_request(_group_request(op, **args))
