"""The result every diagnostic returns, and small helpers the diagnostics share.

A diagnostic is a function ``(samples, theta, ...) -> DiagnosticResult`` with

    samples: (num_tests, num_samples, dim_theta)   posterior draws for each test x
    theta:   (num_tests, dim_theta)                 the parameters that generated each x

A ``DiagnosticResult`` has one dict shape for every diagnostic (easy to put in JSON
and CI)::

    {"name": "tarp", "passed": true,
     "checks": [{"name": "ks_pvalue", "statistic": 0.41, "threshold": 0.01,
                 "comparison": ">=", "passed": true}, ...],
     "values": {...curves and per-parameter numbers, JSON-able...}}

``passed`` is true when every check passed (a diagnostic without checks, e.g.
contraction with no threshold, only reports).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import kstest
from torch import Tensor


@dataclass
class Check:
    """One statistic compared with a threshold: passes when ``statistic comparison threshold``."""

    name: str
    statistic: float
    threshold: float
    comparison: str  # "<=" or ">="
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.comparison not in ("<=", ">="):
            raise ValueError(f"comparison must be '<=' or '>=', got {self.comparison!r}")
        self.statistic = float(self.statistic)
        self.threshold = float(self.threshold)
        if self.comparison == "<=":
            ok = self.statistic <= self.threshold
        else:
            ok = self.statistic >= self.threshold
        self.passed = ok and math.isfinite(self.statistic)


@dataclass
class DiagnosticResult:
    """What a diagnostic found: its checks (with verdicts) and its values (curves, numbers)."""

    name: str
    checks: list[Check] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "values": to_jsonable(self.values),
        }


def to_jsonable(obj: Any) -> Any:
    """Tensors and arrays become (nested) lists of floats; NaN and inf become None."""
    if isinstance(obj, Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def check_shapes(samples: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Validate samples (n, N, d) and theta (n, d); returns both as float tensors."""
    samples, theta = torch.as_tensor(samples), torch.as_tensor(theta)
    if samples.ndim != 3 or theta.ndim != 2:
        raise ValueError(
            f"samples must be (num_tests, num_samples, dim) and theta (num_tests, dim); got "
            f"{tuple(samples.shape)} and {tuple(theta.shape)}"
        )
    if samples.shape[0] != theta.shape[0] or samples.shape[2] != theta.shape[1]:
        raise ValueError(
            f"samples {tuple(samples.shape)} and theta {tuple(theta.shape)} do not pair up"
        )
    samples = samples.float() if not samples.is_floating_point() else samples
    return samples, theta.to(samples.device, samples.dtype)


def uniform_ks_pvalue(u: Tensor) -> float:
    """Two-sided one-sample Kolmogorov-Smirnov p-value of values u (n,) against U(0, 1)."""
    return float(kstest(u.detach().cpu().double().numpy(), "uniform").pvalue)


def randomized_uniform(counts: Tensor, total: int, generator: torch.Generator) -> Tensor:
    """Map integer counts k in {0..total} to u = (k + v) / (total + 1), v ~ U(0, 1).

    If k is uniform on {0, ..., total} then u is exactly U(0, 1), so continuous tests
    (KS) apply to discrete ranks without the conservativeness of ties. counts (...,).
    """
    v = torch.rand(counts.shape, generator=generator, dtype=torch.float64)
    return (counts.detach().cpu().double() + v) / (total + 1)
