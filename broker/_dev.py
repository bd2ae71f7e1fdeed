"""``zstream dev``: etcd plus N brokers on local ports, in the foreground.

Children run in their own sessions, so Ctrl-C reaches only this process, which
then stops the brokers (SIGTERM, by PID, waiting for each to exit) and etcd.
Logs go to ``<data dir>/logs/``.

With ``--secure`` the same cluster runs with CURVE on every socket. The keys live
in ``<data dir>/keys/`` (made on the first secure run, kept after)::

    brokers/ID.key_secret   each broker's peer key pair
    peers/ID.key            the peer key set (public keys named by broker id)
    server.key[_secret]     the client-facing key pair every broker serves under
    clients/admin.key       the client key set: one principal, admin (a super user)
    admin.key_secret        admin's credentials

and ``<data dir>/client.env`` holds the ``export`` lines a client shell needs.
"""

from __future__ import annotations

import functools
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO

import zmq

from zstream.broker._child import broker_argv, child_env
from zstream.broker._keys import generate_key_pair
from zstream.clients import Credentials, MetadataRequest, ZStreamError
from zstream.clients._protocol import decode_reply, encode_request

__all__ = ["run_dev"]

_ETCD_CLIENT_PORT = 23790  # beside etcd's usual 2379, so a system etcd is left alone
_ETCD_PEER_PORT = 23800
_STOP_GRACE_S = 30.0


class DevError(Exception):
    pass


class _Stop(Exception):
    pass


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the brokers bind (ZeroMQ sets SO_REUSEADDR): a port whose last
        # connection lingers in TIME_WAIT after a restart is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class _Child:
    def __init__(
        self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _answers_metadata(
    ctx: zmq.Context[zmq.Socket[bytes]], addr: str, credentials: Credentials | None = None
) -> bool:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if credentials is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, credentials.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, credentials.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, credentials.secret_key)
    sock.connect(addr)
    try:
        sock.send_multipart(encode_request(1, MetadataRequest()))
        if not sock.poll(500):
            return False
        reply = decode_reply(sock.recv_multipart())
    except ZStreamError:
        return False
    finally:
        sock.close()
    return reply.error == 0


# The principal `zstream dev --secure` makes, a super user.
DEV_ADMIN = "admin"


def _dev_keys(keys: Path, brokers: int) -> list[str]:
    """Make (or keep) the keys of a secure dev cluster; return the broker flags they
    need, the same for every broker but its own key pair (``{id}`` in the first)."""
    for i in range(1, brokers + 1):
        if not (keys / "brokers" / f"{i}.key_secret").exists():
            generate_key_pair(str(i), keys / "brokers", force=True)
        (keys / "peers").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(keys / "brokers" / f"{i}.key", keys / "peers" / f"{i}.key")
    for name in ("server", DEV_ADMIN):
        if not (keys / f"{name}.key_secret").exists():
            generate_key_pair(name, keys, force=True)
    (keys / "clients").mkdir(exist_ok=True)
    shutil.copyfile(keys / f"{DEV_ADMIN}.key", keys / "clients" / f"{DEV_ADMIN}.key")
    return [
        f"--curve-secret-key-file={keys / 'brokers' / '{id}.key_secret'}",
        f"--peer-keys-dir={keys / 'peers'}",
        f"--client-secret-key-file={keys / 'server.key_secret'}",
        f"--client-credentials-dir={keys / 'clients'}",
        f"--super-users={DEV_ADMIN}",
    ]


