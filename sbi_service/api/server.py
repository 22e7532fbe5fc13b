"""Run the app under uvicorn, with a graceful drain on SIGTERM/SIGINT.

On the first signal the service keeps listening but ``/readyz`` answers 503 (a load
balancer stops sending), in-flight requests finish, and once none is left (or
``drain_timeout_s`` has passed) uvicorn shuts down. A second signal exits at once.
"""

from __future__ import annotations

import logging
import threading
import time
from types import FrameType

import uvicorn

from sbi_service.api.app import create_app
from sbi_service.api.deps import ServiceState
from sbi_service.config import Settings

log = logging.getLogger("sbi_service.api")


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose exit signal first drains the service."""

    def __init__(self, config: uvicorn.Config, state: ServiceState):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.draining:
            super().handle_exit(sig, frame)
            return
        self.state.draining = True
        log.info("draining: /readyz answers 503; waiting for in-flight requests")
        threading.Thread(target=self._drain, name="drain", daemon=True).start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.state.settings.drain_timeout_s
        while time.monotonic() < deadline and (self.state.in_flight or not self.state.pool.idle):
            time.sleep(0.05)
        self.should_exit = True


def build_server(
    settings: Settings, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False
) -> DrainingServer:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=access_log,
        timeout_graceful_shutdown=max(settings.drain_timeout_s, 1.0),
        log_level="info",
    )
    return DrainingServer(config, app.state.sbi)


def serve(
    settings: Settings, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False
) -> None:
    """Serve until a signal (blocking)."""
    build_server(settings, host, port, access_log).run()
