"""The web dashboard: ``GET /ui`` and its static files, shipped in ``api/static``.

A page of plain HTML and one script (no build step) that calls the same REST API as
any client, with the API key the user types (kept in the browser's localStorage and
sent as ``X-API-Key``): models and versions with verdict badges and reports, jobs with
live progress, and posterior samples for a typed or uploaded observation.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["dashboard"])
static_files = StaticFiles(directory=STATIC)


@router.get("/ui", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")
