"""TARP: Tests of Accuracy with Random Points (Lemos, Coogan et al. 2023, arXiv:2302.03026).

Shapes: samples (n, N, d) drawn from q(theta | x_i), theta (n, d) the true parameters,
references (n, d) one random point per test.

Everything happens in a normalized parameter space: theta, the samples and the
references are z-scored by theta's mean and std over the n tests (so no parameter
dominates the distance because of its units). For test i with reference r_i, the
ball centred on r_i through the true theta_i has posterior mass

    f_i = (1/N) sum_j 1[ ||s_ij - r_i|| < ||theta_i - r_i|| ]          (coverage value)

If q is the true posterior, f_i ~ U(0, 1) for references drawn independently of
theta_i. The expected coverage probability is the CDF of the f_i,

    ECP(alpha) = (1/n) sum_i 1[f_i < alpha],

computed from a histogram of f on the fixed range (0, 1) and compared with the
diagonal ECP = alpha. Two statistics summarize it:

    ATC = int_{1/2}^{1} (ECP(alpha) - alpha) dalpha = mean_i (1 - max(f_i, 1/2)) - 3/8
          (exact, no binning; > 0 underconfident, < 0 overconfident, |ATC| <= 1/8)
    KS p-value of the f_i against U(0, 1), with the discrete f_i (multiples of 1/N)
          spread uniformly within their atom: u_i = (N f_i + v_i) / (N + 1), v_i ~ U(0, 1).

Bootstrap bands resample the n tests with replacement. All randomness comes from
an explicit ``torch.Generator`` (drawn on the CPU, then moved), never from a global
RNG; the computation runs on the samples' device.
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


def tarp_coverage_values(
    samples: Tensor,
    theta: Tensor,
    references: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Coverage values f (n,) in {0, 1/N, ..., 1}; see the module docstring.

    ``references`` (n, d) are in the original parameter space (e.g. prior draws) and are
    normalized like theta; when None they are drawn uniformly over the box spanned by
    the normalized theta (per-dimension min to max).
    """
    samples, theta = check_shapes(samples, theta)
    loc, scale = theta.mean(0), theta.std(0).clamp_min(1e-12)
    theta_z = (theta - loc) / scale
    if references is None:
        lo, hi = theta_z.min(0).values, theta_z.max(0).values
        u = torch.rand(theta.shape, generator=generator, dtype=theta.dtype).to(theta.device)
        refs_z = lo + (hi - lo) * u
    else:
        references = torch.as_tensor(references, dtype=theta.dtype, device=theta.device)
        if references.shape != theta.shape:
            raise ValueError(
                f"references must have theta's shape {tuple(theta.shape)}, got "
                f"{tuple(references.shape)}"
            )
        refs_z = (references - loc) / scale
    # Squared distances in normalized space, without materializing the normalized samples:
    # ||(s - r) / scale||^2 with r the reference mapped back to parameter units.
    refs = refs_z * scale + loc
    diff = samples - refs[:, None, :]  # (n, N, d)
    sample_d2 = diff.mul_(1 / scale).square_().sum(-1)  # (n, N)
    theta_d2 = ((theta_z - refs_z) ** 2).sum(-1)  # (n,)
    return (sample_d2 < theta_d2[:, None]).float().mean(1)


def ecp_curve(coverage: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """ECP on the grid alpha_k = k / num_bins from a histogram of f on (0, 1).

    coverage (n,) -> alpha (num_bins + 1,), ecp (num_bins + 1,) with ecp[0] = 0, ecp[-1] = 1.
    """
    counts = torch.histc(coverage, bins=num_bins, min=0.0, max=1.0)
    ecp = torch.cat([counts.new_zeros(1), counts.cumsum(0) / coverage.shape[0]])
    alpha = torch.linspace(0.0, 1.0, num_bins + 1, device=coverage.device)
    return alpha, ecp


def bootstrap_ecp_bands(
    coverage: Tensor, num_bins: int, num_bootstrap: int, level: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Pointwise ``level`` bands of the ECP over bootstrap resamples of the tests.

    coverage (n,) -> lower, upper (num_bins + 1,).
    """
    n = coverage.shape[0]
    bins = (coverage * num_bins).long().clamp(0, num_bins - 1)  # (n,), histc's binning
    idx = torch.randint(0, n, (num_bootstrap, n), generator=generator).to(coverage.device)
    counts = torch.zeros(num_bootstrap, num_bins, device=coverage.device)
    counts.scatter_add_(1, bins[idx], torch.ones(num_bootstrap, n, device=coverage.device))
    ecp = torch.cat([counts.new_zeros(num_bootstrap, 1), counts.cumsum(1) / n], dim=1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], device=coverage.device)
    lower, upper = torch.quantile(ecp, q, dim=0)
    return lower, upper


def tarp(
    samples: Tensor,
    theta: Tensor,
    references: Tensor | None = None,
    generator: torch.Generator | None = None,
    num_bins: int = 50,
    num_bootstrap: int = 100,
    band_level: float = 0.95,
    max_atc: float = 0.05,
    min_ks_pvalue: float = 0.01,
) -> DiagnosticResult:
    """TARP on samples (n, N, d) and theta (n, d); see the module docstring.

    Checks: ``|ATC| <= max_atc`` and ``KS p-value >= min_ks_pvalue``. Values: the ECP
    curve on ``alpha`` (num_bins + 1,), its bootstrap bands, ATC, the KS p-value and a
    histogram of the coverage values.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    f = tarp_coverage_values(samples, theta, references, generator)
    num_samples = samples.shape[1]
    alpha, ecp = ecp_curve(f, num_bins)
    lower, upper = bootstrap_ecp_bands(f, num_bins, num_bootstrap, band_level, generator)
    atc = float((1 - f.clamp_min(0.5)).mean() - 0.375)
    counts = torch.round(f * num_samples)
    ks_pvalue = uniform_ks_pvalue(randomized_uniform(counts, num_samples, generator))
    return DiagnosticResult(
        name="tarp",
        checks=[
            Check("abs_atc", abs(atc), max_atc, "<="),
            Check("ks_pvalue", ks_pvalue, min_ks_pvalue, ">="),
        ],
        values={
            "num_tests": int(f.shape[0]),
            "num_samples": int(num_samples),
            "atc": atc,
            "ks_pvalue": ks_pvalue,
            "alpha": alpha,
            "ecp": ecp,
            "ecp_lower": lower,
            "ecp_upper": upper,
            "band_level": band_level,
            "coverage_histogram": torch.histc(f, bins=num_bins, min=0.0, max=1.0),
        },
    )
