"""Where a C2ST gap on gaussian_linear comes from: the posterior's mean and spread, or its shape.

gaussian_linear has the analytic posterior p(theta | x) = N(x / 2, 0.05 I) (10-d,
``posterior_mean_std``), so each estimator q trained by ``benchmarks/accuracy.py``'s
``fit`` on the same 10^4 simulations can be scored without a classifier, on K
observations (the 10 benchmark observations, then prior-predictive ones):

- exact C2ST: the accuracy of the Bayes-optimal classifier between equally many draws of
  p and q, 0.5 + TV(p, q) / 2, with TV(p, q) = E_p[(1 - q / p)_+] estimated from M draws of
  p and q's own density. It sees every difference, however fine;
- Gaussian-part C2ST: the same for N(m, S), the Gaussian with q's sample mean and
  covariance (M samples), against p: only the error in location and spread;
- mean error |m - x / 2| / sqrt(0.05), averaged over the 10 dimensions (posterior sds);
- sd ratio sqrt(diag S) / sqrt(0.05), averaged over the dimensions.

The sbibm classifier (an MLP on 10^4 + 10^4 samples) cannot resolve fine structure, so
the C2ST it reports follows the Gaussian part (see ``results/c2st_gap.txt``).

    python benchmarks/c2st_gap.py [--estimators nsf maf sbi] [--observations 40]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from accuracy import Fitted, fit

from sbi_service.simulators.observations import benchmark_observations
from sbi_service.simulators.simulate import simulate
from sbi_service.simulators.tasks import BUILTIN_TASKS
from sbi_service.simulators.tasks.gaussian_linear import posterior_mean_std

M = 4000


def bayes_c2st(log_q: torch.Tensor, log_p: torch.Tensor) -> float:
    """0.5 + TV / 2 from log densities (M,) of p's draws under q and p."""
    return 0.5 + 0.5 * float(torch.clamp(1 - torch.exp(log_q - log_p), min=0).mean())


def scores(fitted: Fitted, x_obs: torch.Tensor, seed: int) -> np.ndarray:
    """(K, 4): exact C2ST, Gaussian-part C2ST, mean error (sds), sd ratio per observation."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for x_o in x_obs:
        s = fitted.sample(x_o, M)
        mean, std = posterior_mean_std(x_o)
        p = torch.distributions.Normal(mean, std)
        theta = mean + std * torch.randn(M, len(mean), generator=g, dtype=torch.float64)
        with torch.no_grad():
            log_q = fitted.log_prob(theta.float(), x_o.expand(M, -1)).double()
        s = torch.as_tensor(s, dtype=torch.float64)
        m, cov = s.mean(0), torch.cov(s.T)
        log_p = p.log_prob(theta).sum(-1)
        rows.append(
            [
                bayes_c2st(log_q, log_p),
                bayes_c2st(torch.distributions.MultivariateNormal(m, cov).log_prob(theta), log_p),
                float(((m - mean).abs() / std).mean()),
                float((cov.diagonal().sqrt() / std).mean()),
            ]
        )
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimators", nargs="+", default=["nsf", "maf", "sbi"])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/c2st_gap.txt"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = BUILTIN_TASKS["gaussian_linear"]()
    theta, x = simulate(task, args.num_simulations, args.seed)
    _, x_bench = benchmark_observations(task, 10)
    x_obs = x_bench[: args.observations]
    if args.observations > 10:
        _, x_more = simulate(task, args.observations - 10, args.seed + 7)
        x_obs = torch.cat([x_bench, x_more])
    lines = [
        f"gaussian_linear, {args.num_simulations} simulations (seed {args.seed}), "
        f"{len(x_obs)} observations (the first 10 are the benchmark's), {M} draws each",
        "estimator | exact C2ST | Gaussian-part C2ST | mean error (sds) | sd ratio | "
        "same, first 10 observations",
    ]
    for kind in args.estimators:
        fitted = fit(kind, task, theta, x, args.seed)
        a = scores(fitted, x_obs, args.seed)
        row = {
            "estimator": kind,
            "all": [round(float(v), 4) for v in a.mean(0)],
            "benchmark_10": [round(float(v), 4) for v in a[:10].mean(0)],
            **fitted.extras,
        }
        print(json.dumps(row), flush=True)
        lines.append(
            f"{kind} | "
            + " | ".join(f"{v:.3f}" for v in row["all"])
            + " | "
            + " / ".join(f"{v:.3f}" for v in row["benchmark_10"])
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
