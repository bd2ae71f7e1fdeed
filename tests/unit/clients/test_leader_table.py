"""ClusterClient's partition leaders: a broker outside a partition's Raft group only
guesses its leader (no ``leader_epoch``); what a replica says, in its metadata or in a
NOT_LEADER hint, is kept by epoch until a higher epoch says otherwise or the leader
stops answering. Before this, a client whose metadata came from a non-replica was sent
back to the preferred replica after every NOT_LEADER and never reached a leader
elected elsewhere (the rebalance tests' stalled producer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from zstream.clients import ClusterClient, ConnectionLostError, NotLeaderError, UnknownTopicError
from zstream.clients._protocol import Buffer, Reply, RequestArgs


def _metadata(leader: int, epoch: int | None, group: int = 7) -> dict[str, Any]:
    brokers = [{"id": b, "client_addr": f"tcp://127.0.0.1:{9000 + b}"} for b in (1, 2, 3)]
    part = {
        "partition": 0,
        "group_id": group,
        "leader": leader,
        "leader_epoch": epoch,
        "replicas": [2, 3],
    }
    return {"brokers": brokers, "controller": 1, "topics": [{"name": "t", "partitions": [part]}]}


class Scripted(ClusterClient):
    """Metadata answers given by the test, in place of a broker's."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1:9001")
        self.answers: list[dict[str, Any]] = []

    async def call_any(
        self, args: RequestArgs, frames: Sequence[Buffer] = (), *, timeout_s: float | None = None
    ) -> Reply:
        return Reply(1, result=self.answers.pop(0))


@pytest.fixture
async def client() -> Any:
    c = Scripted()
    yield c
    await c.close()


async def test_a_hint_outlives_the_guesses_of_later_metadata(client: Scripted) -> None:
    client.answers = [_metadata(2, None), _metadata(2, None)]
    await client.refresh()
    assert client.leader_of("t", 0) == 2  # the guess, while nothing better is known
    client.leader_failed("t", 0, 2, NotLeaderError("not the leader", leader=3, leader_epoch=1))
    assert client.leader_of("t", 0) == 3
    await client.refresh()  # a non-replica guesses the preferred replica again
    assert client.leader_of("t", 0) == 3


async def test_the_highest_epoch_wins(client: Scripted) -> None:
    client.answers = [_metadata(3, 4), _metadata(2, 3), _metadata(2, 5)]
    await client.refresh()
    assert client.leader_of("t", 0) == 3
    await client.refresh()  # an older term: stale
    assert client.leader_of("t", 0) == 3
    client.leader_failed("t", 0, 3, NotLeaderError("not the leader", leader=2, leader_epoch=2))
    assert client.leader_of("t", 0) == 3
    await client.refresh()
    assert client.leader_of("t", 0) == 2


async def test_a_newer_term_without_a_leader_drops_the_old_one(client: Scripted) -> None:
    client.answers = [_metadata(3, 4)]
    await client.refresh()
    client.leader_failed("t", 0, 3, NotLeaderError("electing", leader=None, leader_epoch=5))
    assert client.leader_of("t", 0) == 3  # the metadata's, for lack of better
    client.metadata["topics"][0]["partitions"][0]["leader"] = 2
    assert client.leader_of("t", 0) == 2


async def test_a_leader_that_stops_answering_is_forgotten(client: Scripted) -> None:
    client.answers = [_metadata(2, None)]
    await client.refresh()
    client.leader_failed("t", 0, 2, NotLeaderError("not the leader", leader=3))
    assert client.leader_of("t", 0) == 3
    client.leader_failed("t", 0, 2, ConnectionLostError("gone"))  # not the one kept
    assert client.leader_of("t", 0) == 3
    client.leader_failed("t", 0, 3, ConnectionLostError("gone"))
    assert client.leader_of("t", 0) == 2


async def test_a_topic_made_anew_starts_from_its_own_metadata(client: Scripted) -> None:
    client.answers = [_metadata(3, 9, group=7), _metadata(2, 1, group=8)]
    await client.refresh()
    assert client.leader_of("t", 0) == 3
    await client.refresh()  # deleted and created again: a new Raft group, terms from 1
    assert client.leader_of("t", 0) == 2
    client.answers = [{"brokers": [], "topics": []}]
    await client.refresh()
    with pytest.raises(UnknownTopicError):
        client.leader_of("t", 0)
