"""A PeerTransport node in its own process, for integration tests.

Usage: python -m tests.integration._transport_echo_node NODE_ID BIND_ADDR PEER_ID PEER_ADDR

Prints its bound address on stdout (the readiness signal), then answers every
item it receives with ``b"echo:" + header`` and the same payloads, to the sender.
Runs until killed.
"""

from __future__ import annotations

import sys

import uvloop

from zstream.replication import PeerTransport


async def serve(node_id: int, bind_addr: str, peer_id: int, peer_addr: str) -> None:
    async with PeerTransport(node_id, bind_addr) as t:
        t.add_peer(peer_id, peer_addr)
        print(t.address, flush=True)
        while True:
            for msg in await t.recv_batch():
                t.send(msg.from_node, b"echo:" + msg.header, msg.payloads)
            t.flush()


def main() -> None:
    node_id, bind_addr, peer_id, peer_addr = sys.argv[1:5]
    uvloop.run(serve(int(node_id), bind_addr, int(peer_id), peer_addr))


if __name__ == "__main__":
    main()
