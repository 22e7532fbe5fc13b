"""The batching engine and model pool, without HTTP.

A tiny NSF on a box prior (so some draws fall outside the support and are redrawn);
served samples must equal ``sample_posterior`` with the same seed, whatever the batch.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
import torch
from tiny_model import PRIOR, make_data, train_tiny

from sbi_service.errors import UserError
from sbi_service.estimators.posterior import Posterior
from sbi_service.serving import (
    Admission,
    DeadlineExceeded,
    Engine,
    Metrics,
    ModelPool,
    Overloaded,
)
from sbi_service.simulators.priors import prior_from_spec
from sbi_service.store.db import Store
from sbi_service.workflows.models import load_posterior, sample_posterior


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    store = Store(folder / "home")
    train_tiny(store, make_data(folder))
    return store


def run(coro):
    return asyncio.run(coro)


OBS = np.array([[0.5, 0.5], [0.95, -0.95], [0.0, 0.1], [-0.9, 0.9]], np.float32)


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_equal_sequential_samples(store, batching):
    posterior, _ = load_posterior(store, "tiny")
    # (observations, num_samples, seed): multi-observation requests near the support's edge
    requests = [(OBS[i % 4 : i % 4 + 1 + i % 3], 20 + 41 * i, 100 + i) for i in range(12)]

    async def main():
        pool = ModelPool(store, Metrics(), batch_rows=97, batching=batching)
        try:
            return await asyncio.gather(
                *[pool.sample("tiny", None, o, n, s, 60) for o, n, s in requests]
            ), pool.metrics
        finally:
            pool.close()

    results, metrics = run(main())
    for (o, n, s), (model, got) in zip(requests, results, strict=True):
        expected = sample_posterior(posterior, o, n, s)
        assert model.version == 1
        assert got.shape == expected.shape == (len(o), n, 2)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    # rows were coalesced across requests (batching) or not, never past the row budget
    text = metrics.render()
    total = float(re.search(r"^sbi_batch_requests_sum (\S+)$", text, re.M).group(1))
    passes = float(re.search(r"^sbi_batch_requests_count (\S+)$", text, re.M).group(1))
    within_100 = float(
        re.search(r'^sbi_batch_rows_bucket\{le="100.0"\} (\S+)$', text, re.M).group(1)
    )
    if batching:
        assert within_100 == passes  # no pass over the budget of 97 rows
    if batching:
        # Requests shared passes (unbatched it is exactly 1). First rounds of a bounded
        # prior are oversampled, so fewer requests fit the 97-row budget than rows asked.
        assert total / passes > 1.25
    else:
        assert within_100 < passes  # a whole round of a request in one pass
        assert total == passes  # one request per pass


def test_large_request_is_split_and_reassembled(store):
    posterior, _ = load_posterior(store, "tiny")

    async def main():
        pool = ModelPool(store, Metrics(), batch_rows=64)
        try:
            return (await pool.sample("tiny", None, OBS[:2], 500, 7, 60))[1], pool.metrics
        finally:
            pool.close()

    got, metrics = run(main())
    np.testing.assert_allclose(got, sample_posterior(posterior, OBS[:2], 500, 7), atol=1e-5)
    text = metrics.render()
    passes = float(re.search(r"^sbi_batch_rows_count (\S+)$", text, re.M).group(1))
    assert passes >= 2 * 500 // 64
    assert 'sbi_batch_rows_bucket{le="100.0"}' in text


def test_row_bound_deadline_and_cancellation_release_rows(store):
    async def main():
        pool = ModelPool(store, Metrics(), batch_rows=16, max_queue_rows=1000)
        try:
            slow = asyncio.ensure_future(pool.sample("tiny", None, OBS[:1], 900, 1, 60))
            await asyncio.sleep(0.05)
            with pytest.raises(Overloaded):
                await pool.sample("tiny", None, OBS[:1], 200, 2, 60)
            slow.cancel()  # a client that went away: its queued rows are dropped
            for _ in range(100):
                if pool.admission.pending_rows == 0:
                    break
                await asyncio.sleep(0.02)
            assert pool.admission.pending_rows == 0
            # An estimate far too optimistic admits what then misses its deadline.
            pool.admission.record_pass(10**12, 1.0)
            with pytest.raises(DeadlineExceeded):
                await pool.sample("tiny", None, OBS[:1], 900, 3, 0.01)
            for _ in range(100):
                if pool.admission.pending_rows == 0:
                    break
                await asyncio.sleep(0.02)
            assert pool.admission.pending_rows == 0
        finally:
            pool.close()

    run(main())


def test_admission_refuses_what_cannot_finish_within_the_deadline():
    admission = Admission(Metrics(), max_rows=10**9)
    admission.record_pass(1000, 1.0)  # 1000 rows/s
    admission.record_request(0.0)
    admission.acquire(10**6, deadline=1.0)  # an idle server admits anything: it can run
    admission.release(10**6)
    admission.acquire(500, deadline=1.0)
    assert admission.wait_s() == pytest.approx(0.5)
    with pytest.raises(Overloaded) as refused:
        admission.acquire(500, deadline=1.0)  # 0.5 s ahead + 0.5 s > 0.8 s
    assert refused.value.retry_after == 1
    admission.acquire(500, deadline=10.0)  # a longer deadline fits
    with pytest.raises(Overloaded):
        admission.check(deadline=1.0)  # 1 s of work ahead: refused before any body
    admission.release(500)
    admission.release(500)
    admission.check(deadline=1.0)
    assert admission.pending_rows == admission.pending_requests == 0


def test_admission_asks_the_wall_clock_when_work_runs_slower_than_measured():
    """Rows decode fast by the engine's own measure, but requests complete at 10/s
    (a CPU-starved machine): the queue is judged by that rate, pending / rate."""
    now = [0.0]
    admission = Admission(Metrics(), max_rows=10**9, clock=lambda: now[0])
    admission.record_pass(10**9, 1.0)  # the model: every request is nearly free
    admission.record_request(0.0)
    for _ in range(40):  # one request in flight at a time, each taking 0.1 s
        admission.acquire(100, deadline=1.0)
        now[0] += 0.1
        admission.release(100)
    assert admission.completion_rate == pytest.approx(10.0)
    now[0] += 60.0  # idle time is not busy time: the rate stays
    for _ in range(8):  # the 8th sees 7 ahead at 10/s: 0.7 s, within 0.8 of 1 s
        admission.acquire(100, deadline=1.0)
    assert admission.wait_s() == pytest.approx(0.8)
    with pytest.raises(Overloaded) as refused:
        admission.check(deadline=0.9)  # 0.8 s ahead > 0.72 s: refused before a body
    assert refused.value.retry_after == 1
    admission.acquire(100, deadline=5.0)  # a longer deadline fits
    for _ in range(9):
        admission.release(100)
    admission.check(deadline=1.0)  # an idle server takes work


def test_draws_outside_the_support_fail_with_user_error(store):
    # A prior whose support the model never reaches: every draw is rejected.
    posterior, _ = load_posterior(store, "tiny")
    far = Posterior(
        posterior.estimator, prior_from_spec({**PRIOR, "low": [10, 10], "high": [11, 11]})
    )
    metrics = Metrics()
    engine = Engine(far, "far", Admission(metrics, 10_000), metrics)
    try:
        with pytest.raises(UserError, match="inside the prior's support"):
            run(engine.sample(torch.tensor([[0.0, 0.1]]), 50, 0, 60))
    finally:
        engine.close()


def test_bad_shape_is_a_user_error(store):
    async def main():
        pool = ModelPool(store, Metrics())
        try:
            await pool.sample("tiny", None, np.zeros((1, 3), np.float32), 5, 0, 60)
        finally:
            pool.close()

    with pytest.raises(UserError, match="expects"):
        run(main())


def test_hot_reload_and_lru(store, tmp_path):
    async def main():
        pool = ModelPool(store, Metrics(), cache_size=1)
        try:
            first, _ = await pool.sample("tiny", None, OBS[:1], 10, 0, 60)
            old_engine = first.engine
            await asyncio.to_thread(train_tiny, store, make_data(tmp_path), "tiny", 1)
            reloaded = await pool.reload("tiny")
            assert reloaded.version == 2
            old_engine.join(10)  # drained and stopped
            assert not old_engine._thread.is_alive()
            model, _ = await pool.sample("tiny", None, OBS[:1], 10, 0, 60)
            assert model.version == 2
            pinned, _ = await pool.sample("tiny", 1, OBS[:1], 10, 0, 60)  # evicts v2 (LRU of 1)
            assert pinned.version == 1 and len(pool) == 1
        finally:
            pool.close()

    run(main())
