"""The Raft core (skeleton: the API the tests build against)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from ._errors import ConfigError
from ._storage import Storage
from ._types import ConfChange, ConfState, Message, NodeId, Ready, Role

MiB = 1024 * 1024


class ProgressState(IntEnum):
    """How the leader replicates to one follower."""

    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


@dataclass(frozen=True, slots=True)
class RaftConfig:
    id: NodeId
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_size_per_msg: int = 1 * MiB
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 32 * MiB
    pre_vote: bool = True
    check_quorum: bool = True
    applied: int = 0
    max_committed_size_per_ready: int = 4 * MiB

    def __post_init__(self) -> None:
        if self.id <= 0:
            raise ConfigError("id must be > 0")


class RaftNode:
    def __init__(
        self, config: RaftConfig, storage: Storage, rng: random.Random | None = None
    ) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        raise NotImplementedError

    def step(self, msg: Message) -> None:
        raise NotImplementedError

    def campaign(self) -> None:
        raise NotImplementedError

    def propose(self, data: bytes) -> int:
        raise NotImplementedError

    def propose_batch(self, datas: Sequence[bytes]) -> int:
        raise NotImplementedError

    def propose_conf_change(self, cc: ConfChange) -> int:
        raise NotImplementedError

    def transfer_leader(self, node_id: NodeId) -> None:
        raise NotImplementedError

    def read_index(self, context: bytes) -> None:
        raise NotImplementedError

    def has_ready(self) -> bool:
        raise NotImplementedError

    def ready(self) -> Ready:
        raise NotImplementedError

    def advance(self, ready: Ready) -> None:
        raise NotImplementedError

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        raise NotImplementedError

    @property
    def id(self) -> NodeId:
        raise NotImplementedError

    @property
    def term(self) -> int:
        raise NotImplementedError

    @property
    def vote(self) -> NodeId:
        raise NotImplementedError

    @property
    def commit(self) -> int:
        raise NotImplementedError

    @property
    def applied(self) -> int:
        raise NotImplementedError

    @property
    def role(self) -> Role:
        raise NotImplementedError

    @property
    def leader(self) -> NodeId:
        raise NotImplementedError

    @property
    def last_index(self) -> int:
        raise NotImplementedError

    @property
    def conf_state(self) -> ConfState:
        raise NotImplementedError

    def progress(self, node_id: NodeId) -> tuple[int, int, ProgressState] | None:
        raise NotImplementedError
