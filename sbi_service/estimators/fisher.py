"""Fisher-information regularization of flows (Glöckler, Deistler and Macke 2023).

A posterior estimator is adversarially fragile where a small change of x moves
q(theta | x) a lot. The Fisher information of q with respect to x,

    F(x) = E_{theta ~ q(theta|x)} [ grad_x log q(theta|x) grad_x log q(theta|x)^T ],

measures that (KL(q(.|x) || q(.|x + dx)) ≈ dx^T F(x) dx / 2), so training adds

    beta * tr F(x) = beta * E_{theta ~ q(theta|x)} || grad_x log q(theta|x) ||^2

to the loss. Gradients are taken with respect to the *standardized* x_z the networks
see (``Estimator.standardize_x``), so beta does not depend on the units of x.

Estimator (``FisherRegularizer.__call__(estimator, theta, x) -> scalar``), on a training
batch x (B, *x_shape):

1. take the first ``rows`` observations x_1..x_m, m = min(B, rows);
2. draw ``samples`` parameters theta_{jk} ~ q(. | x_j) and detach them (no gradient
   flows through the sampler; the expectation is over a fixed sample);
3. compute g_{jk} = grad_{x_z} log q(theta_{jk} | x_j) with ``create_graph=True``;
4. tr F ≈ (1 / (m K)) sum_{jk} ||g_{jk}||^2, penalty = beta * tr F.

Mode ``"full"`` does this on every step. Mode ``"ema"`` is cheap enough to leave on: it
evaluates it only every ``every`` steps (with the same ``rows`` and ``samples``),
penalty = beta * every * tr F on those steps and 0 on the others (so the penalty per
step is beta * tr F on average), and keeps ``ema``, an exponential moving average
(decay ``decay``) of the detached estimates, for monitoring. The default ``ema``
settings (rows 16, 1 sample, every 4 steps) cost about 1/64 of ``full`` on a batch of
256.

Only families with a differentiable density qualify: the normalizing flows (``nsf``,
``maf``); others raise a ``UserError``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_service.errors import UserError
from sbi_service.estimators.base import Estimator
from sbi_service.estimators.flows import FlowEstimator

FISHER_MODES = ("full", "ema")


def fisher_trace(
    estimator: Estimator, x: Tensor, samples: int = 1, create_graph: bool = False
) -> Tensor:
    """Monte Carlo tr F(x) per observation: x (m, *x_shape) -> (m,).

    tr F(x_j) ≈ (1 / K) sum_k ||grad_{x_z} log q(theta_k | x_j)||^2, theta_k ~ q(. | x_j).
    """
    m = x.shape[0]
    with torch.no_grad():
        theta = estimator.sample(x, samples).reshape(m * samples, estimator.dim_theta)
    x_z = estimator.standardize_x(x)
    # one row per (observation, sample), so each row's gradient is one sample's
    x_rows = x_z.detach().repeat_interleave(samples, dim=0).requires_grad_(True)
    log_q = estimator.log_prob_context(theta, estimator.embedding(x_rows))
    (grad,) = torch.autograd.grad(log_q.sum(), x_rows, create_graph=create_graph)
    return grad.reshape(m, samples, -1).pow(2).sum(-1).mean(1)


class FisherRegularizer:
    """The ``extra_loss`` hook for ``estimators.train.train``: beta * tr F (see module doc)."""

    def __init__(
        self,
        beta: float,
        mode: str = "ema",
        rows: int = 16,
        samples: int = 1,
        every: int = 4,
        decay: float = 0.9,
    ):
        if beta < 0:
            raise UserError(f"the Fisher regularization strength must be >= 0, got {beta}")
        if mode not in FISHER_MODES:
            raise UserError(f"unknown Fisher mode {mode!r}; expected one of {FISHER_MODES}")
        self.beta, self.mode, self.rows, self.samples = float(beta), mode, rows, samples
        self.every = every if mode == "ema" else 1
        self.decay = decay
        self.step = 0
        self.ema: float | None = None

    def __call__(self, estimator: Estimator, theta: Tensor, x: Tensor) -> Tensor:
        check_fisher_support(estimator)
        self.step += 1
        if (self.step - 1) % self.every:
            return torch.zeros((), device=x.device)
        trace = fisher_trace(estimator, x[: self.rows], self.samples, create_graph=True).mean()
        value = float(trace.detach())
        self.ema = value if self.ema is None else self.decay * self.ema + (1 - self.decay) * value
        return self.beta * self.every * trace


def check_fisher_support(estimator: Estimator) -> None:
    """Raise a ``UserError`` unless the estimator is a normalizing flow."""
    if not isinstance(estimator, FlowEstimator):
        raise UserError(
            f"Fisher regularization needs a normalizing flow (nsf, maf); {estimator.kind!r} "
            "has no differentiable density"
        )
