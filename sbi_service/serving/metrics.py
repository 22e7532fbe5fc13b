"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand.

Three kinds, each thread-safe (the engine threads and the event loop both record):
``Counter`` and ``Histogram`` with labels, and ``Gauge`` whose value is read from a
function when ``/metrics`` is scraped. ``Metrics`` holds the service's set.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROW_BUCKETS = (1, 10, 100, 1000, 2000, 4000, 8000, 16000, 32000, 64000)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Counter:
    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()):
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for labels, v in sorted(self._values.items()):
                lines.append(f"{self.name}{_labels(self.labelnames, labels)} {_number(v)}")
        return lines


class Histogram:
    def __init__(
        self, name: str, help_text: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ):
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self.buckets = tuple(float(b) for b in buckets) + (math.inf,)
        # per label set: (counts per bucket, not cumulative; sum; count)
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            counts, total = self._series.setdefault(labels, ([0] * len(self.buckets), [0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            total[0] += value

    def count(self, *labels: str) -> int:
        with self._lock:
            series = self._series.get(labels)
            return sum(series[0]) if series else 0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for labels, (counts, total) in sorted(self._series.items()):
                cumulative = 0
                for bound, c in zip(self.buckets, counts, strict=True):
                    cumulative += c
                    le = f'le="{_number(bound)}"'
                    lines.append(
                        f"{self.name}_bucket{_labels(self.labelnames, labels, le)} {cumulative}"
                    )
                lab = _labels(self.labelnames, labels)
                lines.append(f"{self.name}_sum{lab} {_number(total[0])}")
                lines.append(f"{self.name}_count{lab} {cumulative}")
        return lines


class Gauge:
    def __init__(self, name: str, help_text: str, read: Callable[[], float]):
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} gauge",
            f"{self.name} {_number(self.read())}",
        ]


class Metrics:
    """The service's metrics. Gauges are added by whoever owns the value they read."""

    def __init__(self) -> None:
        self.request_latency = Histogram(
            "sbi_request_latency_seconds",
            "Time from request received to response ready, by route.",
            LATENCY_BUCKETS,
            ("route",),
        )
        self.requests = Counter(
            "sbi_requests_total", "HTTP requests by route and status code.", ("route", "status")
        )
        self.queue_wait = Histogram(
            "sbi_queue_wait_seconds",
            "Time a sampling request waits before its first rows enter a batch.",
            LATENCY_BUCKETS,
        )
        self.batch_rows = Histogram(
            "sbi_batch_rows", "Rows (samples) decoded per batched forward pass.", ROW_BUCKETS
        )
        self.batch_requests = Histogram(
            "sbi_batch_requests", "Requests that share one batched forward pass.", COUNT_BUCKETS
        )
        self.batch_seconds = Histogram(
            "sbi_batch_seconds", "Duration of one batched forward pass.", LATENCY_BUCKETS
        )
        self.rejections = Counter(
            "sbi_rejections_total",
            "Requests refused or dropped, by reason (queue_full, deadline, disconnected, "
            "body_too_large, invalid, unauthorized, draining).",
            ("reason",),
        )
        self.gauges: list[Gauge] = []

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help_text, read))

    def render(self) -> str:
        lines: list[str] = []
        for metric in (
            self.request_latency,
            self.requests,
            self.queue_wait,
            self.batch_rows,
            self.batch_requests,
            self.batch_seconds,
            self.rejections,
            *self.gauges,
        ):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
