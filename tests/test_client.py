"""``sbi_service.client`` against a real uvicorn on 127.0.0.1: every endpoint round-trips,
and sbi's own analysis code (pair plot, SBC) runs on a served posterior."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from test_api import live_server, wait_ready
from test_remote_simulator import start as start_remote_simulator
from test_trust import PASS
from tiny_model import PRIOR, make_data, train_tiny

from sbi_service.client import (
    Client,
    JobFailed,
    RemotePosterior,
    ServiceError,
    UnvalidatedPosterior,
)
from sbi_service.config import Settings
from sbi_service.store.db import Store
from sbi_service.workflows.models import load_posterior, sample_posterior

KEY = "client-key"
X = [[0.2, -0.3]]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(Client, data folder) for a server whose home holds the tiny model (v1)."""
    folder = tmp_path_factory.mktemp("client")
    make_data(folder, n=300)
    (folder / "test").mkdir()
    make_data(folder / "test", n=30)
    train_tiny(Store(folder / "home"), folder / "sims.npz")
    settings = Settings(
        home=folder / "home",
        api_keys=[KEY],
        preload_models=["tiny"],
        reload_interval_s=0,
        drain_timeout_s=5,
        import_allowlist=["sbi_service.simulators.tasks"],
    )
    with live_server(settings) as http:
        wait_ready(http)
        with Client(str(http.base_url), api_key=KEY) as client:
            yield client, folder


def test_health_models_sample_and_log_prob(served):
    client, folder = served
    assert client.health() == {"status": "ok"}
    assert client.ready()["status"] == "ready"
    assert "sbi_request_latency_seconds" in client.metrics()
    assert "two_moons" in [s["name"] for s in client.simulators()]
    ui = client.http.get("/ui")
    assert ui.headers["content-type"].startswith("text/html") and "/ui/static/app.js" in ui.text
    script = client.http.get("/ui/static/app.js")
    assert "javascript" in script.headers["content-type"] and "X-API-Key" in script.text
    assert [m["model"] for m in client.models()] == ["tiny"]
    assert client.model("tiny")["version_details"][0]["verdict"] == "not_diagnosed"

    out = client.sample("tiny", np.array(X * 3), num_samples=500, seed=7)
    assert out.values.shape == (3, 500, 2) and out.values.dtype == np.float32
    assert (out.model, out.version, out.verdict, out.seed) == ("tiny", 1, "not_diagnosed", 7)
    posterior, _ = load_posterior(Store(folder / "home"), "tiny")
    np.testing.assert_allclose(out.values, sample_posterior(posterior, X * 3, 500, 7), atol=1e-5)

    lp = client.log_prob("tiny", [[0.1, 0.1], [3.0, 0.0]], [[0.1, 0.1]])
    assert lp.values.shape == (2,) and np.isfinite(lp.values[0]) and lp.values[1] == -np.inf

    with pytest.raises(ServiceError) as e:
        client.sample("tiny", [[1.0, 2.0, 3.0]], num_samples=5)
    assert e.value.status_code == 422 and e.value.errors[0]["field"] == "observations"
    assert "422: observations: observations have shape (1, 3)" in str(e.value)
    with pytest.raises(ServiceError, match="404.*model 'nope' does not exist"):
        client.model("nope")
    with pytest.raises(ServiceError) as e:
        Client(str(client.http.base_url), api_key="wrong").reload("tiny")
    assert e.value.status_code == 401 and e.value.errors[0]["field"] == "Authorization"


