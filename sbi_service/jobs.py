"""Background jobs (train, diagnose) run in worker processes, their state in the store.

``JobRunner.submit`` records a job as ``queued`` and hands it to a
``ProcessPoolExecutor`` with the spawn start method (a fresh interpreter: no torch
state or threads inherited from the server). The worker marks the job ``running``,
reports progress in [0, 1] at most twice a second, and finishes it as ``succeeded``
with the workflow's result or ``failed`` with the error message. A worker exits when
the server process that started it is gone.

The runner's process holds a lease on each of its unfinished jobs and renews it every
``LEASE_RENEW_S`` seconds; servers mark ``interrupted`` only the jobs whose owner is
gone (``Store.mark_interrupted_jobs``), never another live server's, so several
servers can share one store. An interrupted or failed job can be rerun (``rerun``).

With the ``ray`` backend (``SBI_SERVICE_SIMULATION_BACKEND=ray``) each job is a Ray
task instead (``sbi_service.ray_compute``), given the resources its request asks for
(``"resources": {"num_cpus": c, "num_gpus": g}``, default one CPU), and it simulates
with a local pool of those ``num_cpus`` inside its task. State, progress and result
go to the same store (on a cluster: a shared volume), so a job reads the same either way.

Job requests are JSON: ``{"kind": "train", ...TrainRequest fields, "train": {...
TrainConfig fields}, "diagnose"?: {...DiagnoseRequest fields but model and version}}``
or ``{"kind": "diagnose", ...DiagnoseRequest fields}``. A train job with ``diagnose``
runs the gate on the version it made, so the version has its verdict when it succeeds.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from sbi_service.errors import UserError
from sbi_service.store.db import INTERRUPTED, LEASE_S, Store, process_owner

JOB_KINDS = ("train", "diagnose")
PROGRESS_INTERVAL_S = 0.5
LEASE_RENEW_S = LEASE_S / 5

log = logging.getLogger("sbi_service.jobs")


class JobRunner:
    """Submits jobs to worker processes; one per server (or CLI process)."""

    def __init__(
        self, store: Store, workers: int = 1, torch_threads: int = 1, backend: str = "local"
    ):
        self.store, self.workers, self.torch_threads = store, workers, torch_threads
        self.backend = backend
        self._executor: ProcessPoolExecutor | None = None
        self._ray: dict[str, Any] = {}  # job id -> its ray_compute.TaskExecutor
        self._running: dict[str, Future] = {}
        self._lock = threading.Lock()
        self.owner = process_owner()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def submit(
        self,
        kind: str,
        request: dict[str, Any],
        on_done: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> str:
        """Record and start a job; ``on_done(job_id, job)`` runs (in a thread) when it ends."""
        if kind not in JOB_KINDS:
            raise UserError(f"unknown job kind {kind!r}; expected one of {', '.join(JOB_KINDS)}")
        ray_task = self._ray_task(request)  # first: an unreachable cluster records no job
        job_id = self.store.create_job(kind, request, owner=self.owner)
        self._start(job_id, kind, request, on_done, ray_task)
        return job_id

    def rerun(
        self, job_id: str, on_done: Callable[[str, dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Queue an interrupted or failed job again (same id and request), in this runner."""
        job = self.store.get_job(job_id)
        ray_task = self._ray_task(job["request"])
        job = self.store.rerun_job(job_id, self.owner)
        self._start(job_id, job["kind"], job["request"], on_done, ray_task)
        return job

    def _ray_task(self, request: dict[str, Any]) -> Any:
        """With the ray backend: a ``TaskExecutor`` asking for the job's resources."""
        if self.backend != "ray":
            return None
        from sbi_service.ray_compute import TaskExecutor

        return TaskExecutor(resources=request.get("resources"))

    def _start(
        self,
        job_id: str,
        kind: str,
        request: dict[str, Any],
        on_done: Callable[[str, dict[str, Any]], None] | None,
        ray_task: Any = None,
    ) -> None:
        args = (run_job, str(self.store.home), job_id, kind, request)
        with self._lock:
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew, name="job-leases", daemon=True)
                self._renewer.start()
            if ray_task is not None:
                self._ray[job_id] = ray_task
                future = ray_task.submit(*args)
            else:
                if self._executor is None:
                    self._executor = ProcessPoolExecutor(
                        self.workers,
                        mp_context=multiprocessing.get_context("spawn"),
                        initializer=_worker_init,
                        initargs=(os.getpid(), self.torch_threads),
                    )
                future = self._executor.submit(*args)
            self._running[job_id] = future

        def finished(f: Future) -> None:
            with self._lock:
                self._running.pop(job_id, None)
                self._ray.pop(job_id, None)
            if f.cancelled():
                return
            if f.exception() is not None:  # the worker died (killed, out of memory)
                self.store.update_job(
                    job_id, state="failed", error=f"worker failed: {f.exception()}"
                )
            if on_done is not None:
                on_done(job_id, self.store.get_job(job_id))

        future.add_done_callback(finished)

    def _renew(self) -> None:
        """Renew this process's job leases until shutdown."""
        while not self._stop.wait(LEASE_RENEW_S):
            try:
                self.store.renew_leases(self.owner)
            except Exception:  # e.g. the store briefly unavailable: renew next round
                log.exception("renewing job leases failed")

    def shutdown(self) -> None:
        """Stop taking jobs; jobs not finished are marked interrupted and their workers end."""
        self._stop.set()
        with self._lock:
            executor, running = self._executor, list(self._running)
            ray_tasks = list(self._ray.values())
            self._executor = None
        for task in ray_tasks:
            task.shutdown()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        for job_id in running:
            if self.store.get_job(job_id)["state"] in ("queued", "running"):
                self.store.update_job(
                    job_id, state="interrupted", error=INTERRUPTED.format(id=job_id)
                )
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            process.terminate()


