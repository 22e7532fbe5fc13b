"""Jobs: train or diagnose in a worker process; poll for state, progress and result."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Depends, Query

from sbi_service.api.deps import ServiceState, get_state, read_access, require_key
from sbi_service.api.errors import ApiError, field_error
from sbi_service.api.responses import json_safe
from sbi_service.api.schemas import DiagnoseJob, ErrorResponse, JobCreated, JobInfo, JobRequest
from sbi_service.errors import NotFoundError, UserError
from sbi_service.estimators.auto import KINDS
from sbi_service.simulators.priors import prior_from_spec
from sbi_service.simulators.registry import list_names
from sbi_service.store.db import check_name
from sbi_service.workflows.datasets import get_dataset

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    responses={code: {"model": ErrorResponse} for code in (401, 403, 404, 422)},
)


# OpenAPI links: what a client (or a stateful fuzzer) does next with a new job.
JOB_LINKS = {
    "ReadTheJob": {
        "operationRef": "#/paths/~1v1~1jobs~1{job_id}/get",
        "parameters": {"job_id": "$response.body#/id"},
    },
    "SampleTheTrainedModel": {
        "operationRef": "#/paths/~1v1~1models~1{model}~1samples/post",
        "parameters": {"model": "$request.body#/name"},
    },
}


@router.post(
    "",
    status_code=202,
    response_model=JobCreated,
    dependencies=[Depends(require_key)],
    responses={202: {"links": JOB_LINKS}},
)
async def create_job(
    body: JobRequest = Body(discriminator="kind"), state: ServiceState = Depends(get_state)
) -> dict[str, str]:
    """Start a train or diagnose job; 202 with its id. Checked here, run in a worker process."""
    request = body.model_dump(exclude_none=True)
    if isinstance(body, DiagnoseJob):
        await asyncio.to_thread(_check_diagnose, state, request)
    else:
        await asyncio.to_thread(_check_train, state, request)
    on_done = _reload_when_trained(state)
    job_id = await asyncio.to_thread(state.jobs.submit, body.kind, request, on_done)
    return {"id": job_id}


@router.post(
    "/{job_id}/rerun",
    status_code=202,
    response_model=JobCreated,
    dependencies=[Depends(require_key)],
    responses={409: {"model": ErrorResponse}},
)
async def rerun_job(job_id: str, state: ServiceState = Depends(get_state)) -> dict[str, str]:
    """Run an interrupted or failed job again (same id, same request); 409 for other states."""
    on_done = _reload_when_trained(state)
    try:
        await asyncio.to_thread(state.jobs.rerun, job_id, on_done)
    except NotFoundError as e:
        raise field_error(e, "job_id") from None
    except UserError as e:
        raise ApiError(409, "job_id", str(e)) from None
    return {"id": job_id}


def _reload_when_trained(state: ServiceState) -> Callable[[str, dict[str, Any]], None]:
    """A job's ``on_done``: a newly trained version of a model this server serves is swapped in."""
    loop = asyncio.get_running_loop()

    def on_done(job_id: str, job: dict[str, Any]) -> None:
        # A new version or verdict of a model this server has seen: apply the policy now.
        if job["state"] == "succeeded":
            name = job["result"]["model"]
            loop.call_soon_threadsafe(state.spawn, state.pool.refresh([name]))

    return on_done


def _check_train(state: ServiceState, request: dict[str, Any]) -> None:
    """The checks that need no simulation, so a bad job fails now, not in the worker."""
    try:
        check_name(request["name"])
    except UserError as e:
        raise field_error(e, "name") from None
    if "diagnose" in request:
        _test_data_from_dataset(state, request["diagnose"], "diagnose.")
        _check_train_diagnose(request["name"], request["diagnose"])
    if request["estimator"] not in KINDS:
        raise ApiError(422, "estimator", f"unknown estimator; expected one of {', '.join(KINDS)}")
    has_simulator, has_dataset = "simulator" in request, "dataset" in request
    if has_simulator == has_dataset:
        raise ApiError(
            422, "simulator", "give either simulator (+ num_simulations) or dataset (+ prior)"
        )
    if has_simulator:
        if "num_simulations" not in request:
            raise ApiError(422, "num_simulations", "required with simulator")
        if request["simulator"] not in list_names(state.store.list_simulators()):
            raise ApiError(422, "simulator", f"unknown simulator {request['simulator']!r}")
    else:
        if "prior" not in request:
            raise ApiError(
                422, "prior", "required with dataset: the prior the simulations came from"
            )
        try:
            prior_from_spec(request["prior"])
        except UserError as e:
            raise field_error(e, "prior") from None
        try:
            get_dataset(state.store, request["dataset"])
        except UserError as e:
            raise ApiError(422, "dataset", str(e)) from None


def _test_data_from_dataset(state: ServiceState, options: dict[str, Any], field: str) -> None:
    """Refuse server paths; turn an uploaded ``dataset`` id into the test data's file.

    ``options`` (a diagnose job or a train job's gate) is changed in place: its ``dataset``
    becomes ``data``, the stored file's path, which only the server chooses.
    """
    for key in ("data", "report_dir"):
        if key in options:
            raise ApiError(
                422,
                f"{field}{key}",
                "a path on the server is not accepted: upload test pairs with "
                "POST /v1/datasets and give their id as dataset",
            )
    if "dataset" in options:
        try:
            record = get_dataset(state.store, options.pop("dataset"))
        except UserError as e:
            raise ApiError(422, f"{field}dataset", str(e)) from None
        options["data"] = str(state.store.dataset_path(record["id"]))


def _check_diagnose(state: ServiceState, request: dict[str, Any]) -> None:
    """The request's fields, and that the model (and version) it names exists."""
    from sbi_service.workflows.diagnose import DiagnoseRequest

    _test_data_from_dataset(state, request, "")
    try:
        req = DiagnoseRequest.from_dict({k: v for k, v in request.items() if k != "resources"})
    except UserError as e:
        raise field_error(e, "body") from None
    except TypeError as e:
        raise ApiError(422, "body", f"bad diagnose request: {e}") from None
    try:
        state.store.get_model_version(req.model, req.version)
    except NotFoundError as e:
        raise ApiError(422, "version" if req.version is not None else "model", str(e)) from None


def _check_train_diagnose(name: str, options: dict[str, Any]) -> None:
    from sbi_service.workflows.diagnose import DiagnoseRequest

    for key in ("model", "version", "kind"):
        if key in options:
            raise ApiError(
                422, f"diagnose.{key}", "the gate runs on the version this job trains: omit it"
            )
    try:
        DiagnoseRequest.from_dict({**options, "model": name})
    except UserError as e:
        raise field_error(e, "diagnose") from None
    except TypeError as e:
        raise ApiError(422, "diagnose", f"bad diagnose options: {e}") from None


@router.get("", response_model=list[JobInfo], dependencies=[Depends(read_access)])
async def list_jobs(
    limit: int = Query(50, ge=1, le=1000), state: ServiceState = Depends(get_state)
) -> list[dict[str, Any]]:
    """The most recent jobs, newest first."""
    return json_safe(await asyncio.to_thread(state.store.list_jobs, limit))


@router.get("/{job_id}", response_model=JobInfo, dependencies=[Depends(read_access)])
async def get_job(job_id: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    try:
        return json_safe(await asyncio.to_thread(state.store.get_job, job_id))
    except NotFoundError as e:
        raise field_error(e, "job_id") from None
