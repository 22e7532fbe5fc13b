"""Serving: the batching engine and the pool of loaded models (no HTTP here)."""

from sbi_service.serving.engine import DeadlineExceeded, Engine, EngineClosed, QueueFull, RowBudget
from sbi_service.serving.metrics import Metrics
from sbi_service.serving.pool import LoadedModel, ModelPool

__all__ = [
    "DeadlineExceeded",
    "Engine",
    "EngineClosed",
    "LoadedModel",
    "Metrics",
    "ModelPool",
    "QueueFull",
    "RowBudget",
]
