"""Hypothesis throws malformed frames at a live front end on a real socket: each
gets an error reply or is dropped, and a valid client is served after each one."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import given, settings

from tests.support.malformed import malformed_messages
from tests.unit.broker.fakes import FakePartition, LiveFrontend
from zstream.clients import ErrorCode, MetadataRequest
from zstream.clients._protocol import decode_reply, encode_request

MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module", params=[None, "alice"], ids=["open", "secured"])
def client(request: pytest.FixtureRequest) -> Iterator[zmq.Socket[bytes]]:
    """Security off, and on with a principal that holds no ACL (default deny)."""
    with LiveFrontend(MAX_BYTES, principal=request.param) as live:
        live.backend.topics["t"] = [FakePartition()]
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.connect(live.addr)
        try:
            yield sock
        finally:
            sock.close()
            ctx.term()


_probe_ids = itertools.count(1_000_000)

_messages = malformed_messages("t", MAX_BYTES + 1)


@settings(max_examples=300)
@given(_messages)
def test_malformed_frames_never_stop_the_broker(
    client: zmq.Socket[bytes], frames: list[bytes]
) -> None:
    client.send_multipart(frames)
    probe = next(_probe_ids)
    client.send_multipart(encode_request(probe, MetadataRequest()))
    while True:
        reply = decode_reply(client.recv_multipart())
        if reply.corr_id == probe:
            assert reply.error == ErrorCode.NONE
            return
        assert reply.error != ErrorCode.NONE
        assert reply.error != ErrorCode.UNKNOWN_SERVER_ERROR, reply.message
