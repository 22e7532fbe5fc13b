"""The Simulator protocol and the Task that bundles a simulator with its prior.

A simulator is any vectorized callable ``theta (n, dim_theta) -> x (n, *x_shape)``.
If it accepts a ``generator`` keyword (a ``torch.Generator``) it gets one and must
draw all its randomness from it; otherwise ``simulate`` seeds torch's and numpy's
global generators around the call, so the same seed still gives the same x.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from sbi_service.simulators.priors import Prior


@runtime_checkable
class Simulator(Protocol):
    """``theta (n, dim_theta) -> x (n, *x_shape)``, vectorized over the first axis."""

    def __call__(self, theta: Tensor) -> Tensor: ...


@dataclass
class Task:
    """A named simulator with its prior.

    ``x_shape`` is the shape of one observation; ``description`` is shown by
    ``simulators list``. ``reference_posterior(x_o (dim_x,), num_samples, generator)
    -> (num_samples, dim_theta)`` is set where exact posterior samples can be drawn;
    ``log_likelihood(theta (n, dim_theta), x_o (dim_x,)) -> (n,)`` where the
    likelihood is tractable (used by the benchmarks to make reference samples).
    """

    name: str
    prior: Prior
    simulator: Callable[..., Tensor]
    x_shape: tuple[int, ...]
    description: str = ""
    reference_posterior: Callable[..., Tensor] | None = None
    log_likelihood: Callable[[Tensor, Tensor], Tensor] | None = None
    source: str = "builtin"
    version: str = "1"  # builtin: the package's; registered: counts re-registrations
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def dim_theta(self) -> int:
        return self.prior.dim

    def takes_generator(self) -> bool:
        try:
            params = inspect.signature(self.simulator).parameters
        except (TypeError, ValueError):
            return False
        return "generator" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: name, dims, prior spec, description, source."""
        return {
            "name": self.name,
            "dim_theta": self.dim_theta,
            "x_shape": list(self.x_shape),
            "prior": self.prior.spec,
            "description": self.description,
            "source": self.source,
            "version": self.version,
            "has_reference_posterior": self.reference_posterior is not None,
        }


def as_float32(x: Any) -> Tensor:
    """Convert a simulator's output (tensor or array) to a float32 CPU tensor."""
    return torch.as_tensor(x).detach().to("cpu", torch.float32)
