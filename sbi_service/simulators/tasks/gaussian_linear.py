"""Gaussian linear (sbibm ``gaussian_linear``): a conjugate Gaussian model in 10-d.

Parameters ``theta (n, 10)``, prior ``N(0, 0.1 I)`` (sbibm: precision ``10 I``).
Data ``x (n, 10)``:

    x = theta + sqrt(0.1) eps,   eps ~ N(0, I)

Likelihood: ``log p(x | theta) = sum_i log N(x_i; theta_i, 0.1)``.

Reference posterior (analytic): with prior variance ``a = 0.1`` and noise variance
``b = 0.1``,

    theta | x_o ~ N(a / (a + b) x_o, a b / (a + b) I) = N(x_o / 2, 0.05 I).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import MultivariateNormal
from sbi_service.simulators.tasks._common import check_num_samples, theta64, x_o64

DIM = 10
PRIOR_VAR = 0.1
NOISE_VAR = 0.1
PRIOR = MultivariateNormal([0.0] * DIM, (PRIOR_VAR * torch.eye(DIM, dtype=torch.float64)).tolist())


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``theta (n, 10) -> x (n, 10)`` float32."""
    theta = theta64(theta, PRIOR)
    noise = torch.randn(theta.shape, generator=generator, dtype=torch.float64)
    return (theta + math.sqrt(NOISE_VAR) * noise).float()


def gaussian_log_likelihood(theta: Tensor, x_o: Tensor, var: float) -> Tensor:
    """``sum_i log N(x_o_i; theta_i, var)``, float64 ``theta (n, d)``, ``x_o (d,)`` -> ``(n,)``."""
    d = theta.shape[-1]
    sq = ((x_o - theta) ** 2).sum(-1)
    return -0.5 * sq / var - 0.5 * d * math.log(2 * math.pi * var)


def log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
    """``log p(x_o | theta)`` for ``theta (n, 10)``, ``x_o (10,)`` -> ``(n,)`` float32."""
    theta, x_o = theta64(theta, PRIOR), x_o64(x_o, DIM)
    return gaussian_log_likelihood(theta, x_o, NOISE_VAR).float()


def posterior_mean_std(x_o: Tensor) -> tuple[Tensor, Tensor]:
    """The analytic posterior's mean ``(10,)`` and standard deviation ``(10,)``, float64.

    ``x_o`` is one observation ``(10,)`` or n i.i.d. observations ``(n, 10)``: precision
    ``1 / a + n / b``, mean ``sum_j x_j / b`` over the precision.
    """
    x_set = torch.as_tensor(x_o).detach().to("cpu", torch.float64)
    if x_set.ndim != 2 or x_set.shape[1] != DIM:
        x_set = x_o64(x_set, DIM)[None]
    precision = 1 / PRIOR_VAR + x_set.shape[0] / NOISE_VAR
    mean = x_set.sum(0) / NOISE_VAR / precision
    return mean, torch.full((DIM,), precision**-0.5, dtype=torch.float64)


def reference_posterior(
    x_o: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Exact posterior samples ``(num_samples, 10)`` float32 for ``x_o (10,)``."""
    mean, std = posterior_mean_std(x_o)
    eps = torch.randn(check_num_samples(num_samples), DIM, generator=generator, dtype=torch.float64)
    return (mean + std * eps).float()


def make_task() -> Task:
    """The Gaussian linear task: 10-d theta and x, analytic reference posterior."""
    return Task(
        name="gaussian_linear",
        prior=PRIOR,
        simulator=simulator,
        x_shape=(DIM,),
        description="sbibm Gaussian linear: 10-d theta ~ N(0, 0.1 I), x ~ N(theta, 0.1 I)",
        reference_posterior=reference_posterior,
        log_likelihood=log_likelihood,
        metadata={
            "sbibm_name": "gaussian_linear",
            "parameter_names": [f"theta_{i + 1}" for i in range(DIM)],
        },
    )
