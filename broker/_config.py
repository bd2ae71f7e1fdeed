"""The broker's configuration: one validated, frozen object.

Sources, later ones winning: built-in defaults, a TOML file (``--config``), then
``ZSTREAM_<FIELD>`` environment variables (``ZSTREAM_BROKER_ID=2``), then CLI flags.
Keys in the TOML file and the environment are the field names below; an unknown key
is an error, so a misspelled option is never silently ignored.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zstream import replication

__all__ = [
    "BrokerConfig",
    "ClientSecurity",
    "ConfigError",
    "PeerSpec",
    "is_loopback",
    "load_config",
    "normalize_addr",
]

_ENV_PREFIX = "ZSTREAM_"
_ADDR = re.compile(r"(?:tcp://)?(?P<host>[A-Za-z0-9.\-]+|\*):(?P<port>\d{1,5})")


class ConfigError(Exception):
    """The configuration is invalid; the message says which field and why."""


def normalize_addr(value: str, what: str) -> str:
    """``host:port`` or ``tcp://host:port`` to ``tcp://host:port``."""
    m = _ADDR.fullmatch(value.strip())
    if m is None or not 0 < int(m["port"]) < 65536:
        raise ConfigError(f"{what}: expected host:port, got {value!r}")
    return f"tcp://{m['host']}:{int(m['port'])}"


def is_loopback(addr: str) -> bool:
    """Whether a normalized ``tcp://host:port`` binds only inside 127.0.0.0/8."""
    host = addr.removeprefix("tcp://").rpartition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:  # "*", a host name: it may be reachable from elsewhere
        return False


@dataclasses.dataclass(frozen=True, slots=True)
class ClientSecurity:
    """CURVE on the client socket: the client-facing server key pair (one pair
    shared by every broker of the cluster, so a client needs one server key) and
    the client key set (public keys named by principal, ``alice.key``)."""

    public_key: bytes
    secret_key: bytes
    credentials_dir: Path


