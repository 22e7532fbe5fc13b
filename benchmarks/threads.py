"""Training time of the default ``nsf`` with 1 versus 2 torch threads, side by side.

The same estimator (same seed, same simulations) is trained with a fixed number of
epochs under ``torch.set_num_threads(1)`` and ``torch.set_num_threads(2)``, alternating
the two settings ``--repeats`` times so that load from other processes hits both alike;
the median seconds of each and their ratio are printed. Small flows do little work per
operation, so extra threads mostly add synchronization: this is why the CLI defaults to
one thread (``Settings.torch_threads``).

Run: ``python benchmarks/threads.py``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sbi_service.estimators.registry import build_estimator
from sbi_service.estimators.train import TrainConfig, train
from sbi_service.simulators.simulate import simulate
from sbi_service.simulators.tasks import BUILTIN_TASKS


def time_training(task_name: str, num_simulations: int, epochs: int, threads: int) -> float:
    """Seconds to train the default nsf for ``epochs`` epochs with ``threads`` threads."""
    task = BUILTIN_TASKS[task_name]()
    theta, x = simulate(task, num_simulations, seed=0)
    estimator = build_estimator(
        {"kind": "nsf", "dim_theta": task.prior.dim, "x_shape": list(task.x_shape)}
    )
    torch.set_num_threads(threads)
    start = time.perf_counter()
    train(estimator, theta, x, TrainConfig(max_epochs=epochs, patience=epochs), seed=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="slcp", choices=BUILTIN_TASKS)
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for threads in (1, 2):
            s = time_training(args.task, args.num_simulations, args.epochs, threads)
            seconds[threads].append(s)
            print(f"threads={threads}: {s:.2f} s", flush=True)
    one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
    print(
        f"nsf on {args.task}, {args.num_simulations} simulations, {args.epochs} epochs: "
        f"1 thread {one:.2f} s, 2 threads {two:.2f} s (median of {args.repeats}); "
        f"time(2 threads) / time(1 thread) = {two / one:.2f}"
    )


if __name__ == "__main__":
    main()
