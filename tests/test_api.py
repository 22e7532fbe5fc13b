"""The REST API against a real uvicorn server on 127.0.0.1 (in a thread, random port)."""

from __future__ import annotations

import gc
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import torch
from tiny_model import PRIOR, make_data, train_tiny

from sbi_service.api.schemas import SamplesRequest, count_observations, too_many_observations
from sbi_service.api.server import build_server
from sbi_service.config import Settings
from sbi_service.store.db import Store
from sbi_service.workflows.models import load_posterior, sample_posterior

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@contextmanager
def live_server(settings: Settings) -> Iterator[httpx.Client]:
    """uvicorn in a thread on a free loopback port; yields a client; stops within 15 s."""
    server = build_server(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=url, timeout=30) as client:
            client.app_state = server.state  # for assertions on the service state
            yield client
    finally:
        server.should_exit = True
        thread.join(15)


def wait_ready(client: httpx.Client, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    data = str(make_data(folder))
    train_tiny(Store(folder / "home"), data)
    return folder, data


def settings(folder, **overrides) -> Settings:
    base = {
        "home": folder / "home",
        "api_keys": [KEY],
        "preload_models": ["tiny"],
        "reload_interval_s": 0,
        "drain_timeout_s": 5,
    }
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="module")
def client(env):
    with live_server(settings(env[0])) as c:
        wait_ready(c)
        yield c


def samples_body(obs, n, seed, **extra):
    return {"observations": obs, "num_samples": n, "seed": seed, **extra}


OBS = [[0.5, 0.5], [0.95, -0.95], [0.0, 0.1], [-0.9, 0.9]]


def test_health_ready_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["models"][0]["model"] == "tiny"
    client.post("/v1/models/tiny/samples", json=samples_body(OBS[:1], 5, 0))
    text = client.get("/metrics").text
    for name in (
        "sbi_request_latency_seconds_bucket",
        "sbi_queue_wait_seconds_bucket",
        "sbi_batch_rows_bucket",
        "sbi_batch_requests_bucket",
        "sbi_queue_rows ",
    ):
        assert name in text
    assert 'route="/v1/models/{model}/samples"' in text


def test_concurrent_results_equal_sequential_with_same_seeds(client, env):
    posterior, _ = load_posterior(Store(env[0] / "home"), "tiny")
    jobs = [(OBS[i % 4 : i % 4 + 1 + i % 2], 10 + 17 * i, 1000 + i) for i in range(24)]

    def call(job):
        obs, n, seed = job
        r = client.post("/v1/models/tiny/samples", json=samples_body(obs, n, seed))
        assert r.status_code == 200, r.text
        return np.array(r.json()["samples"], dtype=np.float32)

    with ThreadPoolExecutor(12) as ex:
        served = list(ex.map(call, jobs))
    for (obs, n, seed), got in zip(jobs, served, strict=True):
        expected = sample_posterior(posterior, obs, n, seed)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_summary_npy_and_log_prob(client, env):
    body = samples_body(OBS[:2], 400, 3, summary=True, credible_level=0.8)
    r = client.post("/v1/models/tiny/samples", json=body)
    assert r.status_code == 200
    out = r.json()
    samples = np.array(out["samples"])
    assert samples.shape == (2, 400, 2) and out["version"] == 1 and out["seed"] == 3
    summary = out["summary"]
    np.testing.assert_allclose(summary["mean"], samples.mean(1), atol=1e-5)
    ci = summary["credible_interval"]
    assert ci["level"] == 0.8
    np.testing.assert_allclose(ci["low"], np.quantile(samples, 0.1, axis=1), atol=1e-5)
    assert "q05" in summary and "median" in summary and "std" in summary

    r = client.post(
        "/v1/models/tiny/samples",
        json={**body, "summary": False},
        headers={"Accept": "application/x-npy"},
    )
    assert r.headers["content-type"] == "application/x-npy"
    npy = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert npy.dtype == np.float32
    np.testing.assert_allclose(npy, samples, atol=1e-6)

    r = client.post("/v1/models/tiny/samples", json={**body, "return_samples": False})
    assert "samples" not in r.json() and "summary" in r.json()

    no_seed = client.post(
        "/v1/models/tiny/samples", json={"observations": OBS[:1], "num_samples": 5}
    )
    assert isinstance(no_seed.json()["seed"], int)

    r = client.post(
        "/v1/models/tiny/log_prob",
        json={"observations": [[0.1, 0.1]], "parameters": [[0.1, 0.1], [3.0, 0.0]]},
    )
    assert r.status_code == 200
    lp = r.json()["log_prob"]
    assert isinstance(lp[0], float) and lp[1] is None  # outside the prior's support
    posterior, _ = load_posterior(Store(env[0] / "home"), "tiny")
    expected = posterior.log_prob(torch.tensor([[0.1, 0.1]]), torch.tensor([[0.1, 0.1]]))
    assert abs(lp[0] - float(expected)) < 1e-4


