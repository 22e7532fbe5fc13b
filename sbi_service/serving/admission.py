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

That model counts only what the process measures of its own work. When the machine is
short of CPU (other processes, the GIL shared by the event loop and the engines) the
work runs slower than measured, and a queue the model believes clears in time does not.
So the wall clock is asked too: ``completion_rate`` is the requests completed per
second while any was pending (both sums decay with time constant ``RATE_TAU_S``), and

    wait = max(pending_requests * overhead_s + pending_rows / rows_per_s,
               pending_requests / completion_rate)

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
import time
from collections.abc import Callable

from sbi_service.serving.metrics import Metrics

ADMIT_FRACTION = 0.8  # of the deadline: room for the estimate's error
DECAY = 0.9  # weight of the past in the decayed sums, per observation
RATE_TAU_S = 2.0  # time constant (s) of the wall-clock completion rate's decayed sums


class Overloaded(Exception):
    """The request cannot be served within its deadline now: retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Admission:
    """Pending work of one process, its measured service rates, and the admission rule."""

    def __init__(
        self, metrics: Metrics, max_rows: int, clock: Callable[[], float] = time.monotonic
    ):
        self.metrics, self.max_rows, self.clock = metrics, max_rows, clock
        self.pending_rows = 0
        self.pending_requests = 0
        self._rows, self._row_seconds = 0.0, 0.0  # decayed sums of decoded rows, pass seconds
        self._requests, self._loop_seconds = 0.0, 0.0  # decayed sums: requests, loop CPU s
        self._completed, self._busy_seconds = 0.0, 0.0  # time-decayed: completions, busy s
        self._last_event = clock()  # when pending work was last started or completed
        self._lock = threading.Lock()

    # -- the estimate ---------------------------------------------------------------------
    @property
    def rows_per_s(self) -> float:
        """Measured decoding rate; inf before the first pass (nothing to go on yet)."""
        return self._rows / self._row_seconds if self._row_seconds > 0 else math.inf

    @property
    def completion_rate(self) -> float:
        """Requests completed per wall-clock second while busy; inf before any."""
        return self._completed / self._busy_seconds if self._busy_seconds > 0 else math.inf

    @property
    def overhead_s(self) -> float:
        """Measured event-loop CPU seconds per sampling request (0 before the first)."""
        return self._loop_seconds / self._requests if self._requests > 0 else 0.0

    def wait_s(self) -> float:
        """Seconds to serve the work already admitted."""
        with self._lock:
            return self._wait()

    def _wait(self) -> float:
        modelled = self.pending_requests * self.overhead_s + self.pending_rows / self.rows_per_s
        return max(modelled, self.pending_requests / self.completion_rate)

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
            if self.pending_requests == 0:  # a busy period starts: idle time is not counted
                self._last_event = self.clock()
            self.pending_rows += rows
            self.pending_requests += 1
        self.metrics.queue_rows.inc(rows)

    def release(self, rows: int) -> None:
        """``rows`` admitted earlier are done (served, failed or given up)."""
        with self._lock:
            now = self.clock()
            busy = max(0.0, now - self._last_event)
            fade = math.exp(-busy / RATE_TAU_S)
            self._completed = fade * self._completed + 1
            self._busy_seconds = fade * self._busy_seconds + busy
            self._last_event = now
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
