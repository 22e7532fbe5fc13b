"""Score-based neural posterior estimation (``npse``; Sharrock et al. 2024, Geffner et al. 2023).

Diffusion. Standardized parameters theta (= theta_z, (rows, d)) are perturbed by one of
two SDEs (Song et al. 2021). Both have Gaussian kernels x_t = alpha_t theta + sigma_t eps,
eps ~ N(0, I):

- ``ve`` (variance exploding): alpha_t = 1, sigma_t = sigma_min (sigma_max / sigma_min)^t;
- ``vp`` (variance preserving, linear beta): alpha_t = exp(-B(t) / 2),
  sigma_t = sqrt(1 - alpha_t^2), B(t) = beta_min t + (beta_max - beta_min) t^2 / 2;

Writing y = x_t / alpha_t and s = sigma_t / alpha_t (the noise-to-signal ratio) turns
either into the same process y = theta + s eps (Karras et al. 2022, sec. 2): VE is
s = sigma_t, VP is s = sqrt(exp(B(t)) - 1). The SDE choice therefore sets the range
[s_min, s_max] = [s(t_min), s(1)] the sampler covers; the network, the ODE and the SDE
below are written once in (y, s).

Noise levels in training (after Karras et al. 2022, "EDM"): log s ~ N(p_mean, p_std^2),
clamped to [s_min, s_max], rather than t ~ U(t_min, 1) (log-uniform s for VE), which
spends much of the training on levels where the loss cannot improve (s far below the
posterior's width: D = y). The defaults, p_mean = -1.2, p_std = 1.4, put 95% of the
levels in [0.019, 4.7], where the posterior's fine structure is learned: EDM's mean with
a slightly wider spread. Against EDM's own p_std = 1.2 ([0.03, 3.2]) the wider lower
tail gains sir, whose posterior is the thinnest in z-units, and keeps slcp and
gaussian_mixture, which the still wider (-0.5, 2) ([0.012, 20]) lost at 10^4 simulations;
it costs two_moons (C2ST 0.573 -> 0.638, still ahead of sbi's NPSE) and the
composition of 20 observations (0.665 -> 0.694) (``benchmarks/results/npse_noise_levels.md``).

Denoiser and loss (Karras et al. 2022 preconditioning, data std 1 after z-scoring):

    D(y, s, c) = c_skip(s) y + c_out(s) F(c_in(s) y, log(s) / 4, c)
    c_in = 1 / sqrt(s^2 + 1),  c_skip = 1 / (s^2 + 1),  c_out = s / sqrt(s^2 + 1)
    loss(theta, c) = || F(...) - (theta - c_skip y) / c_out ||^2,  y = theta + s eps

which is denoising score matching with weight lambda(s) = 1 / c_out^2 on
||D - theta||^2. The score of the perturbed posterior is
grad_y log p_s(y | x) = (D(y, s, c) - y) / s^2 (Tweedie). In eval mode the training noise
is drawn from a fixed seed, so validation losses of different epochs are comparable.

Sampling (``sampler="ode"``, the default): the probability-flow ODE

    dy/ds = (y - D(y, s, c)) / s          from y(s_max) = sqrt(1 + s_max^2) noise

(sqrt(1 + s_max^2): the standard deviation of theta + s_max eps for unit-variance
theta) on the grid s_i = (s_max^(1/7) + i / (N - 1) (s_min^(1/7) - s_max^(1/7)))^7,
i < N, s_N = 0, with Heun steps and a last Euler step (which returns D(y, s_{N-1}, c)):
2 N - 1 network evaluations for ``steps = N``. The map noise -> theta is deterministic,
as the estimator contract requires. ``sampler="sde"``: Euler-Maruyama on the reverse
SDE in u = s^2 (forward dy = dW_u),

    y_{i+1} = y_i + (s_i^2 - s_{i+1}^2) score(y_i, s_i) + sqrt(s_i^2 - s_{i+1}^2) xi_i

down to s_min then y = D(y, s_min): ``steps + 1`` evaluations. To keep ``decode`` a
function of (noise, context) alone, xi_i are drawn from a counter-based hash of the
noise row's bits (``hashed_normals``), not from a global generator.

Density: ``_log_prob_z`` integrates the same ODE from s_min to s_max with the exact
divergence (``ode.integrate_with_divergence``); log q(theta | x) = log p_{s_min}(theta):
log N(y(s_max); 0, (1 + s_max^2) I) + int_{s_min}^{s_max} div_y (dy/ds) ds.

Shapes: theta_z, noise, y: (rows, d); context: (rows, dim_context); s: a float.
"""

