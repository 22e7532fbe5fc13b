"""Gaussian mixture (sbibm ``gaussian_mixture``): a broad and a narrow component.

Parameters ``theta (n, 2)``, prior ``U(-10, 10)^2``. Data ``x (n, 2)``:

    k ~ Categorical(0.5, 0.5),   x ~ N(theta, s_k^2 I),   s = (1.0, 0.1)

Likelihood: ``log p(x | theta) = log sum_k 0.5 N(x; theta, s_k^2 I)``.

Reference posterior: the likelihood is symmetric in ``x`` and ``theta``, so the
posterior is the same mixture ``0.5 N(x_o, I) + 0.5 N(x_o, 0.01 I)`` truncated (as a
whole) to the prior box; drawn exactly by rejecting mixture draws outside the box,
as in sbibm.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import BoxUniform
from sbi_service.simulators.tasks._common import rejection_sample, theta64, x_o64

DIM = 2
BOUND = 10.0
SCALES = (1.0, 0.1)
WEIGHTS = (0.5, 0.5)
PRIOR = BoxUniform([-BOUND] * DIM, [BOUND] * DIM)


def _component_scales(n: int, generator: torch.Generator | None) -> Tensor:
    """Draw a component for each of ``n`` rows; return its scale ``(n, 1)``."""
    k = torch.multinomial(torch.tensor(WEIGHTS), n, replacement=True, generator=generator)
    return torch.tensor(SCALES, dtype=torch.float64)[k].unsqueeze(-1)


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``theta (n, 2) -> x (n, 2)`` float32."""
    theta = theta64(theta, PRIOR)
    scale = _component_scales(theta.shape[0], generator)
    noise = torch.randn(theta.shape, generator=generator, dtype=torch.float64)
    return (theta + scale * noise).float()


def log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
    """``log p(x_o | theta)`` for ``theta (n, 2)``, ``x_o (2,)`` -> ``(n,)`` float32."""
    theta, x_o = theta64(theta, PRIOR), x_o64(x_o, DIM)
    sq = ((x_o - theta) ** 2).sum(-1)
    parts = [
        math.log(w) - 0.5 * sq / s**2 - DIM * math.log(s) - 0.5 * DIM * math.log(2 * math.pi)
        for w, s in zip(WEIGHTS, SCALES, strict=True)
    ]
    return torch.logsumexp(torch.stack(parts, dim=-1), dim=-1).float()


def reference_posterior(
    x_o: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Exact posterior samples ``(num_samples, 2)`` float32 for ``x_o (2,)``."""
    x_o = x_o64(x_o, DIM)

    def draw(batch: int) -> Tensor:
        scale = _component_scales(batch, generator)
        eps = torch.randn(batch, DIM, generator=generator, dtype=torch.float64)
        t = x_o + scale * eps
        return t[(t.abs() <= BOUND).all(-1)]

    return rejection_sample(draw, num_samples).float()


def make_task() -> Task:
    """The Gaussian mixture task: 2-d theta and x, exact reference posterior."""
    return Task(
        name="gaussian_mixture",
        prior=PRIOR,
        simulator=simulator,
        x_shape=(DIM,),
        description="sbibm Gaussian mixture: 2-d theta ~ U(-10,10), x ~ N(theta, I or 0.01 I)",
        reference_posterior=reference_posterior,
        log_likelihood=log_likelihood,
        metadata={"sbibm_name": "gaussian_mixture", "parameter_names": ["theta_1", "theta_2"]},
    )
