"""Shared fixtures: one torch thread (the suite's timing assumes it) and a fresh home per test."""

from __future__ import annotations

import sys

import pytest
import torch

torch.set_num_threads(1)


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
