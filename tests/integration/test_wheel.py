"""The wheel as a user gets it: built from a copy of the sources, installed into a
fresh virtual environment outside this repository (no system site-packages, nothing
of the repository on sys.path), and used from a directory outside it: the CLI, the
``zstream`` namespace with no top-level ``clients``/``storage``/``broker``/
``replication``, a producer/consumer round trip against ``zstream.testing.cluster``,
and a user's own pytest file on the plugin's fixtures, kill and restart included,
which mypy --strict also checks against the installed (py.typed) package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
# What the wheel is built from: the distribution's metadata and its packages (the
# zstream/ folder with its symlinks to the layers). Copied, so the build's build/ and
# egg-info never land in the working tree.
SOURCES = ("pyproject.toml", "README.md", "zstream", "broker", "clients", "replication", "storage")
LAYERS = ("broker", "clients", "replication", "storage")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path  # outside the repository: the cwd of every command below

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self) -> dict[str, str]:
        """The environment of a user who activated the venv: none of this test run's
        Python, pytest or zstream settings."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS")
            and not k.startswith(("ZSTREAM_", "PYTEST_"))
        }
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        return env

    def run(
        self, *argv: str | Path, timeout_s: float = 120, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv],
            cwd=self.workdir,
            env=dict(self.env() if env is None else env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


def _checked(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _pip(python: Path | str, *args: str, cwd: Path) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert not base.is_relative_to(ROOT), "the venv must live outside the repository"
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(
                origin, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(origin, src / name)
    dist = base / "dist"
    _pip(sys.executable, "wheel", "--no-deps", "-w", str(dist), str(src), cwd=base)
    (wheel,) = dist.glob("zstream-*.whl")
    venv = base / "venv"
    # The base interpreter's venv module, not this test run's venv: nothing inherited.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    _pip(
        venv / "bin" / "python",
        "install",
        str(wheel),
        "pytest",
        "pytest-asyncio",
        "mypy",
        cwd=base,
    )
    workdir = base / "user"
    workdir.mkdir()
    return Installed(wheel, venv, workdir)


def test_the_wheel_holds_the_zstream_package_only(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as whl:
        names = whl.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_text = whl.read(entry_points).decode()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"zstream"}
    for layer in LAYERS:
        modules = {p for p in names if p.startswith(f"zstream/{layer}/") and p.endswith(".py")}
        expected = {
            f"zstream/{layer}/{p.relative_to(ROOT / layer).as_posix()}"
            for p in (ROOT / layer).rglob("*.py")
        }
        assert modules == expected, layer  # copied through the symlinks, every module
    for name in ("zstream/py.typed", "zstream/testing/__init__.py", "zstream/testing/_plugin.py"):
        assert name in names
    assert "[pytest11]\nzstream = zstream.testing._plugin" in entry_text
    assert "zstream = zstream.broker.cli:main" in entry_text


def test_cli_and_namespace_from_outside_the_repository(installed: Installed) -> None:
    assert "0.1.0" in _checked(installed.run("zstream", "--version"))
    where = _checked(
        installed.run(installed.python, "-c", "import zstream; print(zstream.__file__)")
    ).strip()
    assert Path(where).is_relative_to(installed.venv), where
    assert not Path(where).resolve().is_relative_to(ROOT), where
    for layer in LAYERS:
        bare = installed.run(installed.python, "-c", f"import {layer}")
        assert bare.returncode != 0, f"`import {layer}` works from the installed wheel"
        assert f"No module named '{layer}'" in bare.stderr


ROUND_TRIP = """
import asyncio
import zstream.testing
from zstream import Admin, Consumer, Producer, TopicPartition

async def main(bootstrap: str) -> None:
    async with Admin(bootstrap) as admin:
        await admin.create_topic("wheel", partitions=1)
    async with Producer(bootstrap) as producer:
        sent = [await producer.send("wheel", f"r{i}".encode()) for i in range(5)]
    async with Consumer(bootstrap) as consumer:
        consumer.assign([TopicPartition("wheel", 0)])
        got = [(await consumer.getone()).value.decode() for _ in range(5)]
    print([m.offset for m in sent], got)

with zstream.testing.cluster() as c:
    asyncio.run(main(c.bootstrap))
    root = c.root
print("removed", not root.exists())
"""


def test_round_trip_against_zstream_testing_cluster(installed: Installed) -> None:
    out = _checked(installed.run(installed.python, "-c", ROUND_TRIP))
    assert out.splitlines() == [
        "[0, 1, 2, 3, 4] ['r0', 'r1', 'r2', 'r3', 'r4']",
        "removed True",
    ]


USER_TESTS = """
import asyncio

from zstream import Admin, Consumer, Producer, TopicPartition
from zstream.testing import Cluster, ClusterFactory


async def read(bootstrap: str, topic: str, count: int) -> list[bytes]:
    async with Consumer(bootstrap) as consumer:
        consumer.assign([TopicPartition(topic, 0)])
        return [(await asyncio.wait_for(consumer.getone(), 30)).value for _ in range(count)]


async def test_one_broker(zstream_cluster: Cluster) -> None:
    async with Admin(zstream_cluster.bootstrap) as admin:
        await admin.create_topic("one")
    async with Producer(zstream_cluster.bootstrap) as producer:
        await producer.send("one", b"hello")
    assert await read(zstream_cluster.bootstrap, "one", 1) == [b"hello"]


async def test_three_brokers_kill_and_restart(zstream_cluster_factory: ClusterFactory) -> None:
    cluster = zstream_cluster_factory(3)
    async with Admin(cluster.bootstrap) as admin:
        await admin.create_topic("three", partitions=1, replication_factor=3)
    async with Producer(cluster.bootstrap, request_timeout_ms=2000) as producer:
        await producer.send("three", b"before")
        cluster.kill(2)
        assert not cluster.broker(2).running()
        await producer.send("three", b"while 2 is down")
        await asyncio.to_thread(cluster.restart, 2)
        assert cluster.broker(2).running()
        await producer.send("three", b"after")
    expected = [b"before", b"while 2 is down", b"after"]
    assert await read(cluster.broker(2).bootstrap, "three", 3) == expected
"""


def _user_project(installed: Installed, name: str) -> Path:
    project = installed.workdir / name
    project.mkdir()
    (project / "test_with_zstream.py").write_text(textwrap.dedent(USER_TESTS))
    (project / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    return project


def test_a_users_pytest_run_on_the_plugins_fixtures(installed: Installed) -> None:
    project = _user_project(installed, "project")
    result = subprocess.run(
        [str(installed.python), "-m", "pytest", "-v", "-p", "no:cacheprovider"],
        cwd=project,
        env=installed.env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    assert "test_three_brokers_kill_and_restart PASSED" in result.stdout


MISTYPED = """
from zstream.testing import ClusterFactory

def test_mistyped(zstream_cluster_factory: ClusterFactory) -> None:
    zstream_cluster_factory(3).restart("2")
"""


def test_a_users_code_type_checks_against_the_installed_package(installed: Installed) -> None:
    """py.typed is in the wheel and the surface is typed: mypy --strict passes the
    user's tests and the round-trip script, and catches a wrong argument."""
    project = _user_project(installed, "typed")
    (project / "round_trip.py").write_text(ROUND_TRIP)
    mypy: list[str | Path] = [installed.python, "-m", "mypy", "--strict", "--cache-dir"]
    mypy.append(project / ".mypy")
    _checked(installed.run(*mypy, project / "test_with_zstream.py", project / "round_trip.py"))
    (project / "test_mistyped.py").write_text(MISTYPED)
    wrong = installed.run(*mypy, project / "test_mistyped.py")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert 'Argument 1 to "restart" of "Cluster" has incompatible type "str"' in wrong.stdout
