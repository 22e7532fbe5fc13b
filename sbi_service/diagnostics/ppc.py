"""Posterior predictive checks: does data simulated from the posterior look like x?

Shapes: samples (n, N, d), theta (n, d) (only shape-checked), x (n, dim_x),
``simulator(theta (m, d)) -> x (m, dim_x)``.

For each test observation x_i, M of its posterior draws are pushed through the
simulator, giving a predictive sample xp_i1..xp_iM. Per data dimension k,

    z_ik = |x_ik - mean_m xp_imk| / std_m xp_imk            (z-scored distance)
    r_ik = (1/M) sum_m 1[xp_imk < x_ik]                      (predictive rank)

A posterior that puts its mass in the wrong place predicts data away from x and the
z grow; for a good posterior the predictive is at least as wide as the noise, so
the mean z stays below about 1. (Ranks of x_i within its own posterior predictive
are not exactly uniform, since x_i was used to form it: they lean to the middle. They
are reported, not tested.) Check: ``mean_ik z_ik <= max_mean_z``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sbi_service.diagnostics.base import Check, DiagnosticResult, check_shapes


def posterior_predictive_check(
    samples: Tensor,
    theta: Tensor,
    x: Tensor,
    simulator: Callable[[Tensor], Tensor],
    num_predictive: int = 100,
    max_mean_z: float = 2.0,
) -> DiagnosticResult:
    """PPC of x (n, dim_x) against simulations from the first ``num_predictive`` draws."""
    samples, theta = check_shapes(samples, theta)
    n, _, d = samples.shape
    m = min(num_predictive, samples.shape[1])
    draws = samples[:, :m, :].reshape(n * m, d).cpu()
    predictive = torch.as_tensor(simulator(draws)).float().reshape(n, m, -1)  # (n, m, dim_x)
    x = torch.as_tensor(x).float().cpu().reshape(n, -1)
    std = predictive.std(1).clamp_min(1e-12)
    z = (x - predictive.mean(1)).abs() / std  # (n, dim_x)
    ranks = (predictive < x[:, None, :]).float().mean(1)
    mean_z = float(z.mean())
    return DiagnosticResult(
        name="ppc",
        checks=[Check("mean_z", mean_z, max_mean_z, "<=")],
        values={
            "num_predictive": m,
            "mean_z": mean_z,
            "mean_z_per_dimension": z.mean(0),
            "mean_rank_per_dimension": ranks.mean(0),
        },
    )
