"""The eight sbibm benchmark tasks, with sbibm's priors, simulators and noise.

``BUILTIN_TASKS`` maps each name to a factory ``make_task() -> Task``. Every simulator
is ``simulator(theta (n, d), generator=None) -> x (n, dim_x)`` float32, vectorized, and
draws all its randomness from ``generator``.

    name                      dim theta  dim x  reference posterior    log-likelihood
    two_moons                 2          2      exact (rejection)       yes
    gaussian_linear           10         10     analytic Gaussian       yes
    gaussian_linear_uniform   10         10     exact (rejection)       yes
    slcp                      5          8      MCMC (reference.py)     yes
    gaussian_mixture          2          2      exact (rejection)       yes
    bernoulli_glm             10         10     MCMC (reference.py)     yes (from the stats)
    sir                       2          10     MCMC (reference.py)     yes (binomial)
    lotka_volterra            4          20     MCMC (reference.py)     yes (log-normal)
"""

from __future__ import annotations

from collections.abc import Callable

from sbi_service.simulators.base import Task
from sbi_service.simulators.tasks import (
    bernoulli_glm,
    gaussian_linear,
    gaussian_linear_uniform,
    gaussian_mixture,
    lotka_volterra,
    sir,
    slcp,
    two_moons,
)

BUILTIN_TASKS: dict[str, Callable[[], Task]] = {
    "two_moons": two_moons.make_task,
    "gaussian_linear": gaussian_linear.make_task,
    "gaussian_linear_uniform": gaussian_linear_uniform.make_task,
    "slcp": slcp.make_task,
    "gaussian_mixture": gaussian_mixture.make_task,
    "bernoulli_glm": bernoulli_glm.make_task,
    "sir": sir.make_task,
    "lotka_volterra": lotka_volterra.make_task,
}

__all__ = ["BUILTIN_TASKS"]
