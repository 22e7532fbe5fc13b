"""The training loop: batch and learning-rate rules, early stopping, seeds, bad input."""

import math
from dataclasses import replace

import pytest
import torch

from sbi_service.errors import UserError
from sbi_service.estimators.registry import build_estimator
from sbi_service.estimators.train import (
    TrainConfig,
    done_fraction,
    train,
    weight_average,
)


def _gaussian_data(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, 2, generator=g)
    x = theta + 0.3 * torch.randn(n, 2, generator=g)
    return theta, x


def _nsf() -> torch.nn.Module:
    torch.manual_seed(0)  # weights are initialized at construction
    return build_estimator({"kind": "nsf", "dim_theta": 2, "x_shape": [2], "transforms": 2})


def test_batch_size_and_learning_rate_rules() -> None:
    auto = TrainConfig()
    assert auto.resolved_batch_size(900) == 100
    assert auto.resolved_batch_size(9_000) == 450
    assert auto.resolved_batch_size(90_000) == 1000
    assert auto.resolved_batch_size(50) == 50
    assert auto.resolved_learning_rate(512) == pytest.approx(6e-4)
    fixed = TrainConfig(batch_size=64, learning_rate=3e-4)
    assert fixed.resolved_batch_size(900) == 64
    assert fixed.resolved_learning_rate(64) == 3e-4


def test_patience_defaults_come_from_the_family() -> None:
    """Score and flow-matching losses are noisy: their families wait longer (30, 10)."""
    npse = build_estimator({"kind": "npse", "dim_theta": 2, "x_shape": [2]})
    fmpe = build_estimator({"kind": "fmpe", "dim_theta": 2, "x_shape": [2]})
    assert TrainConfig().resolved_patience(_nsf()) == (10, 3)
    assert TrainConfig().resolved_patience(npse) == (30, 10)
    assert TrainConfig().resolved_patience(fmpe) == (30, 10)
    assert TrainConfig(patience=4).resolved_patience(npse) == (4, 10)
    assert TrainConfig(plateau_patience=1).resolved_patience(_nsf()) == (10, 1)


def test_weight_averaging_is_on_for_the_score_and_flow_matching_families() -> None:
    npse = build_estimator({"kind": "npse", "dim_theta": 2, "x_shape": [2]})
    fmpe = build_estimator({"kind": "fmpe", "dim_theta": 2, "x_shape": [2]})
    assert not TrainConfig().resolved_average_weights(_nsf())
    assert TrainConfig().resolved_average_weights(npse)
    assert TrainConfig().resolved_average_weights(fmpe)
    assert not TrainConfig(average_weights=False).resolved_average_weights(npse)
    assert TrainConfig(average_weights=True).resolved_average_weights(_nsf())


def test_the_weight_average_follows_the_warm_up_rule() -> None:
    """w_avg(1) = w(1), then w_avg(t) = beta_t w_avg(t - 1) + (1 - beta_t) w(t) with
    beta_t = (1 + t) / (10 + t), t counting the updates before this one."""
    est = _nsf()
    average = weight_average(est)
    param = next(est.parameters())
    expected = None
    for t, value in enumerate([1.0, 3.0, -2.0, 5.0]):
        with torch.no_grad():
            param.fill_(value)
        average.update_parameters(est)
        beta = (1 + t) / (10 + t)
        expected = value if t == 0 else beta * expected + (1 - beta) * value
    averaged = next(average.module.parameters())
    assert torch.allclose(averaged, torch.full_like(averaged, expected))
    # the z-scoring buffers are copied, not averaged
    assert torch.equal(average.module.theta_loc, est.theta_loc)


def test_training_with_averaging_keeps_the_averaged_weights() -> None:
    """The optimizer steps the same raw weights either way; with averaging the kept
    weights are their running average, which lags behind them toward the start."""
    theta, x = _gaussian_data()

    def trained(average: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        est = build_estimator({"kind": "npse", "dim_theta": 2, "x_shape": [2]})
        start = torch.nn.utils.parameters_to_vector(est.parameters()).detach().clone()
        config = TrainConfig(max_epochs=2, patience=100, average_weights=average)
        train(est, theta, x, config, seed=0)
        return start, torch.nn.utils.parameters_to_vector(est.parameters()).detach()

    start, averaged = trained(True)
    _, raw = trained(False)
    assert not torch.allclose(averaged, raw)
    assert (averaged - start).norm() < (raw - start).norm()


def test_training_lowers_the_loss_and_restores_the_best_epoch() -> None:
    theta, x = _gaussian_data()
    est = _nsf()
    result = train(est, theta, x, TrainConfig(max_epochs=60, patience=5), seed=0)
    val = result.history["validation_loss"]
    assert result.best_validation_loss == min(val)
    assert result.best_validation_loss < val[0]
    assert result.stopped_because in {"early_stopping", "max_epochs"}
    if result.stopped_because == "early_stopping":
        assert result.epochs - result.best_epoch == 5
    # the restored weights are the best epoch's: the posterior mean tracks x
    samples = est.sample(torch.tensor([[1.0, -1.0]]), 2000, torch.Generator().manual_seed(0))
    assert torch.allclose(samples.mean(1), torch.tensor([[0.92, -0.92]]), atol=0.15)


def test_training_stops_when_the_rate_reaches_its_floor() -> None:
    theta, x = _gaussian_data()
    config = TrainConfig(max_epochs=500, patience=500, plateau_patience=0, max_halvings=2)
    result = train(_nsf(), theta, x, config, seed=0)
    assert result.stopped_because == "learning_rate_floor" and result.epochs < 500
    # with a lower floor the same run goes on: the rule, not early stopping, ended it
    longer = train(_nsf(), theta, x, replace(config, max_halvings=20), seed=0)
    assert longer.epochs > result.epochs


def test_same_seed_same_weights() -> None:
    theta, x = _gaussian_data(200)
    a, b = _nsf(), _nsf()
    train(a, theta, x, TrainConfig(max_epochs=3), seed=4)
    train(b, theta, x, TrainConfig(max_epochs=3), seed=4)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


def test_extra_loss_is_added_and_progress_reported() -> None:
    theta, x = _gaussian_data(200)
    calls, seen = [], []
    train(
        _nsf(),
        theta,
        x,
        TrainConfig(max_epochs=2),
        extra_loss=lambda est, t, xx: calls.append(len(t)) or torch.zeros(()),
        progress=lambda epoch, tl, vl, done: seen.append(
            (epoch, math.isfinite(tl), math.isfinite(vl), done)
        ),
    )
    assert calls and all(c == calls[0] for c in calls)  # full batches only
    assert seen == [(1, True, True, 0.5), (2, True, True, 1.0)]


def test_done_fraction_follows_the_nearest_stopping_rule() -> None:
    config = TrainConfig(max_epochs=2000, max_halvings=5, max_seconds=100.0)
    assert done_fraction(config, 10, 1.0, 0) == pytest.approx(0.01)  # seconds lead
    assert done_fraction(config, 10, 1.0, 3) == pytest.approx(0.5)  # 3 of 6 halvings
    assert done_fraction(config, 2000, 1.0, 0) == 1.0
    assert done_fraction(TrainConfig(), 100, 1e9, 0) == pytest.approx(0.05)  # no time limit


def test_bad_input_is_a_user_error() -> None:
    theta, x = _gaussian_data(10)
    with pytest.raises(UserError, match="paired"):
        train(_nsf(), theta, x[:5])
    with pytest.raises(UserError, match="at least 3"):
        train(_nsf(), theta[:2], x[:2])
