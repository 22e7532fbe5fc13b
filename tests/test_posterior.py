import pytest
import torch

from sbi_service.errors import UserError
from sbi_service.estimators.posterior import Posterior
from sbi_service.estimators.registry import build_estimator
from sbi_service.simulators.priors import prior_from_spec


def _estimator(shift: float = 0.0):
    torch.manual_seed(0)
    est = build_estimator({"kind": "maf", "dim_theta": 2, "x_shape": [2], "transforms": 1})
    with torch.no_grad():  # an untrained flow ~ N(shift, 1) whatever x is
        est.theta_loc.fill_(shift)
    return est.eval()


def test_samples_outside_a_bounded_prior_are_rejected_and_redrawn():
    prior = prior_from_spec({"type": "box_uniform", "low": [-0.5, -0.5], "high": [0.5, 0.5]})
    post = Posterior(_estimator(), prior)
    samples = post.sample(torch.zeros(3, 2), 500, torch.Generator().manual_seed(0))
    assert samples.shape == (3, 500, 2)
    assert prior.in_support(samples.reshape(-1, 2)).all()
    again = post.sample(torch.zeros(3, 2), 500, torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)


def test_almost_nothing_accepted_is_a_clear_error():
    prior = prior_from_spec({"type": "box_uniform", "low": [-0.5, -0.5], "high": [0.5, 0.5]})
    post = Posterior(_estimator(shift=20.0), prior)
    with pytest.raises(UserError, match="inside the prior's support"):
        post.sample(torch.zeros(1, 2), 100, torch.Generator().manual_seed(0))


def test_unbounded_prior_needs_no_rejection_and_log_prob_is_masked():
    prior = prior_from_spec({"type": "normal", "loc": [0.0, 0.0], "scale": [1.0, 1.0]})
    post = Posterior(_estimator(), prior)
    est_samples = post.estimator.sample(torch.zeros(2, 2), 50, torch.Generator().manual_seed(1))
    assert torch.equal(
        post.sample(torch.zeros(2, 2), 50, torch.Generator().manual_seed(1)), est_samples
    )
    box = Posterior(
        _estimator(), prior_from_spec({"type": "box_uniform", "low": [0, 0], "high": [1, 1]})
    )
    lp = box.log_prob(torch.tensor([[0.5, 0.5], [2.0, 0.5]]), torch.zeros(2, 2))
    assert torch.isfinite(lp[0]) and lp[1] == -float("inf")


def test_check_observations():
    post = Posterior(
        _estimator(), prior_from_spec({"type": "normal", "loc": [0, 0], "scale": [1, 1]})
    )
    assert post.check_observations([0.0, 1.0]).shape == (1, 2)
    assert post.check_observations([[0.0, 1.0], [2.0, 3.0]]).shape == (2, 2)
    with pytest.raises(UserError, match="expects"):
        post.check_observations([[0.0, 1.0, 2.0]])
    with pytest.raises(UserError, match="NaN or inf"):
        post.check_observations([[0.0, float("inf")]])
    with pytest.raises(UserError, match="empty"):
        post.check_observations(torch.zeros(0, 2))


def test_prior_and_estimator_dimensions_must_agree():
    with pytest.raises(UserError, match="dimension 3"):
        Posterior(
            _estimator(), prior_from_spec({"type": "normal", "loc": [0, 0, 0], "scale": [1, 1, 1]})
        )


def test_wide_positive_features_are_standardized_in_log():
    est = build_estimator({"kind": "maf", "dim_theta": 2, "x_shape": [3], "transforms": 1})
    g = torch.Generator().manual_seed(0)
    wide = torch.exp(3 * torch.randn(500, generator=g))  # spans many decades
    narrow = 10 + torch.rand(500, generator=g)  # positive, but within a factor 1.1
    signed = torch.randn(500, generator=g)
    x = torch.stack([wide, narrow, signed], 1)
    est.fit_standardization(torch.randn(500, 2, generator=g), x)
    assert est.x_log.tolist() == [True, False, False]
    x_z = est.standardize_x(x)
    assert torch.allclose(x_z.mean(0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x_z.std(0), torch.ones(3), atol=1e-4)
    assert torch.allclose(est.unstandardize_x(x_z), x, rtol=1e-4, atol=1e-5)
    post = Posterior(est, prior_from_spec({"type": "normal", "loc": [0, 0], "scale": [1, 1]}))
    assert post.check_observations([1e-3, -1.0, -5.0]).shape == (1, 3)
    with pytest.raises(UserError, match=r"values <= 0 \(rows \[1\]\) .* indices \[0\]"):
        post.check_observations([[1.0, 10.0, 0.0], [0.0, 10.0, 0.0]])
