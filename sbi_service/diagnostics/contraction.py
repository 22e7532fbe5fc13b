"""Posterior contraction: how much the data narrowed each parameter.

Shapes: samples (n, N, d); prior_std (d,).

    contraction_j = 1 - mean_i Var_q(theta_j | x_i) / Var_prior(theta_j)

1 means the posterior is a point, 0 means it is as wide as the prior (negative:
wider). TARP and SBC pass for a posterior equal to the prior (it is calibrated, just
useless), so reports always show contraction next to them. The optional check
``mean_j contraction_j >= min_contraction`` catches a model that learned nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_service.diagnostics.base import Check, DiagnosticResult, check_shapes


def contraction(
    samples: Tensor,
    theta: Tensor,
    prior_std: Tensor,
    min_contraction: float | None = None,
) -> DiagnosticResult:
    """Contraction per parameter (d,) and its mean; theta (n, d) is only shape-checked."""
    samples, theta = check_shapes(samples, theta)
    prior_var = torch.as_tensor(prior_std, dtype=samples.dtype, device=samples.device) ** 2
    per_param = 1 - samples.var(1).mean(0) / prior_var
    mean = float(per_param.mean())
    checks = [] if min_contraction is None else [Check("mean", mean, min_contraction, ">=")]
    return DiagnosticResult(
        name="contraction",
        checks=checks,
        values={"per_parameter": per_param, "mean": mean},
    )
