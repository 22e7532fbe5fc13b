"""Diagnostics belong to the version, and the promotion policy serves only what passed.

The tiny model's gate is made to pass or fail on purpose through its thresholds:
``PASS`` cannot fail (|ATC| <= 1/8 and p >= 0 always hold), ``FAIL`` asks a 2-epoch
model for a contraction of 0.999 it does not have.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from test_api import live_server
from tiny_model import make_data, train_tiny

from sbi_service.config import Settings
from sbi_service.errors import NotFoundError
from sbi_service.serving.policy import ModelStatus, NotServable
from sbi_service.store.db import Store
from sbi_service.workflows.diagnose import DiagnoseRequest, diagnose_model

KEY = "trust-key"
AUTH = {"X-API-Key": KEY}
LOOSE = {"max_atc": 0.125, "min_ks_pvalue": 0.0}
PASS = {"tarp": True, "sbc": False, "num_posterior_samples": 50, "thresholds": LOOSE}
FAIL = {**PASS, "thresholds": {**LOOSE, "min_contraction": 0.999}}
SAMPLE = {"observations": [[0.1, 0.2]], "num_samples": 20, "seed": 0}


def gate(store: Store, data: Path, version: int, options: dict, **extra) -> dict:
    """Diagnose on 30 test pairs (beside the training data)."""
    test = data.parent / "test" / "sims.npz"
    if not test.exists():
        test.parent.mkdir()
        make_data(test.parent, n=30)
    request = {"model": "tiny", "version": version, "data": str(test), **options, **extra}
    return diagnose_model(store, DiagnoseRequest.from_dict(request))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("trust"), n=300)


def test_a_diagnose_run_stores_its_report_and_verdict_with_the_version(
    home, run_cli, tmp_path, data
):
    store = Store(home)
    train_tiny(store, data)
    report = gate(store, data, 1, FAIL, report_dir=str(tmp_path / "copy"))
    assert report["passed"] is False
    folder = home / "models" / "tiny" / "1" / "diagnostics"
    assert report["stored_report"] == str(folder)
    for name in ("report.json", "report.html", "tarp_ecp.png"):
        assert (folder / name).is_file() and (tmp_path / "copy" / name).is_file()
    verdict = store.verdicts("tiny")[1]
    assert verdict["passed"] is False
    failed = [c for c in verdict["checks"] if not c["passed"]]
    assert [(c["diagnostic"], c["name"]) for c in failed] == [("contraction", "mean")]
    assert verdict["details"]["thresholds"]["min_contraction"] == 0.999

    train_tiny(store, data, seed=1)
    code, out, _ = run_cli("models", "list")
    assert code == 0 and "v1:failed v2:not_diagnosed" in out

    gate(store, data, 1, PASS)  # a new run replaces the report and the verdict
    assert store.verdicts("tiny")[1]["passed"] is True
    assert '"passed": true' in (folder / "report.json").read_text()
    assert not list(folder.parent.glob(".*"))  # no temporary folders left


def status(created: dict, verdicts: dict | None = None, promotions: list | None = None):
    full = {v: {"passed": p, "diagnosed_at": t} for v, (p, t) in (verdicts or {}).items()}
    return ModelStatus("m", created, full, promotions or [])


def promotion(version: int, at: float, forced: bool = False) -> dict:
    return {"version": version, "at": at, "forced": forced}


def test_policy_picks_the_served_version():
    s = status({1: 10.0, 2: 20.0})
    assert s.served_version("latest") == 2
    with pytest.raises(NotServable, match="SBI_SERVICE_SERVE_POLICY=passed") as e:
        s.served_version("passed")
    assert e.value.status_code == 409 and '"force": true' in str(e.value)
    assert "v1: not_diagnosed" in str(e.value)

    s = status({1: 10.0, 2: 20.0, 3: 30.0}, {1: (True, 15.0), 2: (False, 25.0)})
    assert s.served_version("passed") == 1 and s.served_version("latest") == 3
    assert [s.verdict(v) for v in (1, 2, 3)] == ["passed", "failed", "not_diagnosed"]
    s.check_pinned(2, "latest")
    with pytest.raises(NotServable, match="version 2 of model 'm' is failed"):
        s.check_pinned(2, "passed")
    with pytest.raises(NotFoundError):
        s.verdict(9)

    # A forced promotion serves a failed version, and a later pass takes over again.
    forced = status(
        {1: 10.0, 2: 20.0}, {1: (True, 15.0), 2: (False, 25.0)}, [promotion(2, 26.0, True)]
    )
    assert forced.served_version("passed") == 2
    forced.check_pinned(2, "passed")
    later = status(
        {1: 10.0, 2: 20.0, 3: 30.0},
        {1: (True, 15.0), 2: (False, 25.0), 3: (True, 31.0)},
        [promotion(2, 26.0, True)],
    )
    assert later.served_version("passed") == 3

    # A rollback sticks under latest until a newer version is created.
    rollback = status({1: 10.0, 2: 20.0}, promotions=[promotion(1, 21.0)])
    assert rollback.served_version("latest") == 1
    newer = status({1: 10.0, 2: 20.0, 3: 22.0}, promotions=[promotion(1, 21.0)])
    assert newer.served_version("latest") == 3
    # An unforced promotion stops counting under passed once its version fails.
    lapsed = status({1: 10.0, 2: 20.0}, {1: (True, 11.0), 2: (False, 30.0)}, [promotion(2, 25.0)])
    assert lapsed.served_version("passed") == 1


def server_settings(home: Path, policy: str) -> Settings:
    return Settings(
        home=home, api_keys=[KEY], serve_policy=policy, reload_interval_s=0, drain_timeout_s=5
    )


def test_a_model_that_fails_its_gate_is_served_under_latest_not_under_passed(tmp_path, data):
    home = tmp_path / "home"
    store = Store(home)
    train_tiny(store, data)
    gate(store, data, 1, FAIL)

    with live_server(server_settings(home, "latest")) as c:
        r = c.post("/v1/models/tiny/samples", json=SAMPLE)
        assert r.status_code == 200, r.text
        assert r.json()["verdict"] == "failed" and r.headers["x-model-verdict"] == "failed"

    with live_server(server_settings(home, "passed")) as c:
        r = c.post("/v1/models/tiny/samples", json=SAMPLE)
        assert r.status_code == 409
        [error] = r.json()["detail"]
        assert error["field"] == "model"
        for words in ("v1: failed", "SBI_SERVICE_SERVE_POLICY=passed", "diagnose", "force"):
            assert words in error["message"]
        assert c.post("/v1/models/tiny/log_prob", json=LOG_PROB).status_code == 409

        info = c.get("/v1/models/tiny").json()
        assert info["serve_policy"] == "passed" and info["served_version"] is None
        assert "v1: failed" in info["not_served_because"]
        [v1] = info["version_details"]
        assert v1["verdict"] == "failed" and v1["report"] == "/v1/models/tiny/versions/1/report"
        assert any(not check["passed"] for check in v1["checks"])
        html = c.get(v1["report"])
        assert html.headers["content-type"].startswith("text/html") and "FAILED" in html.text
        as_json = c.get(v1["report"], headers={"Accept": "application/json"}).json()
        assert as_json["passed"] is False and as_json["version"] == 1
        assert c.get("/v1/models/tiny/versions/7/report").json()["detail"][0]["field"] == "version"

        # A promotion the policy forbids needs force, and a key; then it is recorded.
        r = c.post("/v1/models/tiny/reload", json={"version": 1}, headers=AUTH)
        assert r.status_code == 409 and r.json()["detail"][0]["field"] == "version"
        assert (
            c.post("/v1/models/tiny/reload", json={"version": 1, "force": True}).status_code == 401
        )
        r = c.post("/v1/models/tiny/reload", json={"force": True}, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "force"
        r = c.post("/v1/models/tiny/reload", json={"version": 1, "force": True}, headers=AUTH)
        assert r.json() == {"model": "tiny", "version": 1, "verdict": "failed"}
        [p] = c.get("/v1/models/tiny").json()["promotions"]
        assert p["version"] == 1 and p["forced"] and p["verdict"] == "failed"
        assert p["actor"].startswith("key sha256:") and "127.0.0.1" in p["actor"]
        r = c.post("/v1/models/tiny/samples", json=SAMPLE)
        assert r.status_code == 200 and r.json()["verdict"] == "failed"

        # A version that passes after the forced one takes over on reload.
        train_tiny(store, data, seed=1)
        assert c.post("/v1/models/tiny/reload", headers=AUTH).json()["version"] == 1
        r = c.post("/v1/models/tiny/samples", json={**SAMPLE, "version": 2})
        assert r.status_code == 409 and "version 2 of model 'tiny' is not diagnosed" in r.text
        gate(store, data, 2, PASS)
        assert c.post("/v1/models/tiny/reload", headers=AUTH).json()["version"] == 2
        r = c.post("/v1/models/tiny/samples", json=SAMPLE)
        assert (r.json()["version"], r.json()["verdict"]) == (2, "passed")
        assert r.headers["x-model-version"] == "2" and r.headers["x-model-verdict"] == "passed"
        r = c.post("/v1/models/tiny/samples", json={**SAMPLE, "version": 1})  # forced once
        assert r.status_code == 200 and r.json()["verdict"] == "failed"

        r = c.post("/v1/models/tiny/log_prob", json=LOG_PROB)
        assert r.json()["verdict"] == "passed" and r.headers["x-model-verdict"] == "passed"
        npy = c.post(
            "/v1/models/tiny/log_prob", json=LOG_PROB, headers={"Accept": "application/x-npy"}
        )
        values = np.load(io.BytesIO(npy.content), allow_pickle=False)
        assert values.dtype == np.float32 and values.shape == (2,)
        assert np.isfinite(values[0]) and values[1] == -np.inf
        assert abs(values[0] - r.json()["log_prob"][0]) < 1e-5


LOG_PROB = {"observations": [[0.1, 0.1]], "parameters": [[0.1, 0.1], [3.0, 0.0]]}
