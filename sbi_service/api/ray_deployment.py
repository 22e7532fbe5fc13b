"""Ray Serve: the same service as ``sbi-service serve``, as N replicas on a Ray cluster.

    sbi-service serve --backend ray --replicas 2        # a local Ray runtime, or
    SBI_SERVICE_RAY_ADDRESS=auto sbi-service serve --backend ray --replicas 8
    serve run sbi_service.api.ray_deployment:build_app replicas=2   # 0: autoscaling

Two deployments make the application:

- ``SbiService``, the replicas: each builds the FastAPI app exactly as ``sbi-service
  serve`` does (``create_app``: its own model pool, batching engines, admission rule and
  job runner, over the store at ``SBI_SERVICE_HOME``, a shared volume on a cluster),
  runs its start-up (preloaded models loaded and warmed) before Ray Serve sends it
  traffic, and answers each HTTP request handed to it through that app in process
  (httpx's ASGI transport). A request's samples depend only on its seed, never on its
  batch-mates, so every replica answers a seeded request with the same samples.
- ``Gateway``, the HTTP ingress behind Ray Serve's proxy (light: no model, no CPU
  reserved): it hands each request's method, path, headers and body to a replica and
  returns the replica's answer. A replica that dies while it holds a request (killed,
  out of memory, its node lost) is restarted by Ray Serve; the gateway sends the
  request again to another replica when that cannot change stored state (GET, HEAD,
  and the ``samples`` and ``log_prob`` computations), and answers any other such request
  503 with ``Retry-After``; an answer that has not come after ``request_timeout_s`` +
  ``GATEWAY_GRACE_S`` is a 503 too. So a client sees the answer, or a 503, once per
  request: never Ray's 500 for a dead replica, and never a hang. Each answer names the
  replica that made it in ``X-Served-By`` (its id and pid).

Model multiplexing: the gateway tags a ``samples`` or ``log_prob`` request with its model
name (Ray Serve's multiplexed model id), and a replica loads a model through
``serve.multiplexed`` (into its model pool), so Ray Serve routes a model's requests to
the replicas that already hold it, and a replica keeps ``model_cache_size`` models,
least recently used evicted, as the pool does.

``AUTOSCALING`` is the documented autoscaling configuration (``--replicas 0``): Ray
Serve adds a replica while the ongoing requests per replica stay above
``target_ongoing_requests`` (docs/scaling.md).

This is the only module that imports Ray Serve; nothing else in the service knows it.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from typing import Any

import httpx
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sbi_service.api.errors import error_body
from sbi_service.config import Settings

AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 8,
    # 64 requests in flight per replica keep its engine's batches full (benchmarks/serving.py)
    "target_ongoing_requests": 64,
    "upscale_delay_s": 10,
    "downscale_delay_s": 120,
}
# No access log line per request in each process it crosses (a tenth of the CPU per request)
QUIET = {"enable_access_log": False, "log_level": "WARNING"}
REPLICA_MAX_ONGOING = 256  # requests one replica holds at once; more wait in Ray's queue
GATEWAY_GRACE_S = 30.0  # beyond the request's own deadline, for loading a model or a restart
ATTEMPTS = 3  # a request that cannot change state goes to at most this many replicas
# Computations on a model: safe to send again, and tagged with the model for multiplexing.
MODEL_COMPUTATION = re.compile(r"/v1/models/([^/]+)/(samples|log_prob)")
# Hop-by-hop and length headers: recomputed by each side of a hop.
HOP_HEADERS = {b"host", b"content-length", b"connection", b"transfer-encoding", b"keep-alive"}


@serve.deployment(
    name="sbi_service",
    max_ongoing_requests=REPLICA_MAX_ONGOING,
    graceful_shutdown_timeout_s=30,
    health_check_period_s=5,
)
class SbiService:
    """One replica: the whole REST API over its own model pool and batching engines."""

    async def __init__(self, settings_json: str) -> None:
        from sbi_service.api.app import create_app

        settings = Settings.model_validate_json(settings_json)
        self.app = create_app(settings)
        self.state = self.app.state.sbi
        self.lifespan = self.app.router.lifespan_context(self.app)
        await self.lifespan.__aenter__()
        while not (self.state.ready or self.state.startup_error):  # preload done (or failed)
            await asyncio.sleep(0.05)
        self.served_by = [
            (
                b"x-served-by",
                f"{serve.get_replica_context().replica_id.unique_id} pid {os.getpid()}".encode(),
            )
        ]
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 0))
        self.client = httpx.AsyncClient(transport=transport, base_url="http://sbi-service")

        async def load(model: str) -> Any:
            return await self.state.pool.get(model)

        self.load_model = serve.multiplexed(max_num_models_per_replica=settings.model_cache_size)(
            load
        )
        for model in settings.preload_models if self.state.ready else ():
            await self.load_model(model)  # Ray Serve learns that this replica holds them

    async def handle(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One HTTP request through the app -> (status, headers, body)."""
        model = serve.get_multiplexed_model_id()
        if model:
            try:
                await self.load_model(model)
            except Exception:  # an unknown or unservable model: the app answers 404/409
                pass
        request = self.client.build_request(
            method, httpx.URL(raw_path=target), headers=headers, content=body
        )
        response = await self.client.send(request)
        return response.status_code, list(response.headers.raw) + self.served_by, response.content

    async def __del__(self) -> None:
        """Ray Serve stops the replica: the app's shutdown (jobs stop, engines drain)."""
        await self.client.aclose()
        await self.lifespan.__aexit__(None, None, None)


