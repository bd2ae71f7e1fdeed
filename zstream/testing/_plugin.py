"""The pytest plugin (entry point ``pytest11``: ``zstream``): fixtures that start
real brokers for a test and stop them by PID afterwards.

- ``zstream_cluster``: one broker, embedded (no etcd), data under ``tmp_path``.
- ``zstream_cluster_factory``: call it for more, ``zstream_cluster_factory(3)`` for a
  three-broker static cluster; every cluster it made is closed after the test.

Loading the plugin starts nothing: a broker runs only for a test that asks for one
of these fixtures. ``-p no:zstream`` turns the plugin off. When such a test fails,
its report ends with the tail of each broker's log (and the log's path).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # loaded by the first test that asks for a broker, not at startup
    from zstream.testing._cluster import Cluster, ClusterFactory

__all__ = ["pytest_runtest_makereport", "zstream_cluster", "zstream_cluster_factory"]

_LOG_LINES = 30
_clusters_key = pytest.StashKey["list[Cluster]"]()


@pytest.fixture
def zstream_cluster_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[ClusterFactory]:
    """Start clusters of real brokers (``tmp_path/zstream-N``), all closed after
    the test."""
    from zstream.testing._cluster import Cluster

    made: list[Cluster] = []
    request.node.stash[_clusters_key] = made

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


# The old-style wrapper (``hookwrapper``): every pluggy a pytest in use may bring knows
# it, so an older pytest in the environment still starts.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failed test that ran brokers gets their log tails in its report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    clusters = item.stash.get(_clusters_key, None)
    if report.failed and clusters:
        for c in clusters:
            for b in c.brokers:
                report.sections.append(
                    (f"zstream broker {b.broker_id} log ({b.log_path})", b.tail(_LOG_LINES))
                )
