"""zstream.testing on real brokers: the pytest fixtures (loaded here through the
``pytest11`` entry point of the editable install, as a user's run loads them), the
plain context manager, kill and restart, teardown by PID, and the plugin switched
off with ``-p no:zstream``."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import answers_metadata, bootstrap_of, running_brokers, wait_until_async
from zstream import Admin, Consumer, Producer, TopicPartition
from zstream.testing import Cluster, ClusterFactory, cluster

pytestmark = pytest.mark.integration


async def _round_trip(bootstrap: str, topic: str, values: list[bytes], rf: int = 1) -> None:
    async with Admin(bootstrap) as admin:
        await admin.create_topic(topic, partitions=1, replication_factor=rf)
    async with Producer(bootstrap) as producer:
        for value in values:
            await producer.send(topic, value)
    assert await _read(bootstrap, topic, len(values)) == values


async def _read(bootstrap: str, topic: str, count: int) -> list[bytes]:
    async with Consumer(bootstrap) as consumer:
        consumer.assign([TopicPartition(topic, 0)])
        return [(await asyncio.wait_for(consumer.getone(), 30)).value for _ in range(count)]


async def test_zstream_cluster_is_one_broker_under_tmp_path(
    zstream_cluster: Cluster, tmp_path: Path
) -> None:
    assert len(zstream_cluster.brokers) == 1
    (broker,) = zstream_cluster.brokers
    assert zstream_cluster.bootstrap == f"127.0.0.1:{broker.client_port}"
    assert broker.data_dir.is_relative_to(tmp_path)
    await _round_trip(zstream_cluster.bootstrap, "plain", [b"a", b"b"])
    assert broker.data_dir.is_dir()


async def _leader(bootstrap: str, topic: str) -> int:
    found: list[int] = []

    async def known() -> bool:
        async with Admin(bootstrap) as admin:
            leader = (await admin.describe_topic(topic))["partitions"][0]["leader"]
        found.append(leader)
        return leader is not None

    await wait_until_async(known, 20, f"a leader for {topic}", interval_s=0.1)
    return found[-1]


def test_settings_of_the_callers_environment_do_not_reach_the_brokers(
    monkeypatch: pytest.MonkeyPatch, zstream_cluster_factory: ClusterFactory
) -> None:
    # Would fail validation in the broker if it were read there.
    monkeypatch.setenv("ZSTREAM_CLUSTER_NAME", "not a valid name!")
    c = zstream_cluster_factory()
    assert c.broker(1).running()


def test_env_given_explicitly_does_reach_the_brokers(tmp_path: Path) -> None:
    # The same invalid setting, passed on purpose: the broker refuses to start.
    with (
        pytest.raises(RuntimeError, match="cluster_name"),
        cluster(path=tmp_path, env={"ZSTREAM_CLUSTER_NAME": "not a valid name!"}),
    ):
        pass


def test_the_brokers_run_this_zstream_not_one_in_the_current_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A decoy checkout in the current directory and on PYTHONPATH, as when comparing
    # an older tree: its broker would leave a mark and exit. The brokers must run the
    # imported zstream (-P keeps the directory off sys.path; this tree goes first on
    # PYTHONPATH, ahead of the decoy and of an editable install's finder).
    decoy = tmp_path / "decoy"
    mark = tmp_path / "decoy-ran"
    (decoy / "zstream" / "broker").mkdir(parents=True)
    (decoy / "zstream" / "__init__.py").write_text("")
    (decoy / "zstream" / "broker" / "__init__.py").write_text("")
    (decoy / "zstream" / "broker" / "cli.py").write_text(
        f"import pathlib, sys\npathlib.Path({str(mark)!r}).write_text('x')\nsys.exit(3)\n"
    )
    monkeypatch.chdir(decoy)
    with cluster(path=tmp_path / "c", env={"PYTHONPATH": str(decoy)}) as c:
        assert c.broker(1).running()
        cmdline = Path(f"/proc/{c.broker(1).pid}/cmdline").read_bytes().split(b"\0")
    assert not mark.exists()
    assert cmdline[1:4] == [b"-P", b"-m", b"zstream.broker.cli"], cmdline


async def test_three_brokers_survive_a_kill_and_the_restarted_one_serves_again(
    zstream_cluster_factory: ClusterFactory,
) -> None:
    c = zstream_cluster_factory(3)
    assert len(c.bootstrap.split(",")) == 3
    async with Admin(c.bootstrap) as admin:
        await admin.create_topic("kept", partitions=1, replication_factor=3)
    # A producer notices a dead leader by its request timeout: keep it short.
    async with Producer(c.bootstrap, request_timeout_ms=2000) as producer:
        await producer.send("kept", b"before")
        leader = await _leader(c.bootstrap, "kept")
        victim = c.broker(leader)
        port, old_pid = victim.client_port, victim.pid
        c.kill(leader)
        assert not victim.running()
        await producer.send("kept", b"while down")
        await asyncio.to_thread(c.restart, leader)
        assert victim.running()
        assert victim.pid != old_pid
        assert victim.client_port == port
        await producer.send("kept", b"after")
    # The restarted broker alone answers from its own data directory.
    assert await _read(victim.bootstrap, "kept", 3) == [b"before", b"while down", b"after"]


def test_cluster_context_manager_removes_its_temporary_directory() -> None:
    with cluster() as c:
        root, broker = c.root, c.broker(1)
        assert broker.running()
        asyncio.run(_round_trip(c.bootstrap, "cm", [b"x"]))
    assert not broker.running()
    assert broker.pid is None
    assert not root.exists()


def test_a_broker_that_cannot_start_fails_with_its_log_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    c = Cluster(2, path=tmp_path, extra_args=[f"--config={tmp_path / 'missing.toml'}"])
    with pytest.raises(RuntimeError, match=r"(?s)exited with .*missing\.toml"):
        c.start()
    assert not any(b.running() for b in c.brokers)
    assert tmp_path.exists()  # a given path is the caller's: kept, logs included


def test_the_suites_former_broker_helpers_still_work(tmp_path: Path) -> None:
    with running_brokers(tmp_path, 1) as brokers:
        (b,) = brokers
        assert bootstrap_of(brokers) == b.bootstrap
        assert answers_metadata(b.addr)
        assert b.stop() == 0
        assert not answers_metadata(b.addr, timeout_ms=100)
        b.launch()
        b.wait_ready()
        assert b.output().count("broker ready id=1") == 2  # one log across the restart
    assert not b.running()


def test_a_cluster_needs_a_broker() -> None:
    with pytest.raises(ValueError, match="at least one broker"):
        Cluster(0)


USER_TEST = """
from zstream.testing import Cluster

