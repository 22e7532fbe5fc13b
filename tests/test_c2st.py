"""C2ST: about 0.5 for identical distributions, about 1.0 for disjoint ones, both methods."""

import numpy as np
import pytest

from sbi_service.diagnostics.c2st import c2st


@pytest.mark.parametrize("method", ["sbibm", "early_stopping"])
def test_identical_distributions_score_one_half(method: str) -> None:
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(1000, 2)), rng.normal(size=(1000, 2))
    assert abs(c2st(p, q, seed=0, method=method) - 0.5) < 0.05


@pytest.mark.parametrize("method", ["sbibm", "early_stopping"])
def test_separated_distributions_score_one(method: str) -> None:
    rng = np.random.default_rng(1)
    p = rng.normal(size=(1000, 3))
    q = rng.normal(size=(1000, 3)) + np.array([8.0, 0.0, 0.0])
    assert c2st(p, q, seed=0, method=method) > 0.99


def test_scale_invariant_and_seeded() -> None:
    rng = np.random.default_rng(2)
    p, q = rng.normal(size=(600, 2)), rng.normal(size=(600, 2)) + 0.5
    a = c2st(p, q, seed=3, method="early_stopping")
    assert a == c2st(p, q, seed=3, method="early_stopping")
    scaled = c2st(100.0 * p + 7.0, 100.0 * q + 7.0, seed=3, method="early_stopping")
    assert abs(a - scaled) < 1e-6


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="expected samples"):
        c2st(np.zeros((10, 2)), np.zeros((10, 3)))
