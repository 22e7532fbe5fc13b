"""Seeded, chunked, parallel simulation, and the simulation-set file format.

theta (n, d) is drawn from the prior with a generator seeded by ``seed``; x is
simulated in chunks of ``chunk_size`` rows, chunk k with its own seed derived from
(seed, k). A chunk's result depends only on (simulator, seed, chunk index), so the
numbers are the same on every backend and worker count:

- ``local``: the calling process (1 worker) or a pool of ``workers`` spawned processes
  (one torch thread each), kept for the next run as a Ray runtime keeps its workers;
- ``ray``: Ray tasks (``sbi_service.ray_compute``), on the cluster at
  ``SBI_SERVICE_RAY_ADDRESS`` or a local Ray runtime started for the run.

Chunks travel to the workers in calls of about ``CALL_SECONDS`` of work each, in whole
waves of ``slots`` calls (``slots``: the workers, or the Ray cluster's CPUs): a cheap
simulator's chunks are packed several to a call, so that a call's own cost (4-10 ms
for a Ray task on this 2-core machine, 1-6 ms for the process pool) stays a few per
cent of its work, while a slow simulator's chunks keep a call each. No call carries
less than ``MIN_CALL_SECONDS`` (10 ms, about that cost) when the run has more, so a
run of W seconds of work is at most W / ``MIN_CALL_SECONDS`` calls; a run of under two
calls' worth would be one call, and one call runs in the calling process, whatever
the backend: sending it to a worker would only add the call's cost (10^5 two_moons
simulations, about 10 ms of work, take 12 ms here against 18 ms through the pool and
27 ms as Ray tasks). The work per row is what the workers measured: in the last run
of the same simulator in this process, or else in this run's first wave, one chunk
per slot, after which the rest are packed; a run whose cost is not measured yet is
always sent to the workers. ``SimulationReport.in_process`` says where it ran.
Results, progress and checkpoints are per chunk whatever the packing.

A simulator registered from Python in this process (``register``) cannot be looked up
by name in another process, so it always runs in the calling process.

With a ``checkpoint`` folder each finished chunk is written there as
``chunk-K.npy`` (its x, float32) and a rerun with the same folder loads those
chunks instead of simulating them again (``--resume``; a rerun train job).

Failures: a chunk whose simulator raises is retried ``retries`` times, then reported
with its rows; rows whose x has NaN or inf are counted and dropped. If more than
``max_lost_fraction`` of the rows are lost either way the run fails with a
``UserError`` saying why. A wrong shape or a non-numeric output fails at once.

Simulation-set files (``.npz``) hold float32 arrays ``theta`` (N, dim_theta) and
``x`` (N, *x_shape).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbi_service.errors import UserError
from sbi_service.simulators.base import Task, as_float32

CHUNK_SIZE = 10_000
BACKENDS = ("local", "ray")
RETRIES = 2  # extra attempts of a chunk whose simulator raised
MAX_LOST_FRACTION = 0.1  # of the rows: failed chunks plus NaN/inf outputs
CALL_SECONDS = 0.1  # of work per call once measured: 25 Ray task round trips (4 ms)
MIN_CALL_SECONDS = 0.01  # of work per call at least: about a call's own cost here

ProgressFn = Callable[[int, int], None]  # (rows done, rows in all)


def _chunk_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def run_simulator(task: Task, theta: Tensor, seed: int) -> Tensor:
    """x = simulator(theta), seeded; (n, d) -> (n, *x_shape) float32.

    A simulator that returns something that is not numbers raises ``UserError``.
    """
    if task.takes_generator():
        out = task.simulator(theta, generator=torch.Generator().manual_seed(seed))
    else:
        state = np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            try:
                out = task.simulator(theta)
            finally:
                np.random.set_state(state)
    try:
        return as_float32(out)
    except (TypeError, ValueError, RuntimeError) as e:
        kind = getattr(getattr(out, "dtype", None), "name", type(out).__name__)
        raise UserError(
            f"simulator {task.name!r} returned {kind}, not numbers ({e}): "
            "x must be a float array of shape (n, *x_shape)"
        ) from None


_worker_tasks: dict[str, Task] = {}  # in a worker: tasks looked up already

_row_seconds: dict[tuple[str, str], float] = {}  # (simulator, version) -> s per row, measured

ChunkResults = tuple[list[np.ndarray | str], float]  # per chunk x or the error; seconds


def run_chunks(task: Task, thetas: list[np.ndarray], seeds: list[int]) -> ChunkResults:
    """Chunk i's x = simulator(thetas[i]) seeded by seeds[i], or the repr of what it raised.

    A ``UserError`` (output that is not numbers) fails the call at once. Also returns
    the seconds the call took, which size the calls that follow.
    """
    start = time.perf_counter()
    out: list[np.ndarray | str] = []
    for theta, seed in zip(thetas, seeds, strict=True):
        try:
            out.append(run_simulator(task, torch.from_numpy(theta), seed).numpy())
        except UserError:
            raise
        except Exception as e:
            out.append(repr(e))
    return out, time.perf_counter() - start


def simulate_chunks(
    name: str, stored: list[dict[str, Any]], thetas: list[np.ndarray], seeds: list[int]
) -> ChunkResults:
    """``run_chunks`` in a worker (process or Ray task): the task looked up by name, once."""
    from sbi_service.simulators.registry import get_task

    key = json.dumps([name, stored], sort_keys=True)
    if key not in _worker_tasks:
        _worker_tasks[key] = get_task(name, stored)
    return run_chunks(_worker_tasks[key], thetas, seeds)


def chunks_per_call(waiting: int, slots: int, chunk_seconds: float) -> int:
    """Chunks per call for ``waiting`` chunks of ``chunk_seconds`` each on ``slots``.

    Calls of about ``CALL_SECONDS`` of work, in whole waves of ``slots`` calls, so that
    every slot gets the same share, and none under ``MIN_CALL_SECONDS`` of work:

        waves = ceil(W / (slots CALL_SECONDS)),
        calls = max(1, min(slots waves, floor(W / MIN_CALL_SECONDS))),   W = work in all.
    """
    work = waiting * chunk_seconds
    waves = max(1, math.ceil(work / (slots * CALL_SECONDS)))
    calls = max(1, min(slots * waves, math.floor(work / MIN_CALL_SECONDS)))
    return math.ceil(waiting / calls)


@dataclass
class SimulationReport:
    """What happened: rows asked for and kept, what was lost and why."""

    backend: str
    workers: int
    num_requested: int
    num_kept: int = 0
    num_nonfinite: int = 0  # rows dropped because x had NaN or inf
    failed_chunks: list[dict[str, Any]] = field(default_factory=list)  # chunk, rows, error
    resumed_chunks: int = 0  # loaded from the checkpoint instead of simulated
    in_process: bool = True  # simulated in the calling process, not sent to workers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Simulations:
    """theta (n_kept, d), x (n_kept, *x_shape) and the report; unpacks as ``theta, x``."""

    theta: Tensor
    x: Tensor
    report: SimulationReport

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.theta, self.x))


class _InProcess:
    """The executor interface, running each call at once in this process."""

    slots = 1

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as e:
            future.set_exception(e)
        return future

    def shutdown(self) -> None:
        pass


def _one_thread() -> None:
    torch.set_num_threads(1)


class _SharedPool:
    """A process pool per worker count (and ``sys.path``, which spawned workers copy),
    kept between runs; ``shutdown`` keeps it."""

    pools: dict[tuple, ProcessPoolExecutor] = {}

    def __init__(self, workers: int):
        self.key = (workers, tuple(sys.path))
        self.slots = workers

    def _pool(self, fresh: bool = False) -> ProcessPoolExecutor:
        if fresh or self.key not in self.pools:
            self.pools[self.key] = ProcessPoolExecutor(
                self.key[0],
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_one_thread,
            )
        return self.pools[self.key]

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        try:
            return self._pool().submit(fn, *args)
        except BrokenProcessPool:  # a worker died (killed, out of memory): a new pool
            return self._pool(fresh=True).submit(fn, *args)

    def shutdown(self) -> None:
        pass


def _executor(
    task: Task, backend: str, workers: int, stored: list[dict[str, Any]], work: float | None
):
    """(executor, call function) for the backend; the function takes (thetas, seeds).

    ``work``: the run's seconds of work as measured before, or ``None``. Under two
    calls' worth (``chunks_per_call``) it would be one call: this process runs it.
    """
    dispatch = task.source != "python" and (work is None or work >= 2 * MIN_CALL_SECONDS)
    by_name = partial(simulate_chunks, task.name, stored)
    if backend == "ray" and dispatch:
        from sbi_service import ray_compute

        return ray_compute.TaskExecutor(num_cpus=workers), by_name
    if backend == "local" and workers > 1 and dispatch:
        return _SharedPool(workers), by_name
    return _InProcess(), partial(run_chunks, task)


def checkpoint_folder(
    home: Path, task: Task, num_simulations: int, seed: int, chunk_size: int = CHUNK_SIZE
) -> Path:
    """``home/simulations/KEY``: KEY hashes what the chunks depend on."""
    key = json.dumps(
        [task.name, task.version, num_simulations, seed, chunk_size], separators=(",", ":")
    )
    return Path(home) / "simulations" / hashlib.sha256(key.encode()).hexdigest()[:24]


def simulate(
    task: Task,
    num_simulations: int,
    seed: int,
    workers: int = 1,
    chunk_size: int = CHUNK_SIZE,
    backend: str = "local",
    checkpoint: Path | None = None,
    progress: ProgressFn | None = None,
    stored: list[dict[str, Any]] | None = None,
    retries: int = RETRIES,
    max_lost_fraction: float = MAX_LOST_FRACTION,
) -> Simulations:
    """Draw theta ~ prior and x ~ simulator(theta) in seeded chunks (see the module doc).

    ``stored`` are the store's simulator registrations, for workers that look the
    task up by name. Returns the rows kept: theta (n_kept, d), x (n_kept, *x_shape).
    """
    if num_simulations < 1:
        raise UserError(f"--num-simulations must be at least 1, got {num_simulations}")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    theta = task.prior.sample(num_simulations, torch.Generator().manual_seed(seed)).float()
    starts = list(range(0, num_simulations, chunk_size))
    rows = {k: (s, min(s + chunk_size, num_simulations)) for k, s in enumerate(starts)}
    report = SimulationReport(backend, workers, num_simulations)
    xs: dict[int, np.ndarray] = {}
    if checkpoint is not None:
        checkpoint.mkdir(parents=True, exist_ok=True)
        for k in rows:
            path = checkpoint / f"chunk-{k:06d}.npy"
            if path.exists():
                xs[k] = np.load(path, allow_pickle=False)
        report.resumed_chunks = len(xs)
    done_rows = sum(len(x) for x in xs.values())
    if progress is not None:
        progress(done_rows, num_simulations)
    waiting = deque(k for k in rows if k not in xs)
    if waiting:
        cost_key = (task.name, task.version)
        work = (
            _row_seconds[cost_key] * sum(rows[k][1] - rows[k][0] for k in waiting)
            if cost_key in _row_seconds
            else None
        )
        executor, run_call = _executor(task, backend, workers, stored or [], work)
        report.in_process = isinstance(executor, _InProcess)
        attempts = dict.fromkeys(waiting, 0)
        running: dict[Future, list[int]] = {}

        def submit_waiting() -> None:
            """Unmeasured: a chunk per slot; measured: every waiting chunk, packed into calls."""
            row_seconds = _row_seconds.get(cost_key)  # this run's or an earlier run's
            measured = row_seconds is not None
            size = (
                chunks_per_call(len(waiting), executor.slots, row_seconds * chunk_size)
                if measured
                else 1
            )
            while waiting and (measured or len(running) < executor.slots):
                ks = [waiting.popleft() for _ in range(min(size, len(waiting)))]
                thetas = [theta[rows[k][0] : rows[k][1]].numpy() for k in ks]
                future = executor.submit(run_call, thetas, [_chunk_seed(seed, k) for k in ks])
                running[future] = ks

        def failed(k: int, error: str) -> None:
            attempts[k] += 1
            if attempts[k] <= retries:
                waiting.append(k)
            else:
                report.failed_chunks.append({"chunk": k, "rows": list(rows[k]), "error": error})

        try:
            submit_waiting()
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    ks = running.pop(future)
                    error = future.exception()
                    if isinstance(error, UserError):
                        raise error
                    if error is not None:  # the whole call: a worker died, Ray lost it
                        for k in ks:
                            failed(k, repr(error))
                        continue
                    results, seconds = future.result()
                    _row_seconds[cost_key] = seconds / sum(rows[k][1] - rows[k][0] for k in ks)
                    for k, x in zip(ks, results, strict=True):
                        if isinstance(x, str):
                            failed(k, x)
                            continue
                        xs[k] = _checked(x, task, rows[k])
                        if checkpoint is not None:
                            _save_npy(checkpoint / f"chunk-{k:06d}.npy", xs[k])
                        done_rows += len(x)
                    if progress is not None:
                        progress(done_rows, num_simulations)
                submit_waiting()
        finally:
            for future in running:
                future.cancel()
            executor.shutdown()
    return _assemble(theta, xs, rows, task, report, max_lost_fraction)


def _checked(x: np.ndarray, task: Task, rows: tuple[int, int]) -> np.ndarray:
    expected = (rows[1] - rows[0], *task.x_shape)
    if tuple(x.shape) != expected:
        raise UserError(
            f"simulator {task.name!r} returned x of shape {tuple(x.shape)} for "
            f"{expected[0]} parameter rows, expected {expected}"
        )
    return x


def _assemble(
    theta: Tensor,
    xs: dict[int, np.ndarray],
    rows: dict[int, tuple[int, int]],
    task: Task,
    report: SimulationReport,
    max_lost_fraction: float,
) -> Simulations:
    n = report.num_requested
    keep = np.zeros(n, dtype=bool)
    x_all = np.zeros((n, *task.x_shape), dtype=np.float32)
    for k, x in xs.items():
        start, stop = rows[k]
        x_all[start:stop] = x
        keep[start:stop] = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    failed_rows = sum(c["rows"][1] - c["rows"][0] for c in report.failed_chunks)
    report.num_nonfinite = int(n - failed_rows - keep.sum())
    report.num_kept = int(keep.sum())
    lost = n - report.num_kept
    if lost > max_lost_fraction * n:
        failed = "; ".join(
            f"chunk {c['chunk']} rows {c['rows'][0]}-{c['rows'][1]}: {c['error']}"
            for c in report.failed_chunks[:3]
        )
        raise UserError(
            f"simulator {task.name!r} lost {lost} of {n} simulations, more than the allowed "
            f"{max_lost_fraction:.0%}: {report.num_nonfinite} rows gave NaN or inf"
            + (f", {len(report.failed_chunks)} chunk(s) failed ({failed})" if failed else "")
            + "; fix the simulator (a rerun with --resume keeps the chunks that finished)"
        )
    mask = torch.from_numpy(keep)
    return Simulations(theta[mask], torch.from_numpy(x_all[keep]), report)


def _save_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_checkpoint(folder: Path | None) -> None:
    """Delete a run's chunks once its result is safely stored."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def data_sha256(theta: Tensor, x: Tensor) -> str:
    """sha256 of the training data: float32 C-order bytes of theta, then of x."""
    digest = hashlib.sha256()
    for t in (theta, x):
        digest.update(np.ascontiguousarray(t.numpy(), dtype=np.float32).tobytes())
    return digest.hexdigest()


