"""Simulators: list them, register one by import path or URL (``register_simulator``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from sbi_service.api.deps import ServiceState, get_state, read_access, require_key
from sbi_service.api.errors import ApiError, field_error
from sbi_service.api.responses import json_safe
from sbi_service.api.schemas import ErrorResponse, RegisterSimulator
from sbi_service.errors import UserError
from sbi_service.simulators.registry import list_tasks
from sbi_service.workflows.simulators import register_simulator

router = APIRouter(
    prefix="/v1/simulators",
    tags=["simulators"],
    responses={code: {"model": ErrorResponse} for code in (401, 403, 422)},
)


@router.get("", dependencies=[Depends(read_access)])
async def list_simulators(state: ServiceState = Depends(get_state)) -> list[dict[str, Any]]:
    """Built-in, plugin and registered simulators (an entry with "error" cannot load)."""
    stored = await asyncio.to_thread(state.store.list_simulators)
    return json_safe(await asyncio.to_thread(list_tasks, stored))


REMOTE_FIELDS = ("format", "timeout_s", "retries", "batch_size", "max_concurrency")


@router.post("", status_code=201, dependencies=[Depends(require_key)])
async def register(
    body: RegisterSimulator, state: ServiceState = Depends(get_state)
) -> dict[str, Any]:
    """Register a simulator by import path (modules on ``SBI_SERVICE_IMPORT_ALLOWLIST``
    only; 403 otherwise) or by URL (hosts on ``SBI_SERVICE_SIMULATOR_HOSTS`` only); a
    trial batch of 10 prior draws checks it before anything is stored."""
    if (body.import_path is None) == (body.url is None):
        raise ApiError(422, "import_path", "give exactly one of import_path or url")
    if body.url is not None:
        if body.prior is None or body.x_shape is None:
            field = "prior" if body.prior is None else "x_shape"
            raise ApiError(422, field, "a remote simulator (url) needs prior and x_shape")
        kind = "remote"
        spec: dict[str, Any] = {"url": body.url, **body.model_dump(include=set(REMOTE_FIELDS))}
        field = "url"
    else:
        kind, spec, field = "import_path", {"import_path": body.import_path}, "import_path"
    if body.prior is not None:
        spec["prior"] = body.prior
    if body.x_shape is not None:
        spec["x_shape"] = body.x_shape
    settings = state.settings
    try:
        info = await asyncio.to_thread(
            register_simulator,
            state.store,
            body.name,
            kind,
            spec,
            settings.import_allowlist,
            settings.simulator_hosts,
        )
    except UserError as e:
        raise field_error(e, field) from None
    return json_safe(info)
