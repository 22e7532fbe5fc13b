"""One Settings object, read from the environment (prefix ``SBI_SERVICE_``) and flags."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime settings. ``SBI_SERVICE_HOME`` holds the SQLite database and the model folders."""

    model_config = SettingsConfigDict(env_prefix="SBI_SERVICE_", extra="ignore")

    home: Path = Path(".sbi-service")
    device: str = "cpu"
    # Small networks on a few cores train several times faster on one thread
    # (benchmarks/threads.py measures it); 0 leaves torch's default.
    torch_threads: int = 1

    # -- serving (sbi-service serve; README "Serving") ---------------------------------
    # API keys, comma-separated in SBI_SERVICE_API_KEYS. Mutating endpoints (jobs,
    # simulator registration, reload) always need one; with none configured they are off.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    require_key_for_reads: bool = False
    max_observations: int = Field(1000, ge=1)  # per request
    max_num_samples: int = Field(100_000, ge=1)  # per observation
    max_request_rows: int = Field(1_000_000, ge=1)  # num_obs * num_samples per request
    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    max_queue_rows: int = Field(2_000_000, ge=1)  # rows held over all models -> 503
    # bodies held by sampling requests in flight (the memory bound) -> 503
    max_pending_body_bytes: int = Field(32 * 2**20, ge=1024)
    batch_rows: int = Field(8192, ge=1)  # row budget of one batched forward pass
    batching: bool = True  # False: one forward pass per request (the benchmark baseline)
    request_timeout_s: float = Field(30.0, gt=0)  # default deadline; X-Request-Timeout lowers it
    model_cache_size: int = Field(4, ge=1)  # loaded (model, version) pairs kept
    preload_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    reload_interval_s: float = Field(5.0, ge=0)  # poll for new versions; 0 turns it off
    drain_timeout_s: float = Field(30.0, ge=0)  # SIGTERM: wait this long for in-flight work
    job_workers: int = Field(1, ge=1)  # worker processes for train/diagnose jobs
    # Which versions may be served (serving.policy): "latest" any; "passed" only those
    # whose diagnostics passed (or that were force-promoted).
    serve_policy: Literal["latest", "passed"] = "latest"
    # TLS for `sbi-service serve` (uvicorn's ssl_certfile / ssl_keyfile); without them the
    # server speaks plain HTTP, and with API keys set it warns (``api.server.tls_warning``).
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    # -- simulation and simulators (README "Scaling out", docs/scaling.md) ---------------
    simulation_backend: Literal["local", "ray"] = "local"  # where simulation chunks and jobs run
    ray_address: str = ""  # auto, host:port or ray://host:port; empty: a local Ray runtime
    # Remote simulators may be registered only on these hosts (host or host:port, exact).
    simulator_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Module prefixes that POST /v1/simulators may register by import path; empty: none.
    import_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_upload_bytes: int = Field(100 * 2**20, ge=1024)  # one POST /v1/datasets body or chunk

    @field_validator(
        "api_keys", "preload_models", "simulator_hosts", "import_allowlist", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @property
    def db_path(self) -> Path:
        return self.home / "sbi_service.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


@lru_cache
def get_settings() -> Settings:
    return Settings()
