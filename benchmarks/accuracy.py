"""C2ST accuracy and training time of this project's estimators against sbi's, as a reviewer
would measure them.

For every task and simulation budget N, in one run:

1. simulate N pairs ``(theta, x)`` with ``simulate(task, N, seed)``;
2. train each selected estimator on exactly these pairs, timing the training call only
   (wall clock and the process's CPU seconds; both sides use the same torch thread count,
   ``--threads``, default 1):
   - ours by ``--estimator`` name as the CLI trains it with its default settings:
     ``auto`` (the CLI's default: ``sbi_service.estimators.auto``), ``nsf``, ``maf``,
     ``npse``, ``fmpe``;
   - sbi 0.27 with its defaults: ``sbi`` is ``NPE(prior)`` (its default density estimator,
     a MAF), ``sbi_nsf`` is ``NPE(prior, density_estimator="nsf")``, ``sbi_npse`` is
     ``NPSE(prior)``, ``sbi_fmpe`` is ``FMPE(prior)``; each ``.append_simulations(theta,
     x).train()`` and ``build_posterior()``;
3. for each of sbibm's ten official observations of the task (``num_observation`` 1..10,
   read with the reference samples from the sbibm 1.1.0 wheel: ``benchmarks/sbibm_files.py``)
   draw 10,000 posterior samples (restricted to the prior's support) and compute
   C2ST(reference samples, estimator samples) with sbibm's definition
   (``c2st_many(..., method="sbibm")``, seed = the observation's index), and, where
   ``--fast-c2st-at`` includes N, also the faster early-stopping C2ST beside it;
4. report the mean and standard deviation of C2ST over the observations.

One JSON line per finished (task, budget, estimator) cell is appended to
``{out}/accuracy.jsonl`` as soon as it is done, so partial runs keep their results;
``accuracy.json`` and ``accuracy.md`` are rewritten from all lines after every cell (the
newest line per cell wins).

``--tables-only`` rewrites ``accuracy.md`` from the lines and copies it into the README.

Run: ``python benchmarks/accuracy.py`` (all tasks, budgets 10^3, 10^4, 10^5, ``auto``,
``nsf`` and ``sbi``); ``--estimators npse fmpe sbi_npse sbi_fmpe --budgets 10000`` for the
score and flow-matching families.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sbibm_files import official

from sbi_service.diagnostics.c2st import c2st_many
from sbi_service.estimators.auto import estimator_config
from sbi_service.estimators.base import Estimator
from sbi_service.estimators.posterior import Posterior
from sbi_service.estimators.registry import ESTIMATORS, build_estimator
from sbi_service.estimators.train import train
from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import Prior
from sbi_service.simulators.simulate import simulate
from sbi_service.simulators.tasks import BUILTIN_TASKS

NUM_POSTERIOR_SAMPLES = 10_000
NUM_OBSERVATIONS = 10
OURS = ("auto", *ESTIMATORS)
SBI = {"sbi": ("NPE", "maf"), "sbi_nsf": ("NPE", "nsf"), "sbi_npse": ("NPSE", None)}
SBI["sbi_fmpe"] = ("FMPE", None)
DEFAULT, PEER = "auto", "sbi"  # the CLI's default estimator and sbi's default NPE


def sbi_prior(prior: Prior) -> torch.distributions.Distribution:
    """The torch distribution sbi needs, built from our prior spec."""
    from sbi.utils import BoxUniform

    spec = prior.spec
    t = {k: torch.tensor(v, dtype=torch.float32) for k, v in spec.items() if k != "type"}
    if spec["type"] == "box_uniform":
        return BoxUniform(t["low"], t["high"])
    if spec["type"] == "normal":
        return torch.distributions.Independent(torch.distributions.Normal(t["loc"], t["scale"]), 1)
    if spec["type"] == "lognormal":
        return torch.distributions.Independent(
            torch.distributions.LogNormal(t["loc"], t["scale"]), 1
        )
    return torch.distributions.MultivariateNormal(
        t["loc"], covariance_matrix=t["covariance_matrix"]
    )


@dataclass
class Fitted:
    """One trained estimator: training seconds, table extras, its posterior sampler and density.

    ``sample(x_o, n)``: x_o (*x_shape) -> (n, d) samples restricted to the prior's support.
    ``log_prob(theta, x)``: paired rows theta (m, d), x (m, *x_shape) -> log q(theta | x)
    (m,), the trained density (not renormalized to the prior's support).
    ``estimator``: ours (whose sampler settings ``sample`` follows), None for sbi's.
    """

    seconds: float
    extras: dict[str, Any]
    sample: Callable[[torch.Tensor, int], np.ndarray]
    log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    estimator: Estimator | None = None


def fit(kind: str, task: Task, theta: torch.Tensor, x: torch.Tensor, seed: int) -> Fitted:
    """Train one estimator (ours by CLI name, or one of sbi's) on exactly (theta, x)."""
    if kind in SBI:
        import sbi.inference

        torch.manual_seed(seed)  # the network's initial weights, as fit_config does for ours

        trainer, density_estimator = SBI[kind]
        options = {"density_estimator": density_estimator} if density_estimator else {}
        inference = getattr(sbi.inference, trainer)(
            prior=sbi_prior(task.prior), show_progress_bars=False, **options
        )
        start, cpu_start = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(sys.stderr):  # its "converged after" line
            inference.append_simulations(theta, x).train()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        posterior = inference.build_posterior()
        return Fitted(
            seconds=seconds,
            extras={
                "train_cpu_seconds": round(cpu, 2),
                "epochs": int(inference._summary["epochs_trained"][-1]),
            },
            sample=lambda x_o, n: posterior.sample((n,), x=x_o, show_progress_bars=False).numpy(),
            log_prob=lambda theta, x: posterior.posterior_estimator.log_prob(theta[None], x)[0],
        )
    config = estimator_config(
        kind, task.prior.dim, task.x_shape, len(theta), task.prior.spec["type"]
    )
    return fit_config(config, task, theta, x, seed)


def fit_config(
    config: dict[str, Any], task: Task, theta: torch.Tensor, x: torch.Tensor, seed: int
) -> Fitted:
    """Train a ``build_estimator`` config on (theta, x) with the default training loop; the
    config's ``dim_theta`` and ``x_shape`` default to the task's."""
    shapes = {"dim_theta": task.prior.dim, "x_shape": list(task.x_shape)}
    torch.manual_seed(seed)  # the network's initial weights
    estimator = build_estimator({**shapes, **config})
    cpu_start = time.process_time()
    result = train(estimator, theta, x, seed=seed)
    cpu = time.process_time() - cpu_start
    posterior = Posterior(estimator, task.prior)
    generator = torch.Generator().manual_seed(seed)
    return Fitted(
        seconds=result.train_seconds,
        extras={
            "train_cpu_seconds": round(cpu, 2),
            "epochs": result.epochs,
            "stopped_because": result.stopped_because,
            "config": {k: v for k, v in config.items() if k not in ("dim_theta", "x_shape")},
        },
        sample=lambda x_o, n: posterior.sample(x_o[None], n, generator)[0].numpy(),
        log_prob=estimator.log_prob,
        estimator=estimator,
    )


def load_cells(out: Path) -> dict[tuple[str, int, str], dict]:
    """The rows of accuracy.jsonl by (task, num_simulations, estimator); the last line wins."""
    cells: dict[tuple[str, int, str], dict] = {}
    for line in (out / "accuracy.jsonl").read_text().splitlines():
        row = json.loads(line)
        cells[(row["task"], row["num_simulations"], row["estimator"])] = row
    return cells


def write_tables(out: Path) -> None:
    """Rewrite accuracy.json and accuracy.md from every line of accuracy.jsonl."""
    cells = load_cells(out)
    order = [*OURS, *SBI]
    rows = sorted(
        cells.values(),
        key=lambda r: (
            list(BUILTIN_TASKS).index(r["task"]),
            r["num_simulations"],
            order.index(r["estimator"]),
        ),
    )
    (out / "accuracy.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "C2ST with sbibm's definition (mean ± sd over sbibm's 10 official observations; 0.5 "
        "is perfect) and training CPU seconds, one torch thread on both sides. `auto` is "
        "`sbi-service train`'s default; `sbi` is sbi 0.27's default `NPE(prior)` (a MAF), "
        "`sbi_nsf` its NSF, `sbi_npse`/`sbi_fmpe` its NPSE/FMPE, all trained on the same "
        "simulations in the same run. Δ = auto − sbi (target ≤ +0.005) ± its standard error "
        "paired over the observations (the same observations and C2ST seeds on both sides); "
        "CPU ratio = sbi's training CPU seconds over auto's (target ≥ 3). Generated by "
        "`benchmarks/accuracy.py`.",
    ]
    for n in sorted({r["num_simulations"] for r in rows}):
        at_n = [r for r in rows if r["num_simulations"] == n]
        present = [e for e in order if any(r["estimator"] == e for r in at_n)]
        fast = any("c2st_fast_mean" in r for r in at_n)
        lines += [
            "",
            f"### {n:,} simulations",
            "",
            "| task | "
            + " | ".join(f"{e} C2ST (CPU s)" for e in present)
            + " | Δ | CPU ratio |"
            + (" fast C2ST " + " / ".join(present) + " |" if fast else ""),
            "|---|" + "---:|" * (len(present) + 2 + fast),
        ]
        means: dict[str, list[float]] = {e: [] for e in present}
        for task in BUILTIN_TASKS:
            here = {e: cells.get((task, n, e)) for e in present}
            if not any(here.values()):
                continue
            parts = []
            for e in present:
                r = here[e]
                parts.append(
                    "–"
                    if r is None
                    else f"{r['c2st_mean']:.3f} ± {r['c2st_std']:.3f} "
                    f"({r['train_cpu_seconds']:.0f})"
                )
                if r is not None:
                    means[e].append(r["c2st_mean"])
            ours, peer = here.get(DEFAULT), here.get(PEER)
            delta = paired_delta(ours, peer) if ours and peer else ""
            ratio = (
                f"{peer['train_cpu_seconds'] / ours['train_cpu_seconds']:.1f}x"
                if ours and peer
                else ""
            )
            extra = ""
            if fast:
                extra = (
                    " "
                    + " / ".join(
                        f"{here[e]['c2st_fast_mean']:.3f}"
                        if here[e] and "c2st_fast_mean" in here[e]
                        else "–"
                        for e in present
                    )
                    + " |"
                )
            lines.append(f"| {task} | " + " | ".join(parts) + f" | {delta} | {ratio} |" + extra)
        complete = [e for e in present if len(means[e]) == len(BUILTIN_TASKS)]
        if complete:
            lines.append(
                "| mean | "
                + " | ".join(f"{np.mean(means[e]):.3f}" if e in complete else "" for e in present)
                + " | | |"
                + (" |" if fast else "")
            )
    (out / "accuracy.md").write_text("\n".join(lines) + "\n")


def paired_delta(ours: dict, peer: dict) -> str:
    """mean ± standard error of the per-observation C2ST differences ours − peer."""
    d = np.subtract(ours["c2st"], peer["c2st"])
    return f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f}"


def update_readme(table: str, readme: Path = Path("README.md")) -> None:
    """Put ``table`` (accuracy.md) between the README's ``<!-- accuracy.md -->`` markers,
    its headings one level down (the README nests it under "Benchmarks")."""
    start, end = "<!-- accuracy.md -->", "<!-- /accuracy.md -->"
    text = readme.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    body = table.replace("\n### ", "\n#### ")
    readme.write_text(f"{head}{start}\n\n{body}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(BUILTIN_TASKS), choices=BUILTIN_TASKS)
    parser.add_argument("--budgets", nargs="+", type=int, default=[1_000, 10_000, 100_000])
    parser.add_argument(
        "--estimators", nargs="+", default=["auto", "nsf", "sbi"], choices=[*OURS, *SBI]
    )
    parser.add_argument("--fast-c2st-at", nargs="*", type=int, default=[10_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="only rewrite accuracy.md from accuracy.jsonl and copy it into README.md",
    )
    args = parser.parse_args()
    if args.tables_only:
        write_tables(args.out)
        update_readme((args.out / "accuracy.md").read_text())
        return
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ks = range(1, NUM_OBSERVATIONS + 1)
    for n in args.budgets:
        for name in args.tasks:
            task = BUILTIN_TASKS[name]()
            observations = [official(name, k) for k in ks]
            theta, x = simulate(task, n, args.seed)
            for kind in args.estimators:
                fitted = fit(kind, task, theta, x, args.seed)
                start = time.perf_counter()
                samples = [
                    fitted.sample(torch.from_numpy(x_o), NUM_POSTERIOR_SAMPLES)
                    for x_o, _, _ in observations
                ]
                sample_seconds = time.perf_counter() - start
                pairs = [(ref, s) for (_, _, ref), s in zip(observations, samples, strict=True)]
                start = time.perf_counter()
                scores = c2st_many(pairs, list(ks), method="sbibm")
                row = {
                    "task": name,
                    "num_simulations": n,
                    "estimator": kind,
                    "c2st_mean": float(np.mean(scores)),
                    "c2st_std": float(np.std(scores)),
                    "c2st": [round(s, 4) for s in scores],
                    "c2st_seconds": round(time.perf_counter() - start, 1),
                    "train_seconds": round(fitted.seconds, 2),
                    "sample_seconds": round(sample_seconds, 2),
                    "torch_threads": args.threads,
                    "seed": args.seed,
                    **fitted.extras,
                }
                if n in args.fast_c2st_at:
                    fast = c2st_many(pairs, list(ks), method="early_stopping")
                    row["c2st_fast_mean"] = float(np.mean(fast))
                    row["c2st_fast"] = [round(s, 4) for s in fast]
                print(json.dumps(row), flush=True)
                with open(args.out / "accuracy.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                write_tables(args.out)


if __name__ == "__main__":
    main()
