"""Linux network namespaces for partition tests: N node namespaces on one bridge.

Layout of one `Network` (``<tag>`` is ``zs-<pid>x<seq>``, unique per process and per
network, so concurrent runs never share a name)::

    namespace <tag>-br        bridge "br0", ports "p1".."pN" (one veth end per node)
    namespace <tag>-<n>       "eth0" = 10.231.<run>.<n>/24, the other end of port "p<n>"

The addresses exist only inside these namespaces (nothing is routed to or from the
host's own namespace), so a fixed peer port inside them cannot clash with anything.
Processes are started with `Network.exec_prefix` (``ip netns exec <ns>``, which execs,
so the child's PID is the node's PID and it is still ended by PID). Control traffic
from the test should use ``ipc://`` endpoints, which a partition does not cut.

A partition cuts the cable at the switch: `isolate` sets the node's bridge port down
(its eth0 loses carrier; TCP connections stall, as in a real partition) and `heal` sets
it up again. `close` deletes exactly the namespaces this object created (their veths go
with them) and nothing else.

`Network.create` raises `NetworkUnavailable` (with the reason) when namespaces cannot be
made here: not root, no ``ip`` tool, or ``ip netns add`` refused (e.g. in a container
without CAP_SYS_ADMIN); tests skip on it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from types import TracebackType

__all__ = ["Network", "NetworkUnavailable"]

_seq = itertools.count()
_TIMEOUT_S = 10.0


class NetworkUnavailable(Exception):
    """Network namespaces cannot be built on this machine; the message says why."""


def _ip(*args: str) -> None:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")


class Network:
    """``size`` node namespaces joined by a bridge namespace (see the module docstring)."""

    def __init__(self, size: int) -> None:
        if not 1 <= size <= 200:
            raise ValueError("size must be in 1..200")
        seq = next(_seq)
        self.size = size
        self.tag = f"zs-{os.getpid()}x{seq}"
        self.run = (os.getpid() + seq) % 250 + 1
        self.bridge_ns = f"{self.tag}-br"
        self._created: list[str] = []
        self._isolated: set[int] = set()

    def ns(self, node: int) -> str:
        """The namespace of node ``node`` (1-based)."""
        self._check(node)
        return f"{self.tag}-{node}"

    def address(self, node: int) -> str:
        """Node ``node``'s IPv4 address, reachable only from the other node namespaces."""
        self._check(node)
        return f"10.231.{self.run}.{node}"

    def exec_prefix(self, node: int) -> list[str]:
        """argv prefix that runs a program inside node ``node``'s namespace."""
        return ["ip", "netns", "exec", self.ns(node)]

    def create(self) -> None:
        """Build the namespaces, bridge and veth pairs; raise NetworkUnavailable when
        this machine cannot (everything made so far is deleted first)."""
        if os.geteuid() != 0:
            raise NetworkUnavailable("network namespaces need root")
        if shutil.which("ip") is None:
            raise NetworkUnavailable("the iproute2 'ip' tool is not installed")
        try:
            self._add_ns(self.bridge_ns)
        except RuntimeError as exc:
            raise NetworkUnavailable(f"'ip netns add' failed: {exc}") from exc
        try:
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for node in range(1, self.size + 1):
                ns = self.ns(node)
                self._add_ns(ns)
                port = f"p{node}"
                _ip(
                    "link", "add", "name", port, "netns", self.bridge_ns,
                    "type", "veth", "peer", "name", "eth0", "netns", ns,
                )  # fmt: skip
                _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except RuntimeError as exc:
            self.close()
            raise NetworkUnavailable(f"cannot build the test network: {exc}") from exc

    def isolate(self, node: int) -> None:
        """Cut node ``node`` off from every other node (its bridge port goes down)."""
        self._check(node)
        _ip("-n", self.bridge_ns, "link", "set", f"p{node}", "down")
        self._isolated.add(node)

    def heal(self, node: int | None = None) -> None:
        """Reconnect node ``node`` (every isolated node when None)."""
        nodes = sorted(self._isolated) if node is None else [node]
        for n in nodes:
            self._check(n)
            _ip("-n", self.bridge_ns, "link", "set", f"p{n}", "up")
            self._isolated.discard(n)

    @property
    def isolated(self) -> frozenset[int]:
        return frozenset(self._isolated)

    def close(self) -> None:
        """Delete every namespace this network created (idempotent). Processes still
        inside one keep it alive until they exit: end them (by PID) first."""
        while self._created:
            name = self._created.pop()
            subprocess.run(
                ["ip", "netns", "del", name],
                capture_output=True,
                timeout=_TIMEOUT_S,
                check=False,
            )

    def __enter__(self) -> Network:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)

    def _check(self, node: int) -> None:
        if not 1 <= node <= self.size:
            raise ValueError(f"node must be in 1..{self.size}, got {node}")
