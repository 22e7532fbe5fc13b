"""Flow ensembles (``members=K``): the mixture density, seeded sampling, old models; the
flows' hidden activation."""

import math

import pytest
import torch
from safetensors.torch import save_file
from scipy import stats

from sbi_service.errors import UserError
from sbi_service.estimators.flows import pick_member
from sbi_service.estimators.io import load_estimator, save_estimator
from sbi_service.estimators.registry import build_estimator


def _ensemble(members: int = 3):
    torch.manual_seed(0)
    config = {"kind": "nsf", "dim_theta": 2, "x_shape": [3], "transforms": 2, "members": members}
    return build_estimator(config).eval()


def test_member_choice_is_uniform_and_the_reused_noise_stays_standard_normal():
    noise = torch.randn(60_000, 2, generator=torch.Generator().manual_seed(0))
    member, fresh = pick_member(noise, 3)
    counts = torch.bincount(member, minlength=3).float() / len(member)
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.01)
    for k in range(3):  # within every member, the first coordinate is N(0, 1) again
        assert stats.kstest(fresh[member == k, 0].numpy(), "norm").pvalue > 1e-3
    assert torch.equal(fresh[:, 1], noise[:, 1])


def test_log_prob_is_the_equal_mixture_of_the_members():
    est = _ensemble()
    theta, x = torch.randn(5, 2), torch.randn(5, 3)
    members = est._member_log_probs(est.to_z(theta), est.embed(x))
    expected = torch.logsumexp(members, 0) - math.log(3) - torch.log(est.theta_scale).sum()
    assert torch.allclose(est.log_prob(theta, x), expected)
    assert members.shape == (3, 5) and not torch.allclose(members[0], members[1])


def test_samples_are_a_function_of_the_noise_batched_or_not():
    est = _ensemble()
    context = est.embed(torch.randn(1, 3)).expand(200, -1)
    noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(2))
    rows = torch.cat(
        [est.decode(noise[i : i + 50], context[i : i + 50]) for i in range(0, 200, 50)]
    )
    assert torch.allclose(rows, est.decode(noise, context), atol=1e-5)


def test_models_saved_with_one_flow_before_ensembles_still_load(tmp_path):
    est = _ensemble(members=1)
    save_estimator(tmp_path, est, {})
    old = {k.replace("flows.0.", "flow.", 1): v.contiguous() for k, v in est.state_dict().items()}
    save_file(old, str(tmp_path / "weights.safetensors"))
    loaded, _ = load_estimator(tmp_path)
    x = torch.randn(2, 3)
    assert torch.equal(
        loaded.sample(x, 10, torch.Generator().manual_seed(0)),
        est.sample(x, 10, torch.Generator().manual_seed(0)),
    )


def test_auto_rule_picks_family_units_and_ensemble_size_and_embeds_time_series():
    from sbi_service.estimators.auto import choose, estimator_config

    box, normal = "box_uniform", "normal"
    assert choose(2, (2,), 1_000, box) == {"kind": "nsf", "members": 4}
    assert choose(2, (2,), 3_000, box)["members"] == 4
    assert choose(2, (2,), 3_001, box)["members"] == 1
    assert choose(7, (7,), 10_000, box)["members"] == 1
    assert choose(5, (3, 100), 100_000, box) == {
        "kind": "nsf",
        "members": 1,
        "embedding": {"kind": "cnn1d"},
    }
    # many parameters and a Gaussian prior: affine flows, 4 up to 3,000 simulations, then one
    assert choose(10, (10,), 1_000, normal) == {"kind": "maf", "members": 4}
    assert choose(10, (10,), 3_000, "multivariate_normal") == {"kind": "maf", "members": 4}
    assert choose(10, (10,), 3_001, normal) == {"kind": "maf", "members": 1}
    assert choose(10, (10,), 100_000, "multivariate_normal") == {"kind": "maf", "members": 1}
    # many parameters and a box prior: tanh spline flows, 4 up to 3,000 simulations, then one
    tanh_nsf = {"kind": "nsf", "activation": "tanh"}
    assert choose(8, (10,), 1_000, box) == {**tanh_nsf, "members": 4}
    assert choose(10, (10,), 3_001, box) == {**tanh_nsf, "members": 1}
    assert choose(7, (10,), 10_000, normal) == {"kind": "nsf", "members": 1}
    assert choose(2, (2,), 1_000, normal)["kind"] == "nsf"
    explicit = estimator_config("auto", 2, [2], 1_000, box, options={"members": 2})
    assert explicit["members"] == 2 and explicit["dim_theta"] == 2


def test_flows_take_the_hidden_activation_by_name_and_say_the_choices_when_wrong():
    def activations(config: dict) -> set[type]:
        est = build_estimator({"dim_theta": 2, "x_shape": [3], "transforms": 1, **config})
        return {type(m) for m in est.modules() if isinstance(m, torch.nn.ReLU | torch.nn.Tanh)}

    assert activations({"kind": "maf"}) == {torch.nn.Tanh}  # sbi's MAF
    assert activations({"kind": "nsf"}) == {torch.nn.ReLU}
    assert activations({"kind": "maf", "activation": "relu"}) == {torch.nn.ReLU}
    with pytest.raises(UserError, match="activation must be one of relu, tanh, got 'elu'"):
        build_estimator({"kind": "nsf", "dim_theta": 2, "x_shape": [3], "activation": "elu"})
