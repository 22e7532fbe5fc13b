"""Posteriors from 1, 5 and 20 i.i.d. observations by composing single-observation scores.

Trains ``npse`` (default settings) on single gaussian_linear simulations (10^4), then for
each number of observations n draws theta* from the prior and x_1..x_n from the
simulator, samples p(theta | x_1..x_n) with ``sample_iid`` and compares it by C2ST with
the analytic posterior: prior N(0, 0.1 I), x_i ~ N(theta, 0.1 I) give

    theta | x_1..x_n ~ N( sum_i x_i / (n + 1), 0.1 / (n + 1) I ).

``sample_iid`` runs with its defaults (50-point Karras grid). Target (issue 3): C2ST
below 0.6 for n = 1, 5, 20. Every n runs "gauss"; the n in ``--compare-at`` also run
the other ``--methods``. Prints one row per (n, method), the mean over ``--repeats``
draws of theta*.

    .venv/bin/python benchmarks/iid.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sbi_service.diagnostics.c2st import c2st
from sbi_service.estimators.iid import sample_iid
from sbi_service.estimators.registry import build_estimator
from sbi_service.estimators.train import TrainConfig, train
from sbi_service.simulators.registry import get_task
from sbi_service.simulators.simulate import simulate


def analytic_posterior(x_set: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
    """Samples (num, 10) of the gaussian_linear posterior given x_set (n, 10)."""
    n = x_set.shape[0]
    mean = x_set.double().sum(0) / (n + 1)
    std = (0.1 / (n + 1)) ** 0.5
    eps = torch.randn(num, x_set.shape[1], generator=generator, dtype=torch.float64)
    return (mean + std * eps).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--observations", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--methods", nargs="+", default=["gauss", "jac", "geffner"])
    parser.add_argument("--compare-at", type=int, nargs="+", default=[5])
    parser.add_argument("--samples", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    task = get_task("gaussian_linear")
    theta, x = simulate(task, args.num_simulations, args.seed)
    est = build_estimator({"kind": "npse", "dim_theta": 10, "x_shape": [10]})
    result = train(est, theta, x, TrainConfig(max_seconds=args.max_seconds), args.seed)
    print(
        f"# npse: {result.epochs} epochs, {result.train_seconds:.0f} s ({result.stopped_because})"
    )

    rows = []
    for n in args.observations:
        for method in args.methods if n in args.compare_at else ["gauss"]:
            scores, seconds = [], 0.0
            for r in range(args.repeats):
                g = torch.Generator().manual_seed(1000 * n + r)
                theta_star = task.prior.sample(1, g)
                x_set = task.simulator(theta_star.expand(n, -1), generator=g)
                ref = analytic_posterior(x_set, args.samples, g)
                start = time.perf_counter()
                samples = sample_iid(est, task.prior, x_set, args.samples, g, method=method)
                seconds += time.perf_counter() - start
                scores.append(c2st(ref, samples, seed=0, method="early_stopping"))
            rows.append((n, method, float(np.mean(scores)), seconds / args.repeats))
            print(
                f"n={n:<3} {method:<8} C2ST {np.mean(scores):.3f}  "
                f"({seconds / args.repeats:.1f} s)",
                flush=True,
            )

    print("\n| observations | method | C2ST vs analytic | sampling s |")
    print("|---|---|---|---|")
    for n, method, score, seconds in rows:
        print(f"| {n} | {method} | {score:.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
