"""Ray Serve: the same service as ``sbi-service serve``, as N replicas on a Ray cluster.

    sbi-service serve --backend ray --replicas 2          # a local Ray runtime, or
    SBI_SERVICE_RAY_ADDRESS=auto sbi-service serve --backend ray --replicas 8
    serve run sbi_service.api.ray_deployment:app         # settings from SBI_SERVICE_*

Each replica builds the FastAPI app exactly as ``sbi-service serve`` does
(``create_app``): its own model pool, batching engines and admission rule, over the
store at ``SBI_SERVICE_HOME`` (a shared volume on a cluster). Ray Serve's HTTP proxy
spreads requests over the replicas and restarts a replica that dies. A request's
samples depend only on its seed, never on its batch-mates, so every replica answers a
seeded request with the same samples.

The settings reach the replicas as ``SBI_SERVICE_*`` variables in their runtime
environment (``settings_env``). ``AUTOSCALING`` is the documented autoscaling
configuration (``--replicas 0`` uses it): Ray Serve adds a replica when the ongoing
requests per replica pass ``target_ongoing_requests``, up to ``max_replicas``.

This is the only module that imports Ray Serve; nothing else in the service knows it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from sbi_service.config import Settings

AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 8,
    # 64 concurrent requests per replica keep its engine's batches full (benchmarks/serving.py)
    "target_ongoing_requests": 64,
    "upscale_delay_s": 10,
    "downscale_delay_s": 120,
}


def _build_app() -> FastAPI:
    """In each replica: the service's app, from the replica's SBI_SERVICE_* variables."""
    from sbi_service.api.app import create_app

    return create_app(Settings())


@serve.deployment(name="sbi_service", max_ongoing_requests=256, graceful_shutdown_timeout_s=30)
@serve.ingress(_build_app)
class SbiService:
    """One replica: the whole REST API over its own batching engine."""


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the SBI_SERVICE_* variables that rebuild it in a replica."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if isinstance(value, list):
            text = ",".join(map(str, value))
        else:
            text = json.dumps(value) if isinstance(value, dict) else str(value)
        env[f"SBI_SERVICE_{name.upper()}"] = text
    env["SBI_SERVICE_HOME"] = str(settings.home.resolve())
    return env


def build(settings: Settings, replicas: int = 1, num_cpus: float = 1.0) -> Application:
    """The application: ``replicas`` replicas, or autoscaling (``AUTOSCALING``) for 0."""
    scaling: dict[str, Any] = (
        {"autoscaling_config": AUTOSCALING} if replicas == 0 else {"num_replicas": replicas}
    )
    actor = {"num_cpus": num_cpus, "runtime_env": {"env_vars": settings_env(settings)}}
    return SbiService.options(**scaling, ray_actor_options=actor).bind()


def run(settings: Settings, host: str, port: int, replicas: int, address: str | None) -> None:
    """Start Ray Serve (on ``address``, else a local runtime) and serve until interrupted."""
    import ray

    ray.init(address=address or None, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(settings, replicas), name="sbi_service", route_prefix="/", blocking=True)


# For `serve run sbi_service.api.ray_deployment:app`: replicas from SBI_SERVICE_RAY_REPLICAS.
app = build(Settings(), int(os.environ.get("SBI_SERVICE_RAY_REPLICAS", "1")))
