"""Embedding nets: shapes, config round trip, permutation invariance of deepset."""

from __future__ import annotations

import pytest
import torch

from sbi_service.errors import UserError
from sbi_service.estimators.embeddings import build_embedding
from sbi_service.estimators.iid import make_set_data, pad_set
from sbi_service.estimators.registry import build_estimator


@pytest.mark.parametrize("x_shape", [(50,), (3, 40)])
def test_cnn1d_shapes(x_shape: tuple[int, ...]) -> None:
    net = build_embedding({"kind": "cnn1d", "dim_out": 8}, x_shape)
    assert net(torch.randn(4, *x_shape)).shape == (4, 8) and net.dim_out == 8


def test_deepset_is_permutation_invariant() -> None:
    net = build_embedding({"kind": "deepset", "dim_out": 6}, (7, 3))
    x = torch.randn(5, 7, 3)
    perm = torch.randperm(7)
    out = net(x)
    assert out.shape == (5, 6)
    assert torch.allclose(out, net(x[:, perm]), atol=1e-6)


def test_masked_deepset_ignores_padding_and_order() -> None:
    net = build_embedding({"kind": "deepset", "masked": True, "dim_out": 6}, (5, 3))
    members = torch.randn(3, 2)
    a = pad_set(members, 5)  # (5, 3): 3 members + 2 padding slots
    b = a.clone()
    b[3:, :2] = torch.randn(2, 2)  # padding content must not matter
    c = a[torch.tensor([2, 4, 0, 3, 1])]  # nor the order of the slots
    # flags after z-scoring: members >= 0, padding < 0 (here: mean 0.6, std 0.5)
    z = lambda s: torch.cat([s[:, :2], ((s[:, 2:] - 0.6) / 0.5)], dim=1)  # noqa: E731
    out = net(torch.stack([z(a), z(b), z(c)]))
    assert torch.allclose(out[0], out[1], atol=1e-6) and torch.allclose(out[0], out[2], atol=1e-6)
    fewer = net(z(pad_set(members[:2], 5))[None])
    assert not torch.allclose(out[0], fewer[0])


def test_make_set_data_shapes_and_flags() -> None:
    g = torch.Generator().manual_seed(0)
    theta, x_draws = torch.randn(100, 2), torch.randn(100, 6, 2)
    _, sets = make_set_data(theta, x_draws, g)
    assert sets.shape == (100, 6, 3)
    sizes = sets[..., -1].sum(1)
    assert sizes.min() >= 1 and sizes.max() <= 6
    # every slot's member is one of that theta's draws
    diff = (sets[:, :, None, :2] - x_draws[:, None]).abs().sum(-1).min(-1).values
    assert float(diff.max()) == 0.0


def test_estimator_with_cnn_embedding_round_trip() -> None:
    est = build_estimator(
        {
            "kind": "fmpe",
            "dim_theta": 2,
            "x_shape": [2, 30],
            "embedding": {"kind": "cnn1d"},
            "hidden": 32,
            "blocks": 1,
            "steps": 3,
        }
    )
    assert est.sample(torch.randn(3, 2, 30), 4).shape == (3, 4, 2)
    assert build_estimator(est.config).config == est.config


def test_bad_embedding_settings() -> None:
    with pytest.raises(UserError, match="deepset"):
        build_embedding({"kind": "deepset"}, (10,))
    with pytest.raises(UserError, match="cnn1d"):
        build_embedding({"kind": "cnn1d"}, (2, 3, 4))
