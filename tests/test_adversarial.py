"""PGD attacks against an analytic estimator whose worst case is known in closed form.

q(theta | x) = N(a x_z, s^2 I) with x_z = t(x) / x_scale (identity embedding; t = log
on log-standardized features). A perturbation delta_z of x_z shifts the mean by
a delta_z, so

    KL(q(.|x) || q(.|x_adv)) = a^2 ||delta_z||^2 / (2 s^2),

maximized on the ball by any delta_z of full norm: a^2 eps^2 / (2 s^2) for L2 and
a^2 eps^2 d / (2 s^2) for L-infinity (a corner).
"""

from __future__ import annotations

import math

import pytest
import torch

from sbi_service.diagnostics.adversarial import adversarial_robustness, pgd_attack
from sbi_service.estimators.base import Estimator

A, S, DIM = 1.5, 0.5, 3


class LinearGaussian(Estimator):
    kind = "linear_gaussian_test"

    def __init__(self, log_x: bool = False) -> None:
        super().__init__(dim_theta=DIM, x_shape=(DIM,))
        self.x_scale.fill_(2.0)  # attacks are measured in units of x_scale
        self.x_log.fill_(log_x)  # ... of log x: relative changes of x

    def hyperparameters(self) -> dict:
        return {}

    def _log_prob_z(self, theta_z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        z = (theta_z - A * context) / S
        return (-0.5 * z**2 - math.log(S) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def _loss_z(self, theta_z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return -self._log_prob_z(theta_z, context)

    def _decode_z(self, noise: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return A * context + S * noise


@pytest.mark.parametrize("log_x", [False, True])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_reaches_the_analytic_worst_case(norm: str, log_x: bool) -> None:
    est = LinearGaussian(log_x)
    x = torch.randn(20, DIM, generator=torch.Generator().manual_seed(0))
    if log_x:
        x = x.exp()
    g = torch.Generator().manual_seed(1)
    eps = 0.5
    x_adv = pgd_attack(est, x, eps, norm, g)
    transform = torch.log if log_x else (lambda v: v)
    delta_z = (transform(x_adv) - transform(x)) / est.x_scale
    if norm == "l2":
        assert (delta_z.norm(dim=1) <= eps + 1e-5).all()
        assert (delta_z.norm(dim=1) > 0.99 * eps).all()
    else:
        assert (delta_z.abs() <= eps + 1e-6).all()
        assert (delta_z.abs() > 0.99 * eps).all()
    result = adversarial_robustness(est, x, g, epsilons=(0.1, 0.5), num_eval_samples=2000)
    worst = {"l2": A**2 * eps**2 / (2 * S**2), "linf": A**2 * eps**2 * DIM / (2 * S**2)}
    assert result.values[norm]["mean_kl"][1] == pytest.approx(worst[norm], rel=0.1)
    assert result.values[norm]["mean_kl"][0] < result.values[norm]["mean_kl"][1]
    assert result.checks[0].name == "kl_l2_eps0.5"
    assert result.passed is (result.values["l2"]["mean_kl"][1] <= 1.0)


def test_attack_is_seeded_and_leaves_global_rng_alone() -> None:
    est = LinearGaussian()
    x = torch.randn(5, DIM, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = adversarial_robustness(est, x, torch.Generator().manual_seed(3), epsilons=(0.5,))
    after = torch.rand(1)
    b = adversarial_robustness(est, x, torch.Generator().manual_seed(3), epsilons=(0.5,))
    assert torch.equal(before, after) and a.to_dict() == b.to_dict()
