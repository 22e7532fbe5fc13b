"""Simulations per second: local 1 and 2 workers, local Ray, and sbi's simulate_for_sbi.

For each task the same simulator (the service's built-in, vectorized) runs

- ``local 1``: ``simulate(task, n, seed)`` in this process;
- ``local 2``: ``simulate(..., workers=2)``, the pool of 2 processes the service keeps;
- ``ray 2``: ``simulate(..., backend="ray")`` on a local Ray runtime of 2 CPUs;
- ``local 2 sent``, ``ray 2 sent``: the same, with every call sent to the workers however
  little work it carries (``MIN_CALL_SECONDS`` set to ~0 for the run): a run measured at
  under two calls' worth of work (``sbi_service.simulators.simulate``) is simulated in
  the calling process by ``local 2`` and ``ray 2``, and the ``ran`` column says where;
  the ``sent`` runs show what the workers would have cost;
- ``sbi 2``: ``sbi.inference.simulate_for_sbi(simulator, prior, n, num_workers=2,
  simulation_batch_size=chunk)``: joblib workers, batches of the same size as our chunks
  (its best setting).

The parallel ones are warmed by ``WARM_RUNS`` runs first (worker processes started,
modules imported), as a long-running service or cluster would be.

Each configuration runs ``--repeats`` times, interleaved so that load from other
processes hits all alike; the table shows the median simulations/s and the two ratios
the targets are about: ``local 2 / sbi 2`` (>= 1 on every task) and ``ray 2 / local 2``
(>= 0.85 at 10^5 two_moons), and ``ray 2 sent / local 2 sent``. Ray's per-chunk
overhead is the median round trip of a no-op Ray task (200 of them, 2 at a time), and
the extra seconds per chunk of the ``ray 2 sent`` run over ``local 2 sent``.

Run: ``python benchmarks/simulation.py [--quick] [--chunk ROWS] [--simulations N]
[--tasks NAME ...]`` (a few minutes; --quick: seconds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

import sbi_service.simulators.simulate as simulation
from sbi_service.simulators.registry import get_task
from sbi_service.simulators.simulate import run_simulator, simulate

# (task, simulations, chunk rows): a chunk of the ODE tasks takes about as long as
# 10,000 rows of slcp, so they get smaller chunks (docs/scaling.md, "chunk size").
DEFAULT = [
    ("two_moons", 100_000, 10_000),
    ("slcp", 100_000, 10_000),
    ("sir", 4_000, 500),
    ("lotka_volterra", 4_000, 500),
]
QUICK = [("two_moons", 20_000, 5_000), ("sir", 400, 100)]
# Ray's per-chunk cost settles after a few runs (its workers' first tasks import the
# package and look the simulator up; on this machine the fifth run is at steady state).
WARM_RUNS = 5


class _Proposal:
    """The prior as sbi wants it: ``sample((n,)) -> (n, d)``."""

    def __init__(self, prior):
        self.prior = prior
        self.generator = torch.Generator().manual_seed(0)

    def sample(self, shape: tuple[int, ...] = ()) -> torch.Tensor:
        return self.prior.sample(int(torch.Size(shape).numel()), self.generator).float()


def _simulator(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    task = get_task(name)
    return lambda theta: run_simulator(task, theta, seed=0)


def _noop(value: int) -> int:
    return value


def ray_task_overhead_ms(count: int = 200) -> float:
    """Median ms of a no-op Ray task's round trip, two in flight at a time."""
    from sbi_service.ray_compute import TaskExecutor

    executor = TaskExecutor(num_cpus=2)
    executor.submit(_noop, 0).result()  # a warm worker
    times = []
    for i in range(0, count, 2):
        start = time.perf_counter()
        futures = [executor.submit(_noop, i), executor.submit(_noop, i + 1)]
        for f in futures:
            f.result()
        times.append((time.perf_counter() - start) / 2)
    return 1e3 * statistics.median(times)


