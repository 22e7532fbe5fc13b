"""A short ``benchmarks/load.py``: overload sheds with 503 + Retry-After, never 500."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from test_api_server import free_port, start, wait_ready
from tiny_model import make_data, train_tiny

from sbi_service.store.db import Store

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import load  # noqa: E402


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    folder = tmp_path_factory.mktemp("load")
    train_tiny(Store(folder / "home"), make_data(folder, n=2000), name=load.MODEL)
    return folder


def test_overload_sheds_with_503_and_retry_after_and_healthz_answers(home):
    port = free_port()
    proc = start(home, port, "--preload", load.MODEL, "--batch-rows", "64")
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)

        async def overload():
            stop = asyncio.Event()
            health = asyncio.ensure_future(load.poll_health(port, stop))
            # 5,000 draws per request at 60 requests/s: far more than a 1 s deadline allows
            records = await load.open_loop(port, 60, 3.0, 1.0, num_samples=5000)
            stop.set()
            return records, await health

        records, health = asyncio.run(overload())
        summary = load.summarize(records)
        assert summary["errors_500"] == 0, summary
        assert summary["shed_503"] > 0, summary
        assert summary["shed_with_retry_after"] == summary["shed_503"]
        # every request answered: served, shed, or (admitted, then late) past its deadline
        assert set(summary["statuses"]) <= {"200", "503", "504"}, summary
        assert health and max(t for _, t in health) < 10  # every /healthz poll answered 200
    finally:
        proc.kill()
        proc.wait(10)
