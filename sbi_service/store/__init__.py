"""Persistent state: the SQLite database and the model folders under ``$SBI_SERVICE_HOME``."""

from sbi_service.store.db import Store

__all__ = ["Store"]
