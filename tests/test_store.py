import json
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from sbi_service.errors import NotFoundError, UserError
from sbi_service.estimators.io import load_estimator, save_estimator
from sbi_service.estimators.posterior import Posterior
from sbi_service.estimators.registry import build_estimator
from sbi_service.simulators.priors import prior_from_spec
from sbi_service.store import Store
from sbi_service.store.db import process_owner

PRIOR = {"type": "box_uniform", "low": [-3.0, -3.0], "high": [3.0, 3.0]}


def _estimator(kind="nsf"):
    torch.manual_seed(0)
    est = build_estimator({"kind": kind, "dim_theta": 2, "x_shape": [3], "transforms": 2})
    with torch.no_grad():
        est.fit_standardization(torch.randn(100, 2) * 2 + 1, torch.randn(100, 3) * 3 - 1)
    return est.eval()


@pytest.mark.parametrize("kind", ["nsf", "maf"])
def test_save_load_round_trip_gives_identical_seeded_samples(tmp_path, kind):
    est = _estimator(kind)
    save_estimator(tmp_path / "m", est, {"prior": PRIOR})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "weights.safetensors",
    ]
    loaded, config = load_estimator(tmp_path / "m")
    assert config["estimator"] == est.config and config["prior"] == PRIOR
    x = torch.randn(4, 3)
    prior = prior_from_spec(PRIOR)
    a = Posterior(est, prior).sample(x, 50, torch.Generator().manual_seed(7))
    b = Posterior(loaded, prior).sample(x, 50, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.allclose(est.log_prob(a[:, 0], x), loaded.log_prob(a[:, 0], x))


def test_a_model_saved_before_log_standardization_still_loads(tmp_path):
    est = _estimator()
    save_estimator(tmp_path / "m", est, {"prior": PRIOR})
    weights = tmp_path / "m" / "weights.safetensors"
    state = load_file(str(weights))
    del state["x_log"]
    save_file(state, str(weights))
    loaded, _ = load_estimator(tmp_path / "m")
    assert not loaded.x_log.any()
    x = torch.randn(4, 3)
    assert torch.equal(loaded.embed(x), est.embed(x))


def test_an_fmpe_model_saved_before_grid_power_keeps_its_uniform_grid(tmp_path):
    torch.manual_seed(0)
    est = build_estimator({"kind": "fmpe", "dim_theta": 2, "x_shape": [3], "steps": 4})
    save_estimator(tmp_path / "m", est, {"prior": PRIOR})
    assert load_estimator(tmp_path / "m")[0].grid_power == 2.0  # today's default
    config_file = tmp_path / "m" / "config.json"
    config = json.loads(config_file.read_text())
    del config["estimator"]["grid_power"]
    config_file.write_text(json.dumps(config))
    loaded, _ = load_estimator(tmp_path / "m")
    assert loaded.time_grid() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_maf_model_saved_before_the_activation_option_keeps_relu(tmp_path):
    torch.manual_seed(0)
    config = {"kind": "maf", "dim_theta": 2, "x_shape": [3], "transforms": 1}
    assert build_estimator(config).config["activation"] == "tanh"  # today's default
    old = build_estimator({**config, "activation": "relu"})  # what maf models were
    save_estimator(tmp_path / "m", old, {"prior": PRIOR})
    config_file = tmp_path / "m" / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["estimator"]["activation"]
    config_file.write_text(json.dumps(saved))
    loaded, _ = load_estimator(tmp_path / "m")
    theta, x = torch.randn(5, 2), torch.randn(5, 3)
    assert loaded.config["activation"] == "relu"
    assert torch.equal(loaded.log_prob(theta, x), old.log_prob(theta, x))


def test_versions_increment_and_latest(tmp_path):
    store = Store(tmp_path)
    est = _estimator()

    def write(folder):
        save_estimator(folder, est, {"prior": PRIOR})
        return {"estimator": est.config, "prior": PRIOR}

    assert store.save_model_version("m", write)["version"] == 1
    assert store.save_model_version("m", write)["version"] == 2
    assert store.get_model_version("m")["version"] == 2
    assert store.get_model_version("m", 1)["version"] == 1
    assert store.list_models()[0]["versions"] == [1, 2]
    with pytest.raises(NotFoundError, match="version 9"):
        store.get_model_version("m", 9)
    with pytest.raises(NotFoundError, match="train it first"):
        store.get_model_version("other")


def test_crash_during_save_leaves_previous_version_whole(tmp_path):
    store = Store(tmp_path)
    est = _estimator()

    def write(folder):
        save_estimator(folder, est, {"prior": PRIOR})
        return {"estimator": est.config}

    store.save_model_version("m", write)
    before = (tmp_path / "models/m/1/weights.safetensors").read_bytes()

    def crash(folder):
        save_estimator(folder, est, {"prior": PRIOR})
        (folder / "weights.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        store.save_model_version("m", crash)
    assert store.get_model_version("m")["version"] == 1
    assert (tmp_path / "models/m/1/weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "models/m").iterdir()) == ["1"]


def test_only_jobs_whose_owner_is_gone_are_interrupted(tmp_path):
    store = Store(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = store.create_job("train", {}, owner=process_owner())
    orphan = store.create_job("train", {}, owner=f"{socket.gethostname()}:{dead.pid}")
    remote = store.create_job("train", {}, owner="elsewhere:1")
    assert store.mark_interrupted_jobs() == 1  # the dead process's only
    assert [store.get_job(j)["state"] for j in (mine, orphan, remote)] == [
        "queued",
        "interrupted",
        "queued",
    ]
    assert store.renew_leases("elsewhere:1") == 1
    assert store.mark_interrupted_jobs(lease_s=60) == 0  # renewed: kept
    time.sleep(1.0)
    store.renew_leases(process_owner())
    assert store.mark_interrupted_jobs(lease_s=0.5) == 1  # the other host's lease ran out
    assert store.get_job(remote)["state"] == "interrupted"
    assert store.get_job(mine)["state"] == "queued"
    assert store.rerun_job(orphan, process_owner())["state"] == "queued"
    with pytest.raises(UserError, match="only interrupted or failed"):
        store.rerun_job(mine, process_owner())


WRITER = """
import sys
from sbi_service.store.db import Store
store = Store(sys.argv[1])
for i in range(60):
    job = store.create_job("train", {"i": i}, owner="w")
    store.update_job(job, state="running", progress=0.5)
    store.renew_leases("w")
    if i % 6 == 0:
        store.save_model_version("shared", lambda folder: (folder.mkdir(), {"i": i})[1])
"""


def test_two_processes_writing_at_once_lose_no_row(tmp_path):
    Store(tmp_path)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for w in writers:
        assert w.wait(120) == 0, w.stderr.read().decode()
    store = Store(tmp_path)
    with sqlite3.connect(tmp_path / "sbi_service.db") as db:
        assert db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'running'").fetchone() == (120,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    versions = store.list_models()[0]["versions"]
    assert versions == list(range(1, 21))
    assert sorted(p.name for p in (tmp_path / "models/shared").iterdir()) == sorted(
        str(v) for v in versions
    )


def test_jobs_record_and_interruption(tmp_path):
    store = Store(tmp_path)
    job = store.create_job("train", {"name": "m"})
    store.update_job(job, state="running", progress=0.5)
    assert store.get_job(job)["progress"] == 0.5
    assert Store(tmp_path).mark_interrupted_jobs() == 1
    record = store.get_job(job)
    assert record["state"] == "interrupted" and "stopped" in record["error"]
    done = store.create_job("train", {})
    store.update_job(done, state="succeeded", result={"model": "m"})
    assert store.get_job(done)["result"] == {"model": "m"}


def test_bad_model_names_are_refused(tmp_path):
    store = Store(tmp_path)
    for name in ["", "../x", "a/b", "x" * 65, ".hidden"]:
        with pytest.raises(UserError, match="not allowed"):
            store.save_model_version(name, lambda folder: {})
    assert not any((tmp_path / "models").iterdir())


def test_config_json_is_plain_json(tmp_path):
    est = _estimator()
    save_estimator(tmp_path / "m", est, {"prior": PRIOR})
    config = json.loads((tmp_path / "m/config.json").read_text())
    assert config["estimator"]["kind"] == "nsf"
