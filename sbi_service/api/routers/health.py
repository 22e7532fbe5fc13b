"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from sbi_service.api.deps import ServiceState, get_state
from sbi_service.serving.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: ServiceState = Depends(get_state)) -> JSONResponse:
    """200 once the preloaded models are loaded and warm; 503 before, and while draining."""
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if not state.ready:
        body = {"status": "starting"}
        if state.startup_error:
            body = {"status": "failed", "error": state.startup_error}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "models": state.pool.loaded()})


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: ServiceState = Depends(get_state)) -> Response:
    """Prometheus text format 0.0.4 (every worker process's, with ``serve --workers N``)."""
    text = await asyncio.to_thread(state.metrics.render)
    return Response(text, media_type=CONTENT_TYPE)
