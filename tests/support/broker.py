"""Real broker processes on free loopback ports, for integration tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import zmq

from tests.support.proc import ManagedProcess, free_port, wait_until
from tests.support.security import ClusterKeys
from zstream.clients import Credentials, MetadataRequest, ZStreamError
from zstream.clients._protocol import decode_reply, encode_request


def answers_metadata(
    addr: str, timeout_ms: int = 300, credentials: Credentials | None = None
) -> bool:
    """One metadata request on a fresh DEALER (a CURVE client with ``credentials``):
    does the broker answer it?"""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if credentials is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, credentials.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, credentials.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, credentials.secret_key)
    sock.connect(addr)
    try:
        sock.send_multipart(encode_request(1, MetadataRequest()))
        if not sock.poll(timeout_ms):
            return False
        return decode_reply(sock.recv_multipart()).error == 0
    except ZStreamError:
        return False
    finally:
        sock.close()


class BrokerProcess:
    """``zstream broker`` in a child process. `stop`/`kill` then `start` again
    keeps its id, ports and data dir (a restart with the same id). With ``keys`` it
    runs with CURVE (its own peer key pair, the cluster's key sets) and readiness is
    checked as ``admin``."""

    def __init__(
        self,
        workdir: Path,
        broker_id: int,
        *,
        etcd: str | None = None,
        extra: list[str] | None = None,
        keys: ClusterKeys | None = None,
    ) -> None:
        self.broker_id = broker_id
        self.keys = keys
        self.credentials = keys.credentials("admin") if keys is not None else None
        self.client_port = free_port()
        self.peer_port = free_port()
        self.metrics_port = free_port()
        self.data_dir = workdir / f"broker-{broker_id}"
        argv = [
            sys.executable,
            "-m",
            "zstream.broker.cli",
            "broker",
            f"--id={broker_id}",
            f"--data-dir={self.data_dir}",
            f"--client-addr=127.0.0.1:{self.client_port}",
            f"--peer-addr=127.0.0.1:{self.peer_port}",
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            "--log-level=DEBUG",
        ]
        if etcd is not None:
            argv.append(f"--etcd={etcd}")
        if keys is not None:
            argv.extend(keys.broker_flags(broker_id))
        argv.extend(extra or [])
        self.process = ManagedProcess(f"broker-{broker_id}", argv, workdir)

    @property
    def addr(self) -> str:
        return f"tcp://127.0.0.1:{self.client_port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, timeout_s: float = 30.0) -> None:
        self.process.start()
        self.wait_ready(timeout_s)

    def launch(self) -> None:
        """Start without waiting (brokers of a new cluster wait for each other)."""
        self.process.start()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        try:
            wait_until(
                lambda: (
                    not self.process.running()
                    or answers_metadata(self.addr, credentials=self.credentials)
                ),
                timeout_s,
                f"broker {self.broker_id} to serve on {self.addr}",
            )
        except TimeoutError:
            self.process.stop()  # never leave a half-started child running
            raise
        if not self.process.running():
            raise RuntimeError(f"broker {self.broker_id} exited:\n{self.process.tail()}")

    def stop(self) -> int | None:
        return self.process.stop(grace_s=20)

    def kill(self) -> None:
        self.process.kill()


def bootstrap_of(brokers: Sequence[BrokerProcess]) -> str:
    """The brokers' client addresses as one bootstrap string."""
    return ",".join(b.bootstrap for b in brokers)


@contextmanager
def running_brokers(
    workdir: Path,
    count: int = 3,
    *,
    etcd: str | None = None,
    extra: Sequence[str] = (),
    ready_timeout_s: float = 30.0,
    keys: ClusterKeys | None = None,
) -> Iterator[list[BrokerProcess]]:
    """``count`` brokers forming one cluster, launched together (they wait for each
    other) and stopped by PID on the way out. With ``etcd`` they discover each other
    there (``--bootstrap-expect``); without, through a static ``--peers`` list (a lone
    broker runs embedded). With ``keys`` (`ClusterKeys` for ids 1..count) every
    socket runs CURVE."""
    brokers = [
        BrokerProcess(workdir, i, etcd=etcd, extra=list(extra), keys=keys)
        for i in range(1, count + 1)
    ]
    if etcd is not None:
        for b in brokers:
            b.process.argv.append(f"--bootstrap-expect={count}")
    elif count > 1:
        peers = ",".join(
            f"{b.broker_id}@127.0.0.1:{b.client_port}@127.0.0.1:{b.peer_port}" for b in brokers
        )
        for b in brokers:
            b.process.argv.append(f"--peers={peers}")
    try:
        for b in brokers:
            b.launch()
        for b in brokers:
            b.wait_ready(ready_timeout_s)
        yield brokers
    finally:
        for b in brokers:
            b.stop()
