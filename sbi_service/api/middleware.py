"""A pure ASGI middleware: body-size limit, in-flight count and request metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so that ``receive`` still reaches the server
after the body is read: a sampling route waits on it to learn that its client went
away. The body is read here first, at most ``max_body_bytes`` (413 past that, from
``Content-Length`` before reading anything), then replayed to the app.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sbi_service.api.deps import ServiceState
from sbi_service.api.errors import error_body


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, state: ServiceState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.state.in_flight += 1
        try:
            replay = await self._read_body(scope, receive, send_recording)
            if replay is not None:
                await self.app(scope, replay, send_recording)
        finally:
            self.state.in_flight -= 1
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.state.metrics.request_latency.observe(time.perf_counter() - start, label)
            self.state.metrics.requests.inc(label, str(status[0]))

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The app's ``receive``: the buffered body, then the server's own (disconnects)."""
        limit = self.state.settings.max_body_bytes
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
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
        self.state.metrics.rejections.inc("body_too_large")
        payload = json.dumps(
            error_body("body", f"the body is larger than the limit of {limit} bytes")
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
