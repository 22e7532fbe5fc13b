"""Seeds everywhere: the same training request gives bit-identical weights."""

import pytest
import torch
from safetensors.torch import load_file

from sbi_service.estimators.train import TrainConfig
from sbi_service.store import Store
from sbi_service.workflows.train import TrainRequest, train_model


@pytest.mark.parametrize("kind", ["nsf", "fmpe"])
def test_same_seed_same_weights(tmp_path, kind):
    store = Store(tmp_path)
    weights = []
    for seed in (3, 3, 4):
        req = TrainRequest(name="m", estimator=kind, seed=seed, simulator="two_moons",
                           num_simulations=300, train=TrainConfig(max_epochs=2))  # fmt: skip
        weights.append(load_file(train_model(store, req)["path"] + "/weights.safetensors"))
    same = [torch.equal(weights[0][k], weights[1][k]) for k in weights[0]]
    different = [torch.equal(weights[0][k], weights[2][k]) for k in weights[0]]
    assert all(same)
    assert not all(different)
