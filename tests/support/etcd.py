"""A real etcd server on free loopback ports, for integration tests."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from tests.support.proc import ManagedProcess, free_port, wait_until


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EtcdServer:
    """One etcd member. ``stop()`` and ``start()`` keep its ports and data, so a
    test can take etcd away and bring it back."""

    def __init__(self, workdir: Path, name: str = "etcd") -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not installed: `make test` installs Debian's etcd-server")
        self.host = "127.0.0.1"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = workdir / f"{name}-data"
        peer_url = f"http://{self.host}:{self.peer_port}"
        client_url = f"http://{self.host}:{self.client_port}"
        self.process = ManagedProcess(
            name,
            [
                binary,
                "--name",
                name,
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"{name}={peer_url}",
                "--initial-cluster-state",
                "new",
                # Small and quick: tests need no snapshots or long heartbeats.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "250",
                "--quota-backend-bytes",
                str(64 * 1024 * 1024),
            ],
            workdir,
        )

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    def start(self, timeout_s: float = 20.0) -> None:
        self.process.start()
        try:
            wait_until(
                lambda: _accepts(self.host, self.client_port) or not self.process.running(),
                timeout_s,
                f"etcd on {self.endpoint}",
            )
        except TimeoutError:
            self.process.stop()  # never leave a half-started child running
            raise
        if not self.process.running():
            raise RuntimeError(f"etcd exited early:\n{self.process.tail()}")

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
