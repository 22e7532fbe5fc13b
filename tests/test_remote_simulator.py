"""Remote HTTP simulators: the example server in examples/, and servers that misbehave."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_api import AUTH, live_server, settings

from sbi_service.errors import UserError
from sbi_service.simulators.registry import get_task, task_from_remote
from sbi_service.simulators.simulate import simulate
from sbi_service.store.db import Store
from sbi_service.workflows.simulators import register_simulator

PRIOR = {"type": "box_uniform", "low": [-1.0, -1.0], "high": [1.0, 1.0]}
_spec = importlib.util.spec_from_file_location(
    "remote_simulator", Path(__file__).parents[1] / "examples" / "remote_simulator.py"
)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


def start(handler=example.Handler):
    server = example.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


def handler(simulator=None, status=200, delay=0.0, location=None):
    """A Handler that simulates with ``simulator``, or answers ``status`` after ``delay``."""

    class Custom(example.Handler):
        calls = []

        def do_POST(self):  # noqa: N802
            type(self).calls.append(1)
            time.sleep(delay)
            if status != 200:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_POST()

    if simulator is not None:
        Custom.simulator = staticmethod(simulator)
    return Custom


@pytest.fixture(scope="module")
def good():
    server, host = start()
    yield host
    server.shutdown()


def spec(host, **extra):
    return {"url": f"http://{host}/simulate", "prior": PRIOR, "x_shape": [2], **extra}


@pytest.fixture
def allowed(good, monkeypatch):
    """SBI_SERVICE_SIMULATOR_HOSTS lists the good server (as the store's lookups read it)."""
    from sbi_service.config import get_settings

    monkeypatch.setenv("SBI_SERVICE_SIMULATOR_HOSTS", good)
    get_settings.cache_clear()
    yield good
    get_settings.cache_clear()


def test_json_and_npy_give_the_same_seeded_numbers(good, allowed, tmp_path):
    store = Store(tmp_path / "home")
    info = register_simulator(store, "remote", "remote", spec(good), allowed_hosts=[good])
    assert info["source"] == f"remote:http://{good}/simulate" and info["version"] == "1"
    task = get_task("remote", store.list_simulators())
    a = simulate(task, 250, seed=1, chunk_size=100)
    npy = task_from_remote("r", spec(good, format="npy"), [good])
    b = simulate(npy, 250, seed=1, chunk_size=100)
    assert torch.equal(a.x, b.x) and a.x.shape == (250, 2)
    assert (a.x - a.theta).abs().max() < 1  # theta plus small noise, row by row
    assert not torch.equal(a.x, simulate(task, 250, seed=2, chunk_size=100).x)


def test_the_host_allowlist(good):
    url_spec = spec(good)
    for hosts, message in [
        ([], "remote simulators are off"),
        (["localhost"], "not on SBI_SERVICE_SIMULATOR_HOSTS"),  # names match exactly
        (["127.0.0.1:1"], "not on SBI_SERVICE_SIMULATOR_HOSTS"),
    ]:
        with pytest.raises(UserError, match=message):
            task_from_remote("r", url_spec, hosts)
    port = good.split(":")[1]
    for url in [
        f"http://localhost:{port}/simulate",  # resolves to an allowed address, but not listed
        f"http://127.0.0.1.nip.io:{port}/simulate",
        f"http://user:pw@{good}/simulate",
        f"ftp://{good}/simulate",
    ]:
        with pytest.raises(UserError):
            task_from_remote("r", {**url_spec, "url": url}, [good])
    assert task_from_remote("r", url_spec, ["127.0.0.1"]).x_shape == (2,)


def test_the_name_is_resolved_once_and_the_connection_goes_there(good, monkeypatch):
    """A DNS answer cannot move the request elsewhere: the address resolved is the one used."""
    from sbi_service.simulators import remote

    port = good.split(":")[1]
    resolved = []

    def fake_getaddrinfo(host, port, *args, **kwargs):
        resolved.append(host)
        return [(2, 1, 6, "", ("127.0.0.1", int(port)))]

    monkeypatch.setattr(remote.socket, "getaddrinfo", fake_getaddrinfo)
    task = task_from_remote("r", spec(f"sim.example.test:{port}"), ["sim.example.test"])
    x = simulate(task, 10, seed=0).x
    names = [h for h in resolved if not h[0].isdigit()]  # the client only sees the address
    assert x.shape == (10, 2) and names == ["sim.example.test"]


@pytest.mark.parametrize(
    "bad, message, calls",
    [
        (handler(lambda theta, seed: theta[:, :1]), r"shape \(10, 1\).*expected \(10, 2\)", 1),
        (handler(lambda theta, seed: theta * np.nan), "NaN or inf for 10 of 10 trial rows", 1),
        (handler(status=302, location="http://169.254.169.254/"), "redirects are not followed", 1),
        (handler(status=404), "HTTP 404", 1),
        (handler(status=503), "failed 2 times: HTTP 503", 2),  # retried once
        (handler(delay=3.0), "failed 2 times.*timed out", 2),
    ],
)
def test_misbehaving_servers_are_refused_at_registration(bad, message, calls, tmp_path):
    server, host = start(bad)
    store = Store(tmp_path / "home")
    begin = time.monotonic()
    try:
        with pytest.raises(UserError, match=message):
            options = {"timeout_s": 0.5, "retries": 1, "backoff_s": 0.01}
            register_simulator(store, "bad", "remote", spec(host, **options), allowed_hosts=[host])
    finally:
        server.shutdown()
    assert time.monotonic() - begin < 10 and store.list_simulators() == []
    assert len(bad.calls) == calls  # a redirect is neither followed nor retried


def test_unreachable_url_fails_within_bounded_time(tmp_path):
    server, host = start()
    server.shutdown()
    server.server_close()
    start_time = time.monotonic()
    with pytest.raises(UserError, match="failed 2 times"):
        options = {"timeout_s": 0.5, "retries": 1, "backoff_s": 0.01}
        register_simulator(
            Store(tmp_path / "home"), "gone", "remote", spec(host, **options), allowed_hosts=[host]
        )
    assert time.monotonic() - start_time < 10


def test_register_through_cli_and_rest(good, tmp_path, home, run_cli, monkeypatch):
    from sbi_service.config import get_settings

    (tmp_path / "prior.json").write_text(json.dumps(PRIOR))
    url = f"http://{good}/simulate"
    args = ["simulators", "register", "cli_remote", "--url", url]
    args += ["--prior", str(tmp_path / "prior.json"), "--x-shape", "2"]
    code, _, err = run_cli(*args)
    assert code == 2 and "remote simulators are off" in err
    monkeypatch.setenv("SBI_SERVICE_SIMULATOR_HOSTS", good)
    get_settings.cache_clear()
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert json.loads(out)["source"] == f"remote:{url}"
    code, _, err = run_cli("simulators", "register", "x", "--url", url)
    assert code == 2 and "--url needs --prior" in err
    out_file = tmp_path / "sims.npz"
    code, _, err = run_cli(
        "simulate", "cli_remote", "--num-simulations", "40", "--seed", "0", "--out", str(out_file)
    )
    assert code == 0, err
    assert np.load(out_file)["x"].shape == (40, 2)

    with live_server(settings(tmp_path, preload_models=[], simulator_hosts=[good])) as c:
        body = {"name": "rest_remote", "url": url, "prior": PRIOR, "x_shape": [2]}
        r = c.post("/v1/simulators", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
        assert r.json()["version"] == "1"
        assert c.post("/v1/simulators", json=body, headers=AUTH).json()["version"] == "2"
        for bad, field in [
            ({**body, "url": "http://10.0.0.1/simulate"}, "url"),
            ({k: v for k, v in body.items() if k != "x_shape"}, "x_shape"),
            ({**body, "import_path": "os:getcwd"}, "import_path"),
            ({**body, "timeout_s": 0}, "timeout_s"),
        ]:
            r = c.post("/v1/simulators", json=bad, headers=AUTH)
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, r.text
        r = c.post("/v1/simulators", json={"name": "g", "import_path": "os:getcwd"}, headers=AUTH)
        assert r.status_code == 403
        names = [s["name"] for s in c.get("/v1/simulators").json()]
        assert "rest_remote" in names and "g" not in names
    get_settings.cache_clear()