def test_uses_the_fixture(zstream_cluster: Cluster) -> None:
    assert zstream_cluster.bootstrap.startswith("127.0.0.1:")

def test_needs_no_cluster() -> None:
    pass

def test_fails_on_purpose(zstream_cluster: Cluster) -> None:
    assert zstream_cluster.bootstrap == "elsewhere"
"""


def _pytest_in(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (directory / "test_user.py").write_text(textwrap.dedent(USER_TEST))
    # Its own rootdir and ini, with warnings as errors, outside this repository's config.
    (directory / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings = error\nasyncio_default_fixture_loop_scope = function\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_the_plugin_loads_from_its_entry_point_and_can_be_switched_off(tmp_path: Path) -> None:
    on = _pytest_in(tmp_path)
    assert on.returncode == 1, on.stdout + on.stderr
    assert "1 failed, 2 passed" in on.stdout
    # The failed test's report ends with its broker's log.
    assert re.search(r"zstream broker 1 log \(.*broker-1\.log\)", on.stdout), on.stdout
    assert "broker ready id=1" in on.stdout
    off = _pytest_in(tmp_path, "-p", "no:zstream")
    assert off.returncode == 1, off.stdout + off.stderr
    assert "fixture 'zstream_cluster' not found" in off.stdout
    assert "1 passed, 2 errors" in off.stdout
