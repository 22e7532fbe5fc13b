"""Normalizing-flow posterior estimators (NPE) built on zuko.

q(theta | x) = N(f(theta_z; c), I) |det df/dtheta_z| with c = embed(x) and f a stack of
conditional transforms:

- ``nsf``: neural spline flow (Durkan et al. 2019): monotonic rational-quadratic
  splines with ``bins`` bins on [-5, 5] (identity outside), parameters from a masked
  (autoregressive) hyper-network of the context.
- ``maf``: masked autoregressive flow (Papamakarios et al. 2017): affine transforms
  theta_i -> theta_i * exp(a_i) + b_i with (a_i, b_i) = MADE(theta_<i, c).

Both are trained by maximum likelihood, loss = -log q(theta_z | x) per pair, and sampled
by pushing standard normal noise through the inverse: theta_z = f^{-1}(z; c).
``passes=2`` turns the autoregressive transform into a coupling transform (one pass
to invert instead of dim_theta passes).
"""

from __future__ import annotations

from typing import Any

import zuko
from torch import Tensor

from sbi_service.estimators.base import Estimator


class FlowEstimator(Estimator):
    """A zuko flow conditioned on the embedded observation.

    Subclasses name the zuko class and the defaults of its own options (e.g. ``bins``);
    any further keyword is passed to zuko and recorded in ``config``.
    """

    kind = "flow"
    flow_class: type = zuko.flows.NSF
    flow_defaults: dict[str, Any] = {}

    def __init__(
        self,
        dim_theta: int,
        x_shape: tuple[int, ...],
        embedding: dict | None = None,
        transforms: int = 5,
        hidden_features: list[int] = (64, 64),
        passes: int | None = None,
        **flow_kwargs: Any,
    ):
        super().__init__(dim_theta, x_shape, embedding)
        flow_kwargs = {**self.flow_defaults, **flow_kwargs}
        self._hyper = {
            "transforms": int(transforms),
            "hidden_features": [int(h) for h in hidden_features],
            "passes": passes,
            **flow_kwargs,
        }
        self.flow = self.flow_class(
            features=self.dim_theta,
            context=self.dim_context,
            transforms=int(transforms),
            hidden_features=tuple(self._hyper["hidden_features"]),
            passes=passes,
            **flow_kwargs,
        )

    def hyperparameters(self) -> dict[str, Any]:
        return dict(self._hyper)

    def _log_prob_z(self, theta_z: Tensor, context: Tensor) -> Tensor:
        return self.flow(context).log_prob(theta_z)

    def _loss_z(self, theta_z: Tensor, context: Tensor) -> Tensor:
        return -self._log_prob_z(theta_z, context)

    def _decode_z(self, noise: Tensor, context: Tensor) -> Tensor:
        # zuko's base distribution is a fixed standard normal, so noise is a base draw.
        return self.flow(context).transform.inv(noise)


class NSFEstimator(FlowEstimator):
    """Neural spline flow: ``bins`` rational-quadratic bins per transform (default 8)."""

    kind = "nsf"
    flow_class = zuko.flows.NSF
    flow_defaults = {"bins": 8}


class MAFEstimator(FlowEstimator):
    """Masked autoregressive flow with affine transforms."""

    kind = "maf"
    flow_class = zuko.flows.MAF
