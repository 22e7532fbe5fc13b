"""Dependencies: the service state, settings, and API-key checks.

A key comes as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` and is compared in
constant time with the configured ``api_keys``. Mutating endpoints always need one
(with no keys configured they are refused: nobody can change state anonymously);
reads need one when ``require_key_for_reads`` is set.

The dependencies are coroutines although they never wait: FastAPI runs a plain ``def``
dependency in its thread pool, a thread hop (and a wait for the GIL) per dependency per
request, which under load cost the event loop more than the checks themselves.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, Request

from sbi_service.api.errors import ApiError
from sbi_service.config import Settings
from sbi_service.jobs import JobRunner
from sbi_service.serving import Metrics, ModelPool
from sbi_service.store.db import Store

log = logging.getLogger("sbi_service.api")


@dataclass
class ServiceState:
    """Everything a request handler needs, kept on ``app.state.sbi``."""

    settings: Settings
    store: Store
    metrics: Metrics
    pool: ModelPool
    jobs: JobRunner
    ready: bool = False  # models preloaded and warm
    draining: bool = False  # SIGTERM received: finishing in-flight work
    in_flight: int = 0  # HTTP requests being handled
    startup_error: str | None = None
    background: set[asyncio.Task] = field(default_factory=set)  # cancelled at shutdown

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` in the background on the event loop (call it on the loop)."""
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())


async def get_state(request: Request) -> ServiceState:
    return request.app.state.sbi


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


def _check_key(request: Request, state: ServiceState, what: str) -> None:
    if not state.settings.api_keys:
        state.metrics.rejections.labels("unauthorized").inc()
        raise ApiError(
            403,
            "Authorization",
            f"{what} are disabled: the server has no API keys configured (SBI_SERVICE_API_KEYS)",
        )
    key = _presented_key(request)
    if key is None:
        state.metrics.rejections.labels("unauthorized").inc()
        raise ApiError(
            401,
            "Authorization",
            f"{what} need an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not any(hmac.compare_digest(key.encode(), k.encode()) for k in state.settings.api_keys):
        state.metrics.rejections.labels("unauthorized").inc()
        raise ApiError(
            401, "Authorization", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"}
        )


def caller(request: Request) -> str:
    """Who made a request, for the record: a fingerprint of its API key and its address."""
    key = _presented_key(request)
    who = "no key" if key is None else "key sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]
    host = request.client.host if request.client is not None else "unknown"
    return f"{who} from {host}"


async def require_key(request: Request, state: ServiceState = Depends(get_state)) -> None:
    """For mutating endpoints."""
    _check_key(request, state, "mutating endpoints")


async def read_access(request: Request, state: ServiceState = Depends(get_state)) -> None:
    """For reads: a key only when ``require_key_for_reads``."""
    if state.settings.require_key_for_reads:
        _check_key(request, state, "reads")
