"""Score-based (npse) and flow-matching (fmpe) estimators: contract, round trip, accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from sbi_service.errors import UserError
from sbi_service.estimators.io import load_estimator, save_estimator
from sbi_service.estimators.registry import build_estimator
from sbi_service.estimators.score import hashed_normals
from sbi_service.estimators.train import TrainConfig, train

torch.set_num_threads(1)

KINDS = [("npse", {}), ("npse", {"sde": "vp"}), ("fmpe", {})]
SMALL = {"hidden": 64, "blocks": 2}


def gaussian_toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """theta ~ N(0, I_2), x = theta + 0.5 eps: posterior N(x / 1.25, 0.2 I)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, 2, generator=g)
    return theta, theta + 0.5 * torch.randn(n, 2, generator=g)


def make(kind: str, opts: dict, x_shape=(2,)) -> torch.nn.Module:
    return build_estimator(
        {"kind": kind, "dim_theta": 2, "x_shape": list(x_shape), **SMALL, **opts}
    )


@pytest.fixture(scope="module")
def trained() -> dict[str, torch.nn.Module]:
    theta, x = gaussian_toy(2000, 0)
    out = {}
    for kind, opts in [("npse", {}), ("fmpe", {})]:
        est = make(kind, opts)
        train(est, theta, x, TrainConfig(max_epochs=40, batch_size=64, learning_rate=2e-3), 0)
        out[kind] = est
    return out


@pytest.mark.parametrize(("kind", "opts"), KINDS)
def test_shapes_and_config(kind: str, opts: dict) -> None:
    est = make(kind, {**opts, "steps": 4}, x_shape=(3,))
    x = torch.randn(5, 3)
    theta = torch.randn(5, 2)
    assert est.loss(theta, x).shape == (5,)
    assert est.sample(x, 7, torch.Generator().manual_seed(0)).shape == (5, 7, 2)
    lp = est.log_prob(theta, x)
    assert lp.shape == (5,) and torch.isfinite(lp).all()
    rebuilt = build_estimator(est.config)
    assert rebuilt.config == est.config
    assert type(rebuilt) is type(est)


@pytest.mark.parametrize("opts", [{"sampler": "ode"}, {"sampler": "sde"}])
def test_npse_decode_deterministic_and_batch_independent(opts: dict) -> None:
    est = make("npse", {**opts, "steps": 6})
    torch.manual_seed(3)
    for p in est.parameters():
        p.data.normal_(0, 0.3)
    noise = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    context = torch.randn(40, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = est.decode(noise, context)
        again = est.decode(noise, context)
        part = est.decode(noise[5:9], context[5:9])
    assert torch.equal(full, again)
    assert torch.allclose(full[5:9], part, atol=1e-5)


def test_fmpe_decode_batch_independent() -> None:
    est = make("fmpe", {"steps": 6})
    torch.manual_seed(3)
    for p in est.parameters():
        p.data.normal_(0, 0.3)
    noise = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    context = torch.randn(40, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = est.decode(noise, context)
        part = est.decode(noise[30:], context[30:])
    assert torch.allclose(full[30:], part, atol=1e-5)


def test_hashed_normals_are_standard_and_row_local() -> None:
    noise = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0))
    xi = hashed_normals(noise, 5)
    assert xi.shape == (5, 4000, 3)
    assert abs(float(xi.mean())) < 0.03 and abs(float(xi.std()) - 1) < 0.03
    assert torch.equal(hashed_normals(noise[10:12], 5), xi[:, 10:12])
    # draws of different steps and dimensions are uncorrelated
    assert abs(float((xi[0] * xi[1]).mean())) < 0.05
    assert abs(float((xi[0, :, 0] * xi[0, :, 1]).mean())) < 0.05


@pytest.mark.parametrize("kind", ["npse", "fmpe"])
def test_save_load_round_trip(trained: dict, kind: str, tmp_path) -> None:
    est = trained[kind]
    save_estimator(tmp_path, est, {"note": "test"})
    loaded, config = load_estimator(tmp_path)
    assert config["estimator"] == est.config
    x = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    a = est.sample(x, 50, torch.Generator().manual_seed(4))
    b = loaded.sample(x, 50, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["npse", "fmpe"])
