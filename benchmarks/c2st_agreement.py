"""Agreement of this project's C2ST methods with sbibm's own code, on known pairs.

Each case draws 10,000 samples from a reference P = N(0, I_d) and 10,000 from a
perturbed Q and computes C2ST three ways with the same seed and folds: ``sklearn``, the
scikit-learn ``MLPClassifier`` exactly as sbibm's ``c2st`` calls it; ``sbibm``, this
project's torch implementation of that definition (``method="sbibm"``); and the faster
``method="early_stopping"``. It prints the three, the differences to sklearn and the
time of each. For
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
from sklearn.model_selection import KFold, cross_val_score
from sklearn.neural_network import MLPClassifier

from sbi_service.diagnostics.c2st import c2st


def sklearn_c2st(p: np.ndarray, q: np.ndarray, seed: int) -> float:
    """sbibm's ``c2st``: z-score by P, MLPClassifier(10 d, 10 d), 5 shuffled folds."""
    mean, std = p.mean(0), p.std(0, ddof=1)
    data = np.concatenate([(p - mean) / std, (q - mean) / std])
    target = np.concatenate([np.zeros(len(p)), np.ones(len(q))])
    dim = p.shape[1]
    clf = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(10 * dim, 10 * dim),
        max_iter=10000,
        solver="adam",
        random_state=seed,
    )
    folds = KFold(n_splits=5, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(clf, data, target, cv=folds, scoring="accuracy")))


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
    parser.add_argument("--max-dim", type=int, default=5, help="skip cases of higher d")
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
    methods = {
        "sklearn": lambda p, q: sklearn_c2st(p, q, args.seed),
        "sbibm": lambda p, q: c2st(p, q, seed=args.seed, method="sbibm"),
        "early": lambda p, q: c2st(p, q, seed=args.seed, method="early_stopping"),
    }
    print(
        f"{'case':<18} {'d':>2} {'optimal':>8} "
        + " ".join(f"{m:>8}" for m in methods)
        + f" {'sbibm-sk':>9} {'early-sk':>9} "
        + " ".join(f"{m + ' s':>10}" for m in methods)
    )
    diffs: dict[str, list[float]] = {"sbibm": [], "early": []}
    for k, (name, dim, kind, size) in enumerate(cases):
        if dim > args.max_dim:
            continue
        rng = np.random.default_rng(args.seed + k)
        p, q = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
        if kind == "shift":
            q[:, 0] += size
            optimal = optimal_shift(size)
        else:
            q[:, 0] *= size
            optimal = optimal_scale(size)
        scores, seconds = {}, {}
        for method, score in methods.items():
            start = time.perf_counter()
            scores[method] = score(p, q)
            seconds[method] = time.perf_counter() - start
        for method in diffs:
            diffs[method].append(scores[method] - scores["sklearn"])
        print(
            f"{name:<18} {dim:>2} {optimal:>8.3f} "
            + " ".join(f"{scores[m]:>8.3f}" for m in methods)
            + f" {diffs['sbibm'][-1]:>+9.3f} {diffs['early'][-1]:>+9.3f} "
            + " ".join(f"{seconds[m]:>10.1f}" for m in methods),
            flush=True,
        )
    for method, d in diffs.items():
        print(
            f"max |{method} - sklearn| = {max(map(abs, d)):.3f} over {len(d)} cases "
            f"({n} + {n} samples each)"
        )


if __name__ == "__main__":
    main()