def test_register_train_diagnose_jobs_reports_and_reload(served):
    client, folder = served
    info = client.register_simulator(
        "two_moons_again",
        import_path="sbi_service.simulators.tasks.two_moons:simulator",
        prior=PRIOR,
        x_shape=[2],
    )
    assert info["name"] == "two_moons_again"
    assert "two_moons_again" in [s["name"] for s in client.simulators()]

    train = {"max_epochs": 2, "batch_size": 256}
    options = {"transforms": 2, "hidden_features": [16, 16]}
    test_pairs = client.upload_dataset(path=folder / "test" / "sims.npz")
    gate = {**PASS, "dataset": test_pairs["id"]}
    dataset = client.upload_dataset(path=folder / "sims.npz")
    assert dataset["num_simulations"] == 300 and client.dataset(dataset["id"]) == dataset
    with np.load(folder / "sims.npz") as sims:  # arrays, in resumable chunks
        chunked = client.upload_dataset(sims["theta"], sims["x"], resumable=True)
    assert chunked["id"] == dataset["id"]  # the same bytes: the same dataset
    job_id = client.train(
        "tiny",
        dataset=dataset["id"],
        prior=PRIOR,
        estimator="nsf",
        estimator_options=options,
        train=train,
        diagnose=gate,
    )
    job = client.wait(job_id, timeout=120, poll=0.2, progress=False)
    assert job["result"]["version"] == 2 and job["result"]["diagnosis"]["passed"] is True
    assert job_id in [j["id"] for j in client.jobs()]

    report = client.report("tiny", 2)
    assert report["passed"] is True and report["version"] == 2
    assert "PASSED" in client.report_html("tiny", 2)
    [v1, v2] = client.model("tiny")["version_details"]
    assert (v1["verdict"], v2["verdict"]) == ("not_diagnosed", "passed")

    failing = client.diagnose("tiny", version=1, **{**gate, "thresholds": {"min_contraction": 1}})
    assert client.wait(failing, timeout=120, poll=0.2)["result"]["passed"] is False
    with pytest.raises(ServiceError) as e:  # refused before it runs
        client.diagnose("no_such_model", **gate)
    assert e.value.errors[0]["field"] == "model"
    with pytest.raises(ServiceError) as e:  # only interrupted or failed jobs run again
        client.rerun(job_id)
    assert e.value.status_code == 409 and e.value.errors[0]["field"] == "job_id"
    with pytest.raises(ServiceError) as e:
        client.train("x", dataset=dataset["id"], prior=PRIOR, diagnose={"bogus": 1})
    assert e.value.errors[0]["field"] == "diagnose"

    assert client.reload("tiny") == {"model": "tiny", "version": 2, "verdict": "passed"}
    assert client.reload("tiny", version=1)["verdict"] == "failed"  # latest policy: allowed
    assert client.sample("tiny", X, 5).version == 1
    assert client.model("tiny")["promotions"][-1]["version"] == 1
    assert client.reload("tiny", version=2)["version"] == 2
    validated = client.posterior("tiny", require_passed=True)
    assert validated.sample((10,), x=X).shape == (10, 2) and validated.last.version == 2


def test_posterior_has_sbis_interface_and_runs_sbis_analysis(served):
    from sbi.analysis import pairplot
    from sbi.diagnostics import check_sbc, run_sbc

    client, _ = served
    posterior = client.posterior("tiny", version=1)
    assert isinstance(posterior, RemotePosterior)
    x = torch.tensor(X)
    torch.manual_seed(0)
    samples = posterior.sample((400,), x=x)
    assert samples.shape == (400, 2) and samples.dtype == torch.float32
    torch.manual_seed(0)
    assert torch.equal(posterior.sample((400,), x=x[0]), samples)  # x_shape or (1, *x_shape)
    assert posterior.last.version == 1 and posterior.last.verdict != "passed"

    posterior.set_default_x(x)
    assert posterior.sample((3, 5)).shape == (3, 5, 2)
    batched = posterior.sample_batched((50,), x=torch.tensor(X * 4))
    assert batched.shape == (50, 4, 2)
    log_prob = posterior.log_prob(samples[:10])
    assert log_prob.shape == (10,) and torch.isfinite(log_prob).all()
    assert posterior.log_prob_batched(batched[:3], torch.tensor(X * 4)).shape == (3, 4)
    with pytest.raises(ValueError, match="sample_batched"):
        posterior.sample((5,), x=torch.tensor(X * 2))

    fig, axes = pairplot(samples)  # sbi's own plotting on served samples
    assert np.asarray(axes).shape == (2, 2)
    thetas = torch.rand(20, 2) * 2 - 1
    xs = thetas + 0.2 * torch.randn(20, 2)
    ranks, dap = run_sbc(thetas, xs, posterior, num_posterior_samples=100, show_progress_bar=False)
    assert ranks.shape == (20, 2) and dap.shape == (20, 2)
    stats = check_sbc(ranks, thetas, dap, num_posterior_samples=100)
    assert stats["ks_pvals"].shape == (2,)

    strict = client.posterior("tiny", version=1, require_passed=True)
    with pytest.raises(UnvalidatedPosterior, match="tiny v1 answered, but its diagnostics"):
        strict.sample((10,), x=x)


