"""Deterministic simulation of Raft groups for the ``replication`` core.

``run_seed(SimConfig(seed=..., steps=..., nodes=...))`` runs one seed and returns a
``SimResult``; ``python -m tests.simulate`` is the command-line front end, and
``Host``/``Checker`` are shared with the unit-test harness.
"""

from ._checker import Checker, InvariantError
from ._host import Host, HostError, ReadyOutcome, Record, SnapshotRegistry
from ._sim import LivenessError, SimConfig, SimResult, Simulation, run_seed

__all__ = [
    "Checker",
    "Host",
    "HostError",
    "InvariantError",
    "LivenessError",
    "ReadyOutcome",
    "Record",
    "SimConfig",
    "SimResult",
    "Simulation",
    "SnapshotRegistry",
    "run_seed",
]
