"""SLCP, simple likelihood complex posterior (sbibm ``slcp``, no distractors).

Parameters ``theta (n, 5)``, prior ``U(-3, 3)^5``. Data ``x (n, 8)``: four i.i.d.
2-d Gaussian draws, flattened as ``(x1_a, x1_b, x2_a, x2_b, ..., x4_b)``:

    m = (theta_0, theta_1)
    s1 = theta_2^2,  s2 = theta_3^2,  rho = tanh(theta_4)
    S = [[s1^2 + 1e-6, rho s1 s2], [rho s1 s2, s2^2 + 1e-6]]
    x_j ~ N(m, S),  j = 1..4

Likelihood (tractable): ``log p(x | theta) = sum_j log N(x_j; m, S)``. The posterior
has four symmetric modes (the signs of theta_2 and theta_3 are not identified).
No closed-form reference; ``reference.sample_reference_posterior`` draws one by MCMC.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import BoxUniform
from sbi_service.simulators.tasks._common import theta64, x_o64

NUM_DRAWS = 4
EPS = 1e-6
PRIOR = BoxUniform([-3.0] * 5, [3.0] * 5)


def _mean_and_cholesky(theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``m (n, 2)`` and the Cholesky factor entries ``l11, l21, l22`` (each ``(n,)``) of S."""
    m = theta[:, :2]
    s1, s2 = theta[:, 2] ** 2, theta[:, 3] ** 2
    rho = torch.tanh(theta[:, 4])
    v1, v2, c = s1**2 + EPS, s2**2 + EPS, rho * s1 * s2
    l11 = torch.sqrt(v1)
    l21 = c / l11
    l22 = torch.sqrt((v2 - l21**2).clamp_min(0.0))
    return m, l11, l21, l22


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``theta (n, 5) -> x (n, 8)`` float32."""
    theta = theta64(theta, PRIOR)
    n = theta.shape[0]
    m, l11, l21, l22 = _mean_and_cholesky(theta)
    eps = torch.randn(n, NUM_DRAWS, 2, generator=generator, dtype=torch.float64)
    xa = m[:, None, 0] + l11[:, None] * eps[..., 0]
    xb = m[:, None, 1] + l21[:, None] * eps[..., 0] + l22[:, None] * eps[..., 1]
    return torch.stack((xa, xb), dim=-1).reshape(n, 2 * NUM_DRAWS).float()


def log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
    """``log p(x_o | theta)`` for ``theta (n, 5)``, ``x_o (8,)`` -> ``(n,)`` float32."""
    theta, x_o = theta64(theta, PRIOR), x_o64(x_o, 2 * NUM_DRAWS)
    m, l11, l21, l22 = _mean_and_cholesky(theta)
    pts = x_o.reshape(NUM_DRAWS, 2)
    da = pts[None, :, 0] - m[:, None, 0]
    db = pts[None, :, 1] - m[:, None, 1]
    za = da / l11[:, None]
    zb = (db - l21[:, None] * za) / l22[:, None]
    quad = (za**2 + zb**2).sum(-1)
    log_det_half = torch.log(l11) + torch.log(l22)
    ll = -0.5 * quad - NUM_DRAWS * (log_det_half + math.log(2 * math.pi))
    return torch.nan_to_num(ll, nan=-math.inf).float()


def make_task() -> Task:
    """The SLCP task: 5-d theta, 8-d x, tractable Gaussian likelihood."""
    return Task(
        name="slcp",
        prior=PRIOR,
        simulator=simulator,
        x_shape=(2 * NUM_DRAWS,),
        description="sbibm SLCP: 5-d theta ~ U(-3,3), x = 4 draws of a 2-d Gaussian (8-d)",
        log_likelihood=log_likelihood,
        metadata={
            "sbibm_name": "slcp",
            "parameter_names": [f"theta_{i + 1}" for i in range(5)],
        },
    )
