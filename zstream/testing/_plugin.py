"""The pytest plugin (entry point ``pytest11``: ``zstream``): fixtures that start
real brokers for a test and stop them by PID afterwards.

- ``zstream_cluster``: one broker, embedded (no etcd), data under ``tmp_path``.
- ``zstream_cluster_factory``: call it for more, ``zstream_cluster_factory(3)`` for a
  three-broker static cluster; every cluster it made is closed after the test.

Loading the plugin starts nothing: a broker runs only for a test that asks for one
of these fixtures. ``-p no:zstream`` turns the plugin off.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from zstream.testing._cluster import Cluster, ClusterFactory

__all__ = ["zstream_cluster", "zstream_cluster_factory"]


@pytest.fixture
def zstream_cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start clusters of real brokers (``tmp_path/zstream-N``), all closed after
    the test."""
    made: list[Cluster] = []

    def factory(
        brokers: int = 1,
        *,
        etcd: str | None = None,
        extra_args: Sequence[str] = (),
        log_level: str = "INFO",
        ready_timeout_s: float = 30.0,
    ) -> Cluster:
        c = Cluster(
            brokers,
            path=tmp_path / f"zstream-{len(made) + 1}",
            etcd=etcd,
            extra_args=extra_args,
            log_level=log_level,
            ready_timeout_s=ready_timeout_s,
        )
        made.append(c)
        return c.start()

    try:
        yield factory
    finally:
        for c in reversed(made):
            c.close()


@pytest.fixture
def zstream_cluster(zstream_cluster_factory: ClusterFactory) -> Cluster:
    """One running broker (embedded, no etcd); ``.bootstrap`` is its address."""
    return zstream_cluster_factory()