JSON = {"Content-Type": "application/json"}
BAD_SAMPLE_BODIES: list[tuple[bytes, dict, str]] = [
    # (raw body, headers, the field the error must name)
    (b'{"observations": [[NaN, 1]], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [[Infinity, 1]], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [[1e999, 1]], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [[1e300, 1]], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [[1, 2, 3]], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [[1, 2], [1]], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [[]], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [["1", 2]], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [[true, 2]], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [[null, 2]], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [[{"a": 1}, 2]], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [[[[[[[[1]]]]]]]], "num_samples": 2}', JSON, "observations"),
    (b'{"observations": "abc", "num_samples": 2}', JSON, "observations"),
    (b'{"observations": [[1, 2]]}', JSON, "num_samples"),
    (b'{"observations": [[1, 2]], "num_samples": 0}', JSON, "num_samples"),
    (b'{"observations": [[1, 2]], "num_samples": -5}', JSON, "num_samples"),
    (b'{"observations": [[1, 2]], "num_samples": "5"}', JSON, "num_samples"),
    (b'{"observations": [[1, 2]], "num_samples": 2.5}', JSON, "num_samples"),
    (b'{"observations": [[1, 2]], "num_samples": 1e30}', JSON, "num_samples"),
    (b'{"observations": [[1, 2]], "num_samples": 10000000000000000000000000}', JSON, "num_samples"),
    (b'{"observations": [[1, 2]], "num_samples": 1000000}', JSON, "num_samples"),
    (b'{"observations": [[1, 2]], "num_samples": 2, "seed": -1}', JSON, "seed"),
    (b'{"observations": [[1, 2]], "num_samples": 2, "seed": 99999999999999999999}', JSON, "seed"),
    (b'{"observations": [[1, 2]], "num_samples": 2, "version": 0}', JSON, "version"),
    (b'{"observations": [[1, 2]], "num_samples": 2, "version": 99}', JSON, "version"),
    (b'{"observations": [[1, 2]], "num_samples": 2, "summary": "yes"}', JSON, "summary"),
    (
        b'{"observations": [[1, 2]], "num_samples": 2, "credible_level": 1.5}',
        JSON,
        "credible_level",
    ),
    (b'{"observations": [[1, 2]], "num_samples": 2, "typo": 1}', JSON, "typo"),
    (b'{"observations": [[1, 2]], "num_samples": 2, "nested": {"a": [[[]]]}}', JSON, "nested"),
    (b"[]", JSON, "body"),
    (b"null", JSON, "body"),
    (b'"text"', JSON, "body"),
    (b"12", JSON, "body"),
    (b"", JSON, "body"),
    (b"{not json", JSON, "body"),
    (b"\xff\xfe\x00garbage", JSON, "body"),
    (b"[" * 50_000, JSON, "body"),
    (
        b'{"observations": [[1, 2]], "num_samples": 2}',
        {"Content-Type": "text/plain"},
        "Content-Type",
    ),
    (b"observations=1", {"Content-Type": "application/x-www-form-urlencoded"}, "Content-Type"),
    (b'{"observations": [[1, 2]], "num_samples": 2}', {}, "Content-Type"),
]