def run_dev(data_dir: Path, brokers: int, port_base: int, *, secure: bool = False) -> int:
    from zstream.broker.cli import DEV_CLIENT_PORT, UserError

    etcd = shutil.which("etcd")
    if etcd is None:
        raise UserError("etcd is not installed: run `make run` (installs Debian's etcd-server)")
    if port_base == 0:
        ports = [(_free_port(), _free_port(), _free_port()) for _ in range(brokers)]
    elif 1024 <= port_base <= 65535 - 200 - brokers:
        ports = [(port_base + i, port_base + 100 + i, port_base + 200 + i) for i in range(brokers)]
    else:
        raise UserError(f"--port-base must be 0 or in 1024..{65535 - 200 - brokers}")
    for port in [p for triple in ports for p in triple]:
        if not _port_free(port):
            raise UserError(f"port {port} is in use (is another `zstream dev` running?)")
    fixed = port_base != 0
    client_port = _ETCD_CLIENT_PORT if fixed and _port_free(_ETCD_CLIENT_PORT) else _free_port()
    peer_port = _ETCD_PEER_PORT if fixed and _port_free(_ETCD_PEER_PORT) else _free_port()
    data_dir = data_dir.resolve()
    logs = data_dir / "logs"
    keys = data_dir / "keys"
    security_flags = _dev_keys(keys, brokers) if secure else []
    credentials = (
        Credentials.load(keys / f"{DEV_ADMIN}.key_secret", keys / "server.key") if secure else None
    )
    children: list[_Child] = []

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    # Both handled explicitly: a shell that starts us in the background leaves SIGINT
    # ignored, and Ctrl-C must still stop everything.
    previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        etcd_client = f"http://127.0.0.1:{client_port}"
        etcd_peer = f"http://127.0.0.1:{peer_port}"
        children.append(
            _Child(
                "etcd",
                [
                    etcd,
                    "--name=zstream-dev",
                    f"--data-dir={data_dir / 'etcd'}",
                    f"--listen-client-urls={etcd_client}",
                    f"--advertise-client-urls={etcd_client}",
                    f"--listen-peer-urls={etcd_peer}",
                    f"--initial-advertise-peer-urls={etcd_peer}",
                    f"--initial-cluster=zstream-dev={etcd_peer}",
                ],
                logs / "etcd.log",
            )
        )
        _wait(lambda: _accepts(client_port), children, 20, "etcd")
        print(f"zstream dev: etcd      at 127.0.0.1:{client_port}", flush=True)
        for i, (cport, pport, mport) in enumerate(ports, start=1):
            argv = broker_argv(
                "broker",
                f"--id={i}",
                f"--data-dir={data_dir / f'broker-{i}'}",
                f"--client-addr=127.0.0.1:{cport}",
                f"--peer-addr=127.0.0.1:{pport}",
                f"--etcd=127.0.0.1:{client_port}",
                f"--metrics-addr=127.0.0.1:{mport}",
                f"--bootstrap-expect={brokers}",
                *(flag.replace("{id}", str(i)) for flag in security_flags),
            )
            children.append(_Child(f"broker-{i}", argv, logs / f"broker-{i}.log", env=child_env()))
        for i, (cport, _, mport) in enumerate(ports, start=1):
            addr = f"tcp://127.0.0.1:{cport}"
            ready = functools.partial(_answers_metadata, ctx, addr, credentials)
            _wait(ready, children, 60, f"broker {i}")
            print(
                f"zstream dev: broker {i}  at 127.0.0.1:{cport} "
                f"(metrics http://127.0.0.1:{mport}/metrics)",
                flush=True,
            )
        print(f"zstream dev: data and logs in {data_dir}", flush=True)
        bootstrap = ",".join(f"127.0.0.1:{c}" for c, _, _ in ports)
        if secure:
            exports = [
                f"export ZSTREAM_BOOTSTRAP={bootstrap}",
                f"export ZSTREAM_CREDENTIALS={keys / f'{DEV_ADMIN}.key_secret'}",
                f"export ZSTREAM_SERVER_KEY={keys / 'server.key'}",
            ]
            (data_dir / "client.env").write_text("".join(f"{line}\n" for line in exports))
            print(
                f"zstream dev: CURVE on; clients need (also in {data_dir / 'client.env'}):",
                flush=True,
            )
            for line in exports:
                print(f"  {line}", flush=True)
        elif port_base != DEV_CLIENT_PORT:
            print(f"zstream dev: clients need: export ZSTREAM_BOOTSTRAP={bootstrap}", flush=True)
        print("zstream dev: ready; press Ctrl-C to stop", flush=True)
        reported: set[str] = set()
        while True:
            # A broker that dies is reported, and the rest keep running: a dev cluster
            # is where one kills brokers to watch failover.
            time.sleep(0.5)
            for child in children:
                if not child.running() and child.name not in reported:
                    reported.add(child.name)
                    code = child.proc.returncode
                    print(f"zstream dev: {child.name} exited ({code}); the others run on")
    except (KeyboardInterrupt, _Stop):
        print("\nzstream dev: stopping", flush=True)
        return 0
    except DevError as exc:
        raise UserError(str(exc)) from exc
    finally:
        for sig in previous:  # a second Ctrl-C must not leave children running
            signal.signal(sig, signal.SIG_IGN)
        for child in reversed(children):
            child.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ctx.term()
        if children:
            print("zstream dev: stopped", flush=True)


def _wait(ready: Callable[[], bool], children: list[_Child], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        for child in children:
            if not child.running():
                raise DevError(f"{child.name} exited during start-up:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise DevError(f"{what} did not become ready within {timeout_s:.0f} s")
        time.sleep(0.1)
