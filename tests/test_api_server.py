"""``sbi-service serve`` as a real process: SIGTERM drains; a killed server's job is interrupted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from tiny_model import make_data, train_tiny

from sbi_service.store.db import Store

KEY = "k"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    train_tiny(Store(folder / "home"), make_data(folder, n=2000))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(home, port: int, *flags: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "SBI_SERVICE_HOME": str(home / "home"),
        "SBI_SERVICE_API_KEYS": KEY,
        "SBI_SERVICE_RELOAD_INTERVAL_S": "0",
    }
    cmd = [sys.executable, "-m", "sbi_service", "serve", "--port", str(port), *flags]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, "the server exited"
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.1)


def test_sigterm_drains_in_flight_requests(home):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(home, port, "--preload", "tiny", "--batch-rows", "64")
    try:
        wait_ready(url, proc)
        result: dict = {}

        def slow_request() -> None:
            body = {"observations": [[0.1, 0.2]], "num_samples": 30_000, "seed": 0}
            result["r"] = httpx.post(url + "/v1/models/tiny/samples", json=body, timeout=60)

        thread = threading.Thread(target=slow_request)
        thread.start()
        deadline = time.monotonic() + 10
        while "sbi_queue_rows 0.0" in httpx.get(url + "/metrics").text:
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(url + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200
        thread.join(60)
        assert result["r"].status_code == 200
        assert np.array(result["r"].json()["samples"]).shape == (1, 30_000, 2)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_job_of_a_killed_server_is_interrupted_after_restart(home):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(home, port)
    try:
        wait_ready(url, proc)
        job = {
            "kind": "train",
            "name": "long",
            "simulator": "two_moons",
            "num_simulations": 2000,
            "train": {"max_epochs": 10_000, "patience": 10_000},
        }
        r = httpx.post(url + "/v1/jobs", json=job, headers={"X-API-Key": KEY}, timeout=30)
        assert r.status_code == 202
        job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/jobs/{job_id}").json()["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.kill()  # no graceful shutdown: the job is left "running" in the store
        proc.wait(10)
        assert Store(home / "home").get_job(job_id)["state"] == "running"
        proc = start(home, port)
        wait_ready(url, proc)
        info = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        assert info["state"] == "interrupted" and "rerun" in info["error"]
        rerun = httpx.post(f"{url}/v1/jobs/{job_id}/rerun", headers={"X-API-Key": KEY})
        assert rerun.status_code == 202 and rerun.json() == {"id": job_id}
        info = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        assert info["state"] in ("queued", "running") and info["error"] is None
        again = httpx.post(f"{url}/v1/jobs/{job_id}/rerun", headers={"X-API-Key": KEY})
        assert again.status_code == 409 and again.json()["detail"][0]["field"] == "job_id"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_second_server_leaves_the_first_servers_jobs_alone(home):
    ports = free_port(), free_port()
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    first = start(home, ports[0])
    second = None
    try:
        wait_ready(urls[0], first)
        job = {
            "kind": "train",
            "name": "alive",
            "simulator": "two_moons",
            "num_simulations": 2000,
            "train": {"max_epochs": 10_000, "patience": 10_000},
        }
        r = httpx.post(urls[0] + "/v1/jobs", json=job, headers={"X-API-Key": KEY}, timeout=30)
        job_id = r.json()["id"]
        second = start(home, ports[1])
        wait_ready(urls[1], second)
        time.sleep(1.0)  # the second server has checked for lost jobs at start-up
        info = httpx.get(f"{urls[1]}/v1/jobs/{job_id}").json()
        assert info["state"] in ("queued", "running"), info
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_two_workers_share_one_store_and_their_metrics(home):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(home, port, "--workers", "2", "--preload", "tiny")
    try:
        wait_ready(url, proc)
        deadline = time.monotonic() + 120
        while "sbi_loaded_models 2.0" not in httpx.get(url + "/metrics").text:
            assert time.monotonic() < deadline, "each worker preloads its own engine"
            time.sleep(0.2)
        body = {"observations": [[0.1, 0.2]], "num_samples": 50, "seed": 3}
        answers = []
        for _ in range(20):  # a new connection each: the kernel spreads them over the workers
            with httpx.Client() as client:
                answers.append(client.post(url + "/v1/models/tiny/samples", json=body, timeout=30))
        assert {r.status_code for r in answers} == {200}
        assert all(r.json()["samples"] == answers[0].json()["samples"] for r in answers)
        text = httpx.get(url + "/metrics").text
        route = 'route="/v1/models/{model}/samples",status="200"'
        assert f"sbi_requests_total{{{route}}} 20.0" in text  # summed over both workers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
