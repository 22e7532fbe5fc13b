"""Diagnose a stored model: the CI gate behind ``sbi-service diagnose`` and diagnose jobs.

Test pairs (theta_i, x_i) come from an uploaded ``.npz`` (``data``) or are simulated
from the model's simulator (the ``simulator`` in its config.json) with a seed derived
from ``seed``, so they never repeat the training simulations made with the same seed.
For each x_i the model's posterior (restricted to the prior's support) draws
``num_posterior_samples`` samples, and the chosen diagnostics run on them:

    tarp        TARP ECP, ATC and KS (``diagnostics.tarp``)
    sbc         per-marginal rank statistics, Bonferroni-corrected KS (``diagnostics.sbc``)
    coverage    expected coverage of highest-density regions (flows with a density)
    c2st        against the simulator's exact reference posterior, where it has one
    ppc         posterior predictive z-distances (needs the simulator)
    robustness  PGD attacks on x, KL versus epsilon (``diagnostics.adversarial``)
    contraction always computed: a posterior equal to the prior passes TARP and SBC

The result is one report dict (see ``diagnostics.report``): ``passed`` is true when
every check passed. Every run stores its report (``report.json``, PNGs, ``report.html``)
in the version's folder and its verdict in the store (``Store.save_diagnosis``), where
the promotion policy and ``GET /v1/models/{model}`` read it; ``report_dir`` gets a copy.
A ``UserError`` means the gate itself could not run (unknown model, unreadable or
mismatched data, nothing to check): the CLI maps it to exit code 3.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbi_service.diagnostics.adversarial import adversarial_robustness
from sbi_service.diagnostics.base import Check, DiagnosticResult
from sbi_service.diagnostics.c2st import c2st
from sbi_service.diagnostics.contraction import contraction
from sbi_service.diagnostics.coverage import expected_coverage
from sbi_service.diagnostics.ppc import posterior_predictive_check
from sbi_service.diagnostics.report import write_report
from sbi_service.diagnostics.sbc import sbc
from sbi_service.diagnostics.tarp import tarp
from sbi_service.errors import UserError
from sbi_service.simulators.base import Task
from sbi_service.simulators.registry import get_task
from sbi_service.simulators.simulate import load_simulations, run_simulator, simulate
from sbi_service.store.db import Store
from sbi_service.workflows.models import load_posterior

DEFAULT_NUM_SIMULATIONS = 300
ProgressFn = Callable[[float, str], None]  # (fraction done in [0, 1], what is running)


@dataclass
class Thresholds:
    """Pass/fail thresholds. p-value thresholds are family-wise (Bonferroni over parameters)."""

    max_atc: float = 0.05  # |TARP ATC|, in [0, 1/8]
    min_ks_pvalue: float = 0.01  # TARP, SBC (Bonferroni) and HPD-coverage KS tests
    max_adversarial_kl: float = 1.0  # nats, L2 PGD attack at eps 0.5 data std
    max_c2st: float = 0.6  # C2ST accuracy against the reference posterior
    max_ppc_z: float = 2.0  # mean z-scored distance of x within its posterior predictive
    min_contraction: float | None = None  # mean 1 - var_post / var_prior; None: report only


@dataclass
class DiagnoseRequest:
    """What to check. At most one of ``num_simulations`` or ``data`` (default: simulate 300)."""

    model: str
    version: int | None = None
    tarp: bool = True
    sbc: bool = True
    coverage: bool = False
    robustness: bool = False
    c2st: bool = False
    ppc: bool = False
    num_simulations: int | None = None
    data: Path | None = None
    num_posterior_samples: int = 1000
    seed: int = 0
    report_dir: Path | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    num_robustness_observations: int = 50
    num_c2st_observations: int = 3

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> DiagnoseRequest:
        """Build from JSON (e.g. a ``{"kind": "diagnose", ...}`` job); unknown keys are errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(payload) - names - {"kind"}
        if unknown:
            raise UserError(f"unknown diagnose field(s) {sorted(unknown)}; known: {sorted(names)}")
        args = {k: v for k, v in payload.items() if k in names}
        if "model" not in args:
            raise UserError("a diagnose request needs 'model'")
        thresholds = args.pop("thresholds", None) or {}
        known_t = {f.name for f in dataclasses.fields(Thresholds)}
        if not isinstance(thresholds, dict) or set(thresholds) - known_t:
            raise UserError(f"'thresholds' must be an object with keys among {sorted(known_t)}")
        for key in ("data", "report_dir"):
            if args.get(key) is not None:
                args[key] = Path(args[key])
        return cls(**args, thresholds=Thresholds(**thresholds))