class Unavailable(BaseHTTPRequestHandler):
    """503 with Retry-After: 1 for the first ``failures`` requests, then 200."""

    failures = 2
    seen = 0

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        cls = type(self)
        cls.seen += 1
        if cls.seen <= cls.failures:
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"detail": [{"field": "body", "message": "queue full"}]}')
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: object) -> None:
        pass


def test_503_is_retried_after_retry_after_and_bounded():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        start = time.monotonic()
        with Client(url, max_retries=3, max_retry_wait=0.2) as client:
            assert client.health() == {"status": "ok"}
        assert Unavailable.seen == 3 and time.monotonic() - start >= 0.4  # two waits, capped
        Unavailable.seen, Unavailable.failures = 0, 10
        with Client(url, max_retries=2, max_retry_wait=0.01) as client:
            with pytest.raises(ServiceError, match="503: body: queue full"):
                client.health()
        assert Unavailable.seen == 3
    finally:
        server.shutdown()
        server.server_close()


def test_remote_simulator_trains_through_the_client_and_a_failed_job_raises(tmp_path, monkeypatch):
    """A remote HTTP simulator registered by the client trains a model; once its server is
    gone, the next train job fails and ``wait`` raises ``JobFailed`` carrying the error."""
    from sbi_service.config import get_settings

    simulator, host = start_remote_simulator()
    monkeypatch.setenv("SBI_SERVICE_SIMULATOR_HOSTS", host)  # as job workers read it
    get_settings.cache_clear()
    settings = Settings(
        home=tmp_path / "home",
        api_keys=[KEY],
        reload_interval_s=0,
        drain_timeout_s=5,
        simulator_hosts=[host],
    )
    train = {"max_epochs": 2, "batch_size": 64}
    options = {"transforms": 1, "hidden_features": [8, 8]}
    job = {"simulator": "remote", "num_simulations": 200, "estimator": "nsf"}
    with live_server(settings) as http, Client(str(http.base_url), api_key=KEY) as client:
        info = client.register_simulator(
            "remote", url=f"http://{host}/simulate", prior=PRIOR, x_shape=[2]
        )
        assert (info["name"], info["source"]) == ("remote", f"remote:http://{host}/simulate")
        done = client.wait(
            client.train("m", **job, estimator_options=options, train=train), timeout=120, poll=0.2
        )
        assert done["result"]["version"] == 1
        assert client.sample("m", X, 5, seed=0).values.shape == (1, 5, 2)

        simulator.shutdown()
        simulator.server_close()
        failing = client.train("m", **job, estimator_options=options, train=train)
        with pytest.raises(JobFailed) as e:
            client.wait(failing, timeout=120, poll=0.2, progress=False)
        assert e.value.job["state"] == "failed" and host in e.value.job["error"]
        assert [v["version"] for v in client.model("m")["version_details"]] == [1]
    get_settings.cache_clear()
