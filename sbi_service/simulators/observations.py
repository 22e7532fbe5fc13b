"""Fixed benchmark observations for a task: true parameters and one simulated x each.

sbibm ships ten stored observations per task (and reference posteriors for them);
sbi-service cannot download them, so ``benchmark_observations`` makes its own,
deterministically: observation ``i`` (0-based) uses a generator seeded with
``seed + i``, from which it draws ``theta_i`` from the prior and then ``x_i`` from
the simulator. A draw whose ``x`` is not finite (a failed simulation) is replaced by
the next draw from the same generator. The default ``seed`` is sbibm's first
observation seed, 1_000_000; the values differ from sbibm's stored ones (different
random streams), but the same task, count and seed always give the same
observations, and the first k of a longer list equal the list of length k.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from sbi_service.errors import UserError
from sbi_service.simulators.base import Task, as_float32

DEFAULT_SEED = 1_000_000
MAX_TRIES = 100


def _simulate_one(task: Task, theta: Tensor, generator: torch.Generator) -> Tensor:
    """``x (1, dim_x)`` for ``theta (1, d)``, drawing randomness from ``generator``."""
    if task.takes_generator():
        return as_float32(task.simulator(theta, generator=generator))
    sub_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sub_seed)
        state = np.random.get_state()
        np.random.seed(sub_seed)
        try:
            return as_float32(task.simulator(theta))
        finally:
            np.random.set_state(state)


def benchmark_observations(
    task: Task, num_observations: int = 10, seed: int = DEFAULT_SEED
) -> tuple[Tensor, Tensor]:
    """``theta_true (k, dim_theta)`` and ``x_o (k, dim_x)``, float32, for ``k = num_observations``.

    Deterministic in ``(task, num_observations, seed)``; see the module docstring.
    """
    if int(num_observations) < 1:
        raise UserError(f"num_observations must be a positive integer, got {num_observations}")
    thetas, xs = [], []
    for i in range(int(num_observations)):
        generator = torch.Generator().manual_seed(int(seed) + i)
        for _ in range(MAX_TRIES):
            theta = task.prior.sample(1, generator).float()
            x = _simulate_one(task, theta, generator).reshape(1, -1)
            if torch.isfinite(x).all():
                break
        else:
            raise UserError(
                f"task {task.name!r}: {MAX_TRIES} simulations in a row gave non-finite x "
                f"for observation {i}"
            )
        thetas.append(theta)
        xs.append(x)
    return torch.cat(thetas), torch.cat(xs)
