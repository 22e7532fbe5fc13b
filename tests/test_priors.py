import math

import pytest
import torch

from sbi_service.errors import UserError
from sbi_service.simulators.priors import prior_from_spec

BOX = {"type": "box_uniform", "low": [-1.0, 0.0], "high": [1.0, 4.0]}
NORMAL = {"type": "normal", "loc": [1.0, -2.0], "scale": [0.5, 2.0]}
MVN = {
    "type": "multivariate_normal",
    "loc": [0.0, 1.0],
    "covariance_matrix": [[1.0, 0.5], [0.5, 2.0]],
}


@pytest.mark.parametrize("spec", [BOX, NORMAL, MVN])
def test_sample_shape_seed_and_moments(spec):
    prior = prior_from_spec(spec)
    a = prior.sample(20000, torch.Generator().manual_seed(3))
    b = prior.sample(20000, torch.Generator().manual_seed(3))
    assert a.shape == (20000, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert torch.allclose(a.mean(0), prior.mean, atol=0.05)
    assert torch.allclose(a.std(0), prior.std, rtol=0.03)
    assert prior.in_support(a).all()
    assert prior.spec == spec


def test_box_log_prob_and_support():
    prior = prior_from_spec(BOX)
    theta = torch.tensor([[0.0, 1.0], [1.5, 1.0], [0.0, -0.1]])
    lp = prior.log_prob(theta)
    assert lp[0] == pytest.approx(-math.log(2 * 4))
    assert lp[1] == -math.inf and lp[2] == -math.inf
    assert prior.in_support(theta).tolist() == [True, False, False]


def test_normal_and_mvn_log_prob_match_torch():
    theta = torch.randn(50, 2)
    p = prior_from_spec(NORMAL)
    ref = torch.distributions.Normal(torch.tensor(NORMAL["loc"]), torch.tensor(NORMAL["scale"]))
    assert torch.allclose(p.log_prob(theta), ref.log_prob(theta).sum(-1), atol=1e-5)
    m = prior_from_spec(MVN)
    ref = torch.distributions.MultivariateNormal(
        torch.tensor(MVN["loc"]), torch.tensor(MVN["covariance_matrix"])
    )
    assert torch.allclose(m.log_prob(theta), ref.log_prob(theta), atol=1e-5)


@pytest.mark.parametrize(
    "spec, message",
    [
        ([1, 2], "JSON object"),
        ({"type": "gamma"}, "unknown type"),
        ({"type": "box_uniform", "low": [0.0]}, "needs 'high'"),
        ({"type": "box_uniform", "low": [0.0, 1.0], "high": [1.0]}, "entries"),
        ({"type": "box_uniform", "low": [1.0], "high": [0.0]}, "greater"),
        ({"type": "box_uniform", "low": ["a"], "high": [1.0]}, "numbers"),
        ({"type": "box_uniform", "low": [], "high": []}, "non-empty"),
        ({"type": "normal", "loc": [0.0], "scale": [-1.0]}, "positive"),
        ({"type": "normal", "loc": [0.0], "scale": [float("nan")]}, "finite"),
        ({"type": "normal", "loc": [0.0], "scale": [1.0], "extra": 1}, "unexpected"),
        ({"type": "multivariate_normal", "loc": [0.0, 0.0], "covariance_matrix": [[1.0]]}, "shape"),
        (
            {
                "type": "multivariate_normal",
                "loc": [0.0, 0.0],
                "covariance_matrix": [[1.0, 2.0], [2.0, 1.0]],
            },
            "positive definite",
        ),
    ],
)
def test_malformed_specs_name_the_problem(spec, message):
    with pytest.raises(UserError, match=message):
        prior_from_spec(spec)
