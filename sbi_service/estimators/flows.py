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
to invert instead of dim_theta passes). ``activation`` is the hyper-network's hidden
nonlinearity: ``tanh`` for ``maf`` (sbi's MAF, from nflows, uses it), ``relu`` for
``nsf``. On bernoulli_glm at 1,000 simulations a ReLU MAF fitted 0.94 nats per pair
worse than sbi's MAF in held-out negative log-likelihood (mean of 3 seeds,
``benchmarks/heldout_nll.py``) and the same MAF with tanh 0.002 nats better: the smooth
units generalize from few simulations where piecewise-linear ones overfit
(``benchmarks/results/auto_small_budget.md``).

``members=K`` makes the estimator an equally weighted ensemble of K flows of the same
architecture from different initial weights, sharing the embedding:

    q(theta | x) = (1/K) sum_k q_k(theta | x),      loss = (1/K) sum_k -log q_k(theta | x),

so each member is fitted by its own maximum likelihood on the same minibatches. Averaging
independently fitted members cancels much of each one's estimation error (the posterior
mean's error shrinks about as 1/sqrt(K) when the members' errors are independent), at K
times the training cost. A sample stays a deterministic function of its noise row: the
first noise coordinate z_1 picks the member and is reused, since with u = Phi(z_1),

    k = floor(K u),    z_1' = Phi^{-1}(K u - k)

gives k uniform on {0..K-1} and z_1' standard normal, independent of k. So seeded samples
are identical batched or not, and a batch of rows is one decode per member.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import zuko
from torch import Tensor, nn

from sbi_service.estimators.base import Estimator

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}  # the hyper-network's hidden units


class FlowEstimator(Estimator):
    """One or ``members`` zuko flows conditioned on the embedded observation.

    Subclasses name the zuko class, the hidden ``activation`` and the defaults of their
    own options (e.g. ``bins``); any further keyword is passed to zuko and recorded in
    ``config``.
    """

    kind = "flow"
    flow_class: type = zuko.flows.NSF
    flow_defaults: dict[str, Any] = {}
    default_activation = "relu"

    def __init__(
        self,
        dim_theta: int,
        x_shape: tuple[int, ...],
        embedding: dict | None = None,
        transforms: int = 5,
        hidden_features: list[int] = (64, 64),
        passes: int | None = None,
        members: int = 1,
        activation: str | None = None,
        **flow_kwargs: Any,
    ):
        super().__init__(dim_theta, x_shape, embedding)
        flow_kwargs = {**self.flow_defaults, **flow_kwargs}
        activation = activation or self.default_activation
        if activation not in ACTIVATIONS:
            choices = ", ".join(ACTIVATIONS)
            raise TypeError(f"activation must be one of {choices}, got {activation!r}")
        self._hyper = {
            "transforms": int(transforms),
            "hidden_features": [int(h) for h in hidden_features],
            "passes": passes,
            "members": int(members),
            "activation": activation,
            **flow_kwargs,
        }
        if self._hyper["members"] < 1:
            raise TypeError(f"members must be at least 1, got {members}")
        self.flows = nn.ModuleList(
            self.flow_class(
                features=self.dim_theta,
                context=self.dim_context,
                transforms=int(transforms),
                hidden_features=tuple(self._hyper["hidden_features"]),
                passes=passes,
                activation=ACTIVATIONS[activation],
                **flow_kwargs,
            )
            for _ in range(self._hyper["members"])
        )
        self._register_load_state_dict_pre_hook(_single_flow_keys)

    def hyperparameters(self) -> dict[str, Any]:
        return dict(self._hyper)

    def _member_log_probs(self, theta_z: Tensor, context: Tensor) -> Tensor:
        """log q_k(theta_z | c) of every member, (members, batch)."""
        return torch.stack([flow(context).log_prob(theta_z) for flow in self.flows])

    def _log_prob_z(self, theta_z: Tensor, context: Tensor) -> Tensor:
        log_probs = self._member_log_probs(theta_z, context)
        return torch.logsumexp(log_probs, 0) - math.log(len(self.flows))

    def _loss_z(self, theta_z: Tensor, context: Tensor) -> Tensor:
        return -self._member_log_probs(theta_z, context).mean(0)

    def _decode_z(self, noise: Tensor, context: Tensor) -> Tensor:
        # zuko's base distribution is a fixed standard normal, so noise is a base draw.
        if len(self.flows) == 1:
            return self.flows[0](context).transform.inv(noise)
        member, noise = pick_member(noise, len(self.flows))
        theta_z = torch.empty_like(noise)
        for k, flow in enumerate(self.flows):
            rows = member == k
            theta_z[rows] = flow(context[rows]).transform.inv(noise[rows])
        return theta_z


def pick_member(noise: Tensor, members: int) -> tuple[Tensor, Tensor]:
    """noise (rows, d) -> (member index (rows,), fresh standard-normal noise (rows, d)).

    The first coordinate picks the member and is remapped (see the module docstring).
    """
    u = torch.special.ndtr(noise[:, 0].double()) * members
    member = u.floor().clamp(max=members - 1)
    first = torch.special.ndtri((u - member).clamp(1e-12, 1 - 1e-12)).to(noise.dtype)
    return member.long(), torch.cat([first[:, None], noise[:, 1:]], dim=1)


def _single_flow_keys(state: dict, prefix: str, *args: Any) -> None:
    """Models saved before ensembles kept their one flow under ``flow.``: now ``flows.0.``."""
    old = prefix + "flow."
    for key in [k for k in state if k.startswith(old)]:
        state[prefix + "flows.0." + key[len(old) :]] = state.pop(key)


class NSFEstimator(FlowEstimator):
    """Neural spline flow: ``bins`` rational-quadratic bins per transform (default 8)."""

    kind = "nsf"
    flow_class = zuko.flows.NSF
    flow_defaults = {"bins": 8}


class MAFEstimator(FlowEstimator):
    """Masked autoregressive flow with affine transforms and tanh hidden units."""

    kind = "maf"
    flow_class = zuko.flows.MAF
    default_activation = "tanh"
