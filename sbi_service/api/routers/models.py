"""Models: list, describe (with verdicts), diagnostic reports, sample, log_prob, reload.

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
import time
from functools import partial
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ValidationError

from sbi_service.api.deps import ServiceState, caller, get_state, read_access, require_key
from sbi_service.api.errors import ApiError, field_error, is_json
from sbi_service.api.middleware import RECEIVED_AT
from sbi_service.api.responses import json_safe
from sbi_service.api.schemas import (
    ErrorResponse,
    LogProbRequest,
    LogProbResponse,
    ModelInfo,
    ReloadRequest,
    ReloadResponse,
    SamplesRequest,
    SamplesResponse,
    count_observations,
    too_many_observations,
)
from sbi_service.diagnostics.report import REPORT_HTML, REPORT_JSON
from sbi_service.errors import ModelFileError, NotFoundError, UserError
from sbi_service.serving import DeadlineExceeded, Overloaded
from sbi_service.serving.engine import new_seed
from sbi_service.serving.policy import ModelStatus, NotServable
from sbi_service.workflows.models import summarize

NPY = "application/x-npy"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 422, 503, 504)
}

# Bodies and results up to this size are parsed and encoded on the event loop (cheaper
# than a thread hop); larger ones in a thread, so the loop keeps answering (/healthz).
INLINE_BYTES = 64 * 1024
INLINE_VALUES = 20_000

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERRORS)


@router.get("", response_model=list[ModelInfo], dependencies=[Depends(read_access)])
async def list_models(state: ServiceState = Depends(get_state)) -> list[dict[str, Any]]:
    return await asyncio.to_thread(_describe, state, state.pool.loaded())


@router.get("/{model}", response_model=ModelInfo, dependencies=[Depends(read_access)])
async def get_model(model: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """The model's versions with their diagnostic verdicts, checks and reports, the version
    served under the policy, and the recorded promotions."""
    models = await asyncio.to_thread(_describe, state, state.pool.loaded(), model)
    if not models:
        known = ", ".join(m["model"] for m in await asyncio.to_thread(state.store.list_models))
        raise ApiError(404, "model", f"model {model!r} does not exist (models: {known or 'none'})")
    return models[0]


def _describe(
    state: ServiceState, loaded: list[dict[str, Any]], only: str | None = None
) -> list[dict[str, Any]]:
    """``ModelInfo`` dicts read from the store (one model when ``only`` is given)."""
    out = []
    for record in state.store.list_models():
        name = record["model"]
        if only is not None and name != only:
            continue
        status = ModelStatus.read(state.store, name)
        try:
            served, because = status.served_version(state.settings.serve_policy), None
        except NotServable as e:
            served, because = None, str(e)
        info = {
            **record,
            "loaded_versions": [m["version"] for m in loaded if m["model"] == name],
            "serve_policy": state.settings.serve_policy,
            "served_version": served,
            "not_served_because": because,
            "version_details": [_version_detail(status, v) for v in sorted(status.created)],
            "promotions": status.promotions,
        }
        out.append(json_safe(info))
    return out


def _version_detail(status: ModelStatus, version: int) -> dict[str, Any]:
    detail = {
        "version": version,
        "created_at": status.created[version],
        "verdict": status.verdict(version),
    }
    verdict = status.verdicts.get(version)
    if verdict is not None:
        detail["checks"] = verdict["checks"]
        detail["diagnosed_at"] = verdict["diagnosed_at"]
        detail["diagnosis"] = verdict["details"]
        detail["report"] = f"/v1/models/{status.name}/versions/{version}/report"
    return detail


@router.get(
    "/{model}/versions/{version}/report",
    dependencies=[Depends(read_access)],
    response_class=HTMLResponse,
    responses={200: {"content": {"application/json": {}}, "description": "HTML, or JSON"}},
)
async def report(
    model: str,
    version: int,
    state: ServiceState = Depends(get_state),
    accept: str | None = Header(None),
) -> Response:
    """The version's latest diagnostic report: ``report.html`` (plots embedded), or
    ``report.json`` for ``Accept: application/json``."""
    try:
        status = await asyncio.to_thread(ModelStatus.read, state.store, model)
    except NotFoundError as e:
        raise field_error(e, "model") from None
    try:
        status.verdict(version)
    except NotFoundError as e:
        raise field_error(e, "version") from None
    if version not in status.verdicts:
        raise ApiError(
            404,
            "version",
            f"version {version} of model {model!r} has no diagnostic report yet: run a diagnose "
            f'job (POST /v1/jobs {{"kind": "diagnose", "model": "{model}", "version": {version}}})',
        )
    try:
        folder = await asyncio.to_thread(state.store.verified_report, model, version)
    except ModelFileError as e:
        raise field_error(e, "version") from None
    wants_json = accept is not None and "application/json" in accept and "text/html" not in accept
    name, media = (REPORT_JSON, "application/json") if wants_json else (REPORT_HTML, "text/html")
    return Response(await asyncio.to_thread((folder / name).read_bytes), media_type=media)


@router.post(
    "/{model}/samples",
    response_model=SamplesResponse,
    dependencies=[Depends(read_access)],
    responses={200: {"content": {NPY: {}}, "description": "JSON, or .npy bytes"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": SamplesRequest.model_json_schema()}},
        }
    },
)
async def sample(
    model: str,
    request: Request,
    state: ServiceState = Depends(get_state),
    accept: str | None = Header(None),
    x_request_timeout: str | None = Header(None),
) -> Response:
    """Posterior samples (num_obs, num_samples, dim_theta) for each observation.

    Requests from all clients are batched together; a request's samples depend only on
    its seed. ``X-Request-Timeout: SECONDS`` lowers the deadline (504 past it), which
    counts from the request's arrival (the middleware's ``received_at``). A
    request the server cannot serve within its deadline now answers 503 with
    ``Retry-After`` (``sbi_service.serving.admission``). The body is parsed off the
    event loop, and the observation count is checked before any element is.
    """
    s = state.settings
    timeout = _timeout(x_request_timeout, s.request_timeout_s)
    body = await _parse(request, SamplesRequest, {"max_observations": s.max_observations})
    timeout -= time.perf_counter() - getattr(request.state, RECEIVED_AT)  # ServiceMiddleware
    observations = np.asarray(body.observations, dtype=np.float32)
    num_obs = observations.shape[0]
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
    except (NotFoundError, NotServable) as e:
        raise field_error(e, "version" if body.version is not None else "model") from None
    except ModelFileError as e:
        raise field_error(e, "model") from None
    except UserError as e:
        raise field_error(e, "observations") from None
    except Overloaded as e:
        raise overloaded(state, e) from None
    except DeadlineExceeded as e:
        state.metrics.rejections.labels("deadline").inc()
        raise ApiError(504, "X-Request-Timeout", f"deadline exceeded: {e}") from None
    except _ClientGone:
        return Response(status_code=499)

    verdict = state.pool.verdict(model, loaded.version)
    headers = {**_served(model, loaded.version, verdict), "X-Seed": str(seed)}
    if accept is not None and NPY in accept:
        return _npy(samples, headers)
    meta: dict[str, Any] = {
        "model": model,
        "version": loaded.version,
        "verdict": verdict,
        "seed": seed,
    }
    encode = partial(_encode, meta, samples, body.return_samples, body.summary, body.credible_level)
    content = encode() if samples.size <= INLINE_VALUES else await asyncio.to_thread(encode)
    return Response(content, media_type="application/json", headers=headers)


def _encode(
    meta: dict[str, Any],
    samples: np.ndarray,
    return_samples: bool,
    summary: bool,
    level: float,
) -> str:
    payload = dict(meta)
    if return_samples:
        payload["samples"] = samples.tolist()
    if summary:
        payload["summary"] = _summary(samples, level)
    return json.dumps(payload)


async def _parse(request: Request, schema: type[BaseModel], context: dict[str, Any]) -> Any:
    """The JSON body checked against ``schema``: inline when small, else in a thread.

    Errors are the same 415/422 answers FastAPI gives for a declared body.
    """
    if not is_json(request):
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    raw = await request.body()
    limit = context.get("max_observations")

    def validate() -> Any:
        # A body with more brackets than the limit allows rows is counted before parsing.
        if limit is not None and raw.count(b"[") > limit + 1:
            count = count_observations(raw)
            if count > limit:
                message = too_many_observations(count, limit)
                loc = ("body", "observations")
                raise RequestValidationError([{"type": "value_error", "loc": loc, "msg": message}])
        try:
            return schema.model_validate_json(raw, context=context)
        except ValidationError as e:
            errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
            raise RequestValidationError(errors) from None

    return validate() if len(raw) <= INLINE_BYTES else await asyncio.to_thread(validate)


def overloaded(state: ServiceState, e: Overloaded) -> ApiError:
    """503 + Retry-After for a request the admission rule refused."""
    state.metrics.rejections.labels("overloaded").inc()
    return ApiError(503, "body", str(e), {"Retry-After": str(e.retry_after)})


def _served(model: str, version: int, verdict: str) -> dict[str, str]:
    """Headers naming what answered: a client can refuse an unvalidated posterior."""
    return {"X-Model": model, "X-Model-Version": str(version), "X-Model-Verdict": verdict}


def _npy(array: np.ndarray, headers: dict[str, str]) -> Response:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return Response(buffer.getvalue(), media_type=NPY, headers=headers)


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
    state.metrics.rejections.labels("disconnected").inc()
    raise _ClientGone


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post(
    "/{model}/log_prob",
    response_model=LogProbResponse,
    dependencies=[Depends(read_access)],
    responses={200: {"content": {NPY: {}}, "description": "JSON, or .npy bytes (float32)"}},
)
async def log_prob(
    model: str,
    body: LogProbRequest,
    state: ServiceState = Depends(get_state),
    accept: str | None = Header(None),
) -> Response:
    """log q(theta | x) for paired rows; one observation is paired with every parameter row.

    JSON has null where theta is outside the prior's support; ``.npy`` has -inf there.
    """
    s = state.settings
    try:
        loaded = await state.pool.get(model, body.version)
    except (NotFoundError, NotServable) as e:
        raise field_error(e, "version" if body.version is not None else "model") from None
    except ModelFileError as e:
        raise field_error(e, "model") from None
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
    values = await loaded.engine.run(lambda: posterior.log_prob(theta, x).numpy())
    verdict = state.pool.verdict(model, loaded.version)
    headers = _served(model, loaded.version, verdict)
    if accept is not None and NPY in accept:
        return _npy(values.astype(np.float32), headers)
    payload = {
        "model": model,
        "version": loaded.version,
        "verdict": verdict,
        "log_prob": [v if math.isfinite(v) else None for v in values.tolist()],
    }
    return Response(json.dumps(payload), media_type="application/json", headers=headers)


@router.post("/{model}/reload", response_model=ReloadResponse, dependencies=[Depends(require_key)])
async def reload(
    model: str,
    request: Request,
    body: ReloadRequest | None = None,
    state: ServiceState = Depends(get_state),
) -> dict[str, Any]:
    """Serve the version the policy picks (newest, or newest that passed), or promote
    ``version``: load and warm it, swap it in, drain the old one.

    A promotion is recorded (who, when, which, forced or not) and shown by
    ``GET /v1/models/{model}``; ``force`` serves a version the policy would refuse.
    """
    body = body or ReloadRequest()
    if body.force and body.version is None:
        raise ApiError(422, "force", "force needs a version: the version to serve regardless")
    try:
        if body.version is None:
            loaded = await state.pool.reload(model)
        else:
            actor = caller(request)
            loaded = await state.pool.promote(model, body.version, body.force, actor)
    except (NotFoundError, NotServable) as e:
        raise field_error(e, "version" if body.version is not None else "model") from None
    return {
        "model": model,
        "version": loaded.version,
        "verdict": state.pool.verdict(model, loaded.version),
    }
