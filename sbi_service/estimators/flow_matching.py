"""Flow-matching posterior estimation (``fmpe``; Lipman et al. 2023, Dax et al. 2023).

Conditional optimal-transport paths between z ~ N(0, I) at t = 0 and standardized
parameters theta (= theta_z) at t = 1:

    y_t = (1 - (1 - sigma_min) t) z + t theta,      u_t = dy_t/dt = theta - (1 - sigma_min) z.

A network v(y, t, c) (``ode.ConditionedMLP``, c = embed(x)) regresses the conditional
vector field:

    loss(theta, c) = || v(y_t, t, c) - u_t ||^2,    t ~ p(t) ∝ t^time_power on [0, 1]

(Dax et al.'s p(t) ∝ t^(1 / (1 + alpha)), time_power = 1 / (1 + alpha); the default
time_power = 1, alpha = 0, trains more on late times, t near the data, where the field
has to resolve the posterior's fine structure). Its minimizer is the marginal field
whose flow carries N(0, I) to q(theta | x). In eval mode t and z come from a fixed
seed, so validation losses of different epochs are comparable.

Sampling: Heun steps on the grid t_i = 1 - (1 - i / N)^p, i = 0..N (N = ``steps``,
p = ``grid_power``, default 2; p = 1 is uniform, p > 1 puts the steps closer together
near the data, where the field of a narrow posterior changes fastest: with the same
30 evaluations p = 2 takes gaussian_mixture's C2ST from 0.635 to 0.545 and two_moons'
from 0.631 to 0.534, ``benchmarks/results/sampling_steps.txt``), of

    dy/dt = v(y, t, c)    from y(0) = noise,

2 N network evaluations; deterministic in (noise, context) as the contract requires.

Density: integrate the same ODE from theta at t = 1 back to t = 0 with the exact
divergence (``ode.integrate_with_divergence``):

    log q(theta | x) = log N(y(0); 0, I) - int_0^1 div_y v(y(t), t, c) dt.

Shapes: theta_z, noise, y: (rows, d); context: (rows, dim_context); t: a float or (rows,).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from sbi_service.errors import UserError
from sbi_service.estimators.base import Estimator
from sbi_service.estimators.ode import (
    ConditionedMLP,
    heun,
    integrate_with_divergence,
    standard_normal_log_prob,
)

VALIDATION_SEED = 0


class FlowMatchingEstimator(Estimator):
    """Flow-matching posterior q(theta | x) with optimal-transport conditional paths."""

    kind = "fmpe"
    train_defaults: ClassVar[dict[str, int | bool]] = {
        "patience": 30,
        "plateau_patience": 10,
        "average_weights": True,
    }

    def __init__(
        self,
        dim_theta: int,
        x_shape: tuple[int, ...],
        embedding: dict | None = None,
        hidden: int = 256,
        blocks: int = 4,
        steps: int = 15,
        sigma_min: float = 1e-4,
        time_power: float = 1.0,
        grid_power: float = 2.0,
    ):
        super().__init__(dim_theta, x_shape, embedding)
        if int(steps) < 1:
            raise UserError(f"fmpe: steps must be at least 1, got {steps}")
        if not 0 <= sigma_min < 1:
            raise UserError(f"fmpe: sigma_min must be in [0, 1), got {sigma_min}")
        if time_power <= -1:
            raise UserError(f"fmpe: time_power must be greater than -1, got {time_power}")
        if not grid_power >= 1:
            raise UserError(f"fmpe: grid_power must be at least 1, got {grid_power}")
        self._hyper = {
            "hidden": int(hidden),
            "blocks": int(blocks),
            "steps": int(steps),
            "sigma_min": float(sigma_min),
            "time_power": float(time_power),
            "grid_power": float(grid_power),
        }
        self.steps, self.sigma_min, self.time_power = int(steps), float(sigma_min), time_power
        self.grid_power = float(grid_power)
        self.net = ConditionedMLP(self.dim_theta, self.dim_context, int(hidden), int(blocks))

    def hyperparameters(self) -> dict[str, Any]:
        return dict(self._hyper)

    def velocity(self, y: Tensor, t: float, context: Tensor) -> Tensor:
        """v(y, t, c): y (rows, d), context (rows, c) -> (rows, d)."""
        return self.net(y, torch.full((y.shape[0],), t, dtype=y.dtype, device=y.device), context)

    def _loss_z(self, theta_z: Tensor, context: Tensor) -> Tensor:
        gen = None
        if not self.training:
            gen = torch.Generator(device=theta_z.device).manual_seed(VALIDATION_SEED)
        u = torch.rand(theta_z.shape[0], generator=gen, device=theta_z.device, dtype=theta_z.dtype)
        t = u ** (1 / (1 + self.time_power))
        z = torch.randn(theta_z.shape, generator=gen, device=theta_z.device, dtype=theta_z.dtype)
        y = (1 - (1 - self.sigma_min) * t[:, None]) * z + t[:, None] * theta_z
        target = theta_z - (1 - self.sigma_min) * z
        return (self.net(y, t, context) - target).pow(2).sum(-1)

    def time_grid(self) -> list[float]:
        """t_0 = 0 < ... < t_N = 1: t_i = 1 - (1 - i / N)^grid_power (exactly i / N for 1)."""
        uniform = [i / self.steps for i in range(self.steps + 1)]
        if self.grid_power == 1:
            return uniform
        return [1 - (1 - u) ** self.grid_power for u in uniform]

    def _decode_z(self, noise: Tensor, context: Tensor) -> Tensor:
        return heun(lambda y, t: self.velocity(y, t, context), noise, self.time_grid())

    def _log_prob_z(self, theta_z: Tensor, context: Tensor) -> Tensor:
        grid = self.time_grid()[::-1]
        y0, integral = integrate_with_divergence(
            lambda y, t: self.velocity(y, t, context), theta_z, grid
        )
        return standard_normal_log_prob(y0) + integral
