"""The service's Prometheus metrics, with prometheus-client.

Each ``Metrics`` has its own ``CollectorRegistry`` (several apps may live in one test
process). With ``serve --workers N`` every worker process records into files under
``PROMETHEUS_MULTIPROC_DIR`` (set by the supervisor before any worker starts, which
is when prometheus-client chooses where values live), and ``render`` merges all
processes' files, so any worker's ``/metrics`` shows the whole server: counters and
histograms summed, gauges summed over live processes.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROW_BUCKETS = (1, 10, 100, 1000, 2000, 4000, 8000, 16000, 32000, 64000)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_dir() -> str | None:
    """The folder shared by the worker processes, or None for one process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The service's metrics (record with prometheus-client's ``labels(...).inc()`` etc.)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.request_latency = Histogram(
            "sbi_request_latency_seconds",
            "Time from request received to response ready, by route.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.requests = Counter(
            "sbi_requests",
            "HTTP requests by route and status code.",
            ("route", "status"),
            registry=reg,
        )
        self.queue_wait = Histogram(
            "sbi_queue_wait_seconds",
            "Time a sampling request waits before its first rows enter a batch.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_rows = Histogram(
            "sbi_batch_rows",
            "Rows (samples) decoded per batched forward pass.",
            buckets=ROW_BUCKETS,
            registry=reg,
        )
        self.batch_requests = Histogram(
            "sbi_batch_requests",
            "Requests that share one batched forward pass.",
            buckets=COUNT_BUCKETS,
            registry=reg,
        )
        self.batch_seconds = Histogram(
            "sbi_batch_seconds",
            "Duration of one batched forward pass.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.rejections = Counter(
            "sbi_rejections",
            "Requests refused or dropped, by reason (overloaded, deadline, disconnected, "
            "body_too_large, invalid, unauthorized, draining).",
            ("reason",),
            registry=reg,
        )
        self.queue_rows = Gauge(
            "sbi_queue_rows",
            "Rows admitted and not yet finished.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.loaded_models = Gauge(
            "sbi_loaded_models",
            "Loaded (model, version) pairs.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.service_rate = Gauge(
            "sbi_service_rows_per_second",
            "Measured rows decoded per second of engine time (the admission rule's estimate).",
            registry=reg,
            multiprocess_mode="livesum",
        )

    def render(self) -> str:
        """The text exposition format: this process's metrics, or every worker's."""
        folder = multiprocess_dir()
        if folder is None:
            return generate_latest(self.registry).decode()
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=folder)
        return generate_latest(merged).decode()
