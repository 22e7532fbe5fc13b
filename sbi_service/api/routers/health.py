"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from sbi_service.api.deps import ServiceState, get_state

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
async def metrics(state: ServiceState = Depends(get_state)) -> PlainTextResponse:
    """Prometheus text format 0.0.4."""
    return PlainTextResponse(
        state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
