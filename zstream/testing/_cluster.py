"""Real broker processes on free loopback ports: `Broker`, `Cluster` and `cluster`.

A broker here is ``python -P -m zstream.broker.cli broker`` (running the zstream
this process imported: ``zstream.broker._child``) in a child process of its own
session, listening on 127.0.0.1 only, with its data in ``<root>/broker-<id>``
and its output in ``<root>/broker-<id>.log``. One broker runs embedded (no
discovery at all); several run as a static cluster from one ``--peers`` list, or
through an etcd the caller runs (``etcd=``). Ready means: the broker answers a
metadata request and names a controller (so a topic can be created at once).
Teardown is by PID: SIGTERM to every broker, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Protocol

import zmq

from zstream.broker._child import broker_argv, child_env
from zstream.clients import MetadataRequest, ZStreamError
from zstream.clients._protocol import decode_reply, encode_request
from zstream.testing._process import ManagedProcess, free_port, wait_until

__all__ = ["Broker", "Cluster", "ClusterFactory", "cluster", "serves"]

# 30 s: a fresh broker is ready in about a second; the rest is headroom for a loaded
# CI machine, where three brokers and a test runner share two cores.
_READY_TIMEOUT_S = 30.0
# 20 s: a broker's graceful stop hands leadership over and snapshots its controller
# state; under load that can take seconds, and SIGKILL afterwards loses nothing
# acknowledged anyway.
_STOP_GRACE_S = 20.0


def serves(client_addr: str, *, controller: bool = True, timeout_ms: int = 300) -> bool:
    """One metadata request on a fresh DEALER socket: does the broker at
    ``client_addr`` (``tcp://host:port``) answer it, and (with ``controller``) name
    the controller's leader, so that it is part of a cluster that has formed?"""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(client_addr)
    try:
        sock.send_multipart(encode_request(1, MetadataRequest()))
        if not sock.poll(timeout_ms):
            return False
        reply = decode_reply(sock.recv_multipart())
    except ZStreamError:
        return False
    finally:
        sock.close()
    return reply.error == 0 and (not controller or reply.result.get("controller") is not None)


class Broker:
    """One broker process. `kill` or `stop`, then `start`, keeps its id, ports and
    data directory: a restart of the same broker.

    Normally made by `cluster` (or the ``zstream_cluster`` fixtures) rather than by
    hand. ``peers`` is a ``--peers`` list (``ID@CLIENT_HOST:PORT@PEER_HOST:PORT,...``)
    naming this broker too; ``etcd`` an etcd endpoint (``host:port``) to discover the
    others through; with neither the broker runs alone, embedded. ``extra_args`` go
    to ``zstream broker`` after the ones set here (so they win), e.g.
    ``["--no-fsync"]`` or ``["--config=broker.toml"]``.
    """

    def __init__(
        self,
        root: Path,
        broker_id: int,
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        metrics_port: int | None = None,
        peers: str | None = None,
        etcd: str | None = None,
        extra_args: Sequence[str] = (),
        log_level: str = "INFO",
        env: Mapping[str, str] | None = None,
    ) -> None:
        root = Path(root).absolute()  # the same place after a chdir, for a restart too
        self.broker_id = broker_id
        self.client_port = free_port() if client_port is None else client_port
        self.peer_port = free_port() if peer_port is None else peer_port
        self.metrics_port = free_port() if metrics_port is None else metrics_port
        self.data_dir = root / f"broker-{broker_id}"
        argv = broker_argv(
            "broker",
            f"--id={broker_id}",
            f"--data-dir={self.data_dir}",
            f"--client-addr=127.0.0.1:{self.client_port}",
            f"--peer-addr=127.0.0.1:{self.peer_port}",
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            f"--log-level={log_level}",
        )
        if peers is not None:
            argv.append(f"--peers={peers}")
        if etcd is not None:
            argv.append(f"--etcd={etcd}")
        argv.extend(extra_args)
        # The caller's ZSTREAM_* settings (a ZSTREAM_DATA_DIR, a ZSTREAM_ETCD_ENDPOINTS)
        # would reconfigure the broker behind the test's back: they do not reach it.
        # ``env`` is set on top on purpose (say, ZSTREAM_TRACE_DIR for bench/latency.py).
        # The broker runs the zstream this process imported, whatever the current
        # directory holds (zstream.broker._child).
        settings = {k: v for k, v in os.environ.items() if not k.startswith("ZSTREAM_")}
        settings.update(env or {})
        self._process = ManagedProcess(f"broker-{broker_id}", argv, root, env=child_env(settings))

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running() else "down"
        return f"<Broker {self.broker_id} {self.bootstrap} {state}>"

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``: what Producer, Consumer and Admin take."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_addr(self) -> str:
        """``tcp://127.0.0.1:PORT``, the client socket's ZeroMQ endpoint."""
        return f"tcp://127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        """The broker's output, appended across restarts."""
        return self._process.log_path

    def running(self) -> bool:
        """Is the process alive (a method, not a property: a test asserts it before
        and after a kill, and a type checker must not carry the first answer over)."""
        return self._process.running()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process.running() else None

    def start(self, timeout_s: float = _READY_TIMEOUT_S, *, controller: bool = True) -> None:
        """Start the process and wait until it serves (see `wait_serving`)."""
        self.launch()
        self.wait_serving(timeout_s, controller=controller)

    def launch(self) -> None:
        """Start the process without waiting (the brokers of a new static cluster
        wait for each other, so they are launched together)."""
        self._process.start()

    def wait_serving(self, timeout_s: float = _READY_TIMEOUT_S, *, controller: bool = True) -> None:
        """Wait until the broker answers metadata and knows the controller's leader
        (``controller=False``: answering is enough, as it is for a broker whose peers
        are all down). A broker that exits meanwhile, or is not serving by the
        deadline, fails with the tail of its log; one that timed out is stopped."""
        try:
            wait_until(
                lambda: (
                    not self._process.running() or serves(self.client_addr, controller=controller)
                ),
                timeout_s,
                f"broker {self.broker_id} to serve on {self.bootstrap}",
                interval_s=0.05,
            )
        except TimeoutError as exc:
            self.stop()  # never leave a half-started child running
            raise TimeoutError(f"{exc}; its log ends:\n{self.tail()}") from None
        if not self._process.running():
            raise RuntimeError(
                f"broker {self.broker_id} exited with {self._process.returncode()}; "
                f"its log ends:\n{self.tail()}"
            )

    def terminate(self) -> None:
        """SIGTERM without waiting; `stop` waits."""
        self._process.terminate()

    def stop(self, grace_s: float = _STOP_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; the exit code (None if it never
        ran)."""
        return self._process.stop(grace_s)

    def kill(self) -> None:
        """SIGKILL: the broker dies at once, as on a power cut of its process."""
        self._process.kill()

    def output(self) -> str:
        """Everything the broker has logged so far, across restarts."""
        return self._process.output()

    def tail(self, lines: int = 40) -> str:
        return self._process.tail(lines)


class Cluster:
    """``brokers`` brokers forming one cluster (ids 1..n). Use `cluster` or the
    pytest fixtures; `start` and `close` (or ``with``) run it by hand.

    ``path`` holds the data and logs (kept afterwards); by default a temporary
    directory, removed by `close`.
    """

    # The class of its brokers: a subclass may name a Broker subclass with helpers of
    # its own (it takes Broker's constructor arguments).
    broker_type: ClassVar[type[Broker]] = Broker

    def __init__(
        self,
        brokers: int = 1,
        *,
        path: Path | str | None = None,
        etcd: str | None = None,
        extra_args: Sequence[str] = (),
        log_level: str = "INFO",
        ready_timeout_s: float = _READY_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if brokers < 1:
            raise ValueError(f"a cluster needs at least one broker, not {brokers}")
        self._own_root = path is None
        chosen = tempfile.mkdtemp(prefix="zstream-test-") if path is None else path
        self.root = Path(chosen).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self.ready_timeout_s = ready_timeout_s
        ports = {i: (free_port(), free_port(), free_port()) for i in range(1, brokers + 1)}
        peers: str | None = None
        extra = list(extra_args)
        if etcd is not None:
            extra.insert(0, f"--bootstrap-expect={brokers}")
        elif brokers > 1:
            peers = ",".join(
                f"{i}@127.0.0.1:{client}@127.0.0.1:{peer}" for i, (client, peer, _) in ports.items()
            )
        self.brokers: list[Broker] = [
            self.broker_type(
                self.root,
                i,
                client_port=client,
                peer_port=peer,
                metrics_port=metrics,
                peers=peers,
                etcd=etcd,
                extra_args=extra,
                log_level=log_level,
                env=env,
            )
            for i, (client, peer, metrics) in ports.items()
        ]
        self._closed = False

    def __repr__(self) -> str:
        return f"<Cluster {self.brokers!r}>"

    @property
    def bootstrap(self) -> str:
        """Every broker's client address, comma-separated: what Producer, Consumer
        and Admin take as it is."""
        return ",".join(b.bootstrap for b in self.brokers)

    def broker(self, broker_id: int) -> Broker:
        for b in self.brokers:
            if b.broker_id == broker_id:
                return b
        raise KeyError(f"no broker {broker_id} in {self!r}")

    def start(self) -> Cluster:
        """Launch every broker, then wait until each serves. On failure every process
        is stopped before the error propagates."""
        try:
            for b in self.brokers:
                b.launch()
            deadline = time.monotonic() + self.ready_timeout_s
            for b in self.brokers:
                b.wait_serving(max(0.1, deadline - time.monotonic()))
        except BaseException:
            self.close()
            raise
        return self

    def kill(self, broker_id: int) -> None:
        """SIGKILL one broker; `restart` brings it back."""
        self.broker(broker_id).kill()

    def stop(self, broker_id: int) -> int | None:
        """Stop one broker gracefully (SIGTERM); its exit code."""
        return self.broker(broker_id).stop()

    def restart(self, broker_id: int, timeout_s: float | None = None) -> None:
        """Start a killed or stopped broker again, on the same ports and data
        directory, and wait until it serves; a broker still running is stopped
        first (SIGTERM)."""
        b = self.broker(broker_id)
        b.stop()
        b.start(self.ready_timeout_s if timeout_s is None else timeout_s)

    def wait_serving(self, broker_id: int | None = None, timeout_s: float | None = None) -> None:
        """Wait until the broker (by default every running broker) serves."""
        chosen = [self.broker(broker_id)] if broker_id is not None else self.running()
        deadline = time.monotonic() + (self.ready_timeout_s if timeout_s is None else timeout_s)
        for b in chosen:
            b.wait_serving(max(0.1, deadline - time.monotonic()))

    def running(self) -> list[Broker]:
        return [b for b in self.brokers if b.running()]

    def close(self) -> None:
        """SIGTERM every broker at once, wait for each (SIGKILL after the grace),
        and remove the temporary directory if this cluster made it."""
        if self._closed:
            return
        self._closed = True
        for b in self.brokers:
            b.terminate()
        for b in self.brokers:
            b.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ClusterFactory(Protocol):
    """The ``zstream_cluster_factory`` fixture's type: starts a `Cluster` and
    returns it once every broker serves."""

    def __call__(
        self,
        brokers: int = 1,
        *,
        etcd: str | None = None,
        extra_args: Sequence[str] = (),
        log_level: str = "INFO",
        ready_timeout_s: float = 30.0,
    ) -> Cluster: ...


@contextlib.contextmanager
def cluster(
    brokers: int = 1,
    *,
    path: Path | str | None = None,
    etcd: str | None = None,
    extra_args: Sequence[str] = (),
    log_level: str = "INFO",
    ready_timeout_s: float = _READY_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> Iterator[Cluster]:
    """A running cluster of real brokers for the length of the ``with`` block::

        with zstream.testing.cluster(brokers=3) as c:
            asyncio.run(exercise_my_app(c.bootstrap))  # Producer(c.bootstrap), ...

    One broker runs embedded, several as a static cluster (no etcd), unless ``etcd``
    names an etcd endpoint to discover each other through. Data and logs go to
    ``path`` (kept) or a temporary directory (removed). Every broker is stopped by
    PID on the way out, whatever happened inside. The brokers get this process's
    environment without its ``ZSTREAM_*`` variables, plus ``env``.
    """
    c = Cluster(
        brokers,
        path=path,
        etcd=etcd,
        extra_args=extra_args,
        log_level=log_level,
        ready_timeout_s=ready_timeout_s,
        env=env,
    )
    with c:
        yield c
