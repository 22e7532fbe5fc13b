"""A trained estimator together with its prior: what users sample from.

For a bounded prior, q(theta|x) can put mass outside the prior's support, where the
true posterior has none. ``Posterior.sample`` rejects such draws and redraws them,
which samples q truncated to the support. When almost nothing is accepted
(fewer than ``min_acceptance`` of the draws after a full first round) the model is
not trustworthy for that observation and a ``UserError`` says so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbi_service.errors import UserError
from sbi_service.estimators.base import Estimator, draw_noise
from sbi_service.simulators.priors import Prior


class Posterior:
    """q(theta | x) restricted to the prior's support."""

    def __init__(self, estimator: Estimator, prior: Prior, min_acceptance: float = 1e-3):
        if prior.dim != estimator.dim_theta:
            raise UserError(
                f"the prior has dimension {prior.dim} but the estimator models "
                f"{estimator.dim_theta} parameters"
            )
        self.estimator, self.prior, self.min_acceptance = estimator, prior, min_acceptance
        self._x_log = estimator.x_log.cpu().numpy()  # x_shape bool: features read in log

    @property
    def x_shape(self) -> tuple[int, ...]:
        return self.estimator.x_shape

    @property
    def dim_theta(self) -> int:
        return self.estimator.dim_theta

    def check_observations(self, x: Any, what: str = "observations") -> Tensor:
        """Return x as (batch, *x_shape) float32 on the CPU, or raise a ``UserError`` naming
        the problem. A single observation of shape x_shape is accepted and given a batch axis.

        The checks are numpy's: a server runs them on its event loop, where every torch
        call gives up the GIL and then may wait for it behind the engine threads.
        """
        if isinstance(x, Tensor):
            x = x.detach().cpu().numpy()
        x = np.require(x, np.float32, ["C", "W"])  # torch.from_numpy wants it writable
        if x.shape == self.x_shape:
            x = x[None]
        if x.ndim != len(self.x_shape) + 1 or x.shape[1:] != self.x_shape:
            expected = ", ".join(str(s) for s in self.x_shape)
            raise UserError(
                f"{what} have shape {x.shape} but the model expects (num_obs, {expected})"
            )
        if x.shape[0] == 0:
            raise UserError(f"{what} are empty: give at least one observation")
        rows = _rows_with(~np.isfinite(x))
        if rows:
            raise UserError(f"{what} contain NaN or inf (rows {rows}): every value must be finite")
        rows = _rows_with((x <= 0) & self._x_log)
        if rows:
            features = np.flatnonzero(self._x_log)[:10].tolist()
            raise UserError(
                f"{what} have values <= 0 (rows {rows}) in features the model reads in log "
                f"scale (flattened indices {features}: positive in every training "
                "simulation); give positive values there"
            )
        return torch.from_numpy(x)

    @torch.no_grad()
    def sample(
        self, x: Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """x (batch, *x_shape) -> samples (batch, num_samples, d) inside the prior's support."""
        if num_samples < 1:
            raise UserError(f"num_samples must be at least 1, got {num_samples}")
        device = self.estimator.theta_loc.device
        context = self.estimator.embed(x.to(device))
        out = torch.empty(x.shape[0], num_samples, self.dim_theta)
        for i in range(x.shape[0]):
            out[i] = self._sample_one(context[i : i + 1], num_samples, generator, i)
        return out

    def _sample_one(
        self, context: Tensor, num_samples: int, generator: torch.Generator | None, index: int
    ) -> Tensor:
        """Rejection-sample one observation's draws: context (1, c) -> (num_samples, d)."""
        accepted: list[Tensor] = []
        have, drawn = 0, 0
        while have < num_samples:
            rows = self.round_size(num_samples - have, have, drawn)
            noise = draw_noise(rows, self.dim_theta, generator, context.device)
            theta = self.estimator.decode(noise, context.expand(rows, -1)).cpu()
            ok = self.accept(theta)
            accepted.append(theta[ok])
            have += int(ok.sum())
            drawn += rows
            self.check_acceptance(have, drawn, num_samples, index)
        return torch.cat(accepted)[:num_samples]

    # The steps of the rejection sampler, shared with the serving engine so that both
    # consume a request's noise in exactly the same way.
    def round_size(self, need: int, have: int, drawn: int) -> int:
        """Rows to draw in the next round when ``need`` more draws must be accepted.

        First round: ``need`` for an unbounded prior; for a bounded one 10% + 8 more, so
        that the few rejections of a good model rarely cost a second round. Later rounds:
        in proportion to the acceptance seen so far.
        """
        if drawn == 0:
            return int(math.ceil(1.1 * need)) + 8 if self.prior.bounded else need
        rate = max(have / drawn, 1e-3)
        return min(int(math.ceil(1.2 * need / rate)), 10**6)

    def accept(self, theta: Tensor) -> Tensor:
        """theta (rows, d) -> (rows,) bool: finite and inside the prior's support."""
        return self.prior.in_support(theta) & torch.isfinite(theta).all(-1)

    def check_acceptance(self, have: int, drawn: int, num_samples: int, index: int) -> None:
        """Raise a ``UserError`` when almost nothing is accepted (see the module docstring)."""
        if drawn >= num_samples and have < self.min_acceptance * drawn:
            raise UserError(
                f"observation {index}: only {have} of {drawn} posterior draws fall inside the "
                "prior's support; the observation is probably far from anything the model "
                "was trained on (check it, or retrain with more simulations)"
            )

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """log q(theta | x) for paired rows, -inf outside the prior's support, (batch,).

        The truncated density is not renormalized (the same convention as sbi's
        ``leakage_correction=False``).
        """
        lp = self.estimator.log_prob(theta, x)
        return torch.where(self.prior.in_support(theta), lp, torch.full_like(lp, -math.inf))


def _rows_with(flags: np.ndarray) -> list[int]:
    """The first five rows of flags (batch, *x_shape) with any flag set."""
    return np.flatnonzero(flags.reshape(flags.shape[0], -1).any(-1))[:5].tolist()
