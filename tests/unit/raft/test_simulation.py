"""A fixed set of simulator seeds (``tests.sim``) as part of ``make test``.

Each chunk runs consecutive seeds for ``STEPS`` chaos steps plus the liveness phase;
a failure lists every failing seed with the command that replays it. Long soaks are
``python -m tests.simulate --seeds N``, not tests. The whole file takes ~20-40 s on
two cores.
"""

from __future__ import annotations

import pytest

from tests.sim import Checker, InvariantError, SimConfig, run_seed
from zstream.replication import Entry, EntryType

STEPS = 3000
CHUNKS = 12
SEEDS_PER_CHUNK = 50


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_simulated_seeds_keep_safety_and_liveness(chunk: int) -> None:
    failures = []
    for seed in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        res = run_seed(SimConfig(seed=seed, steps=STEPS))
        if not res.ok:
            failures.append(f"seed {seed}: {res.error}\n    replay: {res.replay_command()}")
        else:
            assert res.committed > 0, f"seed {seed} committed nothing"
    assert not failures, "\n".join(failures)


def test_a_seed_replays_exactly() -> None:
    a = run_seed(SimConfig(seed=7, steps=1500, nodes=5))
    b = run_seed(SimConfig(seed=7, steps=1500, nodes=5))
    assert a.ok, a.error
    assert (a.committed, a.proposed, a.crashes, a.trace) == (
        b.committed,
        b.proposed,
        b.crashes,
        b.trace,
    )


def test_the_simulator_exercises_faults_and_features() -> None:
    totals = {"crashes": 0, "snapshots": 0, "conf": 0, "reads": 0, "leaders": 0}
    for seed in range(40):
        r = run_seed(SimConfig(seed=1000 + seed, steps=STEPS))
        totals["crashes"] += r.crashes
        totals["snapshots"] += r.snapshots_sent
        totals["conf"] += r.conf_changes
        totals["reads"] += r.reads
        totals["leaders"] += r.leaders
    assert all(v > 10 for v in totals.values()), totals


# -- the checker itself must catch violations ---------------------------------------------


def _entry(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(term, index, EntryType.NORMAL, data)


class _FakeHost:
    def __init__(self, node_id: int) -> None:
        self.id = node_id
        self.state: list[tuple[int, int, bytes]] = []
        self.node = None

    @property
    def applied_index(self) -> int:
        return len(self.state)


def test_checker_flags_two_different_entries_applied_at_one_index() -> None:
    c = Checker(strict_proposals=False)
    c.on_apply(_FakeHost(1), [_entry(1, 1, b"a")])  # type: ignore[arg-type]
    with pytest.raises(InvariantError, match="applies index 1"):
        c.on_apply(_FakeHost(2), [_entry(1, 2, b"b")])  # type: ignore[arg-type]


def test_checker_flags_a_payload_applied_twice_or_never_proposed() -> None:
    c = Checker()
    c.proposed(b"p1", 1, 1)
    c.on_apply(_FakeHost(1), [_entry(1, 1, b"p1")])  # type: ignore[arg-type]
    with pytest.raises(InvariantError, match="applied twice"):
        c.on_apply(_FakeHost(1), [_entry(2, 1, b"p1")])  # type: ignore[arg-type]
    with pytest.raises(InvariantError, match="never proposed"):
        Checker().on_apply(_FakeHost(1), [_entry(1, 1, b"zz")])  # type: ignore[arg-type]


def test_checker_flags_an_acknowledged_proposal_at_the_wrong_index() -> None:
    c = Checker()
    c.proposed(b"p1", 2, 1)
    c.on_apply(_FakeHost(1), [_entry(1, 1)])  # type: ignore[arg-type]
    with pytest.raises(InvariantError, match="proposed at index/term"):
        c.on_apply(_FakeHost(1), [_entry(2, 2, b"p1")])  # type: ignore[arg-type]
