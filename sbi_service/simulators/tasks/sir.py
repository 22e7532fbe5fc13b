"""SIR epidemic (sbibm ``sir``, summary "subsample").

Parameters ``theta (n, 2) = (beta, gamma)``: contact rate and recovery rate (1/day),
prior ``LogNormal(log 0.4, 0.5) x LogNormal(log 0.125, 0.2)`` (independent).

ODE for a population of ``N = 1e6`` with ``(S, I, R)(0) = (N - 1, 1, 0)``:

    dS/dt = -beta S I / N,   dI/dt = beta S I / N - gamma I,   dR/dt = gamma I

Data ``x (n, 10)``: the infected fraction at days ``t_k = 17 k``, ``k = 0..9`` (sbibm
saves days 0..160 and keeps every 17th), observed through binomial noise:

    x_k ~ Binomial(1000, clamp(I(t_k) / N, 0, 1))

Likelihood: ``sum_k log Binomial(x_k; 1000, I(t_k) / N)`` given the ODE solution.

Integration: sbibm solves the ODE in Julia (DifferentialEquations.jl defaults,
relative tolerance 1e-3). Here it is solved in torch for the whole batch at once, in
log coordinates ``(log s, log i)`` with ``s = S / N``, ``i = I / N``:

    d log s / dt = -beta i,   d log i / dt = beta s - gamma

by fixed-step RK4 with ``dt = 0.1`` days (1530 steps); relative error against
``scipy.integrate.solve_ivp`` (rtol 1e-12) is below 1e-6 over the prior. ``R`` is not
needed for the data and is not integrated.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import LogNormal
from sbi_service.simulators.tasks._common import theta64, x_o64
from sbi_service.simulators.tasks._ode import rk4, save_steps_for

POPULATION = 1_000_000.0
INITIAL_INFECTED = 1.0
TOTAL_COUNT = 1000
SAVE_DAYS = tuple(17.0 * k for k in range(10))
DT = 0.1
PRIOR = LogNormal([math.log(0.4), math.log(0.125)], [0.5, 0.2])


def infected_fraction(theta: Tensor, dt: float = DT) -> Tensor:
    """Noise-free ``I(t_k) / N`` at the 10 saved days, ``(n, 10)`` float64."""
    theta = theta64(theta, PRIOR)
    n = theta.shape[0]
    beta, gamma = theta[:, 0:1], theta[:, 1:2]
    # y = (log s, log i):  dy = c + b * exp(flip(y)) with c = (0, -gamma), b = (-beta, beta)
    c = torch.cat((torch.zeros_like(gamma), -gamma), dim=-1)
    b = torch.cat((-beta, beta), dim=-1)

    def rhs(y: Tensor) -> Tensor:
        return c + b * torch.exp(y.flip(-1))

    i0 = INITIAL_INFECTED / POPULATION
    y0 = torch.tensor([math.log1p(-i0), math.log(i0)], dtype=torch.float64).expand(n, 2)
    traj = rk4(rhs, y0, dt, save_steps_for(SAVE_DAYS, dt))
    return torch.exp(traj[:, 1, :])


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``theta (n, 2) -> x (n, 10)`` float32 counts out of 1000."""
    prob = infected_fraction(theta)
    finite = torch.isfinite(prob).all(-1, keepdim=True)
    prob = torch.nan_to_num(prob, nan=0.0).clamp(0.0, 1.0)
    count = torch.full_like(prob, float(TOTAL_COUNT))
    x = torch.binomial(count, prob, generator=generator)
    return torch.where(finite, x, torch.full_like(x, math.nan)).float()


def log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
    """``log p(x_o | theta)`` for ``theta (n, 2)``, ``x_o (10,)`` -> ``(n,)`` float32."""
    x_o = x_o64(x_o, len(SAVE_DAYS))
    prob = infected_fraction(theta).clamp(0.0, 1.0)
    n_ = float(TOTAL_COUNT)
    log_binom = math.lgamma(n_ + 1) - torch.lgamma(x_o + 1) - torch.lgamma(n_ - x_o + 1)
    ll = log_binom + torch.xlogy(x_o, prob) + torch.xlogy(n_ - x_o, 1 - prob)
    ll = ll.sum(-1)
    valid = ((x_o >= 0) & (x_o <= n_)).all()
    if not valid:
        ll = torch.full_like(ll, -math.inf)
    return torch.nan_to_num(ll, nan=-math.inf).float()


def make_task() -> Task:
    """The SIR task: 2-d theta (beta, gamma), 10 binomial-noised infected counts."""
    return Task(
        name="sir",
        prior=PRIOR,
        simulator=simulator,
        x_shape=(len(SAVE_DAYS),),
        description="sbibm SIR epidemic: theta = (beta, gamma), x = 10 binomial infected counts",
        log_likelihood=log_likelihood,
        metadata={"sbibm_name": "sir", "parameter_names": ["beta", "gamma"]},
    )
