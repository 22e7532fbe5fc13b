"""Simulators: list them, register one by import path (``register_simulator``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from sbi_service.api.deps import ServiceState, get_state, read_access, require_key
from sbi_service.api.errors import field_error
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


@router.post("", status_code=201, dependencies=[Depends(require_key)])
async def register(
    body: RegisterSimulator, state: ServiceState = Depends(get_state)
) -> dict[str, Any]:
    """Register a simulator by import path; it is run once on 2 prior draws to check it."""
    spec: dict[str, Any] = {"import_path": body.import_path}
    if body.prior is not None:
        spec["prior"] = body.prior
    if body.x_shape is not None:
        spec["x_shape"] = body.x_shape
    try:
        info = await asyncio.to_thread(register_simulator, state.store, body.name, spec)
    except UserError as e:
        raise field_error(e, "body") from None
    return json_safe(info)
