"""Expected coverage of highest-density regions (Deistler et al. 2022, arXiv:2210.04815).

For estimators with a density q(theta | x). Shapes: samples (n, N, d), theta (n, d),
log q of the samples (n, N) and of the truths (n,).

The highest-density region of q(. | x_i) that just contains theta_i has credibility

    c_i = (1/N) sum_k 1[ log q(s_ik | x_i) > log q(theta_i | x_i) ]   in {0, 1/N, ..., 1},

i.e. the rank of the truth's density among the draws'. If q is the true posterior,
c_i is uniform, so the empirical coverage of the level-alpha region,

    coverage(alpha) = (1/n) sum_i 1[c_i < alpha],

equals alpha. Below the diagonal means overconfident, above underconfident. The
check is a KS test of the randomized c_i (as in ``sbc``) against U(0, 1).
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


def expected_coverage(
    samples: Tensor,
    theta: Tensor,
    log_prob_samples: Tensor,
    log_prob_theta: Tensor,
    generator: torch.Generator | None = None,
    num_bins: int = 50,
    min_ks_pvalue: float = 0.01,
) -> DiagnosticResult:
    """Expected HPD coverage; log_prob_samples (n, N), log_prob_theta (n,).

    Check: KS p-value ``>= min_ks_pvalue``. Values: nominal levels ``alpha``
    (num_bins + 1,), the empirical ``coverage`` at those levels and the largest gap.
    """
    samples, theta = check_shapes(samples, theta)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    num_samples = samples.shape[1]
    if log_prob_samples.shape != samples.shape[:2] or log_prob_theta.shape != theta.shape[:1]:
        raise ValueError(
            f"log_prob_samples must be {tuple(samples.shape[:2])} and log_prob_theta "
            f"{tuple(theta.shape[:1])}"
        )
    counts = (log_prob_samples > log_prob_theta[:, None]).sum(1).float()  # (n,)
    levels = counts / num_samples
    alpha = torch.linspace(0.0, 1.0, num_bins + 1, device=levels.device)
    coverage = (levels[None, :] < alpha[:, None]).float().mean(1)
    coverage[-1] = 1.0
    ks_pvalue = uniform_ks_pvalue(randomized_uniform(counts, num_samples, generator))
    return DiagnosticResult(
        name="coverage",
        checks=[Check("ks_pvalue", ks_pvalue, min_ks_pvalue, ">=")],
        values={
            "num_tests": int(theta.shape[0]),
            "ks_pvalue": ks_pvalue,
            "alpha": alpha,
            "coverage": coverage,
            "max_gap": float((coverage - alpha).abs().max()),
        },
    )