@dataclasses.dataclass(frozen=True, slots=True)
class PeerSpec:
    """One member of a static cluster: ``ID@CLIENT_HOST:PORT@PEER_HOST:PORT``."""

    broker_id: int
    client_addr: str
    peer_addr: str

    @classmethod
    def parse(cls, text: str) -> PeerSpec:
        parts = text.strip().split("@")
        if len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) <= 0:
            raise ConfigError(f"peers: expected ID@CLIENT_HOST:PORT@PEER_HOST:PORT, got {text!r}")
        return cls(
            int(parts[0]),
            normalize_addr(parts[1], "peers client address"),
            normalize_addr(parts[2], "peers peer address"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerConfig:
    broker_id: int
    data_dir: Path
    # Loopback by default: a dev broker should not listen on the network unasked.
    client_addr: str = "tcp://127.0.0.1:7101"
    peer_addr: str = "tcp://127.0.0.1:7201"
    # Discovery: etcd endpoints, or a static peer list, or neither (embedded single node).
    etcd_endpoints: tuple[str, ...] = ()
    peers: tuple[PeerSpec, ...] = ()
    # Namespaces the etcd keys, so several clusters can share one etcd.
    cluster_name: str = "zstream"
    # 1: a lone broker forms its controller at once (the embedded default).
    bootstrap_expect: int = 1
    # None: no metrics endpoint. host:port otherwise.
    metrics_addr: str | None = None
    # 8 MiB: room for a 1 MiB default batch many times over, small enough that one
    # hostile client cannot make the broker buffer much (ZMQ_MAXMSGSIZE).
    max_message_bytes: int = 8 * 1024 * 1024
    # 1024 requests per client in flight: a pipelining producer stays busy, a
    # runaway one is THROTTLED before it takes the broker's memory.
    max_in_flight_per_client: int = 1024
    # 128 MiB segments, storage's own default (see storage.LogConfig).
    segment_bytes: int = 128 * 1024 * 1024
    # Durability first: nothing is acknowledged before it is fsynced.
    fsync: bool = True
    # 1 s: idle push streams learn within a second or two that the broker is alive.
    stream_heartbeat_ms: int = 1000
    # 50 ms ticks, election after 10: sub-second failover (host-contract.md).
    tick_ms: int = 50
    # A short fsync with nothing else in flight runs on the loop instead of a worker
    # thread while recent fsyncs took under this (replication.HostConfig): 0 = always
    # in threads (the default: a stalled disk must not stall the loop).
    inline_sync_us: int = 0
    # 30 s: longer than any election, short enough that a stuck shutdown ends.
    shutdown_timeout_ms: int = 30_000
    # How often topic retention (retention_bytes / retention_ms) is enforced; Kafka's
    # log.retention.check.interval.ms is 5 minutes, 30 s keeps disks tighter.
    retention_check_ms: int = 30_000
    # Offsets of a consumer group with no members are dropped this long after its last
    # commit or departure (Kafka's offsets.retention.minutes: 7 days).
    offsets_retention_ms: int = 7 * 24 * 3600 * 1000
    # Compact the controller's Raft log (group 0) once this many entries sit below its
    # latest saved state; consumer-group commits are controller entries.
    controller_compact_after: int = 4096
    # A broker absent (from discovery, or silent on the peer links) this long has its
    # replicas re-placed on live brokers. 15 minutes, Redpanda's default: long enough
    # that a reboot or a rolling upgrade never triggers a full copy of its data.
    replica_replace_after_ms: int = 15 * 60 * 1000
    # The controller leader rebalances (`zstream cluster rebalance`) on its own when a
    # new broker registers and after a dead broker's re-placement or a decommission
    # finishes. Off: every move copies a replica over the network and each leadership
    # transfer makes producers retry once, so the operator picks the time (Kafka's
    # automatic leader rebalance moves leaders only; Redpanda's continuous data
    # balancing is opt-in too).
    auto_rebalance: bool = False
    # With security on: client connections per principal on one broker. Real clients
    # hold a few; 1,000 stops a runaway one before it takes the broker's memory. A
    # connection silent for connection_idle_ms no longer counts (Kafka's
    # connections.max.idle.ms: 10 min).
    max_connections_per_principal: int = 1000
    connection_idle_ms: int = 600_000
    log_level: str = "INFO"
    # -- security (docs/security.md) ------------------------------------------------------
    # Security is on when curve_secret_key_file is set; the other three key settings
    # are then required. Off (all unset), the broker refuses to bind outside 127.0.0.0/8
    # unless insecure is set.
    # This broker's peer key pair (a zmq.auth .key_secret file); its public half is
    # its identity, and must be peer_keys_dir/<broker_id>.key.
    curve_secret_key_file: Path | None = None
    # Broker public keys named by node id (1.key, 2.key ...): the only peers accepted.
    peer_keys_dir: Path | None = None
    # The client-facing server key pair, the same file on every broker of a cluster.
    client_secret_key_file: Path | None = None
    # Client public keys named by principal (alice.key): the only clients accepted.
    client_credentials_dir: Path | None = None
    # Principals allowed everything (read by the ACL checks): the operators' own
    # credentials, so that a fresh secured cluster, which denies everything else
    # (docs/security.md, "ACL model"), can be given its first ACLs.
    super_users: tuple[str, ...] = ()
    # Bind outside loopback without security anyway (a warning is logged at start).
    insecure: bool = False

    def __post_init__(self) -> None:
        if type(self.broker_id) is not int or self.broker_id <= 0:
            raise ConfigError(f"broker_id must be a positive integer, got {self.broker_id!r}")
        for name in ("client_addr", "peer_addr"):
            object.__setattr__(self, name, normalize_addr(getattr(self, name), name))
        if self.metrics_addr is not None:
            normalize_addr(self.metrics_addr, "metrics_addr")
        if self.etcd_endpoints and self.peers:
            raise ConfigError("give either etcd_endpoints or peers, not both")
        for endpoint in self.etcd_endpoints:
            normalize_addr(endpoint, "etcd_endpoints")
        if self.peers and self.broker_id not in {p.broker_id for p in self.peers}:
            raise ConfigError(f"peers must include this broker (id {self.broker_id})")
        if len({p.broker_id for p in self.peers}) != len(self.peers):
            raise ConfigError("peers: duplicate broker id")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.cluster_name):
            raise ConfigError(f"cluster_name {self.cluster_name!r}: use 1-64 of [A-Za-z0-9_-]")
        _at_least("bootstrap_expect", self.bootstrap_expect, 1)
        _at_least("max_message_bytes", self.max_message_bytes, 64 * 1024)
        _at_least("max_in_flight_per_client", self.max_in_flight_per_client, 1)
        _at_least("segment_bytes", self.segment_bytes, 64 * 1024)
        _at_least("stream_heartbeat_ms", self.stream_heartbeat_ms, 10)
        _at_least("tick_ms", self.tick_ms, 1)
        _at_least("inline_sync_us", self.inline_sync_us, 0)
        _at_least("shutdown_timeout_ms", self.shutdown_timeout_ms, 0)
        _at_least("retention_check_ms", self.retention_check_ms, 10)
        _at_least("offsets_retention_ms", self.offsets_retention_ms, 0)
        _at_least("controller_compact_after", self.controller_compact_after, 64)
        _at_least("replica_replace_after_ms", self.replica_replace_after_ms, 100)
        _at_least("max_connections_per_principal", self.max_connections_per_principal, 1)
        _at_least("connection_idle_ms", self.connection_idle_ms, 1000)
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR: {self.log_level}")
        self._check_security()

    def _check_security(self) -> None:
        keys = {name: getattr(self, name) for name in _KEY_SETTINGS}
        missing = [name for name, value in keys.items() if value is None]
        if len(missing) not in (0, len(keys)):
            raise ConfigError(
                f"security needs all of {', '.join(_KEY_SETTINGS)}: missing {missing}"
            )
        for name in self.super_users:
            if not _PRINCIPAL.fullmatch(name):
                raise ConfigError(f"super_users: {name!r} is not a principal name")
        if self.secure:
            self.peer_security()  # the key files must load now, not at first use
            self.client_security()
            return
        if self.insecure:
            return
        for name in ("client_addr", "peer_addr"):
            addr = getattr(self, name)
            if not is_loopback(addr):
                raise ConfigError(
                    f"{name} {addr} is outside 127.0.0.0/8 and security is off: set the "
                    f"CURVE keys (docs/security.md) or pass --insecure"
                )

    @property
    def secure(self) -> bool:
        """CURVE on the peer and client sockets (every key setting is given)."""
        return self.curve_secret_key_file is not None

    def peer_security(self) -> replication.PeerSecurity | None:
        if self.curve_secret_key_file is None or self.peer_keys_dir is None:
            return None
        try:
            security = replication.PeerSecurity.from_files(
                self.curve_secret_key_file, self.peer_keys_dir
            )
            own = security.key_set().key_of(str(self.broker_id))
        except replication.KeyFileError as exc:
            raise ConfigError(str(exc)) from exc
        if own != security.public_key:
            raise ConfigError(
                f"curve_secret_key_file: its public key is not "
                f"{self.peer_keys_dir}/{self.broker_id}.key (the key set must name this broker)"
            )
        return security

    def client_security(self) -> ClientSecurity | None:
        if self.client_secret_key_file is None or self.client_credentials_dir is None:
            return None
        try:
            public, secret = replication.load_key_pair(self.client_secret_key_file)
        except replication.KeyFileError as exc:
            raise ConfigError(str(exc)) from exc
        if not self.client_credentials_dir.is_dir():
            raise ConfigError(
                f"client_credentials_dir {self.client_credentials_dir} is no directory"
            )
        return ClientSecurity(public, secret, self.client_credentials_dir)

    @property
    def discovery(self) -> str:
        """``etcd``, ``static`` or ``embedded``."""
        return "etcd" if self.etcd_endpoints else "static" if self.peers else "embedded"


def _at_least(name: str, value: object, minimum: int) -> None:
    if type(value) is not int or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


_KEY_SETTINGS = (
    "curve_secret_key_file",
    "peer_keys_dir",
    "client_secret_key_file",
    "client_credentials_dir",
)
_PRINCIPAL = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_FIELDS = {f.name: f for f in dataclasses.fields(BrokerConfig)}
_PATH_SETTINGS = frozenset(("data_dir", *_KEY_SETTINGS))
_BOOL_SETTINGS = frozenset(("fsync", "insecure", "auto_rebalance"))


def _split_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [v for v in (p.strip() for p in value.split(",")) if v]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"expected a comma-separated string or a list of strings, got {value!r}")


