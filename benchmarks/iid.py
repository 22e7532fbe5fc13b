"""Posteriors from 1, 5 and 20 i.i.d. observations by composing single-observation scores.

Trains ``npse`` (default settings) on single gaussian_linear simulations (10^4), then for
each number of observations n draws theta* from the prior and x_1..x_n from the
simulator, samples p(theta | x_1..x_n) with ``sample_iid`` and compares it by C2ST with
the analytic posterior: prior N(0, 0.1 I), x_i ~ N(theta, 0.1 I) give

    theta | x_1..x_n ~ N( sum_i x_i / (n + 1), 0.1 / (n + 1) I ).

``sample_iid`` runs with its defaults (50-point Karras grid). Target (issue 3): C2ST
below 0.6 for n = 1, 5, 20. Every n runs "gauss"; the n in ``--compare-at`` also run
the other ``--methods``. Prints one row per (n, method), the mean over ``--repeats``
draws of theta*, and the mean error |mean(samples) - posterior mean| in units of the
posterior's standard deviation (a mean error delta alone gives C2ST Phi(delta / 2):
0.6 at delta = 0.51).

Row "floor" (a reference, not a method): the same simulations fitted by the model class
that is exactly right here, a linear-Gaussian posterior theta | x ~ N(B [x; 1], C) by
least squares, composed exactly (``linear_gaussian_floor``). Its C2ST is what the best
single-observation model of these 10^4 simulations could reach; its error is the
estimation error of B, which the composition amplifies like a network's: the tall
mean is 2 n / (n + 1) times the average single-observation mean here, so a mean error
e (theta units) becomes ~2 e against a posterior standard deviation that shrinks as
(n + 1)^(-1/2).

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
from sbi_service.simulators.tasks.gaussian_linear import posterior_mean_std


def analytic_posterior(x_set: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
    """Samples (num, 10) of the gaussian_linear posterior given x_set (n, 10)."""
    mean, std = posterior_mean_std(x_set)
    eps = torch.randn(num, x_set.shape[1], generator=generator, dtype=torch.float64)
    return (mean + std * eps).float()


def linear_gaussian_floor(
    theta: torch.Tensor, x: torch.Tensor, x_set: torch.Tensor, num: int, generator: torch.Generator
) -> torch.Tensor:
    """Samples (num, 10) of the composed posterior of a least-squares linear-Gaussian fit.

    theta (N, 10), x (N, 10): the training simulations; x_set (n, 10). With m_i = B [x_i; 1]
    and residual covariance C, p(theta)^(1 - n) prod_i N(theta; m_i, C) is
    N(Lambda^-1 C^-1 sum_i m_i, Lambda^-1), Lambda = n C^-1 - (n - 1) Sigma_0^-1 (prior
    N(0, Sigma_0), Sigma_0 = 0.1 I).
    """
    design = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    coef = torch.linalg.lstsq(design, theta.double()).solution  # (11, 10)
    resid = theta.double() - design @ coef
    cov = resid.T @ resid / (len(x) - design.shape[1])
    n = x_set.shape[0]
    means = torch.cat([x_set.double(), torch.ones(n, 1, dtype=torch.float64)], 1) @ coef
    lam = n * torch.linalg.inv(cov) - (n - 1) * torch.eye(10, dtype=torch.float64) / 0.1
    post_cov = torch.linalg.inv(lam)
    post_mean = post_cov @ torch.linalg.solve(cov, means.sum(0))
    root = torch.linalg.cholesky(0.5 * (post_cov + post_cov.T))
    eps = torch.randn(num, 10, generator=generator, dtype=torch.float64)
    return (post_mean + eps @ root.T).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--observations", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--methods", nargs="+", default=["gauss", "jac", "geffner"])
    parser.add_argument("--compare-at", type=int, nargs="+", default=[5])
    parser.add_argument("--samples", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0, help="simulations, init, training")
    args = parser.parse_args()
    torch.set_num_threads(1)

    task = get_task("gaussian_linear")
    theta, x = simulate(task, args.num_simulations, args.seed)
    torch.manual_seed(args.seed)  # the network's initialization
    est = build_estimator({"kind": "npse", "dim_theta": 10, "x_shape": [10]})
    result = train(est, theta, x, TrainConfig(max_seconds=args.max_seconds), args.seed)
    print(
        f"# npse: {result.epochs} epochs, {result.train_seconds:.0f} s ({result.stopped_because})"
    )

    rows = []
    for n in args.observations:
        for method in [*(args.methods if n in args.compare_at else ["gauss"]), "floor"]:
            scores, errors, seconds = [], [], 0.0
            for r in range(args.repeats):
                g = torch.Generator().manual_seed(1000 * n + r)
                theta_star = task.prior.sample(1, g)
                x_set = task.simulator(theta_star.expand(n, -1), generator=g)
                ref = analytic_posterior(x_set, args.samples, g)
                start = time.perf_counter()
                if method == "floor":
                    samples = linear_gaussian_floor(theta, x, x_set, args.samples, g)
                else:
                    samples = sample_iid(est, task.prior, x_set, args.samples, g, method=method)
                seconds += time.perf_counter() - start
                scores.append(c2st(ref, samples, seed=0, method="early_stopping"))
                mean, std = posterior_mean_std(x_set)
                errors.append(float(((samples.double().mean(0) - mean) / std).norm()))
            row = (n, method, np.mean(scores), np.mean(errors), seconds / args.repeats)
            rows.append(row)
            print(f"n={n:<3} {method:<8} C2ST {row[2]:.3f}  mean error {row[3]:.2f}", flush=True)

    print("\n| observations | method | C2ST vs analytic | mean error / std | sampling s |")
    print("|---|---|---|---|---|")
    for n, method, score, error, seconds in rows:
        print(f"| {n} | {method} | {score:.3f} | {error:.2f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
