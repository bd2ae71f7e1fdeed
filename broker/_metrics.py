"""Prometheus metrics over HTTP and structured (JSON lines) logs."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from zstream.clients import ZStreamError

__all__ = ["BrokerMetrics", "JsonLogFormatter", "configure_logging"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _Gauges(Collector):
    """Values read at scrape time from the broker (called from the HTTP thread; they
    read plain ints and dict snapshots only)."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        values = self._read()
        for name, value in sorted(values.items()):
            yield GaugeMetricFamily(f"zstream_{name}", name.replace("_", " "), value=value)


class BrokerMetrics:
    def __init__(self, read_gauges: Callable[[], dict[str, float]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "zstream_requests",
            "Client requests by operation and error code",
            ["op", "error"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "zstream_request_latency_seconds",
            "Client request latency by operation",
            ["op"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_latency = Histogram(
            "zstream_raft_commit_latency_seconds",
            "From proposing a batch to its commit (durable on a majority)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Gauges(read_gauges))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def on_request(self, op: str, latency_s: float, error: ZStreamError | None) -> None:
        self.requests.labels(op, "NONE" if error is None else error.code.name).inc()
        self.latency.labels(op).observe(latency_s)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint in a thread this object owns; returns the port."""
        server, thread = start_http_server(port, host, registry=self.registry)
        self._server, self._thread = server, thread
        bound: int = server.server_address[1]
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and the broker id."""

    def __init__(self, broker_id: int | None) -> None:
        super().__init__()
        self._broker_id = broker_id

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self._broker_id is not None:
            doc["broker"] = self._broker_id
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(level: str, broker_id: int | None) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter(broker_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aetcd/grpc are chatty at INFO.
    logging.getLogger("aetcd").setLevel(logging.WARNING)