def _coerce(name: str, value: object) -> object:
    """Turn a TOML value or an environment string into the field's type."""
    if name in ("broker_id", "bootstrap_expect", "controller_compact_after") or name.endswith(
        ("_bytes", "_ms", "_us", "_client", "_principal")
    ):
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        if type(value) is not int:
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if name in _BOOL_SETTINGS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{name} must be a boolean, got {value!r}")
    if name in _PATH_SETTINGS:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{name} must be a path, got {value!r}")
        return Path(value)
    if name in ("etcd_endpoints", "super_users"):
        return tuple(_split_list(value))
    if name == "peers":
        return tuple(PeerSpec.parse(p) for p in _split_list(value))
    if name == "metrics_addr" and value in ("", None):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _layer(source: str, values: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in values.items():
        if key not in _FIELDS:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        out[key] = _coerce(key, value)
    return out


def load_config(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> BrokerConfig:
    """Defaults < TOML file < ``ZSTREAM_*`` environment < flags (None flags are unset)."""
    merged: dict[str, Any] = {}
    if config_file is not None:
        try:
            with config_file.open("rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from exc
        merged.update(_layer(str(config_file), doc))
    env = os.environ if environ is None else environ
    # ZSTREAM_BOOTSTRAP belongs to the client commands, not to the broker.
    env_values = {
        k[len(_ENV_PREFIX) :].lower(): v
        for k, v in env.items()
        if k.startswith(_ENV_PREFIX) and k[len(_ENV_PREFIX) :].lower() in _FIELDS
    }
    merged.update(_layer("environment", env_values))
    merged.update(_layer("flags", {k: v for k, v in (flags or {}).items() if v is not None}))
    for required in ("broker_id", "data_dir"):
        if required not in merged:
            raise ConfigError(f"{required} is required (flag, ZSTREAM_{required.upper()} or file)")
    try:
        return BrokerConfig(**merged)
    except TypeError as exc:  # pragma: no cover - _layer checks the names
        raise ConfigError(str(exc)) from exc
