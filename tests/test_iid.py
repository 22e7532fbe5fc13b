"""Composing single-observation scores for i.i.d. observations (small benchmarks/iid.py)."""

from __future__ import annotations

import pytest
import torch

from sbi_service.errors import UserError
from sbi_service.estimators.iid import PriorScore, sample_iid
from sbi_service.estimators.registry import build_estimator
from sbi_service.estimators.score import ScoreEstimator
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
    # the rate halves after 3 stalled epochs (not the family's 10), as this 30-epoch fit needs
    config = TrainConfig(max_epochs=30, batch_size=64, learning_rate=2e-3, plateau_patience=3)
    train(est, theta, x, config, 0)
    return est


class ExactGaussianScore(ScoreEstimator):
    """The exact diffused posterior of theta ~ N(0, I_2), x = theta + N(0, I_2).

    p(theta | x) = N(x / 2, I / 2), so with y = theta + s eps the denoiser is
    E[theta | y, x] = m + v / (v + s^2) (y - m), m = x / 2, v = 1 / 2. z-scoring is the
    identity (unfitted buffers) and so is the embedding: context = x.
    """

    def denoise(self, y: torch.Tensor, s: float, context: torch.Tensor) -> torch.Tensor:
        m, v = context / 2, 0.5
        return m + v / (v + s**2) * (y - m)


@pytest.mark.parametrize("method", ["gauss", "jac"])
def test_composition_is_exact_given_exact_scores(method: str) -> None:
    """With exact scores, GAUSS/JAC composition recovers N(sum x / 21, I / 21) for n = 20.

    This isolates composition and ODE errors from network errors; without the
    correction ("geffner") the standard deviation is 0.007 of the right one here.
    """
    est = ExactGaussianScore(2, (2,), hidden=8, blocks=1)
    g = torch.Generator().manual_seed(0)
    x_set = torch.tensor([0.3, -0.8]) + torch.randn(20, 2, generator=g)
    prior = Normal([0.0, 0.0], [1.0, 1.0])
    samples = sample_iid(est, prior, x_set, 2000, torch.Generator().manual_seed(1), method=method)
    mean, std = x_set.sum(0) / 21, (1 / 21) ** 0.5
    # standard error of the mean: std / sqrt(2000) = 0.005; of the std: ~1.6%
    assert torch.allclose(samples.mean(0), mean, atol=0.02)
    assert torch.allclose(samples.std(0) / std, torch.ones(2), atol=0.05)


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
    a = sample_iid(model, prior, x, 200, torch.Generator().manual_seed(2), steps=model.steps)
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


def test_twenty_observations_stay_accurate(model) -> None:
    """n = 20 composed from the single-observation model: the small version of the table.

    ``benchmarks/iid.py`` composes n = 20 gaussian_linear observations; here the module's
    2-d model does the same for N(sum x / 21, I / 21). Its mean error is ~0.4 posterior
    standard deviations and its widths 1.2x (the tiny model is overdispersed); a drift in
    the composition or the score network's location shows as a mean error of several
    standard deviations (without the Gaussian correction the width is 0.2x).
    """
    prior = Normal([0.0, 0.0], [1.0, 1.0])
    g = torch.Generator().manual_seed(10)
    x_set = torch.randn(1, 2, generator=g) + torch.randn(20, 2, generator=g)
    samples = sample_iid(
        model, prior, x_set, 400, torch.Generator().manual_seed(1), steps=30, cov_samples=400
    )
    mean, std = x_set.sum(0) / 21, (1 / 21) ** 0.5
    assert float(((samples.mean(0) - mean) / std).norm()) < 1.0
    assert ((samples.std(0) / std > 0.8) & (samples.std(0) / std < 1.6)).all()