def sent(run: Callable[[], object]) -> Callable[[], object]:
    """``run`` with every call sent to the workers, however little work it carries."""

    def every_call_sent() -> object:
        saved, simulation.MIN_CALL_SECONDS = simulation.MIN_CALL_SECONDS, 1e-9
        try:
            return run()
        finally:
            simulation.MIN_CALL_SECONDS = saved

    return every_call_sent


def configurations(name: str, n: int, chunk: int) -> dict[str, Callable[[], object]]:
    """The ways to make n simulations of ``name`` in chunks (batches) of ``chunk``."""
    from sbi.inference import simulate_for_sbi

    task = get_task(name)
    local_2 = partial(simulate, task, n, 0, workers=2, chunk_size=chunk)
    ray_2 = partial(simulate, task, n, 0, workers=2, chunk_size=chunk, backend="ray")
    return {
        "local 1": partial(simulate, task, n, 0, chunk_size=chunk),
        "local 2": local_2,
        "ray 2": ray_2,
        "local 2 sent": sent(local_2),
        "ray 2 sent": sent(ray_2),
        "sbi 2": lambda: simulate_for_sbi(
            _simulator(name),
            _Proposal(task.prior),
            n,
            num_workers=2,
            simulation_batch_size=chunk,
            seed=0,
            show_progress_bar=False,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, help="chunk rows for every task (default: per task)")
    parser.add_argument("--simulations", type=int, help="simulations of every task")
    parser.add_argument("--tasks", nargs="+", help="only these tasks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = QUICK if args.quick else DEFAULT
    cases = [
        (name, args.simulations or n, args.chunk or chunk)
        for name, n, chunk in cases
        if not args.tasks or name in args.tasks
    ]
    repeats = 1 if args.quick else args.repeats
    print(f"# simulations/s, median of {repeats}; torch threads 1; 2 workers where parallel\n")
    rows = []
    for name, n, chunk in cases:
        runs = configurations(name, n, chunk)
        for _ in range(WARM_RUNS):  # worker processes started, imports and caches warm
            for warm in ("local 2", "ray 2", "local 2 sent", "ray 2 sent", "sbi 2"):
                runs[warm]()
        seconds: dict[str, list[float]] = {k: [] for k in runs}
        ran: dict[str, str] = {}
        for _ in range(repeats):
            for key, run in runs.items():
                start = time.perf_counter()
                result = run()
                seconds[key].append(time.perf_counter() - start)
                if key in ("local 2", "ray 2"):
                    ran[key] = "here" if result.report.in_process else "workers"
        med = {k: statistics.median(v) for k, v in seconds.items()}
        chunks = -(-n // chunk)
        extra = (med["ray 2 sent"] - med["local 2 sent"]) / chunks
        rows.append((name, n, chunk, med, ran, extra))
    print("| task | n | chunk | local 1 | local 2 | ray 2 | ran (local 2 / ray 2) | sbi 2 |"
          " local 2 / sbi 2 | ray 2 / local 2 | local 2 sent | ray 2 sent |"
          " sent: ray / local | ray extra ms/chunk |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, chunk, med, ran, extra in rows:
        rate = {k: n / v for k, v in med.items()}
        print(
            f"| {name} | {n:,} | {chunk:,} | {rate['local 1']:,.0f} | {rate['local 2']:,.0f} | "
            f"{rate['ray 2']:,.0f} | {ran['local 2']} / {ran['ray 2']} | "
            f"{rate['sbi 2']:,.0f} | {rate['local 2'] / rate['sbi 2']:.2f} | "
            f"{rate['ray 2'] / rate['local 2']:.2f} | {rate['local 2 sent']:,.0f} | "
            f"{rate['ray 2 sent']:,.0f} | {rate['ray 2 sent'] / rate['local 2 sent']:.2f} | "
            f"{1e3 * extra:+.1f} |"
        )
    print(f"\nRay no-op task round trip: {ray_task_overhead_ms():.2f} ms (median, 2 in flight)")


if __name__ == "__main__":
    main()
