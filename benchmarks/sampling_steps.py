"""Few-step ODE sampling of ``npse`` and ``fmpe`` against their 500-step result.

For each task (default: two_moons and gaussian_linear, 10^4 simulations) train ``npse``
(VE) and ``fmpe`` with their default settings, then for a few observations drawn from
the prior predictive compare, by C2ST against the task's reference posterior:

- the default sampler (npse: Heun, ``steps=18`` -> 35 network evaluations (NFE);
  fmpe: Heun, ``steps=15`` -> 30 NFE) and a cheaper one,
- the same ODE with 500 steps (the "converged" result),
- for npse also the reverse SDE (Euler-Maruyama, 500 steps).

Target (issue 3): the <= 50 NFE setting within 0.02 C2ST of the 500-step one.
Prints one table row per (task, estimator, sampler): mean C2ST over the observations.

    .venv/bin/python benchmarks/sampling_steps.py [--tasks two_moons gaussian_linear]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sbi_service.diagnostics.c2st import c2st
from sbi_service.estimators.registry import build_estimator
from sbi_service.estimators.train import TrainConfig, train
from sbi_service.simulators.registry import get_task
from sbi_service.simulators.simulate import simulate

# (label, sampler settings, NFE per sample as a function of steps)
SETTINGS = {
    "npse": [
        ("ode 500 steps", {"sampler": "ode", "steps": 500}, 999),
        ("ode 18 steps (default)", {"sampler": "ode", "steps": 18}, 35),
        ("ode 10 steps", {"sampler": "ode", "steps": 10}, 19),
        ("sde 500 steps", {"sampler": "sde", "steps": 500}, 501),
    ],
    "fmpe": [
        ("ode 500 steps", {"steps": 500}, 1000),
        ("ode 15 steps (default)", {"steps": 15}, 30),
        ("ode 8 steps", {"steps": 8}, 16),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["two_moons", "gaussian_linear"])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--samples", type=int, default=5_000)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    for task_name in args.tasks:
        task = get_task(task_name)
        theta, x = simulate(task, args.num_simulations, args.seed)
        _, x_obs = simulate(task, args.observations, args.seed + 1000)
        refs = [
            task.reference_posterior(x_o, args.samples, torch.Generator().manual_seed(k))
            for k, x_o in enumerate(x_obs)
        ]
        for kind, settings in SETTINGS.items():
            est = build_estimator(
                {"kind": kind, "dim_theta": theta.shape[1], "x_shape": list(x.shape[1:])}
            )
            result = train(est, theta, x, TrainConfig(max_seconds=args.max_seconds), args.seed)
            print(
                f"# {task_name} {kind}: {result.epochs} epochs, {result.train_seconds:.0f} s "
                f"({result.stopped_because})",
                flush=True,
            )
            samples_by_setting = {}
            for label, opts, nfe in settings:
                for key, value in opts.items():
                    setattr(est, key, value)
                start = time.perf_counter()
                samples = est.sample(x_obs, args.samples, torch.Generator().manual_seed(7))
                seconds = time.perf_counter() - start
                samples_by_setting[label] = samples
                scores = [
                    c2st(ref, s, seed=0, method="early_stopping")
                    for ref, s in zip(refs, samples, strict=True)
                ]
                rows.append((task_name, kind, label, nfe, float(np.mean(scores)), seconds))
                print(
                    f"{task_name:<16} {kind:<5} {label:<24} NFE {nfe:>4}  "
                    f"C2ST {np.mean(scores):.3f}  ({seconds:.1f} s)",
                    flush=True,
                )

    print("\n| task | estimator | sampler | NFE / sample | C2ST vs reference | sampling s |")
    print("|---|---|---|---|---|---|")
    for task_name, kind, label, nfe, score, seconds in rows:
        print(f"| {task_name} | {kind} | {label} | {nfe} | {score:.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
