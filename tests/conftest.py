"""Shared fixtures: one torch thread (the suite's timing assumes it) and a fresh home per test."""

from __future__ import annotations

import sys

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def send_every_call(monkeypatch):
    """Simulation calls go to the workers however little work they carry, so that the
    tests comparing backends (local 1 and 2 workers, Ray) run each of them; the rule
    that runs a tiny measured run in the calling process has its own tests."""
    import sbi_service.simulators.simulate as simulation

    monkeypatch.setattr(simulation, "MIN_CALL_SECONDS", 1e-9)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh ``$SBI_SERVICE_HOME`` for the test (also seen by subprocesses)."""
    from sbi_service.config import get_settings

    path = tmp_path / "home"
    monkeypatch.setenv("SBI_SERVICE_HOME", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run ``sbi-service ARGS...`` in process: returns (exit code, stdout, stderr)."""
    from sbi_service.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["sbi-service", *args])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def ray_runtime():
    """One local Ray runtime for the whole session (2 CPUs, no dashboard, small store)."""
    ray = pytest.importorskip("ray")
    options = {
        "num_cpus": 2,
        "include_dashboard": False,
        "object_store_memory": 100 * 2**20,
        "log_to_driver": False,
    }
    try:
        ray.init(**options)
    except Exception:  # Ray gives its node 30 s to start: once more on a loaded machine
        ray.shutdown()
        ray.init(**options)
    yield ray
    ray.shutdown()
