"""``sbi-service serve`` as a subprocess on 127.0.0.1, for the benchmark scripts.

    proc = start_server(home, port, "--preload", "tiny", env={"SBI_SERVICE_API_KEYS": "k"})
    kill_group(proc)   # kill -9 of the server and its job workers, as a machine crash

The server runs in its own process group, so ``kill_group`` reaches its job workers too
and waits until every process of the group is gone: what a restart after a crash sees.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    home: Path, port: int, *flags: str, env: dict[str, str] | None = None, seconds: float = 300
) -> subprocess.Popen:
    """``sbi-service serve --port PORT FLAGS`` over ``home``, once ``/readyz`` answers 200.

    ``env`` adds SBI_SERVICE_* settings; reloading is off. Raises ``RuntimeError`` (with
    the server's stderr) when it exits or is not ready within ``seconds``.
    """
    env = {
        **os.environ,
        "SBI_SERVICE_HOME": str(home),
        "SBI_SERVICE_RELOAD_INTERVAL_S": "0",
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "sbi_service", "serve", "--port", str(port), *flags]
    log = tempfile.TemporaryFile()  # the server's stderr, read back when it fails
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
    )
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {_tail(log)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            kill_group(proc)
            raise RuntimeError(f"the server was not ready in {seconds:g} s: {_tail(log)}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen, seconds: float = 30) -> None:
    """SIGTERM (the server drains), then ``kill_group`` if it is still there."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pass
    kill_group(proc)


def kill_group(proc: subprocess.Popen, seconds: float = 60) -> None:
    """SIGKILL the server's process group; return once none of its processes runs."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(seconds)
    deadline = time.monotonic() + seconds
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _group_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that have not exited (zombies have)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]
