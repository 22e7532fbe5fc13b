"""One Settings object, read from the environment (prefix ``SBI_SERVICE_``) and flags."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime settings. ``SBI_SERVICE_HOME`` holds the SQLite database and the model folders."""

    model_config = SettingsConfigDict(env_prefix="SBI_SERVICE_", extra="ignore")

    home: Path = Path(".sbi-service")
    device: str = "cpu"
    # Small networks on a few cores train several times faster on one thread
    # (benchmarks/threads.py measures it); 0 leaves torch's default.
    torch_threads: int = 1

    @property
    def db_path(self) -> Path:
        return self.home / "sbi_service.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


@lru_cache
def get_settings() -> Settings:
    return Settings()
