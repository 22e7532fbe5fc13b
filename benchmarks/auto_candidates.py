"""Candidate estimator configs for a rule of ``auto``, side by side: fast C2ST and CPU.

For each task, the same ``--budget`` simulations (seed 0) train each candidate config
(``accuracy.fit_config``: ``build_estimator`` and the default training loop, one torch
thread), and ``sbi``, sbi 0.27's default NPE, beside them. Each draws 10,000 samples for
sbibm's 10 official observations, scored with the fast early-stopping C2ST
(``c2st_many(..., method="early_stopping")``), which ranks like sbibm's definition
(``benchmarks/results/accuracy.md``, its 10^4 column) at a fraction of its time. This
screens candidates; the cells of the accuracy table are then rerun with
``benchmarks/accuracy.py``.

Run: ``python benchmarks/auto_candidates.py --tasks bernoulli_glm gaussian_linear
--budget 1000 --configs '{"kind": "nsf", "members": 4}' '{"kind": "maf", "members": 4}'``
(about 5 minutes per candidate and task on this machine). Prints one markdown row per
(task, candidate).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from accuracy import NUM_OBSERVATIONS, NUM_POSTERIOR_SAMPLES, fit, fit_config
from sbibm_files import official

from sbi_service.diagnostics.c2st import c2st_many
from sbi_service.simulators.simulate import simulate
from sbi_service.simulators.tasks import BUILTIN_TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", required=True, choices=BUILTIN_TASKS)
    parser.add_argument("--budget", type=int, default=1_000)
    parser.add_argument("--configs", nargs="+", type=json.loads, required=True)
    parser.add_argument("--no-sbi", action="store_true", help="skip sbi's default NPE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ks = list(range(1, NUM_OBSERVATIONS + 1))
    print("| task | N | candidate | fast C2ST | training CPU s | epochs |")
    print("|---|---:|---|---:|---:|---:|")
    for name in args.tasks:
        task = BUILTIN_TASKS[name]()
        observations = [official(name, k) for k in ks]
        theta, x = simulate(task, args.budget, 0)
        candidates = [*([] if args.no_sbi else ["sbi"]), *args.configs]
        for candidate in candidates:
            if candidate == "sbi":
                fitted = fit("sbi", task, theta, x, 0)
            else:
                full = {**candidate, "dim_theta": task.prior.dim, "x_shape": list(task.x_shape)}
                fitted = fit_config(full, task, theta, x, 0)
            pairs = [
                (ref, fitted.sample(torch.from_numpy(x_o), NUM_POSTERIOR_SAMPLES))
                for x_o, _, ref in observations
            ]
            score = float(np.mean(c2st_many(pairs, ks, method="early_stopping")))
            label = candidate if candidate == "sbi" else json.dumps(candidate)
            print(
                f"| {name} | {args.budget:,} | `{label}` | {score:.3f} | "
                f"{fitted.extras['train_cpu_seconds']:.0f} | {fitted.extras['epochs']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
