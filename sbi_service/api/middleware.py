"""A pure ASGI middleware: body limits, early shedding, in-flight count and metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so that ``receive`` still reaches the server
after the body is read: a sampling route waits on it to learn that its client went
away. Before anything is read:

- a body declared larger than ``max_body_bytes`` gets 413;
- a sampling request gets 503 + ``Retry-After`` when the work already admitted cannot
  finish within its deadline (``Admission.check``), or when the bodies being held by
  requests in flight would pass ``max_pending_body_bytes`` (the memory bound).

Then the body is read (413 past the limit) and replayed to the app. The arrival time is
left in ``request.state.received_at``: a request's deadline counts from it, so the time
it waited for the event loop, its body and its parse is spent from its deadline. After each
sampling request the event loop's CPU time since the previous one is recorded: the
per-request overhead of the admission rule's estimate.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sbi_service.api.deps import ServiceState
from sbi_service.api.errors import error_body
from sbi_service.serving import Overloaded

SAMPLES_PATH = re.compile(r"^/v1/models/[^/]+/samples$")

RECEIVED_AT = "received_at"  # request.state key: perf_counter() when the request arrived
UPLOAD_PATH = "/v1/datasets"  # bodies up to ``max_upload_bytes``; others ``max_body_bytes``


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, state: ServiceState):
        self.app, self.state = app, state
        self.body_bytes = 0  # held by requests in flight
        self._loop_cpu: float | None = None  # the loop's CPU time at the last measurement

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope.setdefault("state", {})[RECEIVED_AT] = start  # deadlines count from here
        if self._loop_cpu is None:  # from the first request on: not the start-up's work
            self._loop_cpu = time.thread_time()
        status = [500]

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        sampling = scope["method"] == "POST" and SAMPLES_PATH.match(scope["path"]) is not None
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length", b"0")
        held = int(declared) if declared.isdigit() else 0
        self.state.in_flight += 1
        self.body_bytes += held
        try:
            refusal = self._shed(headers, held) if sampling else None
            if refusal is not None:
                await self._overloaded(send_recording, refusal)
            else:
                replay = await self._read_body(scope, receive, send_recording)
                if replay is not None:
                    await self.app(scope, replay, send_recording)
        finally:
            self.state.in_flight -= 1
            self.body_bytes -= held
            if sampling and status[0] == 200:
                cpu = time.thread_time()
                self.state.pool.admission.record_request(cpu - self._loop_cpu)
                self._loop_cpu = cpu
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.state.metrics.request_latency.labels(label).observe(time.perf_counter() - start)
            self.state.metrics.requests.labels(label, str(status[0])).inc()

    def _shed(self, headers: dict[bytes, bytes], held: int) -> Overloaded | None:
        """Why a sampling request is refused before its body is read, or None."""
        s = self.state.settings
        if self.body_bytes > s.max_pending_body_bytes and held < self.body_bytes:
            return Overloaded(
                f"the server holds {self.body_bytes - held} bytes of request bodies, its limit "
                f"is {s.max_pending_body_bytes}; retry later",
                1,
            )
        try:
            deadline = min(float(headers.get(b"x-request-timeout", b"inf")), s.request_timeout_s)
        except ValueError:
            deadline = s.request_timeout_s  # the route answers 422 for it
        try:
            self.state.pool.admission.check(deadline)
        except Overloaded as e:
            return e
        return None

    async def _overloaded(self, send: Send, e: Overloaded) -> None:
        self.state.metrics.rejections.labels("overloaded").inc()
        await _send_error(
            send, 503, error_body("body", str(e)), [(b"retry-after", str(e.retry_after).encode())]
        )

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The app's ``receive``: the buffered body, then the server's own (disconnects)."""
        limit = self.state.settings.max_body_bytes
        if scope.get("path", "").startswith(UPLOAD_PATH):  # datasets: bigger bodies
            limit = self.state.settings.max_upload_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._too_large(send, limit)
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(send, limit)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: list[Any] = [b"".join(chunks)]

        async def replay() -> Message:
            if body:
                return {"type": "http.request", "body": body.pop(), "more_body": False}
            return await receive()

        return replay

    async def _too_large(self, send: Send, limit: int) -> None:
        self.state.metrics.rejections.labels("body_too_large").inc()
        body = error_body("body", f"the body is larger than the limit of {limit} bytes")
        await _send_error(send, 413, body, [(b"connection", b"close")])


async def _send_error(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