@serve.deployment(name="gateway", max_ongoing_requests=4096, ray_actor_options={"num_cpus": 0})
class Gateway:
    """The HTTP ingress: each request to a replica, again to another if it died (see above)."""

    def __init__(self, service: DeploymentHandle, settings_json: str) -> None:
        self.service = service
        self.timeout = Settings.model_validate_json(settings_json).request_timeout_s
        self.handles: dict[str, DeploymentHandle] = {}

    def handle(self, model: str) -> DeploymentHandle:
        """The handle that tags requests with ``model`` (made once per model)."""
        if model not in self.handles:
            self.handles[model] = self.service.options(multiplexed_model_id=model)
        return self.handles[model]

    async def __call__(self, request: Request) -> Response:
        target = request.scope.get("raw_path") or request.url.path.encode()
        if request.scope.get("query_string"):
            target += b"?" + request.scope["query_string"]
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in HOP_HEADERS]
        body = await request.body()
        computation = MODEL_COMPUTATION.fullmatch(request.url.path)
        safe = request.method in ("GET", "HEAD") or computation is not None
        handle = self.handle(computation[1] if computation else "")
        for _ in range(ATTEMPTS if safe else 1):
            try:
                status, raw, content = await asyncio.wait_for(
                    handle.handle.remote(request.method, target, headers, body),
                    self.timeout + GATEWAY_GRACE_S,
                )
            except RayActorError:  # the replica died holding the request; Ray restarts it
                continue
            except asyncio.TimeoutError:
                return unavailable(f"no replica answered within {self.timeout:.0f} s")
            answer = Response(content, status)
            answer.raw_headers = [(k, v) for k, v in raw if k.lower() not in HOP_HEADERS]
            answer.raw_headers.append((b"content-length", str(len(content)).encode()))
            return answer
        what = "each replica tried" if safe else "the replica handling this request"
        return unavailable(
            f"{what} stopped before answering; it is being restarted"
            + ("" if safe else ": check whether the change was made before retrying")
        )


def unavailable(reason: str, retry_after_s: float = 1.0) -> JSONResponse:
    """A 503 in the service's error shape (``api.errors.error_body``)."""
    return JSONResponse(
        error_body("server", f"{reason}; retry"),
        503,
        headers={"Retry-After": str(math.ceil(retry_after_s))},
    )


def build(settings: Settings, replicas: int = 1, num_cpus: float = 1.0) -> Application:
    """The application: ``replicas`` replicas of ``num_cpus`` each, or autoscaling for 0."""
    settings = settings.model_copy(update={"home": settings.home.resolve()})
    scaling: dict[str, Any] = (
        {"autoscaling_config": AUTOSCALING} if replicas == 0 else {"num_replicas": replicas}
    )
    service = SbiService.options(**scaling, ray_actor_options={"num_cpus": num_cpus})
    settings_json = settings.model_dump_json()
    return Gateway.bind(service.bind(settings_json), settings_json)


def build_app(args: dict[str, str]) -> Application:
    """For ``serve run sbi_service.api.ray_deployment:build_app [replicas=N]`` (default
    0: autoscaling); settings from the SBI_SERVICE_* variables where ``serve run`` runs."""
    return build(Settings(), int(args.get("replicas", "0")))


def run(settings: Settings, host: str, port: int, replicas: int) -> None:
    """Serve on Ray (``settings.ray_address``, else a local runtime) until interrupted;
    then the application is deleted (the replicas drain) and a local runtime stops."""
    import ray

    from sbi_service import ray_compute

    ray_compute.connect(settings.ray_address or None)
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET)
    try:
        app = build(settings, replicas)
        serve.run(app, name="sbi_service", route_prefix="/", blocking=True, logging_config=QUIET)
    finally:
        serve.delete("sbi_service")
        ray.shutdown()