from __future__ import annotations

import math
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


class ScoreEstimator(Estimator):
    """Score-based posterior q(theta | x) with a Karras-preconditioned denoiser."""

    kind = "npse"
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
        sde: str = "ve",
        hidden: int = 128,
        blocks: int = 3,
        steps: int = 18,
        sampler: str = "ode",
        sigma_min: float = 1e-3,
        sigma_max: float = 20.0,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        p_mean: float = -1.2,
        p_std: float = 1.4,
    ):
        super().__init__(dim_theta, x_shape, embedding)
        if sde not in ("ve", "vp"):
            raise UserError(f"npse: sde must be 've' or 'vp', got {sde!r}")
        if sampler not in ("ode", "sde"):
            raise UserError(f"npse: sampler must be 'ode' or 'sde', got {sampler!r}")
        if int(steps) < 1:
            raise UserError(f"npse: steps must be at least 1, got {steps}")
        if not 0 < sigma_min < sigma_max:
            raise UserError("npse: need 0 < sigma_min < sigma_max")
        if not 0 < beta_min < beta_max:
            raise UserError("npse: need 0 < beta_min < beta_max")
        if not p_std > 0:
            raise UserError(f"npse: p_std must be positive, got {p_std}")
        self._hyper = {
            "sde": sde,
            "hidden": int(hidden),
            "blocks": int(blocks),
            "steps": int(steps),
            "sampler": sampler,
            "sigma_min": float(sigma_min),
            "sigma_max": float(sigma_max),
            "beta_min": float(beta_min),
            "beta_max": float(beta_max),
            "p_mean": float(p_mean),
            "p_std": float(p_std),
        }
        self.sde, self.steps, self.sampler = sde, int(steps), sampler
        if sde == "ve":
            self.t_min = 0.0
        else:
            # t_min solves s(t) = sigma_min: B(t) = log(1 + sigma_min^2).
            target, a, b = math.log1p(sigma_min**2), beta_min, beta_max - beta_min
            self.t_min = (-a + math.sqrt(a * a + 2 * b * target)) / b
        self.s_min = self.noise_level(self.t_min)
        self.s_max = self.noise_level(1.0)
        self.net = ConditionedMLP(self.dim_theta, self.dim_context, int(hidden), int(blocks))

    def hyperparameters(self) -> dict[str, Any]:
        return dict(self._hyper)

    # -- the diffusion ---------------------------------------------------------------
    def noise_level(self, t: float) -> float:
        """s(t) = sigma_t / alpha_t for t in [t_min, 1]."""
        h = self._hyper
        if self.sde == "ve":
            return h["sigma_min"] * (h["sigma_max"] / h["sigma_min"]) ** t
        big_b = h["beta_min"] * t + 0.5 * (h["beta_max"] - h["beta_min"]) * t**2
        return math.sqrt(math.expm1(big_b))

    def denoise(self, y: Tensor, s: Tensor | float, context: Tensor) -> Tensor:
        """D(y, s, c): y (rows, d), s a float or (rows, 1), context (rows, c) -> (rows, d)."""
        s = torch.as_tensor(s, dtype=y.dtype, device=y.device).expand(y.shape[0], 1)
        var = s**2 + 1
        f = self.net(y / var.sqrt(), torch.log(s[:, 0]) / 4, context)
        return y / var + (s / var.sqrt()) * f

    def score(self, y: Tensor, s: float, context: Tensor) -> Tensor:
        """grad_y log p_s(y | x) = (D - y) / s^2, (rows, d)."""
        return (self.denoise(y, s, context) - y) / s**2

    def sigma_grid(self, steps: int) -> list[float]:
        """Karras rho = 7 grid from s_max down to s_min, ``steps`` points (then 0 is appended)."""
        if steps == 1:
            return [self.s_max]
        lo, hi = self.s_min ** (1 / 7), self.s_max ** (1 / 7)
        return [(hi + i / (steps - 1) * (lo - hi)) ** 7 for i in range(steps)]

    # -- the estimator contract --------------------------------------------------------
    def _loss_z(self, theta_z: Tensor, context: Tensor) -> Tensor:
        rows = theta_z.shape[0]
        gen = None
        if not self.training:
            gen = torch.Generator(device=theta_z.device).manual_seed(VALIDATION_SEED)
        h = self._hyper
        u = torch.randn(rows, 1, generator=gen, device=theta_z.device, dtype=theta_z.dtype)
        eps = torch.randn(theta_z.shape, generator=gen, device=theta_z.device, dtype=theta_z.dtype)
        s = torch.exp(h["p_mean"] + h["p_std"] * u).clamp(self.s_min, self.s_max)
        y = theta_z + s * eps
        var = s**2 + 1
        f = self.net(y / var.sqrt(), torch.log(s[:, 0]) / 4, context)
        target = (theta_z - y / var) * var.sqrt() / s
        return (f - target).pow(2).sum(-1)

    def _decode_z(self, noise: Tensor, context: Tensor) -> Tensor:
        y = noise * math.sqrt(1 + self.s_max**2)
        if self.sampler == "ode":
            grid = [*self.sigma_grid(self.steps), 0.0]
            return heun(lambda y, s: self._ode_field(y, s, context), y, grid, last_euler=True)
        grid = self.sigma_grid(self.steps + 1)
        xi = hashed_normals(noise, self.steps)
        for i in range(self.steps):
            du = grid[i] ** 2 - grid[i + 1] ** 2
            y = y + du * self.score(y, grid[i], context) + math.sqrt(du) * xi[i]
        return self.denoise(y, grid[-1], context)

    def _log_prob_z(self, theta_z: Tensor, context: Tensor) -> Tensor:
        grid = self.sigma_grid(self.steps)[::-1]
        y, integral = integrate_with_divergence(
            lambda y, s: self._ode_field(y, s, context), theta_z, grid
        )
        return standard_normal_log_prob(y, math.sqrt(1 + self.s_max**2)) + integral

    def _ode_field(self, y: Tensor, s: float, context: Tensor) -> Tensor:
        """dy/ds = (y - D(y, s, c)) / s, (rows, d)."""
        return (y - self.denoise(y, s, context)) / s


