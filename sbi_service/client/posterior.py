"""``RemotePosterior``: a served model behind sbi's posterior interface.

sbi's analysis and diagnostics code (``sbi.analysis.pairplot``, ``sbi.diagnostics.run_sbc``,
...) takes a posterior object with these methods and torch tensors:

    sample(sample_shape, x=None)          x: one observation (x_shape) or (1, *x_shape)
                                          -> (*sample_shape, dim_theta)
    sample_batched(sample_shape, x)       x: (batch, *x_shape) -> (*sample_shape, batch, dim_theta)
    log_prob(theta, x=None)               theta (n, dim_theta) or (dim_theta,) -> (n,)
    log_prob_batched(theta, x)            theta (S, batch, dim_theta), x (batch, ...) -> (S, batch)
    set_default_x(x)                      the x used when a call gives none; returns self

Each call is one request to the server. Without a ``seed`` a call draws one from torch's
global generator, so ``torch.manual_seed(s)`` makes a script's samples repeat, as with
sbi. ``last`` holds the version and verdict of the latest answer; with
``require_passed`` an answer from a version whose diagnostics did not pass raises
``UnvalidatedPosterior`` instead of being returned.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sbi_service.client.http import Served, UnvalidatedPosterior

if TYPE_CHECKING:
    from sbi_service.client.http import Client


class RemotePosterior:
    """sbi's ``NeuralPosterior`` interface over ``client``'s model ``model``."""

    def __init__(
        self,
        client: Client,
        model: str,
        version: int | None = None,
        require_passed: bool = False,
    ):
        info = client.model(model)
        self.client, self.model, self.version = client, model, version
        self.require_passed = require_passed
        self.dim_theta = int(info["config"]["dim_theta"])
        self.x_shape = tuple(info["config"]["x_shape"])
        self.default_x: Tensor | None = None
        self.last: Served | None = None

    def __repr__(self) -> str:
        pin = "served version" if self.version is None else f"version {self.version}"
        return f"RemotePosterior({self.model!r}, {pin}, {self.client.http.base_url})"

    def set_default_x(self, x: Any) -> RemotePosterior:
        self.default_x = self._batch(x)
        return self

    def sample(
        self,
        sample_shape: int | tuple[int, ...] | torch.Size = torch.Size(),
        x: Any = None,
        *,
        seed: int | None = None,
        **sbi_options: Any,
    ) -> Tensor:
        """Samples (*sample_shape, dim_theta) given one observation (sbi's options such as
        ``show_progress_bars`` are accepted and have no effect)."""
        x = self._x(x)
        if x.shape[0] != 1:
            raise ValueError(
                f"sample takes one observation, got a batch of {x.shape[0]}: use sample_batched"
            )
        return self.sample_batched(sample_shape, x, seed=seed)[..., 0, :]

    def sample_batched(
        self,
        sample_shape: int | tuple[int, ...] | torch.Size,
        x: Any,
        *,
        seed: int | None = None,
        **sbi_options: Any,
    ) -> Tensor:
        """Samples (*sample_shape, batch, dim_theta) for observations x (batch, *x_shape)."""
        shape = torch.Size([sample_shape] if isinstance(sample_shape, int) else sample_shape)
        x = self._batch(x)
        seed = _seed() if seed is None else seed
        served = self._check(
            self.client.sample(self.model, x, max(math.prod(shape), 1), seed, self.version)
        )
        samples = torch.from_numpy(served.values)  # (batch, N, d)
        return samples.transpose(0, 1).reshape(*shape, x.shape[0], self.dim_theta)

    def log_prob(self, theta: Any, x: Any = None, **sbi_options: Any) -> Tensor:
        """log q(theta | x) for theta (n, dim_theta) or (dim_theta,) and one observation;
        -inf outside the prior's support."""
        x = self._x(x)
        if x.shape[0] != 1:
            raise ValueError(
                f"log_prob takes one observation, got a batch of {x.shape[0]}: use log_prob_batched"
            )
        theta = torch.as_tensor(theta, dtype=torch.float32).reshape(-1, self.dim_theta)
        return self._log_prob(theta, x)

    def log_prob_batched(self, theta: Any, x: Any, **sbi_options: Any) -> Tensor:
        """theta (S, batch, dim_theta) and x (batch, *x_shape) -> (S, batch)."""
        theta = torch.as_tensor(theta, dtype=torch.float32)
        x = self._batch(x)
        num, batch = theta.shape[0], x.shape[0]
        if theta.shape[1:] != (batch, self.dim_theta):
            raise ValueError(
                f"theta has shape {tuple(theta.shape)}; expected (S, {batch}, {self.dim_theta})"
            )
        paired_x = x.unsqueeze(0).expand(num, *x.shape).reshape(num * batch, *self.x_shape)
        values = self._log_prob(theta.reshape(num * batch, self.dim_theta), paired_x)
        return values.reshape(num, batch)

    # -- helpers -----------------------------------------------------------------------
    def _log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        served = self._check(self.client.log_prob(self.model, theta, x, self.version))
        return torch.from_numpy(served.values)

    def _x(self, x: Any) -> Tensor:
        if x is not None:
            return self._batch(x)
        if self.default_x is None:
            raise ValueError("no x given and no default x: pass x=... or call set_default_x")
        return self.default_x

    def _batch(self, x: Any) -> Tensor:
        """x (*x_shape) or (batch, *x_shape) -> (batch, *x_shape) float32."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if tuple(x.shape) == self.x_shape:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; the model takes {self.x_shape} or "
                f"(batch, {', '.join(map(str, self.x_shape))})"
            )
        return x

    def _check(self, served: Served) -> Served:
        self.last = served
        if self.require_passed and served.verdict != "passed":
            raise UnvalidatedPosterior(
                f"{served.model} v{served.version} answered, but its diagnostics verdict is "
                f"{served.verdict}: run the gate on it (client.diagnose) or serve a version "
                "that passed"
            )
        return served


def _seed() -> int:
    """A seed from torch's global generator (so torch.manual_seed makes runs repeat)."""
    return int(torch.randint(0, 2**62, (1,)).item())