def save_simulations(path: Path, theta: Tensor, x: Tensor) -> None:
    """Write theta and x as float32 arrays to ``path`` (.npz), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, theta=theta.numpy().astype(np.float32), x=x.numpy().astype(np.float32))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_simulations(path: Path, label: str | None = None) -> tuple[Tensor, Tensor]:
    """Read and check a simulation set: returns theta (n, d), x (n, *x_shape) float32.

    Messages name the file as ``label`` (default: its path).
    """
    path = Path(path)
    name = label or str(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"theta", "x"} - set(data.files)
            if missing:
                raise UserError(
                    f"{name} lacks array(s) {sorted(missing)}: it must hold 'theta' and 'x'"
                )
            theta, x = data["theta"], data["x"]
    except FileNotFoundError:
        raise UserError(f"{name} does not exist") from None
    except (ValueError, OSError) as e:
        detail = "" if label else f" ({e})"
        raise UserError(f"{name} is not a readable .npz of numeric arrays{detail}") from None
    if theta.ndim != 2:
        raise UserError(f"{name}: 'theta' must be 2-D (N, dim_theta), got shape {theta.shape}")
    if x.ndim < 2:
        raise UserError(f"{name}: 'x' must be (N, dim_x), got shape {x.shape}")
    if theta.shape[0] != x.shape[0]:
        raise UserError(
            f"{name}: 'theta' has {theta.shape[0]} rows but 'x' has {x.shape[0]}: "
            "they must be paired"
        )
    if not (np.issubdtype(theta.dtype, np.number) and np.issubdtype(x.dtype, np.number)):
        raise UserError(f"{name}: 'theta' and 'x' must be numeric arrays")
    theta_t, x_t = (
        torch.as_tensor(theta, dtype=torch.float32),
        torch.as_tensor(x, dtype=torch.float32),
    )
    for name, t in (("theta", theta_t), ("x", x_t)):
        bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(-1)
        if bad.any():
            raise UserError(
                f"{name}: '{name}' has NaN or inf in {int(bad.sum())} rows "
                f"(first: {bad.nonzero()[0].item()}); drop or fix them"
            )
    return theta_t, x_t
