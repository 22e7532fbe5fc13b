"""Ray Serve (sbi_service.api.ray_deployment) on the session's local Ray runtime.

Two replicas of the service answer a seeded request with the same samples, whichever
answers; a replica killed under load costs no request: each gets a 200 with its own
samples or a 503 (a short version of ``benchmarks/replica_kill.py``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_api_server import free_port
from tiny_model import make_data, train_tiny

from sbi_service.config import Settings
from sbi_service.store.db import Store
from sbi_service.workflows.models import load_posterior, sample_posterior

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="module")
def two_replicas(ray_runtime, tmp_path_factory):
    """The application with 2 replicas (half a CPU each) of a tiny model -> (url, store)."""
    from ray import serve

    from sbi_service.api import ray_deployment

    home = tmp_path_factory.mktemp("ray-serve") / "home"
    store = Store(home)
    train_tiny(store, make_data(home.parent))
    settings = Settings(home=home, preload_models=["tiny"], reload_interval_s=0)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(ray_deployment.build(settings, replicas=2, num_cpus=0.5), name="sbi_service")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while httpx.get(url + "/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the replicas did not become ready"
            time.sleep(0.2)
        yield url, store
    finally:
        serve.shutdown()


def replica_states() -> dict:
    from ray import serve

    return serve.status().applications["sbi_service"].deployments["sbi_service"].replica_states


def test_every_replica_answers_a_seeded_request_with_the_same_samples(two_replicas):
    url, store = two_replicas
    assert replica_states() == {"RUNNING": 2}
    body = {"observations": [[0.1, 0.2]], "num_samples": 64, "seed": 5}
    posterior, _ = load_posterior(store, "tiny")
    expected = sample_posterior(posterior, np.array([[0.1, 0.2]], np.float32), 64, 5)
    served_by = set()
    for _ in range(40):  # Ray Serve spreads them over the replicas that hold "tiny"
        r = httpx.post(url + "/v1/models/tiny/samples", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["seed"] == 5
        np.testing.assert_allclose(np.array(r.json()["samples"]), expected, atol=1e-5)
        served_by.add(r.headers["x-served-by"])
        if len(served_by) == 2:
            break
    assert len(served_by) == 2, f"only {served_by} answered"
    # the rest of the API goes through the same app: errors keep their status and shape
    missing = httpx.post(url + "/v1/models/nope/samples", json=body, timeout=60)
    assert missing.status_code == 404 and missing.json()["detail"]
    bad = httpx.post(url + "/v1/models/tiny/samples", json={"num_samples": 3}, timeout=60)
    assert bad.status_code == 422 and "observations" in bad.text


def test_a_replica_killed_under_load_loses_no_request(two_replicas):
    from replica_kill import load_with_kill, wrong_answers

    url, store = two_replicas
    result = asyncio.run(load_with_kill(url, "tiny", 120, 8, kill_after=20, seconds=60, timeout=60))
    outcomes = result["outcomes"]
    assert result["killed"], "no replica was killed"
    assert outcomes["sent"] == 120 and outcomes[200] + outcomes[503] == 120, outcomes
    assert outcomes[200] > 20 and result["duplicates"] == 0
    posterior, _ = load_posterior(store, "tiny")
    assert wrong_answers(result["answers"], posterior) == 0
    deadline = time.monotonic() + 90  # Ray Serve starts another replica
    while replica_states() != {"RUNNING": 2}:
        assert time.monotonic() < deadline, replica_states()
        time.sleep(0.5)


def test_the_gateways_503_has_the_services_error_shape():
    pytest.importorskip("ray")
    import json

    from sbi_service.api.ray_deployment import unavailable

    answer = unavailable("the replica handling this request stopped before answering")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    detail = json.loads(answer.body)["detail"]
    assert detail == [
        {"field": "server", "message": "the replica handling this request stopped before "
         "answering; retry"}
    ]  # fmt: skip
