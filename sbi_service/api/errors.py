"""Error responses: every error names the field it is about.

Body: ``{"detail": [{"field": "observations[0][1]", "message": "..."}]}``. Fields of
the body are named by their path (``num_samples``, ``train.max_epochs``), headers by
their name (``Authorization``, ``X-Request-Timeout``), and problems with the body as a
whole by ``body``. ``UserError`` keeps its status (422, 404 for ``NotFoundError``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from sbi_service.api.schemas import ErrorResponse
from sbi_service.errors import UserError

log = logging.getLogger("sbi_service.api")


class ApiError(Exception):
    """An error response about one field."""

    def __init__(
        self, status_code: int, field: str, message: str, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status_code, self.field, self.message = status_code, field, message
        self.headers = headers or {}


def field_error(e: UserError, field: str) -> ApiError:
    """A ``UserError`` about ``field``, keeping its status code."""
    return ApiError(e.status_code, field, str(e))


def error_body(field: str, message: str) -> dict[str, Any]:
    return {"detail": [{"field": field, "message": message}]}


def field_path(loc: Sequence[Any], tagged: bool = False) -> str:
    """('body', 'observations', 0, 1) -> 'observations[0][1]'.

    ``tagged``: the body is a discriminated union, whose tag ('train') leads the path.
    """
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    if tagged and len(parts) > 1:
        parts = parts[1:]
    path = ""
    for p in parts:
        if isinstance(p, int):
            path += f"[{p}]"
        else:
            path += f".{p}" if path else str(p)
    return path or "body"


def _field(error: dict[str, Any], tagged: bool) -> str:
    if error.get("type") == "json_invalid":
        return "body"
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        return "kind"
    return field_path(error.get("loc", ()), tagged)


def _validation_message(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})"
    if error.get("type") == "missing" and tuple(error.get("loc", ())) == ("body",):
        return "a JSON body is required (Content-Type: application/json)"
    msg = str(error.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


async def validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(tuple(e.get("loc", ())) == ("body",) for e in errors) and not is_json(request):
        _count_rejection(request, "invalid")
        message = "send the body as JSON with the header Content-Type: application/json"
        return JSONResponse(error_body("Content-Type", message), status_code=415)
    tagged = request.url.path.rstrip("/") == "/v1/jobs"
    detail = [{"field": _field(e, tagged), "message": _validation_message(e)} for e in errors]
    _count_rejection(request, "invalid")
    return JSONResponse({"detail": detail}, status_code=422)


async def api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.field, exc.message), status_code=exc.status_code, headers=exc.headers
    )


async def user_error_handler(request: Request, exc: UserError) -> JSONResponse:
    _count_rejection(request, "invalid")
    return JSONResponse(error_body("body", str(exc)), status_code=exc.status_code)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    field = {404: "path", 405: "method"}.get(exc.status_code, "body")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return JSONResponse(error_body(field, str(exc.detail)), exc.status_code, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only one route's).

    A path that is a route of its own (``/v1/datasets/uploads``) is that resource, not a
    value of another route's parameter (``/v1/datasets/{dataset_id}``): only its methods.
    """
    matching = [
        route
        for route in all_routes(request.app.routes)
        if route.matches(request.scope)[0] != Match.NONE
    ]
    exact = [r for r in matching if getattr(r, "path", None) == request.url.path]
    methods: set[str] = set()
    for route in exact or matching:
        methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def all_routes(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """The app's routes, those of included routers too (FastAPI nests them)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from all_routes(included.routes)
        else:
            yield route


async def internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("server", "internal error; see the server log"), 500)


def is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type == "application/json" or content_type.endswith("+json")


def _count_rejection(request: Request, reason: str) -> None:
    request.app.state.sbi.metrics.rejections.labels(reason).inc()


# The answers any /v1 operation may give besides its own (``create_app`` documents them
# on every operation, so that the OpenAPI document lists every status the server sends).
API_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "the body is not valid JSON",
        401: "an API key is needed, or the one sent is not valid",
        403: "the server has no API keys configured for this operation",
        413: "the body is larger than the server's limit",
        415: "the body is not sent as application/json",
        422: "a field of the request is invalid; the answer names it",
    }.items()
}


def document_errors_as_json(app: FastAPI) -> None:
    """Every 4xx/5xx answer is JSON (the handlers above), whatever a route's own media type
    (an HTML report's errors too): say so in the OpenAPI document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    for code, response in operation.get("responses", {}).items():
                        content = response.get("content")
                        if code[0] in "45" and content and "application/json" not in content:
                            response["content"] = {"application/json": content.popitem()[1]}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(UserError, user_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, internal_error_handler)
