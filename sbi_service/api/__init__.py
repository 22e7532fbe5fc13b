"""The REST API (FastAPI): ``create_app(settings)``; ``server.serve`` runs it under uvicorn."""

from sbi_service.api.app import create_app

__all__ = ["create_app"]