_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32) without int64 overflow."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def _hash32(x: Tensor) -> Tensor:
    """Wellons' lowbias32 integer hash on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hashed_normals(noise: Tensor, count: int) -> Tensor:
    """Pseudo-random N(0, 1) draws (count, rows, d) determined by each noise row's bits.

    key_r = hash chained over the float32 bits of noise[r]; draw (k, r, j) uses two
    uniforms hash(key_r + 2 (k d + j) + 1), hash(... + 2) in (0, 1) and Box-Muller. A
    row's draws do not depend on the other rows.
    """
    rows, d = noise.shape
    bits = noise.detach().float().cpu().contiguous().view(torch.int32).to(torch.int64) & _MASK32
    key = torch.zeros(rows, dtype=torch.int64)
    for j in range(d):
        key = _hash32(key ^ bits[:, j])
    counter = torch.arange(count * d, dtype=torch.int64).reshape(count, 1, d)
    base = (key[None, :, None] + 2 * counter) & _MASK32
    u1 = ((_hash32((base + 1) & _MASK32) >> 8).double() + 0.5) / 2**24
    u2 = ((_hash32((base + 2) & _MASK32) >> 8).double() + 0.5) / 2**24
    z = torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
    return z.to(dtype=noise.dtype, device=noise.device)
