"""TARP + SBC speed: sbi-service's diagnostics against sbi 0.27's ``run_tarp`` + ``run_sbc``.

One two_moons NSF (10,000 simulations) is trained with ``train_model``; 1,000 fresh test
pairs, 1,000 posterior samples each. Both sides use the same trained flow: sbi's
functions get a thin adapter with ``sample_batched`` (what sbi's diagnostics call).

Two timings, each the best of ``--repeats`` runs, side by side in one process:

A. computation only: the (1000, 1000, 2) samples are drawn once beforehand and the
   adapter returns them, so neither side pays for sampling;
B. end to end: the adapter draws from the flow on every call; sbi's ``run_tarp`` and
   ``run_sbc`` each sample once (2 draws), ours samples once and shares the draws.

Ours computes more than sbi's: bootstrap ECP bands (100 resamples) and KS tests.

    python benchmarks/diagnostics_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sbi_service.diagnostics.sbc import sbc
from sbi_service.diagnostics.tarp import tarp
from sbi_service.estimators.train import TrainConfig
from sbi_service.simulators.registry import get_task
from sbi_service.simulators.simulate import simulate
from sbi_service.store.db import Store
from sbi_service.workflows.models import load_posterior
from sbi_service.workflows.train import TrainRequest, train_model

NUM_TESTS, NUM_SAMPLES = 1000, 1000


class SbiAdapter:
    """What sbi's diagnostics need from a posterior: ``sample_batched(shape, x)`` ->
    (num_samples, num_x, d). Returns fixed samples, or draws fresh ones from the flow."""

    def __init__(self, estimator: torch.nn.Module, fixed: torch.Tensor | None, seed: int):
        self.estimator, self.fixed, self.seed = estimator, fixed, seed

    def sample_batched(self, sample_shape, x, show_progress_bars: bool = False, **_):
        if self.fixed is not None:
            return self.fixed.transpose(0, 1)
        g = torch.Generator().manual_seed(self.seed)
        return self.estimator.sample(x, sample_shape[0], g).transpose(0, 1)


def ours(theta: torch.Tensor, x: torch.Tensor, adapter: SbiAdapter) -> None:
    samples = adapter.sample_batched((NUM_SAMPLES,), x).transpose(0, 1)  # (n, N, d)
    g = torch.Generator().manual_seed(0)
    tarp(samples, theta, generator=g)
    sbc(samples, theta, generator=g)


def sbi_side(theta: torch.Tensor, x: torch.Tensor, adapter: SbiAdapter) -> None:
    """sbi's TARP (ECP, then ATC and KS via ``check_tarp``) and SBC (ranks, then KS)."""
    from sbi.diagnostics import run_sbc, run_tarp
    from sbi.diagnostics.sbc import check_uniformity_frequentist
    from sbi.diagnostics.tarp import check_tarp

    ecp, alpha = run_tarp(theta, x, adapter, num_posterior_samples=NUM_SAMPLES,
                          show_progress_bar=False)  # fmt: skip
    check_tarp(ecp, alpha)
    ranks, _ = run_sbc(theta, x, adapter, num_posterior_samples=NUM_SAMPLES,
                       show_progress_bar=False)  # fmt: skip
    check_uniformity_frequentist(ranks, NUM_SAMPLES)


def best_time(fn, *args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-simulations", type=int, default=10_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")

    store = Store(Path(tempfile.mkdtemp()))
    summary = train_model(
        store,
        TrainRequest(name="tm", estimator="nsf", seed=0, simulator="two_moons",
                     num_simulations=args.num_simulations, train=TrainConfig(max_seconds=120)),
    )  # fmt: skip
    print(f"trained two_moons NSF: {summary['epochs']} epochs, {summary['train_seconds']:.0f}s")
    posterior, _ = load_posterior(store, "tm")
    estimator = posterior.estimator
    theta, x = simulate(get_task("two_moons"), NUM_TESTS, seed=12345)

    with torch.no_grad():
        fixed = estimator.sample(x, NUM_SAMPLES, torch.Generator().manual_seed(1))
    rows = []
    for label, adapter in [
        ("A. computation only (fixed samples)", SbiAdapter(estimator, fixed, 1)),
        ("B. end to end (sampling included)", SbiAdapter(estimator, None, 1)),
    ]:
        t_sbi = best_time(sbi_side, theta, x, adapter, repeats=args.repeats)
        t_ours = best_time(ours, theta, x, adapter, repeats=args.repeats)
        rows.append((label, t_ours, t_sbi))
    print(f"TARP + SBC, {NUM_TESTS} tests x {NUM_SAMPLES} samples, two_moons NSF, 1 thread")
    print(f"{'':40s} {'ours [s]':>9s} {'sbi [s]':>9s} {'ours/sbi':>9s}")
    for label, t_ours, t_sbi in rows:
        print(f"{label:40s} {t_ours:9.3f} {t_sbi:9.3f} {t_ours / t_sbi:9.3f}")


if __name__ == "__main__":
    main()
