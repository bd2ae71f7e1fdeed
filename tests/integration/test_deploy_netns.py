"""docs/deploy.md, tested: three brokers on three "hosts" (network namespaces, each
with its own address on one bridge), each beside a member of a three-member etcd
cluster, all started from the files in deploy/ exactly as the doc tells an operator
to install them: only the addresses and paths are substituted (the ports stay, since
every namespace has its own). The broker command line is the systemd unit's
ExecStart. A client on a fourth host creates a replicated topic, produces keyed
records and consumes them back through the ``zstream`` CLI, then one host is cut off
the network and the cluster goes on serving on the other two.

Needs root (``ip netns``); skipped with the reason otherwise."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ManagedProcess, wait_until
from tests.support.netns import Network, NetworkUnavailable
from zstream.broker._config import BrokerConfig, load_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
HOSTS = (1, 2, 3)
CLIENT_HOST = 4
TOPIC = "orders"
RECORDS = 300


def _doc_address(n: int) -> str:
    """Host n's address as deploy/broker-n.toml writes it (its client_addr's host)."""
    doc = tomllib.loads((DEPLOY / f"broker-{n}.toml").read_text())
    host: str = doc["client_addr"].rpartition(":")[0]
    return host


def _substitute(text: str, addresses: dict[str, str]) -> str:
    for documented, real in addresses.items():
        text = re.sub(rf"\b{re.escape(documented)}\b", real, text)
    return text


def _env_file(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


def _exec_start() -> list[str]:
    unit = (DEPLOY / "zstream-broker.service").read_text()
    found = re.search(r"^ExecStart=(.+)$", unit, re.M)
    assert found is not None, "the unit has no ExecStart"
    return shlex.split(found.group(1))


class Hosts:
    """The namespaces, and every process started in them (ended by PID)."""

    def __init__(self, net: Network, workdir: Path) -> None:
        self.net, self.workdir = net, workdir
        self.addresses = {_doc_address(n): net.address(n) for n in HOSTS}
        self.etcd: list[ManagedProcess] = []
        self.brokers: dict[int, ManagedProcess] = {}
        self.bootstrap = ",".join(f"{net.address(n)}:7101" for n in HOSTS)

    def start_etcd(self, n: int) -> None:
        binary = shutil.which("etcd")
        assert binary is not None, "etcd is not installed (make test installs etcd-server)"
        settings = _env_file(_substitute((DEPLOY / f"etcd-{n}.env").read_text(), self.addresses))
        settings["ETCD_DATA_DIR"] = str(self.workdir / f"etcd-{n}")  # a path, as the doc says
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        proc = ManagedProcess(
            f"etcd-{n}", [*self.net.exec_prefix(n), binary], self.workdir, env={**env, **settings}
        )
        proc.start()
        self.etcd.append(proc)

    def start_broker(self, n: int) -> None:
        text = _substitute((DEPLOY / f"broker-{n}.toml").read_text(), self.addresses)
        text = re.sub(
            r'^data_dir = ".*"$', f'data_dir = "{self.workdir / f"broker-{n}"}"', text, flags=re.M
        )
        if "insecure" in BrokerConfig.__dataclass_fields__:
            # Plain TCP on a non-loopback address needs an explicit opt-in: the deploy
            # files say so themselves (docs/deploy.md, "Security").
            assert re.search(r"^insecure = true$", text, re.M), f"broker-{n}.toml"
        config = self.workdir / f"broker-{n}.toml"
        config.write_text(text)
        load_config(config_file=config, environ={})  # the operator's file is valid as is
        argv = _exec_start()
        assert argv[1:] == ["broker", "--config", "/etc/zstream/broker.toml"], argv
        command = [sys.executable, "-m", "zstream.broker.cli", "broker", "--config", str(config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTREAM_")}
        proc = ManagedProcess(
            f"broker-{n}", [*self.net.exec_prefix(n), *command], self.workdir, env=env, cwd=ROOT
        )
        proc.start()
        self.brokers[n] = proc

    def zstream(self, *args: str, stdin: bytes = b"", timeout_s: float = 60) -> bytes:
        """``zstream ARGS`` on the client host; its stdout (failing on a non-zero exit)."""
        result = self.run_zstream(*args, stdin=stdin, timeout_s=timeout_s)
        assert result.returncode == 0, (args, result.stderr.decode(), self.logs())
        return result.stdout

    def run_zstream(
        self, *args: str, stdin: bytes = b"", timeout_s: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [
            *self.net.exec_prefix(CLIENT_HOST),
            sys.executable, "-m", "zstream.broker.cli", *args, "--bootstrap", self.bootstrap,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTREAM_")}
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            timeout=timeout_s,
            env=env,
            cwd=ROOT,
            check=False,
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.tail(15)}" for p in [*self.etcd, *self.brokers.values()]
        )

    def stop(self) -> None:
        for proc in self.brokers.values():
            proc.stop(grace_s=20)
        for proc in self.etcd:
            proc.stop()


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    net = Network(4)
    try:
        net.create()
    except NetworkUnavailable as exc:
        pytest.skip(f"no network namespaces here: {exc}")
    running = Hosts(net, tmp_path)
    try:
        yield running
    finally:
        running.stop()
        net.close()


def _ready(proc: ManagedProcess) -> bool:
    return "broker ready" in proc.output() or not proc.running()


def _status(hosts: Hosts) -> str:
    result = hosts.run_zstream("status", timeout_s=30)
    return result.stdout.decode() if result.returncode == 0 else ""


@pytest.mark.timeout(400)  # three etcd members and three brokers forming, on a shared box
def test_three_hosts_from_the_documented_files(hosts: Hosts) -> None:
    for n in HOSTS:
        hosts.start_etcd(n)
    for n in HOSTS:
        hosts.start_broker(n)
    for n, proc in hosts.brokers.items():
        wait_until(functools.partial(_ready, proc), 120, f"broker {n} to be ready")
        assert proc.running(), hosts.logs()
    net = hosts.net
    wait_until(
        lambda: _status(hosts).count(" alive") == 3, 60, "three live brokers in `zstream status`"
    )
    status = _status(hosts)
    for n in HOSTS:
        assert f"tcp://{net.address(n)}:7101" in status  # each broker advertises its host

    hosts.zstream("topic", "create", TOPIC, "--partitions", "3", "--replication-factor", "3")
    lines = b"".join(f"key-{i % 30}:value-{i}\n".encode() for i in range(RECORDS))
    hosts.zstream("produce", TOPIC, "--key-separator", ":", "--header", "from=host4", stdin=lines)
    out = hosts.zstream("consume", TOPIC, "--from-beginning", "--output", "json")
    docs = [json.loads(line) for line in out.splitlines()]
    assert sorted(d["value"] for d in docs) == sorted(f"value-{i}" for i in range(RECORDS))
    partition_of: dict[str, int] = {}
    for d in docs:  # a key stays on one partition, in order
        assert partition_of.setdefault(d["key"], d["partition"]) == d["partition"]
        assert d["headers"] == {"from": "host4"}
    assert len(set(partition_of.values())) == 3
    described = hosts.zstream("topic", "describe", TOPIC).decode()
    rows = [line.split() for line in described.splitlines()[2:]]
    assert len(rows) == 3
    assert all(sorted(r[2].split(",")) == ["1", "2", "3"] for r in rows), described
    leaders = {int(r[1]) for r in rows}
    assert leaders <= set(HOSTS)

    # Cut one host off the network: the two others elect new leaders where needed
    # and go on taking and serving records.
    cut = min(leaders)
    net.isolate(cut)
    more = [f"after-{i}".encode() for i in range(30)]
    keyed = b"".join(b"key-%d:%s\n" % (i, v) for i, v in enumerate(more))  # every partition
    hosts.zstream("produce", TOPIC, "--key-separator", ":", stdin=keyed, timeout_s=120)
    out = hosts.zstream("consume", TOPIC, "--from-beginning", timeout_s=120)
    assert sorted(out.splitlines()) == sorted(
        [f"value-{i}".encode() for i in range(RECORDS)] + more
    )
    described = hosts.zstream("topic", "describe", TOPIC).decode()
    rows = [line.split() for line in described.splitlines()[2:]]
    assert all(r[1] not in ("-", str(cut)) for r in rows), described  # re-elected elsewhere
    net.heal(cut)
