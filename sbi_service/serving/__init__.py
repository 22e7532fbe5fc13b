"""Serving: the batching engine, admission, and the pool of loaded models (no HTTP here)."""

from sbi_service.serving.admission import Admission, Overloaded
from sbi_service.serving.engine import DeadlineExceeded, Engine, EngineClosed
from sbi_service.serving.metrics import Metrics
from sbi_service.serving.pool import LoadedModel, ModelPool

__all__ = [
    "Admission",
    "DeadlineExceeded",
    "Engine",
    "EngineClosed",
    "LoadedModel",
    "Metrics",
    "ModelPool",
    "Overloaded",
]
