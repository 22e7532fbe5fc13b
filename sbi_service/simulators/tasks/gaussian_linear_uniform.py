"""Gaussian linear uniform (sbibm ``gaussian_linear_uniform``): Gaussian noise, box prior.

Parameters ``theta (n, 10)``, prior ``U(-1, 1)^10``. Data ``x (n, 10)``:

    x = theta + sqrt(0.1) eps,   eps ~ N(0, I)

Likelihood: ``log p(x | theta) = sum_i log N(x_i; theta_i, 0.1)``.

Reference posterior: ``N(x_o, 0.1 I)`` truncated to the box ``[-1, 1]^10``. sbibm draws
it by rejecting whole 10-d vectors that leave the box; the truncated distribution
factorizes over coordinates, so we reject per coordinate, which draws from the same
distribution exactly and much faster when ``x_o`` lies near the edges of the box.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import BoxUniform
from sbi_service.simulators.tasks._common import rejection_sample, theta64, x_o64
from sbi_service.simulators.tasks.gaussian_linear import gaussian_log_likelihood

DIM = 10
BOUND = 1.0
NOISE_VAR = 0.1
PRIOR = BoxUniform([-BOUND] * DIM, [BOUND] * DIM)


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``theta (n, 10) -> x (n, 10)`` float32."""
    theta = theta64(theta, PRIOR)
    noise = torch.randn(theta.shape, generator=generator, dtype=torch.float64)
    return (theta + math.sqrt(NOISE_VAR) * noise).float()


def log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
    """``log p(x_o | theta)`` for ``theta (n, 10)``, ``x_o (10,)`` -> ``(n,)`` float32."""
    theta, x_o = theta64(theta, PRIOR), x_o64(x_o, DIM)
    return gaussian_log_likelihood(theta, x_o, NOISE_VAR).float()


def reference_posterior(
    x_o: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Exact posterior samples ``(num_samples, 10)`` float32 for ``x_o (10,)``."""
    x_o = x_o64(x_o, DIM)
    sd = math.sqrt(NOISE_VAR)
    columns = []
    for i in range(DIM):

        def draw(batch: int, loc: float = float(x_o[i])) -> Tensor:
            t = loc + sd * torch.randn(batch, 1, generator=generator, dtype=torch.float64)
            return t[(t.abs() <= BOUND).squeeze(-1)]

        columns.append(rejection_sample(draw, num_samples))
    return torch.cat(columns, dim=-1).float()


def make_task() -> Task:
    """The Gaussian linear uniform task: 10-d theta and x, exact truncated-Gaussian reference."""
    return Task(
        name="gaussian_linear_uniform",
        prior=PRIOR,
        simulator=simulator,
        x_shape=(DIM,),
        description="sbibm Gaussian linear uniform: 10-d theta ~ U(-1,1), x ~ N(theta, 0.1 I)",
        reference_posterior=reference_posterior,
        log_likelihood=log_likelihood,
        metadata={
            "sbibm_name": "gaussian_linear_uniform",
            "parameter_names": [f"theta_{i + 1}" for i in range(DIM)],
        },
    )