def test_tiny_budget_accuracy(trained: dict, kind: str) -> None:
    est = trained[kind]
    x_o = torch.tensor([[1.0, -0.5]])
    samples = est.sample(x_o, 2000, torch.Generator().manual_seed(1))[0]
    mean, std = x_o[0] / 1.25, math.sqrt(0.2)
    assert torch.allclose(samples.mean(0), mean, atol=0.2)
    assert torch.allclose(samples.std(0), torch.full((2,), std), rtol=0.3)
    theta = torch.tensor([[0.8, -0.4], [0.5, -0.1]])
    exact = torch.distributions.MultivariateNormal(mean, 0.2 * torch.eye(2)).log_prob(theta)
    lp = est.log_prob(theta, x_o.expand(2, -1))
    assert torch.allclose(lp, exact, atol=0.6)


@pytest.mark.parametrize("kind", ["npse", "fmpe"])
def test_default_steps_match_the_converged_ode(trained: dict, kind: str) -> None:
    """The short version of ``benchmarks/sampling_steps.py``: the same noise pushed
    through the default few-step ODE and through 100 steps lands in the same place."""
    est = trained[kind]
    x_o = torch.tensor([[1.0, -0.5]])
    default_steps = est.steps
    few = est.sample(x_o, 2000, torch.Generator().manual_seed(2))[0]
    try:
        est.steps = 100
        converged = est.sample(x_o, 2000, torch.Generator().manual_seed(2))[0]
    finally:
        est.steps = default_steps
    # the posterior's standard deviation is sqrt(0.2) = 0.45; measured: median 0.017
    # (npse, 18 steps) and 0.004 (fmpe, 15 steps); npse with 4 steps is 0.94 off
    assert (few - converged).norm(dim=1).median() < 0.05
    assert (few - converged).norm(dim=1).max() < 0.2


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(UserError, match="sde"):
        make("npse", {"sde": "sub-vp"})
    with pytest.raises(UserError, match="sampler"):
        make("npse", {"sampler": "langevin"})
    with pytest.raises(UserError, match="steps"):
        make("fmpe", {"steps": 0})
    with pytest.raises(UserError, match="p_std"):
        make("npse", {"p_std": 0.0})
    with pytest.raises(UserError, match="grid_power"):
        make("fmpe", {"grid_power": 0.5})


def test_fmpe_time_grid() -> None:
    """Bunched toward the data end t = 1 by default (grid_power 2), with the same end
    points; grid_power 1 is exactly uniform (i / N)."""
    assert make("fmpe", {"steps": 4, "grid_power": 1}).time_grid() == [0.0, 0.25, 0.5, 0.75, 1.0]
    grid = torch.tensor(make("fmpe", {"steps": 4}).time_grid())
    assert torch.allclose(grid, torch.tensor([0.0, 0.4375, 0.75, 0.9375, 1.0]))
    trained_on_the_uniform_grid = make("fmpe", {"steps": 4, "grid_power": 1}).state_dict()
    bunched = make("fmpe", {"steps": 4, "grid_power": 3})
    bunched.load_state_dict(trained_on_the_uniform_grid)  # a sampler setting, not a weight
    assert bunched.config["grid_power"] == 3.0


@pytest.mark.parametrize("kind", ["npse", "fmpe"])
def test_cli_train_and_sample(kind: str, home, tmp_path, monkeypatch, capsys) -> None:
    import json
    import sys

    import numpy as np

    from sbi_service.cli import main

    def cli(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["sbi-service", *args])
        with pytest.raises(SystemExit) as e:
            main()
        captured = capsys.readouterr()
        assert e.value.code in (0, None), captured.err
        return captured.out

    options = json.dumps({"hidden": 32, "blocks": 1, "steps": 3})
    summary = json.loads(
        cli(
            "train",
            "--simulator",
            "gaussian_linear",
            "--num-simulations",
            "200",
            "--estimator",
            kind,
            "--seed",
            "0",
            "--name",
            "m",
            "--options",
            options,
            "--max-epochs",
            "2",
            "--json",
        )
    )
    assert summary["epochs"] == 2
    obs, out = tmp_path / "obs.npy", tmp_path / "out.npy"
    np.save(obs, np.zeros((2, 10), dtype=np.float32))
    cli(
        "sample",
        "m",
        "--observations",
        str(obs),
        "--num-samples",
        "5",
        "--seed",
        "1",
        "--out",
        str(out),
    )
    first = np.load(out)
    cli(
        "sample",
        "m",
        "--observations",
        str(obs),
        "--num-samples",
        "5",
        "--seed",
        "1",
        "--out",
        str(out),
    )
    assert first.shape == (2, 5, 10) and np.array_equal(first, np.load(out))
