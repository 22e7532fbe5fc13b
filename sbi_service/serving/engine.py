"""The batching engine: one thread per loaded (device, model) that owns its torch work.

Sampling requests from many clients are coalesced into batched forward passes:

- A batch is counted in rows (one row = one posterior draw). The engine thread takes
  rows from the queued requests in arrival order, up to ``batch_rows``, as soon as it
  is free: there is no fixed wait, so a lone request goes out at once and requests
  arriving during a pass share the next one. A large request is split across batches
  and its rows are reassembled in order.
- The embedding net runs once per observation, when a request enters the engine
  (``estimator.embed``); a batch is then one ``estimator.decode(noise, context)``.
- A request's samples depend only on its seed, never on its batch-mates: it draws its
  noise from its own ``torch.Generator``, in the same order as ``Posterior.sample``
  (per observation, rounds of rejection against the prior's support, each round's
  size from the acceptance so far). Rejected rows are redrawn from the request's own
  generator and go into a later batch. So the served samples equal
  ``workflows.models.sample_posterior`` with the same seed.
- On CUDA the noise is copied from pinned memory without blocking and the batch
  synchronizes once, when the decoded rows come back to the CPU.
- With ``batching=False`` each pass serves one request (the benchmark baseline).

Shapes: a request's ``x`` is (num_obs, *x_shape); its result (num_obs, num_samples,
dim_theta) float32. Results are handed back through ``concurrent.futures.Future``;
``Engine.sample`` awaits one from asyncio (``asyncio.wrap_future`` returns it to the
event loop with ``loop.call_soon_threadsafe``). Cancelling that future (a client that
went away, a deadline) drops the request's remaining work.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbi_service.errors import UserError
from sbi_service.estimators.base import draw_noise
from sbi_service.estimators.posterior import Posterior
from sbi_service.serving.admission import Admission
from sbi_service.serving.metrics import Metrics


class DeadlineExceeded(Exception):
    """The request's deadline passed before its samples were ready."""


class EngineClosed(Exception):
    """The engine was retired (hot reload or eviction); ask the pool for the current one."""


def make_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def new_seed() -> int:
    """A fresh seed for a request that gave none (returned to the client)."""
    return secrets.randbits(63)


@dataclass(eq=False)
class SampleJob:
    """One sampling request and the state of its rejection sampler (see ``Posterior``)."""

    x: Tensor  # (num_obs, *x_shape) float32, already checked
    num_samples: int
    generator: torch.Generator
    future: Future = field(default_factory=Future)  # -> np.ndarray (num_obs, N, d)
    submitted: float = field(default_factory=time.monotonic)
    context: Tensor | None = None  # (num_obs, dim_context) on the device
    out: Tensor | None = None  # (num_obs, N, d) on the CPU
    obs: int = 0  # the observation being sampled
    have: int = 0  # accepted draws of this observation
    drawn: int = 0  # draws of this observation so far (all rounds)
    accepted: list[Tensor] = field(default_factory=list)
    noise: Tensor | None = None  # (rows, d) this round's noise, CPU
    next_row: int = 0  # first row of ``noise`` not yet put in a batch
    decoded: list[Tensor] = field(default_factory=list)  # this round's decoded chunks
    decoded_rows: int = 0
    finished: bool = False

    @property
    def rows(self) -> int:
        return int(self.x.shape[0]) * self.num_samples


