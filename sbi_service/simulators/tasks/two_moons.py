"""Two moons (sbibm ``two_moons``): a bimodal, crescent-shaped posterior.

Parameters ``theta (n, 2)``, prior ``U(-1, 1)^2``. Data ``x (n, 2)``:

    a ~ U(-pi/2, pi/2),   r ~ N(0.1, 0.01^2)
    p = (r cos a + 0.25, r sin a)
    z0 = (theta_0 + theta_1) / sqrt(2),   z1 = (theta_1 - theta_0) / sqrt(2)
    x = p + (-|z0|, z1)

(``z`` is ``theta`` rotated by -pi/4; ``|z0|`` folds it, hence the two modes.)

Likelihood: with ``p(theta) = (x0 + |z0|, x1 - z1)``, ``u = p0 - 0.25``, ``v = p1``,
``rho = sqrt(u^2 + v^2)``, the density of ``(u, v)`` in polar coordinates gives

    log p(x | theta) = log N(rho; 0.1, 0.01^2) - log(pi) - log(rho)     if u > 0
                     = -inf                                              otherwise

(exact up to the ~1e-23 probability mass of r < 0, which the formula ignores).
sbibm's own ``_likelihood`` omits the ``-log(pi) - log(rho)`` Jacobian; ours is the
density of the simulator as written.

Reference posterior: exact, as in sbibm. Draw ``(a, r)``, set
``q = (+-(p0 - x0), x1 - p1)`` with a fair random sign, rotate back by +pi/4 and keep
the draws inside the prior box (the map from ``(p, sign)`` to ``theta`` has unit
Jacobian, so the accepted draws follow prior x likelihood exactly).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import BoxUniform
from sbi_service.simulators.tasks._common import rejection_sample, theta64, x_o64

PRIOR = BoxUniform([-1.0, -1.0], [1.0, 1.0])
R_LOC, R_SCALE, BASE_OFFSET = 0.1, 0.01, 0.25
_SQRT_HALF = math.sqrt(0.5)


def _moon_noise(n: int, generator: torch.Generator | None) -> Tensor:
    """Draw ``p (n, 2)``: a point on a half ring of radius ~0.1 centred at (0.25, 0)."""
    a = math.pi * (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5)
    r = R_LOC + R_SCALE * torch.randn(n, generator=generator, dtype=torch.float64)
    return torch.stack((r * torch.cos(a) + BASE_OFFSET, r * torch.sin(a)), dim=-1)


def _rotate(theta: Tensor) -> Tensor:
    """``z (n, 2)``: theta rotated by -pi/4."""
    t0, t1 = theta[:, 0], theta[:, 1]
    return torch.stack(((t0 + t1) * _SQRT_HALF, (t1 - t0) * _SQRT_HALF), dim=-1)


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``theta (n, 2) -> x (n, 2)`` float32."""
    theta = theta64(theta, PRIOR)
    p = _moon_noise(theta.shape[0], generator)
    z = _rotate(theta)
    x = p + torch.stack((-z[:, 0].abs(), z[:, 1]), dim=-1)
    return x.float()


def log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
    """``log p(x_o | theta)`` for ``theta (n, 2)``, ``x_o (2,)`` -> ``(n,)`` float32."""
    theta, x_o = theta64(theta, PRIOR), x_o64(x_o, 2)
    z = _rotate(theta)
    u = x_o[0] + z[:, 0].abs() - BASE_OFFSET
    v = x_o[1] - z[:, 1]
    rho = torch.sqrt(u**2 + v**2)
    ll = (
        -0.5 * ((rho - R_LOC) / R_SCALE) ** 2
        - math.log(R_SCALE)
        - 0.5 * math.log(2 * math.pi)
        - math.log(math.pi)
        - torch.log(rho.clamp_min(1e-300))
    )
    return torch.where(u > 0, ll, torch.full_like(ll, -math.inf)).float()


def reference_posterior(
    x_o: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Exact posterior samples ``(num_samples, 2)`` float32 for one observation ``x_o (2,)``."""
    x_o = x_o64(x_o, 2)

    def draw(batch: int) -> Tensor:
        p = _moon_noise(batch, generator)
        sign = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0).double()
        q0 = sign * (p[:, 0] - x_o[0])
        q1 = x_o[1] - p[:, 1]
        theta = torch.stack(((q0 - q1) * _SQRT_HALF, (q0 + q1) * _SQRT_HALF), dim=-1)
        return theta[((theta >= -1) & (theta <= 1)).all(-1)]

    return rejection_sample(draw, num_samples).float()


def make_task() -> Task:
    """The two-moons task: 2-d theta, 2-d x, exact reference posterior."""
    return Task(
        name="two_moons",
        prior=PRIOR,
        simulator=simulator,
        x_shape=(2,),
        description="sbibm two moons: 2-d theta in U(-1,1)^2, 2-d x, bimodal crescent posterior",
        reference_posterior=reference_posterior,
        log_likelihood=log_likelihood,
        metadata={"sbibm_name": "two_moons", "parameter_names": ["theta_1", "theta_2"]},
    )