def derived_seed(seed: int, stream: int) -> int:
    """An independent seed for a named stream (test simulations, references, attacks)."""
    return int(np.random.SeedSequence([seed, 0xD1A6, stream]).generate_state(1)[0])


def _check_request(req: DiagnoseRequest) -> None:
    if not (req.tarp or req.sbc or req.coverage or req.robustness or req.c2st or req.ppc):
        raise UserError("no check selected: choose at least one of tarp, sbc, coverage, ...")
    if req.num_simulations is not None and req.data is not None:
        raise UserError("give either --num-simulations or --data, not both")
    if req.num_simulations is not None and req.num_simulations < 10:
        raise UserError(f"--num-simulations must be at least 10, got {req.num_simulations}")
    if req.num_posterior_samples < 10:
        raise UserError(
            f"num_posterior_samples must be at least 10, got {req.num_posterior_samples}"
        )


def _model_task(store: Store, config: dict[str, Any]) -> Task | None:
    name = config.get("simulator")
    return None if name is None else get_task(name, store.list_simulators())


def load_test_pairs(
    req: DiagnoseRequest, task: Task | None, dim_theta: int, x_shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """theta (n, d), x (n, *x_shape) and a description of where they came from."""
    if req.data is not None:
        theta, x = load_simulations(req.data)
        source = str(req.data)
    else:
        if task is None:
            raise UserError(
                "the model was trained on uploaded data and has no simulator: give --data TEST.npz"
            )
        n = req.num_simulations or DEFAULT_NUM_SIMULATIONS
        theta, x = simulate(task, n, derived_seed(req.seed, 0))
        source = f"{n} fresh simulations of {task.name}"
    if theta.shape[1] != dim_theta or tuple(x.shape[1:]) != x_shape:
        raise UserError(
            f"test data have theta {tuple(theta.shape)} and x {tuple(x.shape)} but the model "
            f"expects (n, {dim_theta}) and (n, {', '.join(map(str, x_shape))})"
        )
    if theta.shape[0] < 10:
        raise UserError(f"need at least 10 test pairs, got {theta.shape[0]}")
    return theta, x, source


def diagnose_model(
    store: Store, request: DiagnoseRequest, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Run the requested diagnostics on the stored model; returns the report dict.

    Stores the report and verdict with the model version (a copy in ``request.report_dir``
    when set). Raises ``UserError`` when the gate cannot run.
    """
    start = time.perf_counter()
    req, th = request, request.thresholds
    _check_request(req)

    def report_progress(fraction: float, stage: str) -> None:
        if progress is not None:
            progress(fraction, stage)

    posterior, record = load_posterior(store, req.model, req.version)
    estimator, prior = posterior.estimator, posterior.prior
    task = _model_task(store, record["config"])
    theta, x, source = load_test_pairs(req, task, posterior.dim_theta, posterior.x_shape)
    x = posterior.check_observations(x, "test observations")
    outside = int((~prior.in_support(theta)).sum())
    if outside:
        raise UserError(f"{outside} test theta rows lie outside the model's prior support")

    report_progress(0.05, "sampling posteriors")
    generator = torch.Generator().manual_seed(derived_seed(req.seed, 1))
    samples = posterior.sample(x, req.num_posterior_samples, generator)  # (n, N, d)
    report_progress(0.5, "computing diagnostics")

    results: list[DiagnosticResult] = []
    skipped: list[dict[str, str]] = []
    if req.tarp:
        results.append(
            tarp(
                samples,
                theta,
                generator=generator,
                max_atc=th.max_atc,
                min_ks_pvalue=th.min_ks_pvalue,
            )
        )
    if req.sbc:
        results.append(sbc(samples, theta, generator=generator, min_ks_pvalue=th.min_ks_pvalue))
    if req.coverage:
        if not estimator.has_density:
            skipped.append({"diagnostic": "coverage", "reason": "the estimator has no density"})
        else:
            results.append(_hpd_coverage(posterior.estimator, samples, theta, x, generator, th))
    results.append(contraction(samples, theta, prior.std, th.min_contraction))
    if req.c2st:
        if task is None or task.reference_posterior is None:
            skipped.append({"diagnostic": "c2st", "reason": "no exact reference posterior"})
        else:
            results.append(_c2st_check(task, samples, x, req, th))
    if req.ppc:
        if task is None:
            skipped.append({"diagnostic": "ppc", "reason": "the model has no simulator"})
        else:
            seed = derived_seed(req.seed, 2)
            results.append(
                posterior_predictive_check(
                    samples,
                    theta,
                    x,
                    lambda t: run_simulator(task, t, seed),
                    max_mean_z=th.max_ppc_z,
                )
            )
    if req.robustness:
        report_progress(0.7, "adversarial attacks")
        if not estimator.has_density:
            skipped.append({"diagnostic": "robustness", "reason": "the estimator has no density"})
        else:
            k = min(req.num_robustness_observations, x.shape[0])
            attack_gen = torch.Generator().manual_seed(derived_seed(req.seed, 3))
            results.append(
                adversarial_robustness(estimator, x[:k], attack_gen, max_kl=th.max_adversarial_kl)
            )

    diagnostics = {r.name: r.to_dict() for r in results}
    checks = [{"diagnostic": r.name, **c} for r in results for c in diagnostics[r.name]["checks"]]
    report: dict[str, Any] = {
        "model": req.model,
        "version": record["version"],
        "passed": all(c["passed"] for c in checks),
        "seed": req.seed,
        "test_data": source,
        "num_tests": int(theta.shape[0]),
        "num_posterior_samples": req.num_posterior_samples,
        "thresholds": dataclasses.asdict(th),
        "checks": checks,
        "skipped": skipped,
        "diagnostics": diagnostics,
        "seconds": round(time.perf_counter() - start, 3),
    }
    report_progress(0.9, "writing the report")
    written: dict[str, Any] = {}

    def write(folder: Path) -> dict[str, Any]:
        written.update(write_report(report, folder, samples[0].numpy()))
        return written

    verdict = store.save_diagnosis(req.model, record["version"], write)
    report = {**written, "stored_report": verdict["report_path"]}
    if req.report_dir is not None:
        shutil.copytree(verdict["report_path"], req.report_dir, dirs_exist_ok=True)
        report["report_dir"] = str(req.report_dir)
    report_progress(1.0, "done")
    return report


def _hpd_coverage(
    estimator: Any,
    samples: torch.Tensor,
    theta: torch.Tensor,
    x: torch.Tensor,
    generator: torch.Generator,
    th: Thresholds,
) -> DiagnosticResult:
    """log q of the samples (n, N) and of the truths (n,), then ``expected_coverage``."""
    n, num, d = samples.shape
    with torch.no_grad():
        context = estimator.embed(x)
        log_q_samples = torch.cat(
            [
                estimator.log_prob_context(samples[i], context[i : i + 1].expand(num, -1))[None]
                for i in range(n)
            ]
        )
        log_q_theta = estimator.log_prob_context(theta, context)
    return expected_coverage(
        samples, theta, log_q_samples, log_q_theta, generator, min_ks_pvalue=th.min_ks_pvalue
    )


def _c2st_check(
    task: Task, samples: torch.Tensor, x: torch.Tensor, req: DiagnoseRequest, th: Thresholds
) -> DiagnosticResult:
    """Mean C2ST accuracy over the first few test observations against exact references."""
    k = min(req.num_c2st_observations, x.shape[0])
    generator = torch.Generator().manual_seed(derived_seed(req.seed, 4))
    scores = []
    for i in range(k):
        reference = task.reference_posterior(x[i], samples.shape[1], generator)
        scores.append(c2st(reference.numpy(), samples[i].numpy(), seed=req.seed))
    mean = float(np.mean(scores))
    return DiagnosticResult(
        name="c2st",
        checks=[Check("mean_accuracy", mean, th.max_c2st, "<=")],
        values={"per_observation": scores, "mean_accuracy": mean},
    )
