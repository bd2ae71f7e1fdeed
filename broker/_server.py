"""The broker process: discovery, the controller, partitions, the client front
end, metrics, and graceful shutdown, on one uvloop event loop.

Start-up order: register with discovery; wait until ``bootstrap_expect`` brokers
are known; start the controller (group 0) and register this broker in it; open
the partitions the controller places here; then serve clients. On SIGTERM or
SIGINT: stop taking requests, hand leadership away (with a replicated host),
close partitions, deregister, exit 0.

This iteration runs the controller and the partitions of one broker (the
embedded single node, or a one-broker etcd/static cluster): every partition has
a single replica and the controller applies commands locally, snapshotting its
state to ``controller/snapshot`` after each one. Multi-broker clusters need the
multi-Raft host (``replication.RaftHost``), which the controller and partitions
are shaped for: a ``LocalController`` and a ``LocalReplica`` stand where the
Raft group 0 and the partition groups go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import storage
from broker._config import BrokerConfig, ConfigError
from broker._controller import (
    CONTROLLER_GROUP_ID,
    ControllerState,
    PartitionAssignment,
    TopicRecord,
    allocate_producer_id_command,
    create_topic_command,
    delete_topic_command,
    register_broker_command,
    validate_topic_configs,
)
from broker._discovery import BrokerInfo, EtcdRegistry, Registry, StaticRegistry, parse_endpoints
from broker._frontend import Frontend
from broker._metrics import BrokerMetrics
from broker._partitions import LocalReplica, PartitionManager, log_config_for
from clients import (
    Acks,
    CreateTopicRequest,
    UnavailableError,
    UnknownPartitionError,
    UnknownTopicError,
    ZStreamError,
)
from clients._protocol import Buffer

__all__ = ["Broker", "LocalController"]

log = logging.getLogger("zstream.broker")

_RETENTION_INTERVAL_S = 30.0


class LocalController:
    """The controller group on a single broker: a command is applied as soon as its
    snapshot is durable (``storage.atomic_write``), so a restart finds every command
    that was acknowledged."""

    def __init__(self, directory: Path, broker_id: int) -> None:
        self._path = directory / "snapshot"
        directory.mkdir(parents=True, exist_ok=True)
        raw = storage.read_file_if_exists(self._path)
        self.state = ControllerState() if raw is None else ControllerState.restore(raw)
        self.leader = broker_id
        self._lock = asyncio.Lock()

    async def propose(self, command: bytes) -> object:
        async with self._lock:
            result = self.state.apply(self.state.applied_index + 1, command)
            await asyncio.to_thread(storage.atomic_write, self._path, self.state.snapshot())
        if isinstance(result, ZStreamError):
            raise result
        return result


class _Partition:
    """Wraps a replica to time commits for the metrics (the front end's view)."""

    def __init__(self, replica: LocalReplica, metrics: BrokerMetrics) -> None:
        self._replica = replica
        self._metrics = metrics

    @property
    def high_watermark(self) -> int:
        return self._replica.high_watermark

    @property
    def log_start_offset(self) -> int:
        return self._replica.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._replica.log_end_offset

    def check_leader(self) -> None:
        self._replica.check_leader()

    async def produce(self, batch: Buffer, acks: Acks, timeout_s: float) -> int:
        started = time.monotonic()
        base = await self._replica.produce(batch, acks, timeout_s)
        self._metrics.commit_latency.observe(time.monotonic() - started)
        return base

    def read(self, offset: int, max_bytes: int) -> list[memoryview]:
        return self._replica.read(offset, max_bytes)

    async def wait_beyond(self, offset: int, timeout_s: float) -> bool:
        return await self._replica.wait_beyond(offset, timeout_s)


class Broker:
    """One broker. ``await run()`` serves until `request_stop` (or cancellation)."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.me = BrokerInfo(config.broker_id, config.client_addr, config.peer_addr)
        self._stop = asyncio.Event()
        self.registry = self._make_registry()
        self.controller: LocalController | None = None
        self.partitions = PartitionManager(config.broker_id, config.data_dir, self._open_replica)
        self.metrics = BrokerMetrics(self._gauges)
        self.frontend: Frontend | None = None
        self.metrics_port: int | None = None

    def _make_registry(self) -> Registry:
        cfg = self.config
        if cfg.discovery == "etcd":
            endpoints = parse_endpoints(",".join(cfg.etcd_endpoints))
            return EtcdRegistry(endpoints, cfg.cluster_name, self.me)
        if cfg.discovery == "static":
            return StaticRegistry(
                [BrokerInfo(p.broker_id, p.client_addr, p.peer_addr) for p in cfg.peers]
            )
        return StaticRegistry([self.me])

    def _open_replica(
        self, topic: TopicRecord, part: PartitionAssignment, directory: Path
    ) -> LocalReplica:
        config = log_config_for(topic.configs, self.config.segment_bytes)
        return LocalReplica(directory / "log", config, fsync=self.config.fsync)

    def request_stop(self) -> None:
        self._stop.set()

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if cfg.bootstrap_expect > 1 or len(cfg.peers) > 1:
            raise ConfigError(
                "multi-broker clusters need the replicated controller (replication.RaftHost), "
                "which this build does not have yet: run one broker per cluster"
            )
        tasks: list[asyncio.Task[Any]] = []
        try:
            tasks.append(asyncio.create_task(self.registry.run(), name="registry"))
            await self._await_or_stop(
                self.registry.wait_for(lambda m: len(m) >= cfg.bootstrap_expect)
            )
            if self._stop.is_set():
                return
            self.controller = LocalController(cfg.data_dir / "controller", cfg.broker_id)
            state = self.controller.state
            known = state.brokers.get(cfg.broker_id)
            if known is None or (known.client_addr, known.peer_addr) != (
                cfg.client_addr,
                cfg.peer_addr,
            ):
                await self.controller.propose(
                    register_broker_command(cfg.broker_id, cfg.client_addr, cfg.peer_addr)
                )
            await self.partitions.reconcile(self.controller.state)
            self.frontend = Frontend(
                self,
                cfg.client_addr,
                max_message_bytes=cfg.max_message_bytes,
                max_in_flight_per_client=cfg.max_in_flight_per_client,
                heartbeat_ms=cfg.stream_heartbeat_ms,
                on_request=self.metrics.on_request,
            )
            if cfg.metrics_addr is not None:
                host, _, port = cfg.metrics_addr.rpartition(":")
                self.metrics_port = self.metrics.serve(host.removeprefix("tcp://"), int(port))
            tasks.append(asyncio.create_task(self.frontend.run(), name="frontend"))
            tasks.append(asyncio.create_task(self._retention_loop(), name="retention"))
            log.info(
                "broker ready id=%d client=%s peer=%s discovery=%s metrics=%s",
                cfg.broker_id,
                self.frontend.addr,
                cfg.peer_addr,
                cfg.discovery,
                self.metrics_port,
            )
            stop = asyncio.create_task(self._stop.wait(), name="stop")
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            for task in done:
                if task is not stop and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self._shutdown(tasks)

    async def _await_or_stop(self, awaitable: Any) -> None:
        wait = asyncio.ensure_future(awaitable)
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait([wait, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (wait, stop):
                t.cancel()
            await asyncio.gather(wait, stop, return_exceptions=True)

    async def _shutdown(self, tasks: Sequence[asyncio.Task[Any]]) -> None:
        log.info("broker stopping id=%d", self.config.broker_id)
        frontend_tasks = [t for t in tasks if t.get_name() == "frontend"]
        for task in frontend_tasks:
            task.cancel()
        await asyncio.gather(*frontend_tasks, return_exceptions=True)
        if self.frontend is not None:
            await self.frontend.close()
        # With replicated partitions, leadership is handed to other replicas here,
        # before the partitions close; single-replica partitions have no one to take it.
        await self.partitions.close()
        if isinstance(self.registry, EtcdRegistry):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.registry.deregister(), 3)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.metrics.close()
        log.info("broker stopped id=%d", self.config.broker_id)

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(_RETENTION_INTERVAL_S)
            removed = self.partitions.apply_retention()
            if removed:
                log.info("retention removed segments=%d", removed)

    # -- metrics ---------------------------------------------------------------------------

    def _gauges(self) -> dict[str, float]:
        stats = self.frontend.stats if self.frontend is not None else None
        replicas = self.partitions.replicas()
        return {
            "bytes_in_total": float(stats.bytes_in if stats else 0),
            "bytes_out_total": float(stats.bytes_out if stats else 0),
            "leader_partitions": float(sum(1 for r in replicas.values() if r.is_leader)),
            "hosted_partitions": float(len(replicas)),
            # Single-replica partitions are never under-replicated.
            "under_replicated_partitions": 0.0,
            "controller_leader": float(1 if self.controller is not None else 0),
        }

    # -- the front end's Backend -------------------------------------------------------------

    def _state(self) -> ControllerState:
        if self.controller is None:
            raise UnavailableError("the controller is not ready yet")
        return self.controller.state

    def partition(self, topic: str, partition: int) -> _Partition:
        record = self._state().topics.get(topic)
        if record is None:
            raise UnknownTopicError(f"unknown topic {topic!r}")
        if not 0 <= partition < len(record.partitions):
            raise UnknownPartitionError(f"topic {topic!r} has no partition {partition}")
        replica = self.partitions.get(topic, partition)
        if replica is None:
            raise UnavailableError(f"{topic}/{partition} is not open on this broker yet")
        return _Partition(replica, self.metrics)

    def _topic_doc(self, topic: TopicRecord) -> dict[str, Any]:
        parts = []
        for p in topic.partitions:
            replica = self.partitions.get(topic.name, p.partition)
            parts.append(
                {
                    "partition": p.partition,
                    "leader": p.replicas[0] if replica is not None else None,
                    "replicas": list(p.replicas),
                    "in_sync": list(p.replicas) if replica is not None else [],
                    "hwm": replica.high_watermark if replica is not None else None,
                    "log_start": replica.log_start_offset if replica is not None else None,
                }
            )
        return {
            "name": topic.name,
            "replication_factor": topic.replication_factor,
            "configs": dict(topic.configs),
            "partitions": parts,
        }

    def metadata(self, topics: Sequence[str] | None) -> dict[str, Any]:
        state = self._state()
        live = self.registry.members
        brokers = [
            {"id": b.id, "client_addr": b.client_addr, "alive": b.id in live}
            for b in sorted(state.brokers.values(), key=lambda b: b.id)
        ]
        names = sorted(state.topics) if topics is None else [t for t in topics if t in state.topics]
        return {
            "brokers": brokers,
            "controller": self.controller.leader if self.controller else None,
            "controller_group": CONTROLLER_GROUP_ID,
            "topics": [self._topic_doc(state.topics[n]) for n in names],
        }

    def list_topics(self) -> list[str]:
        return sorted(self._state().topics)

    def describe_topic(self, name: str) -> dict[str, Any]:
        topic = self._state().topics.get(name)
        if topic is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        return self._topic_doc(topic)

    async def create_topic(self, request: CreateTopicRequest) -> dict[str, Any]:
        if self.controller is None:
            raise UnavailableError("the controller is not ready yet")
        configs = validate_topic_configs(request.configs)
        live = sorted(self.registry.members)
        command = create_topic_command(
            request.name, request.partitions, request.replication_factor, configs, live
        )
        result = await self.controller.propose(command)
        assert isinstance(result, TopicRecord)
        await self.partitions.reconcile(self.controller.state)
        log.info(
            "topic created name=%s partitions=%d replication_factor=%d",
            request.name,
            request.partitions,
            request.replication_factor,
        )
        return self._topic_doc(result)

    async def delete_topic(self, name: str) -> None:
        if self.controller is None:
            raise UnavailableError("the controller is not ready yet")
        await self.controller.propose(delete_topic_command(name))
        await self.partitions.reconcile(self.controller.state)
        log.info("topic deleted name=%s", name)

    async def init_producer(self) -> dict[str, Any]:
        if self.controller is None:
            raise UnavailableError("the controller is not ready yet")
        pid = await self.controller.propose(allocate_producer_id_command())
        return {"producer_id": pid, "epoch": 0}


def install_signal_handlers(broker: Broker) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, broker.request_stop)
