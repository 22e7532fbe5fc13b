"""Few-step ODE sampling of ``npse`` and ``fmpe`` against many steps, as a reviewer measures.

For each task (default: slcp and gaussian_mixture, where they trail sbi's) train
``npse`` (VE) and ``fmpe`` with their default settings on 10^4 simulations, exactly as
``benchmarks/accuracy.py`` trains them (same simulations, seed and training loop), then
sample sbibm's ten official observations with each sampler below and score the samples
by C2ST with sbibm's definition against sbibm's reference samples:

- the default sampler (npse: Heun on the Karras grid, ``steps=18`` -> 35 network
  evaluations (NFE) per sample; fmpe: Heun on the grid t_i = 1 - (1 - i / N)^2 bunched
  toward the data, ``steps=15`` -> 30 NFE),
- the same ODE with ``--reference-steps`` (100) steps, the "converged" result: the
  difference is what the few steps cost. (Heun's error falls as 1/steps^2, so 100 steps
  is within a thirtieth of the default's discretization error; 500 steps and the SDE
  took an hour of sampling per task here.)
- for fmpe also the default number of steps on the other grids
  t_i = 1 - (1 - i / N)^p, ``grid_power`` p in ``--fmpe-grid-powers`` (1, the uniform
  grid, and 3).

Every setting samples with the same noise (a generator seeded with ``--seed``, as in
``benchmarks/accuracy.py``), so in one installation the default row reproduces the
accuracy table's cell.
Prints one table row per (task, estimator, sampler): mean ± sd C2ST over the observations
and the sampling seconds for all ten.

    .venv/bin/python benchmarks/sampling_steps.py [--tasks slcp gaussian_mixture]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from accuracy import NUM_OBSERVATIONS, NUM_POSTERIOR_SAMPLES, fit
from sbibm_files import official

from sbi_service.diagnostics.c2st import c2st_many
from sbi_service.estimators.posterior import Posterior
from sbi_service.simulators.simulate import simulate
from sbi_service.simulators.tasks import BUILTIN_TASKS

KINDS = ("npse", "fmpe")


def nfe(kind: str, steps: int) -> int:
    """Network evaluations per sample: Heun steps and, for npse, a last Euler step."""
    return 2 * steps - 1 if kind == "npse" else 2 * steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["slcp", "gaussian_mixture"],
        choices=BUILTIN_TASKS,
    )
    parser.add_argument("--estimators", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--fmpe-grid-powers", nargs="*", type=float, default=[1.0, 3.0])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ks = range(1, NUM_OBSERVATIONS + 1)

    rows = []
    for name in args.tasks:
        task = BUILTIN_TASKS[name]()
        observations = [official(name, k) for k in ks]
        theta, x = simulate(task, args.num_simulations, args.seed)
        for kind in args.estimators:
            fitted = fit(kind, task, theta, x, args.seed)
            print(f"# {name} {kind}: {fitted.extras}", flush=True)
            # the family's defaults, as trained; npse's Karras grid has no power
            power = fitted.estimator.grid_power if kind == "fmpe" else None
            default = (fitted.estimator.steps, power)
            settings = [default, (args.reference_steps, power)]
            if kind == "fmpe":
                settings += [(default[0], other) for other in args.fmpe_grid_powers]
            for steps, power in dict.fromkeys(settings):  # in order, without repeats
                fitted.estimator.steps = steps
                label = f"ode {steps} steps"
                if power is not None:
                    fitted.estimator.grid_power = power
                    label += f", grid power {power:g}"
                label += " (default)" if (steps, power) == default else ""
                posterior = Posterior(fitted.estimator, task.prior)
                generator = torch.Generator().manual_seed(args.seed)
                start = time.perf_counter()
                samples = [
                    posterior.sample(x_o[None], NUM_POSTERIOR_SAMPLES, generator)[0].numpy()
                    for x_o in (torch.from_numpy(x_o) for x_o, _, _ in observations)
                ]
                seconds = time.perf_counter() - start
                pairs = [(ref, s) for (_, _, ref), s in zip(observations, samples, strict=True)]
                scores = c2st_many(pairs, list(ks), method="sbibm")
                mean, std = np.mean(scores), np.std(scores)
                rows.append((name, kind, label, nfe(kind, steps), mean, std, seconds))
                print(
                    f"{name:<17} {kind:<5} {label:<36} NFE {nfe(kind, steps):>4}  "
                    f"C2ST {mean:.3f} ± {std:.3f}  ({seconds:.1f} s)",
                    flush=True,
                )

    print("\n| task | estimator | sampler | NFE / sample | C2ST (sbibm) | sampling s (10 x 10^4) |")
    print("|---|---|---|---:|---:|---:|")
    for name, kind, label, evaluations, mean, std, seconds in rows:
        c2st = f"{mean:.3f} ± {std:.3f}"
        print(f"| {name} | {kind} | {label} | {evaluations} | {c2st} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
