"""Held-out negative log-likelihood of candidate estimator configs beside one of sbi's.

The amortized posterior's expected fit over the whole prior predictive, without a
classifier: for a model q trained on N simulations,

    NLL(q) = - (1/m) sum_j log q(theta_j | x_j),    (theta_j, x_j) ~ p(theta) p(x | theta),

on m fresh pairs (``--test`` of them, seed 10,000, never trained on). Its expectation is
E_x[KL(p(theta | x) || q(theta | x))] plus a constant that does not depend on q, so the
difference of two models' NLL on the same pairs is the difference of their mean KL to the
true posterior (in nats per pair). It screens architectures in seconds where the C2ST
cells of ``benchmarks/accuracy.py`` take minutes, and over several ``--seeds`` (each its
own N simulations and initial weights) it shows whether a difference is more than one
seed's luck. C2ST at sbibm's 10 observations is still the table's judge.

For each task and seed, the same N simulations train ``--peer`` (default ``sbi``, sbi
0.27's default NPE, through ``accuracy.fit``) and each ``--configs`` candidate
(``accuracy.fit_config``: ``build_estimator`` and the default training loop, one torch
thread). Prints one markdown row per (task, candidate): mean NLL over the seeds, the mean
and standard deviation over the seeds of candidate minus peer, training CPU seconds and
epochs (means).

Run: ``python benchmarks/heldout_nll.py --tasks bernoulli_glm --budget 1000 --seeds 0 1 2
--configs '{"kind": "maf", "members": 1, "activation": "relu"}' '{"kind": "maf",
"members": 1}'`` (about a minute per seed here).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from accuracy import SBI, fit, fit_config

from sbi_service.simulators.simulate import simulate
from sbi_service.simulators.tasks import BUILTIN_TASKS

TEST_SEED = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", required=True, choices=BUILTIN_TASKS)
    parser.add_argument("--budget", type=int, default=1_000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", type=json.loads, required=True)
    parser.add_argument("--peer", default="sbi", choices=SBI)
    parser.add_argument("--test", type=int, default=5_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"| task | N | candidate | NLL (mean of {len(args.seeds)} seeds) | "
        f"Δ vs {args.peer} (mean ± sd over seeds) | training CPU s | epochs |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for name in args.tasks:
        task = BUILTIN_TASKS[name]()
        theta_test, x_test = simulate(task, args.test, TEST_SEED)
        labels = [args.peer, *(json.dumps(c) for c in args.configs)]
        rows = {label: [] for label in labels}  # per seed: (nll, cpu, epochs)
        for seed in args.seeds:
            theta, x = simulate(task, args.budget, seed)
            for label, candidate in zip(labels, [None, *args.configs], strict=True):
                if candidate is None:
                    fitted = fit(args.peer, task, theta, x, seed)
                else:
                    fitted = fit_config(candidate, task, theta, x, seed)
                with torch.no_grad():
                    nll = -float(fitted.log_prob(theta_test, x_test).mean())
                extras = fitted.extras
                rows[label].append((nll, extras["train_cpu_seconds"], extras["epochs"]))
        peer = np.array(rows[args.peer])
        for label in labels:
            a = np.array(rows[label])
            delta = a[:, 0] - peer[:, 0]
            shown = "" if label == args.peer else f"{delta.mean():+.3f} ± {delta.std():.3f}"
            print(
                f"| {name} | {args.budget:,} | `{label}` | {a[:, 0].mean():.3f} | {shown} | "
                f"{a[:, 1].mean():.0f} | {a[:, 2].mean():.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
