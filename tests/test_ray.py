"""The Ray backend on one local runtime (the session's ``ray_runtime``)."""

from __future__ import annotations

import time

import pytest
import torch
from test_api import AUTH, live_server, settings

from sbi_service.errors import UserError
from sbi_service.simulators.registry import get_task
from sbi_service.simulators.simulate import simulate


def test_ray_chunks_are_bit_identical_to_local(ray_runtime, tmp_path):
    task = get_task("two_moons")
    one = simulate(task, 2500, seed=3, chunk_size=1000)
    two = simulate(task, 2500, seed=3, chunk_size=1000, workers=2)
    on_ray = simulate(task, 2500, seed=3, chunk_size=1000, backend="ray", workers=2)
    for other in (two, on_ray):
        assert torch.equal(one.theta, other.theta) and torch.equal(one.x, other.x)
    assert on_ray.report.backend == "ray" and on_ray.report.num_kept == 2500
    assert not on_ray.report.in_process and not two.report.in_process
    # resumed from chunks on disk: the same numbers again
    folder = tmp_path / "chunks"
    simulate(task, 2500, seed=3, chunk_size=1000, backend="ray", checkpoint=folder)
    again = simulate(task, 2500, seed=3, chunk_size=1000, backend="ray", checkpoint=folder)
    assert again.report.resumed_chunks == 3 and torch.equal(again.x, one.x)


def test_a_ray_address_that_does_not_answer_is_a_clear_error(ray_runtime, monkeypatch):
    from sbi_service.config import get_settings

    monkeypatch.setenv("SBI_SERVICE_RAY_ADDRESS", "127.0.0.1:9")
    get_settings.cache_clear()
    start = time.monotonic()
    try:
        with pytest.raises(UserError, match=r"cannot reach the Ray cluster at '127.0.0.1:9'"):
            simulate(get_task("two_moons"), 10, seed=0, backend="ray")
    finally:
        get_settings.cache_clear()
    assert time.monotonic() - start < 30
    monkeypatch.setenv("SBI_SERVICE_RAY_ADDRESS", "no-port")
    with pytest.raises(UserError, match="must be 'auto', 'host:port'"):
        simulate(get_task("two_moons"), 10, seed=0, backend="ray")
    get_settings.cache_clear()


def wait_job(client, job_id: str, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def test_train_and_diagnose_jobs_run_as_ray_tasks(ray_runtime, tmp_path):
    """A server with the ray backend: jobs are Ray tasks, read back like local ones."""
    cfg = settings(tmp_path, preload_models=[], simulation_backend="ray")
    with live_server(cfg) as client:
        request = {
            "kind": "train",
            "name": "on_ray",
            "simulator": "two_moons",
            "num_simulations": 300,
            "estimator_options": {"transforms": 1, "hidden_features": [8]},
            "train": {"max_epochs": 2, "batch_size": 128},
            "resources": {"num_cpus": 1},
        }
        r = client.post("/v1/jobs", json=request, headers=AUTH)
        assert r.status_code == 202, r.text
        job = wait_job(client, r.json()["id"])
        assert job["state"] == "succeeded", job["error"]
        assert job["progress"] == 1.0 and job["result"]["model"] == "on_ray"
        config = client.get("/v1/models/on_ray").json()["config"]
        assert config["simulator"] == "two_moons" and config["simulator_version"]
        assert len(config["data_sha256"]) == 64 and config["simulation"]["num_kept"] == 300
        diagnose = {
            "kind": "diagnose",
            "model": "on_ray",
            "num_simulations": 40,
            "sbc": False,
            "num_posterior_samples": 50,
            "resources": {"num_cpus": 1},
        }
        r = client.post("/v1/jobs", json=diagnose, headers=AUTH)
        assert r.status_code == 202, r.text
        job = wait_job(client, r.json()["id"])
        assert job["state"] == "succeeded", job["error"]
        assert job["result"]["diagnostics"]["tarp"]
        r = client.post(
            "/v1/jobs",
            json={**request, "resources": {"num_cpus": 1, "num_gpus": 1}},
            headers=AUTH,
        )  # no GPU in this runtime: the task waits for one, the job stays queued
        assert r.status_code == 202
        time.sleep(1)
        assert client.get(f"/v1/jobs/{r.json()['id']}").json()["state"] == "queued"
