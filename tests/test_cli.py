"""The CLI end to end on a tiny budget, and every bad input of the core issue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = ["--max-epochs", "3"]


@pytest.fixture
def cli(run_cli, home):
    return run_cli


def store_snapshot(home):
    models = home / "models"
    files = sorted(str(p.relative_to(home)) for p in models.rglob("*")) if models.exists() else []
    from sbi_service.store import Store

    return files, [(m["model"], m["versions"]) for m in Store(home).list_models()]


def test_end_to_end_simulate_train_sample(cli, tmp_path, home):
    code, out, _ = cli("simulators", "list", "--json")
    assert code == 0
    names = {t["name"] for t in json.loads(out)}
    assert {"two_moons", "gaussian_linear", "slcp", "sir", "lotka_volterra"} <= names

    sims = tmp_path / "sims.npz"
    code, _, _ = cli(
        "simulate", "two_moons", "--num-simulations", "400", "--seed", "0", "--out", str(sims)
    )
    assert code == 0
    with np.load(sims) as data:
        assert data["theta"].shape == (400, 2) and data["x"].shape == (400, 2)
        assert data["theta"].dtype == np.float32 and data["x"].dtype == np.float32

    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"type": "box_uniform", "low": [-1, -1], "high": [1, 1]}))
    code, out, _ = cli(
        "train",
        "--data",
        str(sims),
        "--prior",
        str(prior),
        "--estimator",
        "maf",
        "--seed",
        "0",
        "--name",
        "tm",
        "--json",
        *TINY,
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["model"] == "tm" and summary["epochs"] == 3 and summary["train_seconds"] > 0

    code, out, _ = cli(
        "train",
        "--simulator",
        "gaussian_linear",
        "--num-simulations",
        "400",
        "--estimator",
        "nsf",
        "--seed",
        "0",
        "--name",
        "gl",
        "--json",
        *TINY,
    )
    assert code == 0 and json.loads(out)["simulator"] == "gaussian_linear"

    obs = tmp_path / "obs.npy"
    np.save(obs, np.zeros((3, 10), dtype=np.float32))
    outs = []
    for name in ("a.npy", "b.npy"):
        code, _, _ = cli(
            "sample",
            "gl",
            "--observations",
            str(obs),
            "--num-samples",
            "25",
            "--seed",
            "1",
            "--out",
            str(tmp_path / name),
        )
        assert code == 0
        outs.append(np.load(tmp_path / name))
    assert outs[0].shape == (3, 25, 10) and outs[0].dtype == np.float32
    assert np.array_equal(outs[0], outs[1])

    config = json.loads((home / "models/gl/1/config.json").read_text())
    assert config["prior"]["type"] == "multivariate_normal"
    assert config["simulator"] == "gaussian_linear" and "torch" in config["versions"]
    assert config["training"]["seed"] == 0


BAD_CASES = [
    "observation of the wrong shape",
    "NaN observation",
    "inf observation",
    "unknown model",
    "unknown simulator",
    "prior file not JSON",
    "prior of unknown type",
    "npz lengths differ",
    "prior dimension mismatch",
    "unknown estimator",
    "missing num-simulations",
    "bad model name",
]


@pytest.fixture
def trained(cli, tmp_path):
    code, _, _ = cli(
        "train",
        "--simulator",
        "two_moons",
        "--num-simulations",
        "300",
        "--estimator",
        "nsf",
        "--seed",
        "0",
        "--name",
        "tm",
        *TINY,
    )
    assert code == 0
    return tmp_path


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Write the bad files into ``tmp``; returns {case: (CLI args, expected message)}."""
    np.save(tmp / "wrong_shape.npy", np.zeros((2, 3), dtype=np.float32))
    np.save(tmp / "nan.npy", np.array([[0.0, np.nan]], dtype=np.float32))
    np.save(tmp / "inf.npy", np.array([[np.inf, 0.0]], dtype=np.float32))
    np.save(tmp / "ok.npy", np.zeros((1, 2), dtype=np.float32))
    np.savez(
        tmp / "mismatch.npz", theta=np.zeros((5, 2), np.float32), x=np.zeros((4, 2), np.float32)
    )
    np.savez(tmp / "ok.npz", theta=np.zeros((5, 2), np.float32), x=np.zeros((5, 2), np.float32))
    (tmp / "bad_json.json").write_text("{not json")
    (tmp / "bad_type.json").write_text(json.dumps({"type": "cauchy", "loc": [0, 0]}))
    (tmp / "prior3.json").write_text(
        json.dumps({"type": "normal", "loc": [0, 0, 0], "scale": [1, 1, 1]})
    )
    t = str(tmp)
    sample = [
        "sample",
        "tm",
        "--num-samples",
        "5",
        "--seed",
        "0",
        "--out",
        f"{t}/o.npy",
        "--observations",
    ]
    train = ["--estimator", "nsf", "--seed", "0", "--name", "new", *TINY]
    return {
        "observation of the wrong shape": ([*sample, f"{t}/wrong_shape.npy"], "shape (2, 3)"),
        "NaN observation": ([*sample, f"{t}/nan.npy"], "NaN or inf"),
        "inf observation": ([*sample, f"{t}/inf.npy"], "NaN or inf"),
        "unknown model": (
            [
                "sample",
                "nope",
                "--observations",
                f"{t}/ok.npy",
                "--num-samples",
                "5",
                "--seed",
                "0",
                "--out",
                f"{t}/o.npy",
            ],
            "model 'nope' does not exist",
        ),
        "unknown simulator": (
            ["train", "--simulator", "nope", "--num-simulations", "10", *train],
            "unknown simulator 'nope'",
        ),
        "prior file not JSON": (
            ["train", "--data", f"{t}/ok.npz", "--prior", f"{t}/bad_json.json", *train],
            "not valid JSON",
        ),
        "prior of unknown type": (
            ["train", "--data", f"{t}/ok.npz", "--prior", f"{t}/bad_type.json", *train],
            "unknown type 'cauchy'",
        ),
        "npz lengths differ": (
            ["train", "--data", f"{t}/mismatch.npz", "--prior", f"{t}/prior3.json", *train],
            "5 rows but 'x' has 4",
        ),
        "prior dimension mismatch": (
            ["train", "--data", f"{t}/ok.npz", "--prior", f"{t}/prior3.json", *train],
            "dimension 3 but theta",
        ),
        "unknown estimator": (
            [
                "train",
                "--simulator",
                "two_moons",
                "--num-simulations",
                "10",
                "--estimator",
                "gan",
                "--name",
                "new",
                "--seed",
                "0",
            ],
            "unknown estimator",
        ),
        "missing num-simulations": (
            ["train", "--simulator", "two_moons", *train],
            "--num-simulations",
        ),
        "bad model name": (
            [
                "train",
                "--simulator",
                "two_moons",
                "--num-simulations",
                "10",
                "--estimator",
                "nsf",
                "--seed",
                "0",
                "--name",
                "../evil",
            ],
            "not allowed",
        ),
    }


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_exit_2_and_store_untouched(cli, trained, home, case):
    args, message = _bad_inputs(trained)[case]
    before = store_snapshot(home)
    code, out, err = cli(*args)
    assert code == 2, (case, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    assert store_snapshot(home) == before
    assert not (trained / "o.npy").exists()


def test_console_script_prints_no_traceback(home, tmp_path):
    np.save(tmp_path / "ok.npy", np.zeros((1, 2), dtype=np.float32))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sbi_service",
            "sample",
            "missing",
            "--observations",
            str(tmp_path / "ok.npy"),
            "--num-samples",
            "3",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "o.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: model 'missing' does not exist")
    assert "Traceback" not in proc.stderr