class Engine:
    """Owns one model's torch work in one thread; see the module docstring."""

    def __init__(
        self,
        posterior: Posterior,
        name: str,
        admission: Admission,
        metrics: Metrics,
        batch_rows: int = 8192,
        batching: bool = True,
    ):
        self.posterior = posterior
        self.estimator = posterior.estimator
        self.device = self.estimator.theta_loc.device
        self.name, self.admission, self.metrics = name, admission, metrics
        self.batch_rows, self.batching = batch_rows, batching
        self._cond = threading.Condition()
        self._incoming: deque[SampleJob] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._active: list[SampleJob] = []  # touched by the engine thread only
        self._closing = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    # -- called from other threads -------------------------------------------------------
    def submit(self, job: SampleJob, deadline: float = math.inf) -> Future:
        """Queue ``job`` due within ``deadline`` seconds.

        Raises ``Overloaded`` when the admission rule refuses it (``serving.admission``),
        ``EngineClosed`` if the engine was retired.
        """
        self.admission.acquire(job.rows, deadline)
        with self._cond:
            if self._stopped or self._closing:
                self.admission.release(job.rows)
                raise EngineClosed(self.name)
            self._incoming.append(job)
            self._cond.notify()
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` in the engine thread between batches (log_prob, warm-up)."""
        future: Future = Future()
        with self._cond:
            if self._stopped or self._closing:
                raise EngineClosed(self.name)
            self._calls.append((fn, future))
            self._cond.notify()
        return future

    async def sample(
        self, x: Tensor, num_samples: int, seed: int, timeout: float | None
    ) -> np.ndarray:
        """x (num_obs, *x_shape) -> samples (num_obs, num_samples, d); from the event loop.

        Raises ``DeadlineExceeded`` after ``timeout`` seconds; being cancelled (or timing
        out) drops the request's queued rows.
        """
        job = SampleJob(x, num_samples, make_generator(seed))
        future = self.submit(job, math.inf if timeout is None else timeout)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"no result within {timeout:g} s") from None
        finally:
            future.cancel()  # a no-op once the result is set

    async def run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self.call(fn))

    def warm(self, rows: int = 256) -> None:
        """One forward pass at the training centre of x, so the first request pays no set-up."""
        x = self.estimator.unstandardize_x(torch.zeros_like(self.estimator.x_loc)).unsqueeze(0)
        self.call(lambda: self.estimator.sample(x, rows, make_generator(0))).result()
        start = time.perf_counter()  # the second pass, set-up done, is a first estimate
        self.call(lambda: self.estimator.sample(x, rows, make_generator(0))).result()
        self.admission.record_pass(rows, time.perf_counter() - start)

    def close(self) -> None:
        """Finish the queued work, then stop the thread; later submits raise ``EngineClosed``."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def idle(self) -> bool:
        with self._cond:
            return not (self._incoming or self._calls or self._active)

    # -- the engine thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._incoming or self._calls or self._active or self._closing):
                    self._cond.wait()
                if self._closing and not (self._incoming or self._calls or self._active):
                    self._stopped = True
                    return
                self._active.extend(self._incoming)
                self._incoming.clear()
                calls = list(self._calls)
                self._calls.clear()
            for fn, future in calls:
                with torch.inference_mode():
                    _settle(future, fn)
            self._retire([job for job in self._active if job.future.done()])  # cancelled
            if self._active:
                jobs = self._active if self.batching else self._active[:1]
                try:
                    self._step(jobs)
                except Exception as e:  # a bug, not bad input: fail the batch, keep serving
                    for job in jobs:
                        _resolve(job.future, e)
                    self._retire(jobs)

    def _retire(self, jobs: list[SampleJob]) -> None:
        for job in jobs:
            self._release(job)
        if jobs:
            self._active = [job for job in self._active if not job.finished]

    def _release(self, job: SampleJob) -> None:
        """Give the job's rows back to admission (before its client hears back)."""
        if not job.finished:
            job.finished = True
            self.admission.release(job.rows)

    @torch.inference_mode()
    def _step(self, jobs: list[SampleJob]) -> None:
        """Embed newly arrived requests, then decode one batch of rows."""
        start = time.perf_counter()
        fresh = [job for job in jobs if job.context is None]
        if fresh:
            now = time.monotonic()
            x = torch.cat([job.x for job in fresh]).to(self.device)
            contexts = self.estimator.embed(x).split([job.x.shape[0] for job in fresh])
            for job, context in zip(fresh, contexts, strict=True):
                self.metrics.queue_wait.observe(now - job.submitted)
                job.context = context
                job.out = torch.empty(job.x.shape[0], job.num_samples, self.posterior.dim_theta)
                self._start_round(job)

        # Rows for this pass: (job, first row, number of rows), in arrival order.
        budget = self.batch_rows if self.batching else math.inf
        parts: list[tuple[SampleJob, int, int]] = []
        used = 0
        for job in jobs:
            take = int(min(job.noise.shape[0] - job.next_row, budget - used))
            if take <= 0:
                break
            parts.append((job, job.next_row, take))
            job.next_row += take
            used += take
        decode_start = time.perf_counter()
        noise = torch.cat([job.noise[a : a + k] for job, a, k in parts])  # (used, d)
        context = torch.cat([job.context[job.obs].expand(k, -1) for job, _, k in parts])
        if self.device.type == "cuda":
            noise = noise.pin_memory().to(self.device, non_blocking=True)
        theta = self.estimator.decode(noise, context).cpu()  # the one sync of the batch
        end = time.perf_counter()
        self.metrics.batch_seconds.observe(end - decode_start)
        self.admission.record_pass(used, end - start)
        self.metrics.batch_rows.observe(used)
        self.metrics.batch_requests.observe(len(parts))

        done: list[SampleJob] = []
        offset = 0
        for job, _, k in parts:
            job.decoded.append(theta[offset : offset + k])
            job.decoded_rows += k
            offset += k
            if job.decoded_rows == job.noise.shape[0] and self._end_round(job):
                done.append(job)
        self._retire(done)

    def _start_round(self, job: SampleJob) -> None:
        """Draw this round's noise exactly as ``Posterior._sample_one`` does."""
        rows = self.posterior.round_size(job.num_samples - job.have, job.have, job.drawn)
        job.noise = draw_noise(rows, self.posterior.dim_theta, job.generator)
        job.next_row, job.decoded, job.decoded_rows = 0, [], 0

    def _end_round(self, job: SampleJob) -> bool:
        """Accept the round's draws inside the support; True when the job is finished."""
        theta = torch.cat(job.decoded)
        ok = self.posterior.accept(theta)
        job.accepted.append(theta[ok])
        job.have += int(ok.sum())
        job.drawn += theta.shape[0]
        try:
            self.posterior.check_acceptance(job.have, job.drawn, job.num_samples, job.obs)
        except UserError as e:
            self._release(job)
            _resolve(job.future, e)
            return True
        if job.have < job.num_samples:
            self._start_round(job)
            return False
        job.out[job.obs] = torch.cat(job.accepted)[: job.num_samples]
        job.obs, job.have, job.drawn, job.accepted = job.obs + 1, 0, 0, []
        if job.obs < job.x.shape[0]:
            self._start_round(job)
            return False
        self._release(job)
        _resolve(job.future, job.out.numpy())
        return True


def _resolve(future: Future, result: Any) -> None:
    """Set a result or exception unless the waiter already gave up (cancelled)."""
    try:
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _settle(future: Future, fn: Callable[[], Any]) -> None:
    try:
        result = fn()
    except Exception as e:
        result = e
    _resolve(future, result)
