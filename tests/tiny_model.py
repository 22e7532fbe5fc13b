"""A tiny two-parameter model shared by the serving tests: data, prior, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sbi_service.estimators.train import TrainConfig
from sbi_service.store.db import Store
from sbi_service.workflows.train import TrainRequest, train_model

PRIOR = {"type": "box_uniform", "low": [-1.0, -1.0], "high": [1.0, 1.0]}


def make_data(folder: Path, n: int = 1000) -> Path:
    """Write folder/sims.npz (theta ~ U(-1,1)^2, x = theta + 0.2 noise) and folder/prior.json."""
    g = torch.Generator().manual_seed(0)
    theta = torch.rand(n, 2, generator=g) * 2 - 1
    x = theta + 0.2 * torch.randn(n, 2, generator=g)
    path = folder / "sims.npz"
    np.savez(path, theta=theta.numpy(), x=x.numpy())
    (folder / "prior.json").write_text(json.dumps(PRIOR))
    return path


def train_tiny(store: Store, data: Path | str, name: str = "tiny", seed: int = 0) -> dict:
    """A 2-transform NSF trained for 2 epochs: quick, and enough to serve."""
    req = TrainRequest(
        name=name,
        estimator="nsf",
        seed=seed,
        data=Path(data),
        prior=PRIOR,
        estimator_options={"transforms": 2, "hidden_features": [16, 16]},
        train=TrainConfig(max_epochs=2, batch_size=256),
    )
    return train_model(store, req)
