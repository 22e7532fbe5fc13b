"""Admission: take a sampling request only if it can be served within its deadline.

The server is modelled as one queue of work measured in seconds. A request for
``rows`` draws costs

    cost(rows) = overhead_s + rows / rows_per_s

where ``rows_per_s`` is the engines' measured decoding rate (rows over wall seconds of
their batched passes) and ``overhead_s`` the event loop's measured CPU seconds per
sampling request (HTTP, parsing, encoding). Both are decayed sums (``DECAY`` per
observation), so big, recent passes dominate and the estimate follows the load. The
work ahead of a newcomer is the cost of the requests admitted and not yet finished:

    wait = pending_requests * overhead_s + pending_rows / rows_per_s

A request is admitted when ``wait + cost(rows) <= ADMIT_FRACTION * deadline``; else it
gets ``Overloaded`` (503 with ``Retry-After``: the seconds until enough work drains).
``check`` applies the same rule with ``rows = 0`` before a body is even read, so under
overload a refusal costs almost nothing. Independently of time, at most ``max_rows``
rows are held (the memory bound). An idle server admits any request within the
per-request limits: it can run, and a pessimistic estimate is corrected only by work.

Thread-safe: the event loop admits, the engine threads release and measure.
"""

from __future__ import annotations

import math
import threading

from sbi_service.serving.metrics import Metrics

ADMIT_FRACTION = 0.8  # of the deadline: room for the estimate's error
DECAY = 0.9  # weight of the past in the decayed sums, per observation


class Overloaded(Exception):
    """The request cannot be served within its deadline now: retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Admission:
    """Pending work of one process, its measured service rates, and the admission rule."""

    def __init__(self, metrics: Metrics, max_rows: int):
        self.metrics, self.max_rows = metrics, max_rows
        self.pending_rows = 0
        self.pending_requests = 0
        self._rows, self._row_seconds = 0.0, 0.0  # decayed sums of decoded rows, pass seconds
        self._requests, self._loop_seconds = 0.0, 0.0  # decayed sums: requests, loop CPU s
        self._lock = threading.Lock()

    # -- the estimate ---------------------------------------------------------------------
    @property
    def rows_per_s(self) -> float:
        """Measured decoding rate; inf before the first pass (nothing to go on yet)."""
        return self._rows / self._row_seconds if self._row_seconds > 0 else math.inf

    @property
    def overhead_s(self) -> float:
        """Measured event-loop CPU seconds per sampling request (0 before the first)."""
        return self._loop_seconds / self._requests if self._requests > 0 else 0.0

    def wait_s(self) -> float:
        """Seconds to serve the work already admitted."""
        with self._lock:
            return self._wait()

    def _wait(self) -> float:
        return self.pending_requests * self.overhead_s + self.pending_rows / self.rows_per_s

    def _cost(self, rows: int) -> float:
        return self.overhead_s + rows / self.rows_per_s

    # -- the rule ---------------------------------------------------------------------------
    def check(self, deadline: float) -> None:
        """Before reading a body: refuse when the work ahead alone misses the deadline."""
        with self._lock:
            self._refuse_if(self._wait(), deadline)

    def acquire(self, rows: int, deadline: float) -> None:
        """Admit ``rows`` draws due within ``deadline`` seconds, or raise ``Overloaded``."""
        with self._lock:
            if self.pending_requests > 0:
                if self.pending_rows + rows > self.max_rows:
                    raise Overloaded(
                        f"the server holds {self.pending_rows} rows, its limit is "
                        f"{self.max_rows}; retry later",
                        max(1, math.ceil(self._wait())),
                    )
                self._refuse_if(self._wait() + self._cost(rows), deadline)
            self.pending_rows += rows
            self.pending_requests += 1
        self.metrics.queue_rows.inc(rows)

    def release(self, rows: int) -> None:
        with self._lock:
            self.pending_rows -= rows
            self.pending_requests -= 1
        self.metrics.queue_rows.dec(rows)

    def _refuse_if(self, finish_s: float, deadline: float) -> None:
        allowed = ADMIT_FRACTION * deadline
        if finish_s > allowed:
            raise Overloaded(
                f"the server is at capacity: this request would finish in about {finish_s:.1f} s, "
                f"after its deadline of {deadline:g} s; retry later or send fewer samples",
                max(1, math.ceil(finish_s - allowed)),
            )

    # -- measurements ----------------------------------------------------------------------
    def record_pass(self, rows: int, seconds: float) -> None:
        """An engine decoded ``rows`` in one pass of ``seconds`` (wall time)."""
        with self._lock:
            self._rows = DECAY * self._rows + rows
            self._row_seconds = DECAY * self._row_seconds + seconds
            rate = self.rows_per_s
        self.metrics.service_rate.set(rate)

    def record_request(self, loop_cpu_s: float) -> None:
        """The event loop spent ``loop_cpu_s`` CPU seconds per sampling request lately."""
        with self._lock:
            self._requests = DECAY * self._requests + 1
            self._loop_seconds = DECAY * self._loop_seconds + loop_cpu_s
