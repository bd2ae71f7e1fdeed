"""Raft replication: a pure core, the durable Raft log, the ZeroMQ peer transport
and the multi-Raft host.

Depends on ``storage`` only.
"""

from replication._transport import (
    PeerMessage,
    PeerTransport,
    TransportClosedError,
    TransportConfig,
    TransportDecodeError,
    TransportError,
    TransportStats,
    decode_peer_frames,
    encode_peer_frames,
    node_routing_id,
)

__all__ = [
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
]
