"""A small version of benchmarks/accuracy.py: a regression in training or flows fails CI.

The default nsf with the default training loop, 2,000 simulations, one benchmark
observation, C2ST (fast method, 2,000 + 2,000 samples) against the exact reference
posterior, and the CPU time of training. The bounds are loose (the benchmark's
10^4-simulation numbers are far better); they catch a broken loop or architecture, not
a small loss of accuracy.
"""

import time

import pytest
import torch

from sbi_service.diagnostics.c2st import c2st
from sbi_service.estimators.posterior import Posterior
from sbi_service.estimators.registry import build_estimator
from sbi_service.estimators.train import train
from sbi_service.simulators.observations import benchmark_observations
from sbi_service.simulators.reference import sample_reference_posterior
from sbi_service.simulators.simulate import simulate
from sbi_service.simulators.tasks import BUILTIN_TASKS


@pytest.mark.slow
@pytest.mark.parametrize("task_name", ["two_moons", "gaussian_linear"])
def test_nsf_accuracy_at_2000_simulations(task_name: str) -> None:
    torch.manual_seed(0)
    task = BUILTIN_TASKS[task_name]()
    theta, x = simulate(task, 2000, seed=0)
    estimator = build_estimator(
        {"kind": "nsf", "dim_theta": task.prior.dim, "x_shape": list(task.x_shape)}
    )
    torch.set_num_threads(1)
    cpu_start = time.process_time()
    result = train(estimator, theta, x, seed=0)
    cpu_seconds = time.process_time() - cpu_start
    _, x_obs = benchmark_observations(task, 1)
    reference = sample_reference_posterior(task, x_obs[0], 2000, seed=0)
    samples = Posterior(estimator, task.prior).sample(
        x_obs, 2000, torch.Generator().manual_seed(0)
    )[0]
    score = c2st(reference.numpy(), samples.numpy(), seed=0, method="early_stopping")
    assert score < 0.75, f"C2ST {score:.3f} after {result.epochs} epochs"
    # CPU time, not wall clock: the bound must hold on a loaded CI machine too.
    assert cpu_seconds < 30, f"training took {cpu_seconds:.1f} CPU seconds"
