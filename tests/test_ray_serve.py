"""Ray Serve: replicas of the same service answer a seeded request with the same samples."""

from __future__ import annotations

import time

import httpx
import numpy as np
from test_api_server import free_port
from tiny_model import make_data, train_tiny

from sbi_service.config import Settings
from sbi_service.store.db import Store
from sbi_service.workflows.models import load_posterior, sample_posterior


def test_two_replicas_answer_a_seeded_request_identically(ray_runtime, tmp_path):
    from ray import serve

    from sbi_service.api import ray_deployment

    store = Store(tmp_path / "home")
    train_tiny(store, make_data(tmp_path))
    settings = Settings(home=tmp_path / "home", preload_models=["tiny"], reload_interval_s=0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = ray_deployment.build(settings, replicas=2, num_cpus=0.5)
    serve.run(app, name="sbi_service", route_prefix="/")
    try:
        deployment = serve.status().applications["sbi_service"].deployments["sbi_service"]
        assert deployment.replica_states == {"RUNNING": 2}
        deadline = time.monotonic() + 120
        while httpx.get(url + "/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the replicas did not become ready"
            time.sleep(0.2)
        body = {"observations": [[0.1, 0.2]], "num_samples": 64, "seed": 5}
        answers = []
        for _ in range(12):  # a new connection each: the proxy spreads them over replicas
            with httpx.Client() as client:
                answers.append(client.post(url + "/v1/models/tiny/samples", json=body, timeout=60))
        assert {r.status_code for r in answers} == {200}
        posterior, _ = load_posterior(store, "tiny")
        expected = sample_posterior(posterior, np.array([[0.1, 0.2]], np.float32), 64, 5)
        for r in answers:
            np.testing.assert_allclose(np.array(r.json()["samples"]), expected, atol=1e-5)
    finally:
        serve.delete("sbi_service")
