"""Fisher-information regularizer: it lowers tr F, errors for non-flows, CLI records it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sbi_service.errors import UserError
from sbi_service.estimators.fisher import FisherRegularizer, fisher_trace
from sbi_service.estimators.registry import build_estimator
from sbi_service.estimators.train import TrainConfig, train
from sbi_service.store import Store
from sbi_service.workflows.train import TrainRequest, train_model


def toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, 2, generator=g)
    return theta, theta + 0.3 * torch.randn(n, 2, generator=g)


def small_nsf():
    return build_estimator(
        {
            "kind": "nsf",
            "dim_theta": 2,
            "x_shape": [2],
            "transforms": 2,
            "hidden_features": [32, 32],
        }
    )


def test_fisher_regularizer_reduces_trace() -> None:
    theta, x = toy(1500, 0)
    x_test = toy(200, 1)[1]
    traces = []
    for beta in (0.0, 0.2):
        est = small_nsf()
        reg = FisherRegularizer(beta, "full", rows=32) if beta else None
        train(est, theta, x, TrainConfig(max_epochs=8, batch_size=64), 0, extra_loss=reg)
        torch.manual_seed(5)
        traces.append(float(fisher_trace(est, x_test, samples=2).mean()))
    assert traces[1] < 0.6 * traces[0]


def test_ema_mode_evaluates_every_k_steps() -> None:
    est = small_nsf()
    theta, x = toy(64, 0)
    reg = FisherRegularizer(0.1, "ema", rows=8, every=3)
    values = [float(reg(est, theta, x)) for _ in range(6)]
    assert [v != 0 for v in values] == [True, False, False, True, False, False]
    assert reg.ema is not None and reg.ema > 0


def test_fisher_needs_a_flow() -> None:
    est = build_estimator({"kind": "fmpe", "dim_theta": 2, "x_shape": [2]})
    theta, x = toy(16, 0)
    with pytest.raises(UserError, match="normalizing flow"):
        FisherRegularizer(0.1)(est, theta, x)
    with pytest.raises(UserError, match="mode"):
        FisherRegularizer(0.1, "sometimes")


def test_train_request_records_fisher(home: Path) -> None:
    store = Store(home)
    req = TrainRequest(
        name="fr",
        estimator="maf",
        simulator="two_moons",
        num_simulations=300,
        train=TrainConfig(max_epochs=2),
        fisher_reg=0.05,
        fisher_mode="ema",
    )
    summary = train_model(store, req)
    config = json.loads((Path(summary["path"]) / "config.json").read_text())
    assert config["training"]["fisher_reg"] == 0.05
    assert config["training"]["fisher_mode"] == "ema"
    bad = TrainRequest(
        name="fr2",
        estimator="npse",
        simulator="two_moons",
        num_simulations=50,
        train=TrainConfig(max_epochs=1),
        fisher_reg=0.05,
    )
    with pytest.raises(UserError, match="normalizing flow"):
        train_model(store, bad)
