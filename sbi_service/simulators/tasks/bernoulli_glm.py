"""Bernoulli GLM with sufficient statistics (sbibm ``bernoulli_glm``, summary "sufficient").

A neuron's spikes ``y_t`` in 100 time bins respond to a white-noise stimulus ``I``
through a 9-tap linear filter and an offset:

    X (100, 10):  X[t, 0] = 1,  X[t, j + 1] = I[t - j] for t >= j (else 0),  j = 0..8
    psi = X theta,  y_t ~ Bernoulli(sigmoid(psi_t))  independently
    x = X^T y      (10-d: the spike count, then the 9 spike-triggered sums)

sbibm computes the summary as the spike count and the last 9 outputs of
``conv1d(y, I, padding=8)``; those equal ``X^T y`` exactly, which is the sufficient
statistic of the logistic model. ``I = RandomState(42).randn(100)`` in float32, as in
sbibm's ``_setup``; the design matrix built here is identical to sbibm's stored
``design_matrix.pt`` (checked element by element when this module was written).

Parameters ``theta (n, 10)`` (offset, then the filter), prior ``N(0, B^-1)`` with
precision ``B``: ``B[0, 0] = 0.5`` and ``B[1:, 1:] = F^T F`` where, with ``M = 9``,
``D = I_M - (subdiagonal of ones)`` and ``F = D D + diag(sqrt(k / M))``, k = 0..M-1
(a smoothness prior on the filter).

Likelihood, from the statistics alone (every y with the same ``X^T y`` has the same
probability, so the constant ``log #{y : X^T y = x}`` is dropped; it does not depend on
theta):

    log p(x | theta) = theta . x - sum_t softplus((X theta)_t)   (+ const)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import MultivariateNormal
from sbi_service.simulators.tasks._common import theta64, x_o64

DIM = 10
NUM_BINS = 100
STIMULUS_SEED = 42


def stimulus() -> Tensor:
    """The fixed white-noise stimulus ``I (100,)`` float32, as sbibm generates it."""
    rs = np.random.RandomState(STIMULUS_SEED)
    return torch.from_numpy(rs.randn(NUM_BINS).astype(np.float32))


def design_matrix() -> Tensor:
    """The fixed design matrix ``X (100, 10)`` float32 (column 0 is the offset)."""
    stim = stimulus()
    x = torch.zeros(NUM_BINS, DIM)
    x[:, 0] = 1.0
    for j in range(DIM - 1):
        x[j:, j + 1] = stim[: NUM_BINS - j]
    return x


def prior_precision() -> Tensor:
    """The prior precision matrix ``B (10, 10)`` float64."""
    m = DIM - 1
    d = torch.eye(m, dtype=torch.float64) - torch.diag(torch.ones(m - 1, dtype=torch.float64), -1)
    f = d @ d + torch.diag(torch.sqrt(torch.arange(m, dtype=torch.float64) / m))
    b = torch.zeros(DIM, DIM, dtype=torch.float64)
    b[0, 0] = 0.5
    b[1:, 1:] = f.T @ f
    return b


def _prior() -> MultivariateNormal:
    cov = torch.linalg.inv(prior_precision())
    cov = (cov + cov.T) / 2
    return MultivariateNormal([0.0] * DIM, cov.tolist())


PRIOR = _prior()
_X = design_matrix().double()


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``theta (n, 10) -> x (n, 10)`` float32: sufficient statistics of the spike train."""
    theta = theta64(theta, PRIOR)
    prob = torch.sigmoid(theta @ _X.T)
    u = torch.rand(prob.shape, generator=generator, dtype=torch.float64)
    y = (u < prob).double()
    return (y @ _X).float()


def log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
    """``log p(x_o | theta)`` up to a theta-free constant; ``theta (n, 10)`` -> ``(n,)`` float32."""
    theta, x_o = theta64(theta, PRIOR), x_o64(x_o, DIM)
    psi = theta @ _X.T
    return (theta @ x_o - torch.nn.functional.softplus(psi).sum(-1)).float()


def make_task() -> Task:
    """The Bernoulli GLM task: 10-d theta, 10-d sufficient statistics."""
    return Task(
        name="bernoulli_glm",
        prior=PRIOR,
        simulator=simulator,
        x_shape=(DIM,),
        description="sbibm Bernoulli GLM: 10-d filter theta, x = 10 sufficient stats of 100 spikes",
        log_likelihood=log_likelihood,
        metadata={
            "sbibm_name": "bernoulli_glm",
            "parameter_names": ["offset"] + [f"filter_{i + 1}" for i in range(DIM - 1)],
        },
    )
