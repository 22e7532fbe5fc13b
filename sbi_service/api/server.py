"""Run the app under uvicorn, with a graceful drain on SIGTERM/SIGINT.

On the first signal the service keeps listening but ``/readyz`` answers 503 (a load
balancer stops sending), in-flight requests finish, and once none is left (or
``drain_timeout_s`` has passed) uvicorn shuts down. A second signal exits at once.

``serve(..., workers=N)`` with N > 1 runs N such servers as spawned processes over one
listening socket (the kernel spreads connections among them) and one store. Each
worker has its own model pool, batching engines and job runner; the supervisor
forwards signals (each worker drains), restarts a worker that died, and points
prometheus-client's multiprocess mode at a shared folder so every worker's
``/metrics`` covers all of them (``serving.metrics``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import uvicorn
from prometheus_client import multiprocess

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
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
    )
    warning = tls_warning(settings, host, port)
    if warning:
        log.warning(warning)
    return DrainingServer(config, app.state.sbi)


def tls_warning(settings: Settings, host: str, port: int) -> str | None:
    """What to say when API keys would travel over plain HTTP (None when they do not)."""
    if not settings.api_keys or settings.ssl_certfile is not None:
        return None
    return (
        f"API keys are set but http://{host}:{port} has no TLS: keys and data cross the "
        "network in clear text. Put TLS in front: set SBI_SERVICE_SSL_CERTFILE and "
        "SBI_SERVICE_SSL_KEYFILE (passed to uvicorn as --ssl-certfile/--ssl-keyfile), or "
        f"serve on 127.0.0.1 behind a reverse proxy (nginx, Caddy) that terminates HTTPS and "
        f"forwards to 127.0.0.1:{port}; if such a proxy is already in front, ignore this."
    )


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    access_log: bool = False,
    workers: int = 1,
) -> None:
    """Serve until a signal (blocking), in this process or in ``workers`` processes."""
    if workers <= 1:
        build_server(settings, host, port, access_log).run()
        return
    Supervisor(settings, host, port, access_log, workers).run()


class Supervisor:
    """Starts ``workers`` server processes on one socket and keeps them running."""

    def __init__(
        self, settings: Settings, host: str, port: int, access_log: bool, workers: int
    ) -> None:
        self.args = (settings.model_dump_json(), host, port, access_log)
        self.workers = workers
        self.stopping = False
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[BaseProcess] = []

    def run(self) -> None:
        own_folder = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
        folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp("-metrics"))
        for stale in folder.glob("*.db"):  # a previous run's values must not be summed in
            stale.unlink()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)  # inherited by the workers
        host, port = self.args[1], self.args[2]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        try:
            self.processes = [self._start(sock) for _ in range(self.workers)]
            log.info("serving on http://%s:%d with %d workers", host, port, self.workers)
            while not (self.stopping and all(not p.is_alive() for p in self.processes)):
                time.sleep(0.5)
                for i, process in enumerate(self.processes):
                    if not self.stopping and not process.is_alive():
                        log.warning("worker %d exited (%s); starting another", i, process.exitcode)
                        multiprocess.mark_process_dead(process.pid, str(folder))
                        self.processes[i] = self._start(sock)
        finally:
            sock.close()
            if own_folder:
                shutil.rmtree(folder, ignore_errors=True)

    def _start(self, sock: socket.socket) -> BaseProcess:
        process = self.context.Process(target=_run_worker, args=(*self.args, sock), daemon=False)
        process.start()
        return process

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        """First signal: every worker drains; a second: they exit at once (as one server)."""
        self.stopping = True
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, sig)


def _run_worker(
    settings_json: str, host: str, port: int, access_log: bool, sock: socket.socket
) -> None:
    """One worker process: its own app, pool and engines, on the supervisor's socket."""
    server = build_server(Settings.model_validate_json(settings_json), host, port, access_log)
    server.run(sockets=[sock])
