"""A tiny synchronous network of RaftNodes over MemoryStorage for the core's own unit
tests: every node persists instantly, messages wait in one queue until delivered."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

from zstream.replication import (
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    RaftConfig,
    RaftNode,
    ReadState,
    Ready,
    Role,
    decode_conf_change,
)

MsgFilter = Callable[[Message], bool]


class Net:
    def __init__(
        self,
        voters: Iterable[int] = (1, 2, 3),
        *,
        learners: Iterable[int] = (),
        blank: Iterable[int] = (),
        seed: int = 0,
        **config: Any,
    ) -> None:
        self.config = {"pre_vote": False, "check_quorum": False, **config}
        boot = ConfState(voters=frozenset(voters), learners=frozenset(learners))
        self.rng = random.Random(seed)
        self.storage: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RaftNode] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.readies: dict[int, list[Ready]] = {}
        for i in (*voters, *learners):
            self._add(i, boot)
        for i in blank:
            self._add(i, ConfState(voters=frozenset()))
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.down: set[int] = set()

    def _add(self, i: int, conf: ConfState) -> None:
        self.storage[i] = MemoryStorage(conf_state=conf)
        self.nodes[i] = RaftNode(
            RaftConfig(id=i, **self.config), self.storage[i], rng=random.Random(self.rng.random())
        )
        self.applied[i] = []
        self.read_states[i] = []
        self.readies[i] = []

    def restart(self, i: int) -> None:
        """Start node ``i`` again from its storage (everything there is durable)."""
        st = self.storage[i]
        applied = max(st.first_index() - 1, self.applied[i][-1].index if self.applied[i] else 0)
        self.nodes[i] = RaftNode(
            RaftConfig(id=i, applied=applied, **self.config),
            self.storage[i],
            rng=random.Random(self.rng.random()),
        )
        self.applied[i] = [e for e in self.applied[i] if e.index <= applied]

    def __getitem__(self, i: int) -> RaftNode:
        return self.nodes[i]

    # -- moving things ------------------------------------------------------------------

    def process(self, ids: Iterable[int] | None = None) -> bool:
        moved = False
        for i in ids if ids is not None else list(self.nodes):
            node = self.nodes[i]
            if i in self.down or not node.has_ready():
                continue
            moved = True
            rd = node.ready()
            self.readies[i].append(rd)
            st = self.storage[i]
            if rd.snapshot is not None:
                st.apply_snapshot(rd.snapshot)
                self.applied[i] = []
            if rd.entries:
                st.append(rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            for e in rd.committed_entries:
                if e.type == EntryType.CONF_CHANGE:
                    st.set_conf_state(node.apply_conf_change(decode_conf_change(e.data)))
                self.applied[i].append(e)
            self.read_states[i].extend(rd.read_states)
            self.queue.extend(rd.messages)
            self.queue.extend(rd.messages_after_append)
            node.advance(rd)
        return moved

    def deliver(self, keep: MsgFilter | None = None) -> int:
        """Deliver every queued message (those ``keep`` accepts; the rest are dropped)."""
        msgs, self.queue = self.queue, []
        n = 0
        for m in msgs:
            if (m.frm, m.to) in self.cut or m.to in self.down or m.frm in self.down:
                continue
            if keep is not None and not keep(m):
                continue
            if m.to in self.nodes:
                self.nodes[m.to].step(m)
                n += 1
        return n

    def stabilize(self, keep: MsgFilter | None = None, rounds: int = 1000) -> None:
        for _ in range(rounds):
            moved = self.process()
            if not self.queue and not moved:
                return
            self.deliver(keep)
        raise AssertionError("network did not settle")

    def tick(self, ids: Iterable[int] | None = None, n: int = 1) -> None:
        for _ in range(n):
            for i in ids if ids is not None else list(self.nodes):
                if i not in self.down:
                    self.nodes[i].tick()

    def tick_stabilize(self, n: int) -> None:
        for _ in range(n):
            self.tick()
            self.stabilize()

    def isolate(self, i: int) -> None:
        for j in self.nodes:
            if j != i:
                self.cut.add((i, j))
                self.cut.add((j, i))

    def heal(self) -> None:
        self.cut.clear()

    def elect(self, i: int) -> None:
        self.nodes[i].campaign()
        self.stabilize()
        assert self.nodes[i].role == Role.LEADER

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.role == Role.LEADER and i not in self.down]

    def data(self, i: int) -> list[bytes]:
        return [e.data for e in self.applied[i] if e.type == EntryType.NORMAL]
