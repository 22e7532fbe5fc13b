"""Adversarial robustness with and without the Fisher-information regularizer.

For gaussian_linear and slcp, NSF posteriors are trained on 10^4 simulations with
``train_model``: one unregularized (``fisher_reg=0``) and one per ``--betas`` value.
For each model it prints

* the adversarial KL(q(theta|x) || q(theta|x+delta)) of PGD attacks at eps = 0.5 data
  standard deviations, L2 and L-infinity, averaged over ``--num-attack-obs`` test
  observations (``sbi_service.diagnostics.adversarial``), and the L2 curve over eps;
* C2ST accuracy against reference posteriors
  (``sbi_service.simulators.reference.sample_reference_posterior``), averaged over
  ``--num-c2st-obs`` observations with 2,000 samples each (the shared ``c2st``,
  ``method="early_stopping"``).

Target: regularized L2 KL at eps 0.5 <= half the unregularized one, with C2ST worse by
at most 0.03.

    python benchmarks/robustness.py [--tasks gaussian_linear slcp] [--betas 0.1 1.0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sbi_service.diagnostics.adversarial import adversarial_robustness
from sbi_service.diagnostics.c2st import c2st
from sbi_service.estimators.train import TrainConfig
from sbi_service.simulators.reference import sample_reference_posterior
from sbi_service.simulators.registry import get_task
from sbi_service.simulators.simulate import simulate
from sbi_service.store.db import Store
from sbi_service.workflows.models import load_posterior
from sbi_service.workflows.train import TrainRequest, train_model

EPSILONS = (0.1, 0.2, 0.5, 1.0, 2.0)


def evaluate(
    store: Store,
    name: str,
    x: torch.Tensor,
    references: list[torch.Tensor],
    args: argparse.Namespace,
) -> dict:
    """Attack ``name`` on test observations x (k, dim_x); C2ST against ``references``."""
    posterior, _ = load_posterior(store, name)
    attack = adversarial_robustness(
        posterior.estimator, x[: args.num_attack_obs], torch.Generator().manual_seed(0),
        epsilons=EPSILONS,
    )  # fmt: skip
    scores = []
    for i, reference in enumerate(references):
        samples = posterior.sample(x[i : i + 1], 2000, torch.Generator().manual_seed(i))[0]
        scores.append(c2st(reference.numpy(), samples.numpy(), seed=i, method="early_stopping"))
    k = EPSILONS.index(0.5)
    return {
        "kl_l2": attack.values["l2"]["mean_kl"][k],
        "kl_linf": attack.values["linf"]["mean_kl"][k],
        "curve_l2": attack.values["l2"]["mean_kl"],
        "c2st": float(np.mean(scores)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["gaussian_linear", "slcp"])
    parser.add_argument("--betas", nargs="+", type=float, default=[0.1, 1.0])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--num-attack-obs", type=int, default=50)
    parser.add_argument("--num-c2st-obs", type=int, default=5)
    parser.add_argument("--max-train-seconds", type=float, default=300.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    store = Store(Path(tempfile.mkdtemp()))

    for task_name in args.tasks:
        task = get_task(task_name)
        _, x = simulate(task, max(args.num_attack_obs, args.num_c2st_obs), seed=999)
        # The reference posteriors (MCMC for slcp) are shared by every model of the task.
        references = [
            sample_reference_posterior(task, x[i], 2000, seed=i) for i in range(args.num_c2st_obs)
        ]
        rows = []
        for beta in [0.0, *args.betas]:
            name = f"{task_name}_beta{beta:g}"
            start = time.perf_counter()
            train_model(
                store,
                TrainRequest(
                    name=name, estimator="nsf", seed=0, simulator=task_name,
                    num_simulations=args.num_simulations, fisher_reg=beta,
                    train=TrainConfig(max_seconds=args.max_train_seconds),
                ),
            )  # fmt: skip
            result = evaluate(store, name, x, references, args)
            result["beta"], result["seconds"] = beta, time.perf_counter() - start
            rows.append(result)
            print(f"  {task_name} beta={beta:g} done in {result['seconds']:.0f}s", flush=True)
        base = rows[0]
        print(f"\n{task_name}, {args.num_simulations} simulations, NSF")
        print(f"{'beta':>6} {'KL L2 e.5':>10} {'KL Linf e.5':>12} {'C2ST':>7} "
              f"{'KL ratio':>9} {'dC2ST':>7}  L2 KL over eps {EPSILONS}")  # fmt: skip
        for r in rows:
            ratio, d_c2st = r["kl_l2"] / base["kl_l2"], r["c2st"] - base["c2st"]
            curve = " ".join(f"{v:.3f}" for v in r["curve_l2"])
            meets = "" if r is base else (
                "  meets target" if ratio <= 0.5 and d_c2st <= 0.03 else "  misses target"
            )  # fmt: skip
            print(f"{r['beta']:6g} {r['kl_l2']:10.4f} {r['kl_linf']:12.4f} {r['c2st']:7.3f} "
                  f"{ratio:9.3f} {d_c2st:+7.3f}  {curve}{meets}")  # fmt: skip
        print(flush=True)


if __name__ == "__main__":
    main()
