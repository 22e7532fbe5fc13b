"""Composing single-observation scores for i.i.d. observations (small benchmarks/iid.py)."""

from __future__ import annotations

import pytest
import torch

from sbi_service.errors import UserError
from sbi_service.estimators.iid import PriorScore, sample_iid
from sbi_service.estimators.registry import build_estimator
from sbi_service.estimators.train import TrainConfig, train
from sbi_service.simulators.priors import BoxUniform, Normal


@pytest.fixture(scope="module")
def model():
    """npse on theta ~ N(0, I_2), x = theta + eps: given n obs, N(sum x / (n+1), I / (n+1))."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3000, 2, generator=g)
    x = theta + torch.randn(3000, 2, generator=g)
    est = build_estimator(
        {"kind": "npse", "dim_theta": 2, "x_shape": [2], "hidden": 64, "blocks": 2, "steps": 10}
    )
    train(est, theta, x, TrainConfig(max_epochs=30, batch_size=64, learning_rate=2e-3), 0)
    return est


@pytest.mark.parametrize("method", ["gauss", "jac"])
def test_composed_posterior_is_close(model, method: str) -> None:
    prior = Normal([0.0, 0.0], [1.0, 1.0])
    g = torch.Generator().manual_seed(3)
    x_set = torch.tensor([[0.5, -0.5]]) + torch.randn(4, 2, generator=g)
    samples = sample_iid(model, prior, x_set, 500, torch.Generator().manual_seed(1), method=method)
    assert samples.shape == (500, 2)
    mean, std = x_set.sum(0) / 5, (1 / 5) ** 0.5
    assert torch.allclose(samples.mean(0), mean, atol=0.5)
    # narrower than the model's one-observation posterior, not collapsed (the naive sum of
    # scores collapses it); a tiny model is overdispersed, so the bound is loose
    single = model.sample(x_set[:1], 500, torch.Generator().manual_seed(1))[0].std(0)
    assert (samples.std(0) < 0.9 * single).all() and (samples.std(0) > 0.5 * std).all()


def test_one_observation_matches_the_model(model) -> None:
    prior = Normal([0.0, 0.0], [1.0, 1.0])
    x = torch.tensor([[1.0, 0.0]])
    a = sample_iid(model, prior, x, 200, torch.Generator().manual_seed(2))
    b = model.sample(x, 200, torch.Generator().manual_seed(2))[0]
    assert torch.allclose(a, b, atol=1e-4)


def test_box_prior_score_is_finite_and_correct() -> None:
    prior = PriorScore(BoxUniform([-1.0], [1.0]), torch.zeros(1), torch.ones(1))
    y = torch.tensor([[-30.0], [0.0], [0.5], [30.0]])
    score = prior.score(y, 0.1)
    assert torch.isfinite(score).all()
    assert float(score[0]) > 0 and float(score[3]) < 0 and abs(float(score[1])) < 1e-6
    # far outside: p_s(y) ~ Gaussian tail, score ~ (edge - y) / s^2
    assert abs(float(score[3]) - (1.0 - 30.0) / 0.01) / 2900 < 0.01


def test_needs_a_score_model() -> None:
    est = build_estimator({"kind": "fmpe", "dim_theta": 2, "x_shape": [2]})
    with pytest.raises(UserError, match="npse"):
        sample_iid(est, Normal([0.0, 0.0], [1.0, 1.0]), torch.zeros(3, 2), 10)
