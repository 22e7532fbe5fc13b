"""Agreement of the fast early-stopping C2ST with sbibm's definition, on known pairs.

Each case draws 10,000 samples from a reference P = N(0, I_d) and 10,000 from a
perturbed Q, computes C2ST with ``method="sbibm"`` and ``method="early_stopping"``
(same seed, same folds) and prints both, their difference and the time of each. For
Gaussian pairs the best possible accuracy is known, which tells which of two differing
scores is closer to the truth:

- mean shift Q = N(delta e_1, I):  optimal accuracy = Phi(delta / 2);
- scale change Q = N(0, s^2 I) in d = 1 direction (other coordinates identical):
  the optimal classifier thresholds |z_1| at r with r^2 = 2 log(s) s^2 / (s^2 - 1),
  accuracy = (P(|z| < r) + P(|s z| > r)) / 2.

Run: ``python benchmarks/c2st_agreement.py``
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy.stats import norm

from sbi_service.diagnostics.c2st import c2st


def optimal_shift(delta: float) -> float:
    return float(norm.cdf(delta / 2))


def optimal_scale(s: float) -> float:
    r = math.sqrt(2 * math.log(s) * s**2 / (s**2 - 1))
    inside_p = 2 * norm.cdf(r) - 1
    outside_q = 2 * (1 - norm.cdf(r / s))
    return float((inside_p + outside_q) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # (name, dim, kind, size): the kinds of discrepancy an approximate posterior shows.
    cases = [
        ("identical", 2, "shift", 0.0),
        ("mean shift 0.3", 2, "shift", 0.3),
        ("mean shift 0.6", 2, "shift", 0.6),
        ("scale x1.3", 2, "scale", 1.3),
        ("mean shift 0.3", 5, "shift", 0.3),
        ("mean shift 0.6", 5, "shift", 0.6),
    ]
    n = args.num_samples
    print(
        f"{'case':<18} {'d':>2} {'optimal':>8} {'sbibm':>7} {'early':>7} {'diff':>7}"
        f" {'sbibm s':>8} {'early s':>8}"
    )
    diffs = []
    for k, (name, dim, kind, size) in enumerate(cases):
        rng = np.random.default_rng(args.seed + k)
        p, q = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
        if kind == "shift":
            q[:, 0] += size
            optimal = optimal_shift(size)
        else:
            q[:, 0] *= size
            optimal = optimal_scale(size)
        scores, seconds = {}, {}
        for method in ("sbibm", "early_stopping"):
            start = time.perf_counter()
            scores[method] = c2st(p, q, seed=args.seed, method=method)
            seconds[method] = time.perf_counter() - start
        diff = scores["early_stopping"] - scores["sbibm"]
        diffs.append(abs(diff))
        print(
            f"{name:<18} {dim:>2} {optimal:>8.3f} {scores['sbibm']:>7.3f} "
            f"{scores['early_stopping']:>7.3f} {diff:>+7.3f} {seconds['sbibm']:>8.1f} "
            f"{seconds['early_stopping']:>8.1f}",
            flush=True,
        )
    print(
        f"max |early_stopping - sbibm| = {max(diffs):.3f} over {len(cases)} cases "
        f"({n} + {n} samples each)"
    )


if __name__ == "__main__":
    main()
