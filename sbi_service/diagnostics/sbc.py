"""Simulation-based calibration (Talts et al. 2018, arXiv:1804.06788), per marginal.

Shapes: samples (n, N, d), theta (n, d).

For test i and parameter j the rank of the truth among the N posterior draws is

    r_ij = sum_k 1[s_ikj < theta_ij]   in {0, ..., N}.

If q is the true posterior, (theta_i, s_i1..s_iN) are exchangeable and r_ij is uniform
on {0, ..., N}. A U-shaped rank histogram means an overconfident posterior, a hump an
underconfident one, a slope a biased one. Each marginal is tested with a KS test of
the randomized ranks u_ij = (r_ij + v_ij) / (N + 1), v_ij ~ U(0, 1), against U(0, 1)
(exactly uniform under calibration). Testing d marginals at once, the smallest
p-value is Bonferroni-adjusted,

    p_adj = min(1, d * min_j p_j),

so the family-wise false-alarm rate of the check ``p_adj >= min_ks_pvalue`` is at most
``min_ks_pvalue`` for a calibrated posterior.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_service.diagnostics.base import (
    Check,
    DiagnosticResult,
    check_shapes,
    randomized_uniform,
    uniform_ks_pvalue,
)


def sbc_ranks(samples: Tensor, theta: Tensor) -> Tensor:
    """Ranks r (n, d), integers in {0, ..., N} as a float tensor on the samples' device."""
    samples, theta = check_shapes(samples, theta)
    return (samples < theta[:, None, :]).sum(1).float()


def sbc(
    samples: Tensor,
    theta: Tensor,
    generator: torch.Generator | None = None,
    num_bins: int = 20,
    min_ks_pvalue: float = 0.01,
) -> DiagnosticResult:
    """SBC on samples (n, N, d) and theta (n, d); see the module docstring.

    Check: Bonferroni-adjusted smallest KS p-value ``>= min_ks_pvalue``. Values: the
    per-parameter p-values (d,), rank histograms (d, num_bins) over {0..N}, and the
    expected count per bin.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    ranks = sbc_ranks(samples, theta)
    n, d = ranks.shape
    num_samples = samples.shape[1]
    u = randomized_uniform(ranks, num_samples, generator)  # (n, d)
    pvalues = [uniform_ks_pvalue(u[:, j]) for j in range(d)]
    adjusted = min(1.0, d * min(pvalues))
    histograms = torch.stack(
        [torch.histc(u[:, j], bins=num_bins, min=0.0, max=1.0) for j in range(d)]
    )
    return DiagnosticResult(
        name="sbc",
        checks=[Check("ks_pvalue_bonferroni", adjusted, min_ks_pvalue, ">=")],
        values={
            "num_tests": n,
            "num_samples": int(num_samples),
            "ks_pvalues": pvalues,
            "ks_pvalue_bonferroni": adjusted,
            "rank_histograms": histograms,
            "expected_count_per_bin": n / num_bins,
        },
    )
