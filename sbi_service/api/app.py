"""The FastAPI application: ``create_app(settings)``.

At startup, and every ``LEASE_RENEW_S`` after: jobs whose owning process is gone are
marked interrupted (never the jobs of another live server on the same store); torch
gets ``settings.torch_threads`` threads (the event loop and the engine threads share
the machine's cores), and the ``preload_models`` are loaded and warmed in the
background; ``/readyz`` answers 503 until that is done, and then the objects built so far
are frozen out of garbage collection (``freeze_startup_objects``). A watcher reloads models
whose store has a newer version every ``reload_interval_s``. At shutdown the job
workers stop (their jobs are marked interrupted) and the engines finish their queues.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from sbi_service.api.deps import ServiceState
from sbi_service.api.errors import API_ERRORS, document_errors_as_json, install_error_handlers
from sbi_service.api.middleware import ServiceMiddleware
from sbi_service.api.routers import datasets, health, jobs, models, simulators, ui
from sbi_service.config import Settings
from sbi_service.jobs import LEASE_RENEW_S, JobRunner
from sbi_service.serving import Metrics, ModelPool
from sbi_service.store.db import Store

log = logging.getLogger("sbi_service.api")


def create_app(settings: Settings) -> FastAPI:
    store = Store(settings.home)
    metrics = Metrics()
    pool = ModelPool(
        store,
        metrics,
        device=settings.device,
        cache_size=settings.model_cache_size,
        max_queue_rows=settings.max_queue_rows,
        batch_rows=settings.batch_rows,
        batching=settings.batching,
        policy=settings.serve_policy,
    )
    runner = JobRunner(
        store, settings.job_workers, settings.torch_threads, settings.simulation_backend
    )
    state = ServiceState(settings, store, metrics, pool, runner)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads > 0:
            torch.set_num_threads(settings.torch_threads)
        state.spawn(_reap_jobs(state))
        state.spawn(_preload(state))
        if settings.reload_interval_s > 0:
            state.spawn(_watch_versions(state))
        try:
            yield
        finally:
            for task in list(state.background):
                task.cancel()
            runner.shutdown()
            await asyncio.to_thread(pool.close)

    app = FastAPI(
        title="sbi-service",
        summary="Amortized posterior samples for simulation-based inference",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.sbi = state
    install_error_handlers(app)
    app.add_middleware(ServiceMiddleware, state=state)
    app.include_router(health.router)
    for module in (models, simulators, datasets, jobs):
        app.include_router(module.router, responses=API_ERRORS)
    app.include_router(ui.router)
    app.mount("/ui/static", ui.static_files, name="ui-static")
    document_errors_as_json(app)
    return app


async def _preload(state: ServiceState) -> None:
    """Load and warm the preloaded models, then declare the service ready."""
    for name in state.settings.preload_models:
        try:
            loaded = await state.pool.reload(name)
        except Exception as e:  # a missing model keeps /readyz at 503 with the reason
            state.startup_error = f"cannot preload model {name!r}: {e}"
            log.error(state.startup_error)
            return
        log.info("loaded and warmed %s v%d", name, loaded.version)
    freeze_startup_objects()
    state.ready = True


def freeze_startup_objects() -> None:
    """Keep what start-up built (torch, the app, the preloaded models) out of garbage
    collection: a full collection of those ~250,000 objects stops the event loop for
    about 160 ms, and under load one comes every few seconds. Later objects are
    collected as usual."""
    gc.collect()
    gc.freeze()


async def _watch_versions(state: ServiceState) -> None:
    """Hot reload: swap in new versions of the models served as latest."""
    while True:
        await asyncio.sleep(state.settings.reload_interval_s)
        try:
            await state.pool.refresh()
        except Exception:  # e.g. the store briefly locked; try again next round
            log.exception("checking for new model versions failed")


async def _reap_jobs(state: ServiceState) -> None:
    """Mark interrupted the jobs whose owning process is gone, now and periodically."""
    while True:
        try:
            interrupted = await asyncio.to_thread(state.store.mark_interrupted_jobs)
            if interrupted:
                log.warning("marked %d job(s) whose server is gone as interrupted", interrupted)
        except Exception:  # e.g. the store briefly locked; try again next round
            log.exception("checking for interrupted jobs failed")
        await asyncio.sleep(LEASE_RENEW_S)