def _worker_init(parent_pid: int, torch_threads: int) -> None:
    """In each worker: set torch threads, and exit when the server process is gone."""
    import torch

    if torch_threads > 0:
        torch.set_num_threads(torch_threads)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_job(home: str, job_id: str, kind: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """Run one job in this (worker) process, recording state, progress and result."""
    store = Store(Path(home))
    store.update_job(job_id, state="running", progress=0.0)
    last = [0.0]

    def report(fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S:
            last[0] = now
            store.update_job(job_id, progress=round(min(max(fraction, 0.0), 1.0), 4))

    try:
        if kind == "train":
            result = _train(store, request, report)
        else:
            result = _diagnose(store, request, report)
    except UserError as e:
        store.update_job(job_id, state="failed", error=str(e))
        return None
    except Exception as e:  # a bug: keep the traceback for the operator
        store.update_job(
            job_id, state="failed", error=f"internal error: {e!r}\n{traceback.format_exc()}"
        )
        return None
    store.update_job(job_id, state="succeeded", progress=1.0, result=result, error=None)
    return result


def train_request_from_dict(payload: dict[str, Any]):
    """A ``TrainRequest`` from a job's JSON request (already checked by the API schema)."""
    from sbi_service.estimators.train import TrainConfig
    from sbi_service.workflows.train import TrainRequest

    args = {k: v for k, v in payload.items() if k not in ("kind", "train", "diagnose", "resources")}
    try:
        return TrainRequest(**args, train=TrainConfig(**(payload.get("train") or {})))
    except TypeError as e:
        raise UserError(f"bad train request: {e}") from None


def _train(store: Store, request: dict[str, Any], report: Callable[[float], None]) -> dict:
    """Train; with ``"diagnose": {...}`` run the gate on the new version right after
    (training is then the first 80% of the progress)."""
    from sbi_service.workflows.diagnose import DiagnoseRequest, diagnose_model
    from sbi_service.workflows.train import train_model

    req = train_request_from_dict(request)
    req.workers = int((request.get("resources") or {}).get("num_cpus", 1))
    gate = request.get("diagnose")
    share = 1.0 if gate is None else 0.8  # of the progress: simulating and training
    simulating = 0.5 if req.simulator is not None else 0.0  # of that share: simulating
    result = train_model(
        store,
        req,
        lambda epoch, loss, val, done: report(share * (simulating + (1 - simulating) * done)),
        lambda done, total: report(share * simulating * done / total),
    )
    if gate is not None:
        diagnosis = DiagnoseRequest.from_dict(
            {**gate, "model": result["model"], "version": result["version"]}
        )
        verdict = diagnose_model(store, diagnosis, lambda f, _: report(share + (1 - share) * f))
        result["diagnosis"] = {k: verdict[k] for k in ("passed", "checks", "stored_report")}
    return result


def _diagnose(store: Store, request: dict[str, Any], report: Callable[[float], None]) -> dict:
    from sbi_service.workflows.diagnose import DiagnoseRequest, diagnose_model

    args = {k: v for k, v in request.items() if k != "resources"}
    return diagnose_model(store, DiagnoseRequest.from_dict(args), lambda f, _: report(f))