@pytest.mark.parametrize(
    "observations, count",
    [([[1, 2], [3, 4], [5, 6]], 3), ([1, 2], 1), ([[[1, 2]], [[3, 4]]], 2), ([], 1)],
)
def test_observations_are_counted_from_brackets(observations, count):
    body = json.dumps({"num_samples": 2, "observations": observations, "seed": 1}).encode()
    assert count_observations(body) == count


def test_too_many_observations_are_refused_before_the_body_is_parsed(client, monkeypatch):
    """A hostile body of many observations is counted, not turned into Python objects."""

    def parse(*args, **kwargs):
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(SamplesRequest, "model_validate_json", parse)
    body = {"observations": [[0.1, 0.2]] * 100_000, "num_samples": 1}
    r = client.post("/v1/models/tiny/samples", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail == {"field": "observations", "message": too_many_observations(100_000, 1000)}


def test_bad_inputs_get_4xx_naming_the_field(client):
    for body, headers, field in BAD_SAMPLE_BODIES:
        r = client.post("/v1/models/tiny/samples", content=body, headers=headers)
        assert 400 <= r.status_code < 500, (body[:80], r.status_code, r.text)
        fields = [d["field"] for d in r.json()["detail"]]
        assert field in fields, (body[:80], r.json())
    r = client.post(
        "/v1/models/tiny/samples",
        json=samples_body(OBS[:1], 2, 0),
        headers={"X-Request-Timeout": "soon"},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "X-Request-Timeout"
    r = client.post("/v1/models/nope/samples", json=samples_body(OBS[:1], 2, 0))
    assert r.status_code == 404 and r.json()["detail"][0]["field"] == "model"
    r = client.post("/v1/models/tiny/samples", content=b"x" * (9 * 2**20), headers=JSON)
    assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body"
    r = client.post(
        "/v1/models/tiny/log_prob", json={"observations": [[0, 0]], "parameters": [[1]]}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "parameters"
    r = client.post(
        "/v1/models/tiny/log_prob",
        json={"observations": [[0, 0], [1, 1]], "parameters": [[0, 0], [0, 0], [0, 0]]},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "observations"
    for bad_job, field in [
        ({"kind": "nope"}, "kind"),
        ({"kind": "train"}, "name"),
        (
            {"kind": "train", "name": "a b", "simulator": "two_moons", "num_simulations": 100},
            "name",
        ),
        (
            {"kind": "train", "name": "m", "estimator": "zzz", "dataset": "x", "prior": PRIOR},
            "estimator",
        ),
        (
            {"kind": "train", "name": "m", "simulator": "no_such_sim", "num_simulations": 100},
            "simulator",
        ),
        ({"kind": "train", "name": "m", "dataset": "x.npz", "prior": {"type": "??"}}, "prior"),
        ({"kind": "train", "name": "m", "dataset": "0123456789abcdef", "prior": PRIOR}, "dataset"),
        ({"kind": "train", "name": "m", "dataset": "../../etc", "prior": PRIOR}, "dataset"),
        # a path on the server is never read: jobs train from datasets or simulators only
        ({"kind": "train", "name": "m", "data": "/etc/hostname", "prior": PRIOR}, "data"),
        (
            {
                "kind": "train",
                "name": "m",
                "dataset": "x",
                "prior": PRIOR,
                "train": {"max_epochs": 0},
            },
            "train.max_epochs",
        ),
        (
            {
                "kind": "train",
                "name": "m",
                "simulator": "two_moons",
                "num_simulations": 100,
                "resources": {"num_cpus": 0},
            },
            "resources.num_cpus",
        ),
        ({"kind": "diagnose", "model": "tiny", "bogus": 1}, "bogus"),
        ({"kind": "diagnose"}, "model"),
    ]:
        r = client.post("/v1/jobs", json=bad_job, headers=AUTH)
        assert r.status_code == 422, (bad_job, r.text)
        assert field in [d["field"] for d in r.json()["detail"]], (bad_job, r.json())
    assert client.get("/v1/jobs/doesnotexist").status_code == 404
    assert client.get("/v1/models/nope").status_code == 404
    # nothing above produced a 500
    assert 'status="500"' not in client.get("/metrics").text


def test_auth_for_mutating_endpoints(client):
    job = {"kind": "train", "name": "m", "simulator": "no_such_sim", "num_simulations": 100}
    r = client.post("/v1/jobs", json=job)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/jobs", json=job, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/v1/jobs", json=job, headers={"X-API-Key": KEY}).status_code == 422
    assert (
        client.post("/v1/simulators", json={"name": "s", "import_path": "a.b:c"}).status_code == 401
    )
    r = client.post(
        "/v1/simulators", json={"name": "s", "import_path": "no.such:thing"}, headers=AUTH
    )
    assert r.status_code == 403 and r.json()["detail"][0]["field"] == "import_path"
    assert "SBI_SERVICE_IMPORT_ALLOWLIST" in r.json()["detail"][0]["message"]
    assert client.post("/v1/models/tiny/reload").status_code == 401
    # reads are open by default
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/simulators").status_code == 200


def test_reads_need_a_key_when_configured(env):
    with live_server(settings(env[0], require_key_for_reads=True, preload_models=[])) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers=AUTH).status_code == 200
        body = samples_body(OBS[:1], 3, 0)
        assert c.post("/v1/models/tiny/samples", json=body).status_code == 401
        assert c.post("/v1/models/tiny/samples", json=body, headers=AUTH).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open
    with live_server(settings(env[0], api_keys=[], preload_models=[])) as c:
        job = {"kind": "train", "name": "m", "simulator": "two_moons", "num_simulations": 100}
        assert c.post("/v1/jobs", json=job, headers=AUTH).status_code == 403


def test_overload_503_and_deadline_504(env):
    cfg = settings(env[0], max_queue_rows=2000, batch_rows=32, preload_models=["tiny"])
    with live_server(cfg) as c:
        wait_ready(c)

        def call(seed):
            return c.post("/v1/models/tiny/samples", json=samples_body(OBS[:1], 1500, seed))

        with ThreadPoolExecutor(6) as ex:
            responses = list(ex.map(call, range(6)))
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 503 in codes, codes
        full = next(r for r in responses if r.status_code == 503)
        assert int(full.headers["retry-after"]) >= 1
        admission = c.app_state.pool.admission  # an estimate far too optimistic admits
        admission.record_pass(10**12, 1.0)  # what then runs late
        for _ in range(100):
            admission.record_request(0.0)
        r = c.post(
            "/v1/models/tiny/samples",
            json=samples_body(OBS[:1], 1900, 0),
            headers={"X-Request-Timeout": "0.05"},
        )
        assert r.status_code == 504 and r.json()["detail"][0]["field"] == "X-Request-Timeout"
        text = c.get("/metrics").text
        assert 'sbi_rejections_total{reason="overloaded"}' in text
        assert 'sbi_rejections_total{reason="deadline"}' in text


def test_the_deadline_counts_from_the_requests_arrival(client, monkeypatch):
    """Time spent before the handler samples (here a slow parse) is spent from the
    deadline: a request already past it is not run (it used to be, on a fresh clock)."""
    parse = SamplesRequest.model_validate_json.__func__

    def slow_parse(cls, *args, **kwargs):
        time.sleep(0.3)
        return parse(cls, *args, **kwargs)

    monkeypatch.setattr(SamplesRequest, "model_validate_json", classmethod(slow_parse))
    body = samples_body(OBS[:1], 10, 0)
    r = client.post("/v1/models/tiny/samples", json=body, headers={"X-Request-Timeout": "0.2"})
    assert r.status_code in (503, 504), r.text
    r = client.post("/v1/models/tiny/samples", json=body, headers={"X-Request-Timeout": "5"})
    assert r.status_code == 200, r.text


def test_client_disconnect_drops_queued_work(env):
    with live_server(settings(env[0], batch_rows=16, preload_models=["tiny"])) as c:
        wait_ready(c)
        host, port = c.base_url.host, c.base_url.port
        body = json.dumps(samples_body(OBS[:1], 50_000, 0)).encode()
        with socket.create_connection((host, port)) as s:
            s.sendall(
                b"POST /v1/models/tiny/samples HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.3)
        state = c.app_state
        deadline = time.monotonic() + 30
        seen = 'sbi_rejections_total{reason="disconnected"} 1.0'
        while state.pool.admission.pending_rows or seen not in c.get("/metrics").text:
            assert time.monotonic() < deadline, "the disconnected request's rows were not dropped"
            time.sleep(0.05)


def test_hot_reload_of_a_new_version(env, tmp_path):
    folder, data = env
    with live_server(settings(folder, preload_models=["tiny"])) as c:
        wait_ready(c)
        before = c.post("/v1/models/tiny/samples", json=samples_body(OBS[:1], 5, 0)).json()
        latest = Store(folder / "home").get_model_version("tiny")["version"]
        assert before["version"] == latest
        # A new version appears in the store.
        train_tiny(Store(folder / "home"), data, seed=latest + 1)
        r = c.post("/v1/models/tiny/reload", headers=AUTH)
        assert r.status_code == 200 and r.json()["version"] == latest + 1
        after = c.post("/v1/models/tiny/samples", json=samples_body(OBS[:1], 5, 0)).json()
        assert after["version"] == latest + 1 and after["samples"] != before["samples"]
        pinned = c.post("/v1/models/tiny/samples", json=samples_body(OBS[:1], 5, 0, version=latest))
        assert pinned.json()["samples"] == before["samples"]
        info = c.get("/v1/models/tiny").json()
        assert info["version"] == latest + 1 and latest + 1 in info["loaded_versions"]


def test_train_job_runs_in_a_worker_process(client, env):
    folder, data = env
    with open(data, "rb") as f:
        r = client.post(
            "/v1/datasets",
            content=f.read(),
            headers={**AUTH, "Content-Type": "application/octet-stream"},
        )
    assert r.status_code == 201, r.text
    job = {
        "kind": "train",
        "name": "jobmodel",
        "dataset": r.json()["id"],
        "prior": PRIOR,
        "estimator_options": {"transforms": 1, "hidden_features": [8]},
        "train": {"max_epochs": 2, "batch_size": 256},
    }
    r = client.post("/v1/jobs", json=job, headers=AUTH)
    assert r.status_code == 202
    job_id = r.json()["id"]
    deadline = time.monotonic() + 180  # a fresh worker process imports torch: slow when busy
    while (info := client.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    assert info["state"] == "succeeded", info
    assert info["progress"] == 1.0 and info["result"]["model"] == "jobmodel"
    assert info["result"]["epochs"] == 2
    assert len(info["result"]["data_sha256"]) == 64
    r = client.post("/v1/models/jobmodel/samples", json=samples_body(OBS[:1], 3, 0))
    assert r.status_code == 200


def test_no_dependency_runs_in_the_thread_pool(client, monkeypatch):
    """FastAPI runs a plain ``def`` dependency in its thread pool: a hop per request."""
    from fastapi.dependencies import utils

    hops = []

    async def run_in_threadpool(call, *args, **kwargs):
        hops.append(call.__name__)
        return call(*args, **kwargs)

    monkeypatch.setattr(utils, "run_in_threadpool", run_in_threadpool)
    assert client.post("/v1/models/tiny/samples", json=samples_body(OBS[:1], 5, 0)).is_success
    assert client.get("/v1/models").is_success
    assert client.post("/v1/models/tiny/reload", headers=AUTH).is_success
    assert hops == []


def test_start_up_objects_are_frozen_out_of_garbage_collection(env):
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with live_server(settings(env[0])) as client:
        wait_ready(client)
        assert gc.get_freeze_count() > 10_000
