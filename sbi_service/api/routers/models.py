"""Models: list, describe, sample, log_prob, reload.

Sampling goes through the model's batching engine (``sbi_service.serving``); this
module only checks input, applies the limits and deadline, watches for the client
going away, and encodes the response (JSON, or ``.npy`` bytes for
``Accept: application/x-npy``).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Header, Request, Response

from sbi_service.api.deps import ServiceState, get_state, read_access, require_key
from sbi_service.api.errors import ApiError, field_error
from sbi_service.api.schemas import (
    ErrorResponse,
    LogProbRequest,
    LogProbResponse,
    ModelInfo,
    ReloadResponse,
    SamplesRequest,
    SamplesResponse,
)
from sbi_service.errors import NotFoundError, UserError
from sbi_service.serving import DeadlineExceeded, QueueFull
from sbi_service.serving.engine import new_seed
from sbi_service.workflows.models import summarize

NPY = "application/x-npy"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 422, 503, 504)
}

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERRORS)


@router.get("", response_model=list[ModelInfo], dependencies=[Depends(read_access)])
async def list_models(state: ServiceState = Depends(get_state)) -> list[dict[str, Any]]:
    models = await asyncio.to_thread(state.store.list_models)
    return [_model_info(state, m) for m in models]


@router.get("/{model}", response_model=ModelInfo, dependencies=[Depends(read_access)])
async def get_model(model: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    models = await asyncio.to_thread(state.store.list_models)
    for m in models:
        if m["model"] == model:
            return _model_info(state, m)
    known = ", ".join(m["model"] for m in models) or "none yet"
    raise ApiError(404, "model", f"model {model!r} does not exist (models: {known})")


def _model_info(state: ServiceState, record: dict[str, Any]) -> dict[str, Any]:
    loaded = [m["version"] for m in state.pool.loaded() if m["model"] == record["model"]]
    return {**record, "loaded_versions": loaded}


@router.post(
    "/{model}/samples",
    response_model=SamplesResponse,
    dependencies=[Depends(read_access)],
    responses={200: {"content": {NPY: {}}, "description": "JSON, or .npy bytes"}},
)
async def sample(
    model: str,
    body: SamplesRequest,
    request: Request,
    state: ServiceState = Depends(get_state),
    accept: str | None = Header(None),
    x_request_timeout: str | None = Header(None),
) -> Response:
    """Posterior samples (num_obs, num_samples, dim_theta) for each observation.

    Requests from all clients are batched together; a request's samples depend only on
    its seed. ``X-Request-Timeout: SECONDS`` lowers the deadline (504 past it); a full
    queue answers 503 with ``Retry-After``.
    """
    s = state.settings
    timeout = _timeout(x_request_timeout, s.request_timeout_s)
    observations = np.asarray(body.observations, dtype=np.float32)
    num_obs = observations.shape[0]
    if num_obs > s.max_observations:
        raise ApiError(
            422, "observations", f"{num_obs} observations; at most {s.max_observations} per request"
        )
    if body.num_samples > s.max_num_samples:
        raise ApiError(422, "num_samples", f"at most {s.max_num_samples}, got {body.num_samples}")
    if num_obs * body.num_samples > s.max_request_rows:
        raise ApiError(
            422,
            "num_samples",
            f"num_obs x num_samples = {num_obs * body.num_samples} is over the limit of "
            f"{s.max_request_rows} draws per request; split the request",
        )
    seed = new_seed() if body.seed is None else body.seed
    try:
        loaded, samples = await _unless_disconnected(
            request,
            state,
            state.pool.sample(model, body.version, observations, body.num_samples, seed, timeout),
        )
    except NotFoundError as e:
        raise field_error(e, "version" if body.version is not None else "model") from None
    except UserError as e:
        raise field_error(e, "observations") from None
    except QueueFull as e:
        state.metrics.rejections.inc("queue_full")
        raise ApiError(503, "body", str(e), {"Retry-After": str(e.retry_after)}) from None
    except DeadlineExceeded as e:
        state.metrics.rejections.inc("deadline")
        raise ApiError(504, "X-Request-Timeout", f"deadline exceeded: {e}") from None
    except _ClientGone:
        return Response(status_code=499)

    headers = {"X-Model": model, "X-Model-Version": str(loaded.version), "X-Seed": str(seed)}
    if accept is not None and NPY in accept:
        buffer = io.BytesIO()
        np.save(buffer, samples, allow_pickle=False)
        return Response(buffer.getvalue(), media_type=NPY, headers=headers)
    payload: dict[str, Any] = {"model": model, "version": loaded.version, "seed": seed}
    if body.return_samples:
        payload["samples"] = samples.tolist()
    if body.summary:
        payload["summary"] = _summary(samples, body.credible_level)
    return Response(json.dumps(payload), media_type="application/json", headers=headers)


def _summary(samples: np.ndarray, level: float) -> dict[str, Any]:
    """samples (num_obs, N, d) -> summaries, each (num_obs, d)."""
    low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=1)
    interval = {"level": level, "low": low.tolist(), "high": high.tolist()}
    return {**summarize(samples), "credible_interval": interval}


def _timeout(header: str | None, default: float) -> float:
    if header is None:
        return default
    try:
        value = float(header)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ApiError(
            422, "X-Request-Timeout", f"must be a positive number of seconds: {header!r}"
        )
    return min(value, default)


class _ClientGone(Exception):
    pass


async def _unless_disconnected(request: Request, state: ServiceState, work: Any) -> Any:
    """Await ``work`` unless the client disconnects first; then cancel it (drops its rows)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    task.cancel()
    state.metrics.rejections.inc("disconnected")
    raise _ClientGone


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post(
    "/{model}/log_prob", response_model=LogProbResponse, dependencies=[Depends(read_access)]
)
async def log_prob(
    model: str, body: LogProbRequest, state: ServiceState = Depends(get_state)
) -> Response:
    """log q(theta | x) for paired rows; one observation is paired with every parameter row."""
    s = state.settings
    try:
        loaded = await state.pool.get(model, body.version)
    except NotFoundError as e:
        raise field_error(e, "version" if body.version is not None else "model") from None
    posterior = loaded.posterior
    if not posterior.estimator.has_density:
        raise ApiError(
            422, "model", f"model {model!r} ({posterior.estimator.kind}) has no tractable density"
        )
    theta = torch.from_numpy(np.asarray(body.parameters, dtype=np.float32))
    if theta.ndim != 2 or theta.shape[1] != posterior.dim_theta:
        raise ApiError(
            422,
            "parameters",
            f"parameters have shape {tuple(theta.shape)}; expected (n, {posterior.dim_theta})",
        )
    if theta.shape[0] > s.max_request_rows:
        raise ApiError(422, "parameters", f"at most {s.max_request_rows} rows per request")
    try:
        x = posterior.check_observations(np.asarray(body.observations, dtype=np.float32))
    except UserError as e:
        raise field_error(e, "observations") from None
    if x.shape[0] == 1:
        x = x.expand(theta.shape[0], *x.shape[1:])
    elif x.shape[0] != theta.shape[0]:
        raise ApiError(
            422,
            "observations",
            f"{x.shape[0]} observations for {theta.shape[0]} parameter rows: give one "
            "observation, or one per row",
        )
    values = await loaded.engine.run(lambda: posterior.log_prob(theta, x).tolist())
    payload = {
        "model": model,
        "version": loaded.version,
        "log_prob": [v if math.isfinite(v) else None for v in values],
    }
    return Response(json.dumps(payload), media_type="application/json")


@router.post("/{model}/reload", response_model=ReloadResponse, dependencies=[Depends(require_key)])
async def reload(model: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """Serve the newest stored version: load and warm it, swap it in, drain the old one."""
    try:
        loaded = await state.pool.reload(model)
    except NotFoundError as e:
        raise field_error(e, "model") from None
    return {"model": model, "version": loaded.version}
