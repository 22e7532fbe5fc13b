"""Posteriors from 1, 5 and 20 i.i.d. observations: ours next to sbi 0.27's i.i.d. methods.

Simulates 10^4 single gaussian_linear pairs (theta, x) and trains on exactly these pairs,
in the same run, with one torch thread:

- ours: ``npse`` (default settings, or ``--npse`` options), sampled by composing its
  single-observation scores with ``sample_iid`` ("gauss", its
  defaults: 50-point Karras grid);
- sbi: sbi 0.27's default ``NPSE(prior)`` (VE SDE, its default training), sampled with
  its defaults (``sample_with="sde"``, 500 Euler-Maruyama steps, samples outside the
  prior rejected) and each ``iid_method``: "fnpe", "gauss", "auto_gauss", "jac_gauss" (at
  n = 1 the method is not used: one row "sbi"). "jac_gauss" computes a Jacobian of the
  score network per sample, observation and step, too slow for 500 steps on a shared
  CPU: it runs ``--jac-gauss-steps`` (default 50) Euler-Maruyama steps, as its row says.

Training CPU seconds (process time of the training call) of both are printed. For each
number of observations n, ``--repeats`` draws of theta* from the prior and x_1..x_n from
the simulator; every method samples p(theta | x_1..x_n) given the same x set and is
compared by C2ST (``c2st(..., method="early_stopping")``; at the n in ``--sbibm-at`` also
sbibm's definition, ``method="sbibm"``) with samples of the analytic posterior: prior
N(0, 0.1 I), x_i ~ N(theta, 0.1 I) give

    theta | x_1..x_n ~ N( sum_i x_i / (n + 1), 0.1 / (n + 1) I ).

Each row: the mean over the repeats of C2ST, of the error |mean(samples) - posterior
mean| in units of the posterior's standard deviation (a mean error delta alone gives
C2ST Phi(delta / 2): 0.6 at delta = 0.51, 0.7 at 1.05), and of the sampling seconds.

Row "floor" (a reference, not a method): the same simulations fitted by the model class
that is exactly right here, a linear-Gaussian posterior theta | x ~ N(B [x; 1], C) by
least squares, composed exactly (``linear_gaussian_floor``). Its C2ST is what the best
single-observation model of these 10^4 simulations could reach; its error is the
estimation error of B, which the composition amplifies like a network's: the tall
mean is 2 n / (n + 1) times the average single-observation mean here, so a mean error
e (theta units) common to the x_i becomes ~2 e against a posterior standard deviation
that shrinks as (n + 1)^(-1/2).

    .venv/bin/python benchmarks/iid.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sbi_service.diagnostics.c2st import c2st
from sbi_service.estimators.iid import sample_iid
from sbi_service.estimators.registry import build_estimator
from sbi_service.estimators.train import train
from sbi_service.simulators.registry import get_task
from sbi_service.simulators.simulate import simulate
from sbi_service.simulators.tasks.gaussian_linear import posterior_mean_std

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import sbi_prior  # noqa: E402

SBI_IID_METHODS = ("fnpe", "gauss", "auto_gauss", "jac_gauss")


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


def train_sbi_npse(task, theta: torch.Tensor, x: torch.Tensor, seed: int):
    """sbi 0.27's default NPSE trained on exactly (theta, x): (posterior, CPU s, epochs)."""
    from sbi.inference import NPSE

    inference = NPSE(prior=sbi_prior(task.prior), show_progress_bars=False)
    torch.manual_seed(seed)
    cpu_start = time.process_time()
    inference.append_simulations(theta, x).train()
    cpu = time.process_time() - cpu_start
    return inference.build_posterior(), cpu, int(inference._summary["epochs_trained"][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--observations", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--sbi-methods", nargs="*", default=list(SBI_IID_METHODS))
    parser.add_argument("--sbibm-at", type=int, nargs="*", default=[20])
    parser.add_argument("--jac-gauss-steps", type=int, default=50, help="sbi's jac_gauss only")
    parser.add_argument("--samples", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="simulations, init, training")
    parser.add_argument("--npse", type=json.loads, default={}, help="npse options (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    task = get_task("gaussian_linear")
    theta, x = simulate(task, args.num_simulations, args.seed)
    torch.manual_seed(args.seed)  # the network's initialization
    est = build_estimator({"kind": "npse", "dim_theta": 10, "x_shape": [10], **args.npse})
    cpu_start = time.process_time()
    result = train(est, theta, x, seed=args.seed)
    ours_cpu = time.process_time() - cpu_start
    print(
        f"# ours: npse {args.npse or 'defaults'}, {result.epochs} epochs "
        f"({result.stopped_because}), training CPU {ours_cpu:.0f} s",
        flush=True,
    )
    sbi_posterior, sbi_cpu, sbi_epochs = None, 0.0, 0
    if args.sbi_methods:
        sbi_posterior, sbi_cpu, sbi_epochs = train_sbi_npse(task, theta, x, args.seed)
        print(f"# sbi: NPSE, {sbi_epochs} epochs, training CPU {sbi_cpu:.0f} s", flush=True)

    def sampler(method: str):
        """(x_set, g) -> samples (args.samples, 10) for one row's method."""
        if method == "ours":
            return lambda xs, g: sample_iid(est, task.prior, xs, args.samples, g, method="gauss")
        if method == "floor":
            return lambda xs, g: linear_gaussian_floor(theta, x, xs, args.samples, g)
        iid_method = method.removeprefix("sbi ").split(" ")[0] if method != "sbi" else None
        steps = {"steps": args.jac_gauss_steps} if iid_method == "jac_gauss" else {}

        def draw(xs: torch.Tensor, g: torch.Generator) -> torch.Tensor | None:
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))  # sbi's noise
            try:
                return sbi_posterior.sample(
                    (args.samples,),
                    x=xs,
                    iid_method=iid_method,
                    show_progress_bars=False,
                    **steps,
                )
            except Exception as error:  # a method that fails is a row of the table
                print(f"  {method} failed: {error!r}", flush=True)
                return None

        return draw

    rows = []
    for n in args.observations:
        sbi_rows = ["sbi"]
        if n > 1:
            capped = f" ({args.jac_gauss_steps} steps)"
            sbi_rows = [f"sbi {m}" + (capped if m == "jac_gauss" else "") for m in args.sbi_methods]
        for method in ["ours", *(sbi_rows if args.sbi_methods else []), "floor"]:
            draw = sampler(method)
            scores, sbibm, errors, seconds = [], [], [], 0.0
            for r in range(args.repeats):
                g = torch.Generator().manual_seed(1000 * n + r)
                theta_star = task.prior.sample(1, g)
                x_set = task.simulator(theta_star.expand(n, -1), generator=g)
                ref = analytic_posterior(x_set, args.samples, g)
                start = time.perf_counter()
                samples = draw(x_set, g)
                seconds += time.perf_counter() - start
                if samples is None:
                    break
                scores.append(c2st(ref, samples, seed=0, method="early_stopping"))
                if n in args.sbibm_at:
                    sbibm.append(c2st(ref, samples, seed=0, method="sbibm"))
                mean, std = posterior_mean_std(x_set)
                errors.append(float(((samples.double().mean(0) - mean) / std).norm()))
            if not scores:
                rows.append((n, method, None, None, None, seconds))
                continue
            row = (
                n,
                method,
                np.mean(scores),
                np.mean(sbibm) if sbibm else None,
                np.mean(errors),
                seconds / len(scores),
            )
            rows.append(row)
            extra = f"  sbibm {row[3]:.3f}" if sbibm else ""
            print(
                f"n={n:<3} {method:<15} C2ST {row[2]:.3f}{extra}  mean error {row[4]:.2f}  "
                f"sampling {row[5]:.1f} s",
                flush=True,
            )

    print(f"\ntraining CPU s: ours {ours_cpu:.0f}, sbi NPSE {sbi_cpu:.0f}")
    print("\n| observations | method | C2ST | C2ST (sbibm) | mean error / std | sampling s |")
    print("|---|---|---|---|---|---|")
    for n, method, score, sbibm_score, error, seconds in rows:
        if score is None:
            print(f"| {n} | {method} | failed | | | {seconds:.1f} |")
            continue
        sb = f"{sbibm_score:.3f}" if sbibm_score is not None else ""
        print(f"| {n} | {method} | {score:.3f} | {sb} | {error:.2f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
