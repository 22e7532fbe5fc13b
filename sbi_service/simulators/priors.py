"""Priors from the JSON specification of CONTRACT.md.

    {"type": "box_uniform", "low": [...], "high": [...]}
    {"type": "normal", "loc": [...], "scale": [...]}                       # independent
    {"type": "multivariate_normal", "loc": [...], "covariance_matrix": [[...]]}
    {"type": "lognormal", "loc": [...], "scale": [...]}    # log theta ~ N(loc, scale^2)

Every prior has ``dim``, ``sample(n, generator) -> (n, dim)``,
``log_prob(theta (n, dim)) -> (n,)`` (``-inf`` outside the support),
``in_support(theta (n, dim)) -> (n,) bool``, ``mean`` and ``std`` (each ``(dim,)``),
and ``spec`` (the JSON dict it was built from). All tensors are float32.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sbi_service.errors import UserError

PRIOR_TYPES = ("box_uniform", "normal", "multivariate_normal", "lognormal")


def _vector(spec: dict, key: str) -> Tensor:
    value = spec.get(key)
    if not isinstance(value, list) or not value:
        raise UserError(f"prior: '{key}' must be a non-empty list of numbers, got {value!r}")
    try:
        t = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise UserError(f"prior: '{key}' must be a list of numbers ({e})") from None
    if t.ndim != 1:
        raise UserError(f"prior: '{key}' must be a flat list, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise UserError(f"prior: '{key}' must be finite, got {value!r}")
    return t


def _loc_scale(spec: dict) -> tuple[Tensor, Tensor]:
    """Check and return (loc, scale) of an independent location-scale spec, float64."""
    mu, sd = _vector(spec, "loc"), _vector(spec, "scale")
    if mu.shape != sd.shape:
        raise UserError(f"prior: 'loc' has {mu.numel()} entries but 'scale' has {sd.numel()}")
    if not (sd > 0).all():
        raise UserError("prior: every 'scale' must be positive")
    return mu, sd


class Prior(ABC):
    """Base class: subclasses set ``dim``, ``spec`` and implement the abstract methods."""

    dim: int
    spec: dict[str, Any]
    bounded: bool = False

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    @abstractmethod
    def log_prob(self, theta: Tensor) -> Tensor: ...

    def in_support(self, theta: Tensor) -> Tensor:
        return torch.ones(theta.shape[:-1], dtype=torch.bool, device=theta.device)

    @property
    @abstractmethod
    def mean(self) -> Tensor: ...

    @property
    @abstractmethod
    def std(self) -> Tensor: ...

    def check_theta(self, theta: Tensor, what: str = "theta") -> None:
        """Raise a ``UserError`` unless ``theta`` is ``(n, dim)``."""
        if theta.ndim != 2 or theta.shape[1] != self.dim:
            raise UserError(
                f"{what} has shape {tuple(theta.shape)} but the prior has dimension {self.dim}: "
                f"expected (n, {self.dim})"
            )


class BoxUniform(Prior):
    """Independent uniforms on [low_i, high_i]."""

    bounded = True

    def __init__(self, low: list[float], high: list[float]):
        self.spec = {
            "type": "box_uniform",
            "low": list(map(float, low)),
            "high": list(map(float, high)),
        }
        lo, hi = _vector(self.spec, "low"), _vector(self.spec, "high")
        if lo.shape != hi.shape:
            raise UserError(f"prior: 'low' has {lo.numel()} entries but 'high' has {hi.numel()}")
        if not (hi > lo).all():
            raise UserError("prior: every 'high' must be greater than its 'low'")
        self.low, self.high = lo.float(), hi.float()
        self.dim = lo.numel()
        self._log_volume = float(torch.log(hi - lo).sum())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, self.dim, generator=generator)
        return self.low + (self.high - self.low) * u

    def in_support(self, theta: Tensor) -> Tensor:
        lo, hi = self.low.to(theta.device), self.high.to(theta.device)
        return ((theta >= lo) & (theta <= hi)).all(-1)

    def log_prob(self, theta: Tensor) -> Tensor:
        inside = self.in_support(theta)
        lp = torch.full(theta.shape[:-1], -self._log_volume, device=theta.device)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    @property
    def mean(self) -> Tensor:
        return (self.low + self.high) / 2

    @property
    def std(self) -> Tensor:
        return (self.high - self.low) / math.sqrt(12.0)


class Normal(Prior):
    """Independent normals N(loc_i, scale_i^2)."""

    def __init__(self, loc: list[float], scale: list[float]):
        self.spec = {
            "type": "normal",
            "loc": list(map(float, loc)),
            "scale": list(map(float, scale)),
        }
        mu, sd = _loc_scale(self.spec)
        self.loc, self.scale = mu.float(), sd.float()
        self.dim = mu.numel()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.loc + self.scale * torch.randn(n, self.dim, generator=generator)

    def log_prob(self, theta: Tensor) -> Tensor:
        loc, scale = self.loc.to(theta.device), self.scale.to(theta.device)
        z = (theta - loc) / scale
        return (-0.5 * z**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def std(self) -> Tensor:
        return self.scale


class MultivariateNormal(Prior):
    """A multivariate normal N(loc, covariance_matrix)."""

    def __init__(self, loc: list[float], covariance_matrix: list[list[float]]):
        self.spec = {
            "type": "multivariate_normal",
            "loc": list(map(float, loc)),
            "covariance_matrix": [list(map(float, row)) for row in covariance_matrix],
        }
        mu = _vector(self.spec, "loc")
        try:
            cov = torch.tensor(self.spec["covariance_matrix"], dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise UserError(
                f"prior: 'covariance_matrix' must be a square list of lists ({e})"
            ) from None
        d = mu.numel()
        if cov.shape != (d, d):
            raise UserError(
                f"prior: 'covariance_matrix' has shape {tuple(cov.shape)}, "
                f"expected ({d}, {d}) to match 'loc'"
            )
        if not torch.allclose(cov, cov.T):
            raise UserError("prior: 'covariance_matrix' must be symmetric")
        chol, info = torch.linalg.cholesky_ex(cov)
        if info != 0:
            raise UserError("prior: 'covariance_matrix' must be positive definite")
        self.loc, self.cov, self.scale_tril = mu.float(), cov.float(), chol.float()
        self.dim = d
        self._half_log_det = float(torch.log(torch.diagonal(chol)).sum())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(n, self.dim, generator=generator)
        return self.loc + eps @ self.scale_tril.T

    def log_prob(self, theta: Tensor) -> Tensor:
        loc, L = self.loc.to(theta.device), self.scale_tril.to(theta.device)
        diff = (theta - loc).unsqueeze(-1)
        z = torch.linalg.solve_triangular(L, diff, upper=False).squeeze(-1)
        return -0.5 * (z**2).sum(-1) - self._half_log_det - 0.5 * self.dim * math.log(2 * math.pi)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def std(self) -> Tensor:
        return torch.sqrt(torch.diagonal(self.cov))


class LogNormal(Prior):
    """Independent log-normals: log theta_i ~ N(loc_i, scale_i^2), support theta_i > 0.

    ``log_prob(theta) = sum_i [-log theta_i - log scale_i - log(2 pi)/2
    - (log theta_i - loc_i)^2 / (2 scale_i^2)]``; ``mean_i = exp(loc_i + scale_i^2/2)``,
    ``std_i = mean_i sqrt(exp(scale_i^2) - 1)``.
    """

    def __init__(self, loc: list[float], scale: list[float]):
        self.spec = {
            "type": "lognormal",
            "loc": list(map(float, loc)),
            "scale": list(map(float, scale)),
        }
        mu, sd = _loc_scale(self.spec)
        self.loc, self.scale = mu.float(), sd.float()
        self.dim = mu.numel()
        self._mean = torch.exp(mu + sd**2 / 2)
        self._std = self._mean * torch.sqrt(torch.expm1(sd**2))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.exp(self.loc + self.scale * torch.randn(n, self.dim, generator=generator))

    def in_support(self, theta: Tensor) -> Tensor:
        return (theta > 0).all(-1)

    def log_prob(self, theta: Tensor) -> Tensor:
        loc, scale = self.loc.to(theta.device), self.scale.to(theta.device)
        inside = self.in_support(theta)
        log_theta = torch.log(torch.where(theta > 0, theta, torch.ones_like(theta)))
        z = (log_theta - loc) / scale
        lp = (-0.5 * z**2 - log_theta - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    @property
    def mean(self) -> Tensor:
        return self._mean.float()

    @property
    def std(self) -> Tensor:
        return self._std.float()


PRIOR_CLASSES: dict[str, type[Prior]] = {
    "box_uniform": BoxUniform,
    "normal": Normal,
    "multivariate_normal": MultivariateNormal,
    "lognormal": LogNormal,
}


def prior_from_spec(spec: Any) -> Prior:
    """Build a prior from its JSON dict; a ``UserError`` names what is malformed."""
    if not isinstance(spec, dict):
        raise UserError(f"prior: expected a JSON object with a 'type', got {type(spec).__name__}")
    kind = spec.get("type")
    keys = {
        "box_uniform": ("low", "high"),
        "normal": ("loc", "scale"),
        "multivariate_normal": ("loc", "covariance_matrix"),
        "lognormal": ("loc", "scale"),
    }
    if kind not in keys:
        raise UserError(f"prior: unknown type {kind!r}; expected one of {', '.join(PRIOR_TYPES)}")
    missing = [k for k in keys[kind] if k not in spec]
    if missing:
        raise UserError(f"prior: type {kind!r} needs {', '.join(repr(k) for k in missing)}")
    extra = set(spec) - {"type", *keys[kind]}
    if extra:
        raise UserError(f"prior: unexpected field(s) {sorted(extra)} for type {kind!r}")
    args = [spec[k] for k in keys[kind]]
    try:
        return PRIOR_CLASSES[kind](*args)
    except (TypeError, ValueError) as e:
        raise UserError(f"prior: the fields of {kind!r} must be lists of numbers ({e})") from None


def load_prior(path: Path) -> Prior:
    """Read a prior spec from a JSON file."""
    try:
        spec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"prior file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"prior file {path} is not valid JSON: {e.msg} at line {e.lineno}"
        ) from None
    return prior_from_spec(spec)
