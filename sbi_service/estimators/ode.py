"""Shared pieces of the ODE-based families (``npse``, ``fmpe``): the solver and the network.

Solver. Both families sample by integrating an ODE dy/ds = v(y, s) over a fixed grid
s_0, s_1, ..., s_N (increasing or decreasing) with Heun's method (explicit trapezoid,
2nd order):

    k_1 = v(y_i, s_i)
    y'  = y_i + h k_1,                 h = s_{i+1} - s_i
    k_2 = v(y', s_{i+1})
    y_{i+1} = y_i + h (k_1 + k_2) / 2

which costs 2 network evaluations (NFE) per step; with ``last_euler=True`` the last
step is a plain Euler step (1 NFE), used by the score family whose field is singular
at sigma = 0. Every row of y is integrated independently, so a row's result does not
depend on the other rows in the batch.

Densities. Along a solution, d/ds log p_s(y(s)) = -div v(y(s), s) (instantaneous
change of variables, Chen et al. 2018), so integrating from the data end s_data to
the noise end s_noise,

    log p_data(y(s_data)) = log p_noise(y(s_noise)) + int_{s_data}^{s_noise} div v ds.

``integrate_with_divergence`` integrates the augmented state (y, int div v ds) with
the same Heun steps; the divergence is exact, dim autograd passes per evaluation
(dim_theta is small here). It runs without a graph to the inputs: densities of the
ODE families are not differentiable with respect to theta or x.

Network. ``ConditionedMLP`` maps (y (rows, d), time features (rows, t_dim), context
(rows, c)) -> (rows, d): an input layer, ``blocks`` pre-activation residual blocks
each conditioned on an embedding of (context, time) by a per-block scale and shift (FiLM),
and a zero-initialized output layer (the field starts at 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

VectorField = Callable[[Tensor, float], Tensor]  # (y (rows, d), s) -> dy/ds (rows, d)


def heun(field: VectorField, y: Tensor, grid: list[float], last_euler: bool = False) -> Tensor:
    """Integrate dy/ds = field(y, s) from grid[0] to grid[-1]; y (rows, d) -> (rows, d)."""
    n = len(grid) - 1
    for i in range(n):
        s, s_next = grid[i], grid[i + 1]
        h = s_next - s
        k1 = field(y, s)
        if last_euler and i == n - 1:
            y = y + h * k1
        else:
            k2 = field(y + h * k1, s_next)
            y = y + 0.5 * h * (k1 + k2)
    return y


def divergence(field: VectorField, y: Tensor, s: float) -> tuple[Tensor, Tensor]:
    """(field(y, s) (rows, d), exact div_y field (rows,)) with d autograd passes."""
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        v = field(y, s)
        div = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        for j in range(y.shape[1]):
            (g,) = torch.autograd.grad(v[:, j].sum(), y, retain_graph=j < y.shape[1] - 1)
            div = div + g[:, j]
    return v.detach(), div.detach()


def integrate_with_divergence(
    field: VectorField, y: Tensor, grid: list[float]
) -> tuple[Tensor, Tensor]:
    """Heun on (y, int div v ds) from grid[0] to grid[-1] -> (y_end (rows, d), integral (rows,))."""
    integral = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
    y = y.detach()
    for s, s_next in zip(grid[:-1], grid[1:], strict=True):
        h = s_next - s
        v1, d1 = divergence(field, y, s)
        v2, d2 = divergence(field, y + h * v1, s_next)
        y = y + 0.5 * h * (v1 + v2)
        integral = integral + 0.5 * h * (d1 + d2)
    return y, integral


def standard_normal_log_prob(z: Tensor, scale: float = 1.0) -> Tensor:
    """log N(z; 0, scale^2 I) for z (rows, d) -> (rows,)."""
    d = z.shape[-1]
    return -0.5 * (z / scale).pow(2).sum(-1) - d * math.log(scale) - 0.5 * d * math.log(2 * math.pi)


class FourierTime(nn.Module):
    """Gaussian Fourier features of a scalar time: tau (rows,) -> (rows, 2 * half).

    gamma(tau) = [sin(2 pi w tau), cos(2 pi w tau)], w ~ N(0, scale^2) fixed at init
    (Tancik et al. 2020; Song et al. 2021), stored as a buffer so it is saved.
    """

    def __init__(self, half: int = 16, scale: float = 4.0):
        super().__init__()
        self.register_buffer("w", torch.randn(half) * scale)

    def forward(self, tau: Tensor) -> Tensor:
        angle = 2 * math.pi * tau[:, None] * self.w
        return torch.cat([angle.sin(), angle.cos()], dim=-1)


class ResidualBlock(nn.Module):
    """FiLM-conditioned block: h (rows, width), cond (rows, width) -> (rows, width).

    u = LN(W_1 silu(h)) (1 + gamma) + beta,  [gamma, beta] = P cond  (Perez et al. 2018),
    h -> h + W_2 silu(u).
    """

    def __init__(self, width: int):
        super().__init__()
        self.lin1 = nn.Linear(width, width)
        self.film = nn.Linear(width, 2 * width)
        self.norm = nn.LayerNorm(width)
        self.lin2 = nn.Linear(width, width)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        gamma, beta = self.film(cond).chunk(2, dim=-1)
        u = self.norm(self.lin1(nn.functional.silu(h))) * (1 + gamma) + beta
        return h + self.lin2(nn.functional.silu(u))


class ConditionedMLP(nn.Module):
    """(y (rows, d), tau (rows,), context (rows, c)) -> (rows, d) residual MLP.

    cond = MLP([context, gamma(tau)]) (rows, width); h = W_in [y, context, gamma(tau)];
    h = block_k(h, cond) for k = 1..blocks; out = W_out silu(h), W_out zero-initialized.
    """

    def __init__(self, dim: int, dim_context: int, width: int = 128, blocks: int = 3):
        super().__init__()
        self.time = FourierTime()
        t_dim = 2 * self.time.w.numel()
        self.cond = nn.Sequential(
            nn.Linear(dim_context + t_dim, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.inp = nn.Linear(dim + dim_context + t_dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(blocks))
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, y: Tensor, tau: Tensor, context: Tensor) -> Tensor:
        t = self.time(tau)
        ct = torch.cat([context, t], dim=-1)
        cond = self.cond(ct)
        h = self.inp(torch.cat([y, ct], dim=-1))
        for block in self.blocks:
            h = block(h, cond)
        return self.out(nn.functional.silu(h))
