"""The CI gate: ``diagnose_model`` and ``sbi-service diagnose`` on a quickly trained model.

Toy task: theta ~ N(0, I_2), x = theta + N(0, 0.5^2 I_2); a MAF learns its posterior
N(x / 1.25, 0.2 I) accurately in a few seconds. The gate must pass it on fresh test
sets (at most one false alarm in ten), fail it on data from a different simulator
(exit 1), and report a broken gate (missing model, bad data) with exit 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sbi_service.estimators.train import TrainConfig
from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import Normal
from sbi_service.simulators.registry import register
from sbi_service.store.db import Store
from sbi_service.workflows.diagnose import DiagnoseRequest, diagnose_model
from sbi_service.workflows.train import TrainRequest, train_model

NOISE = 0.5


def toy_simulator(theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return theta + NOISE * torch.randn(theta.shape, generator=generator)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A home with model ``toy`` (MAF on 4,000 toy simulations), shared by this module."""
    from sbi_service.config import get_settings

    register(Task("gate_toy_2d", Normal([0.0, 0.0], [1.0, 1.0]), toy_simulator, (2,)))
    home = tmp_path_factory.mktemp("gate_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SBI_SERVICE_HOME", str(home))
        get_settings.cache_clear()
        store = Store(home)
        request = TrainRequest(
            name="toy",
            estimator="maf",
            seed=0,
            simulator="gate_toy_2d",
            num_simulations=4000,
            train=TrainConfig(max_seconds=20),
        )
        train_model(store, request)
        yield store
    get_settings.cache_clear()


def test_false_alarms_on_fresh_test_sets(trained) -> None:
    """The default gate (TARP + SBC) on 10 fresh test sets from a well-trained model."""
    alarms = []
    for seed in range(10):
        request = DiagnoseRequest(
            model="toy", seed=100 + seed, num_simulations=200, num_posterior_samples=300
        )
        report = diagnose_model(trained, request)
        if not report["passed"]:
            alarms.append([c for c in report["checks"] if not c["passed"]])
    print(f"false alarms: {len(alarms)} of 10", alarms)
    assert len(alarms) <= 1, alarms


def test_cli_pass_writes_report_and_junit(trained, tmp_path, run_cli) -> None:
    report_dir, junit = tmp_path / "report", tmp_path / "junit.xml"
    code, out, err = run_cli(
        "diagnose", "toy", "--tarp", "--sbc", "--coverage",
        "--num-simulations", "200", "--num-posterior-samples", "300", "--seed", "3",
        "--report", str(report_dir), "--junit", str(junit), "--json",
    )  # fmt: skip
    assert code == 0, err
    printed = json.loads(out)
    report = json.loads((report_dir / "report.json").read_text())
    assert printed["passed"] is report["passed"] is True
    names = {(c["diagnostic"], c["name"]) for c in report["checks"]}
    assert names == {
        ("tarp", "abs_atc"),
        ("tarp", "ks_pvalue"),
        ("sbc", "ks_pvalue_bonferroni"),
        ("coverage", "ks_pvalue"),
    }
    for c in report["checks"]:
        assert {"statistic", "threshold", "comparison", "passed"} <= set(c)
    assert report["thresholds"]["max_atc"] == 0.05
    per = report["diagnostics"]["contraction"]["values"]["per_parameter"]
    assert all(0.6 < v < 0.95 for v in per)  # posterior var 0.2 vs prior var 1
    assert (report_dir / "report.html").stat().st_size > 10_000
    assert {"tarp_ecp.png", "sbc_ranks.png", "posterior_pairs.png"} <= set(report["plots"].values())
    xml = junit.read_text()
    assert xml.count("<testcase") == 4 and "<failure" not in xml


def test_cli_fails_on_data_from_another_simulator(trained, tmp_path, run_cli) -> None:
    """x simulated with 3x the noise: the model's posterior is overconfident -> exit 1."""
    g = torch.Generator().manual_seed(7)
    theta = torch.randn(300, 2, generator=g)
    x = theta + 3 * NOISE * torch.randn(300, 2, generator=g)
    data = tmp_path / "shifted.npz"
    np.savez(data, theta=theta.numpy(), x=x.numpy())
    junit = tmp_path / "junit.xml"
    code, out, _ = run_cli(
        "diagnose", "toy", "--data", str(data), "--seed", "0",
        "--num-posterior-samples", "300", "--report", str(tmp_path / "r"), "--junit", str(junit),
    )  # fmt: skip
    assert code == 1
    assert "FAIL" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["passed"] is False and not report["diagnostics"]["sbc"]["passed"]
    assert "<failure" in junit.read_text()


@pytest.mark.parametrize("problem", ["missing_model", "bad_shape", "both_sources"])
def test_cli_broken_gate_exits_3(trained, tmp_path, problem, run_cli) -> None:
    data = tmp_path / "bad.npz"
    np.savez(data, theta=np.zeros((50, 3), np.float32), x=np.zeros((50, 2), np.float32))
    args = {
        "missing_model": ["nope", "--num-simulations", "50"],
        "bad_shape": ["toy", "--data", str(data)],
        "both_sources": ["toy", "--data", str(data), "--num-simulations", "50"],
    }[problem]
    junit = tmp_path / "junit.xml"
    code, _, err = run_cli(
        "diagnose", *args, "--seed", "0", "--report", str(tmp_path / "r"),
        "--junit", str(junit),
    )  # fmt: skip
    assert code == 3, err
    assert err.startswith("error:") and "<error" in junit.read_text()
    assert not Path(tmp_path / "r" / "report.json").exists()


def test_request_from_json() -> None:
    req = DiagnoseRequest.from_dict(
        {"kind": "diagnose", "model": "m", "robustness": True, "thresholds": {"max_atc": 0.1}}
    )
    assert req.robustness and req.thresholds.max_atc == 0.1 and req.tarp
    from sbi_service.errors import UserError

    with pytest.raises(UserError, match="unknown diagnose field"):
        DiagnoseRequest.from_dict({"model": "m", "tarps": True})
