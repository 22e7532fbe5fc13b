"""The Python client of the REST API: ``Client(url, api_key)`` and its ``posterior(model)``."""

from sbi_service.client.http import (
    Client,
    JobFailed,
    Served,
    ServiceError,
    UnvalidatedPosterior,
)
from sbi_service.client.posterior import RemotePosterior

__all__ = [
    "Client",
    "JobFailed",
    "RemotePosterior",
    "Served",
    "ServiceError",
    "UnvalidatedPosterior",
]
