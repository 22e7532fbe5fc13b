"""Kill a Ray Serve replica under load: no request lost or answered twice.

    python benchmarks/replica_kill.py [--requests 2000] [--concurrency 32] [--seconds 60]

Trains a tiny model, serves it with ``sbi-service serve --backend ray --replicas 2``
(a local Ray runtime), and sends ``--requests`` seeded sampling requests from
``--concurrency`` clients; when a quarter have been answered it kills one replica with
SIGKILL (its pid comes in the ``X-Served-By`` header), and Ray Serve starts another.
Every request has its own seed, sent once. Prints what the clients saw:

- sent, answered 200, 503, 500, other statuses, and hung (no answer within
  ``--timeout`` s, or the connection dropped);
- wrong: a 200 whose seed or samples are not its request's (seeded samples are the
  same whichever replica answers, so each 200 is checked against the model in process);
- duplicates: seeds answered more than once.

The issue's target: 500 = hung = wrong = duplicates = 0. Bounded: at most ``--seconds``
of load, each request at most ``--timeout`` s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

OBSERVATION = [[0.1, 0.2]]
NUM_SAMPLES = 50


async def load_with_kill(
    url: str,
    model: str,
    requests: int,
    concurrency: int,
    kill_after: int,
    seconds: float,
    timeout: float,
) -> dict:
    """Send ``requests`` seeded requests; SIGKILL the replica that answered the
    ``kill_after``-th. -> counts by outcome, the answers {seed: samples}, the pid killed."""
    seeds = list(range(requests))
    outcomes: Counter = Counter()
    answers: dict[int, list] = {}
    answered_seeds: list[int] = []
    killed: dict = {}
    stop = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while seeds and time.monotonic() < stop:
            seed = seeds.pop()
            body = {"observations": OBSERVATION, "num_samples": NUM_SAMPLES, "seed": seed}
            outcomes["sent"] += 1
            try:
                r = await http.post(f"{url}/v1/models/{model}/samples", json=body)
            except httpx.HTTPError:
                outcomes["hung"] += 1
                continue
            outcomes[r.status_code if r.status_code in (200, 500, 503) else "other"] += 1
            if r.status_code != 200:
                continue
            answered_seeds.append(seed)
            data = r.json()
            answers[seed] = data["samples"] if data["seed"] == seed else None
            if outcomes[200] >= kill_after and not killed:
                pid = int(r.headers["x-served-by"].split()[-1])
                killed.update(pid=pid, at=outcomes[200])
                os.kill(pid, signal.SIGKILL)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        await asyncio.gather(*[client(http) for _ in range(concurrency)])
    duplicates = sum(n - 1 for n in Counter(answered_seeds).values() if n > 1)
    return {"outcomes": outcomes, "answers": answers, "duplicates": duplicates, "killed": killed}


def wrong_answers(answers: dict[int, list], posterior, tolerance: float = 1e-4) -> int:
    """How many 200s are not their seed's samples (``sample_posterior`` in process)."""
    from sbi_service.workflows.models import sample_posterior

    x = np.array(OBSERVATION, np.float32)
    wrong = 0
    for seed, samples in answers.items():
        expected = sample_posterior(posterior, x, NUM_SAMPLES, seed)
        if samples is None or not np.allclose(np.array(samples), expected, atol=tolerance):
            wrong += 1
    return wrong


def summary(result: dict, wrong: int) -> dict:
    o = result["outcomes"]
    return {
        "sent": o["sent"],
        "200": o[200],
        "503": o[503],
        "500": o[500],
        "other": o["other"],
        "hung": o["hung"],
        "wrong": wrong,
        "duplicates": result["duplicates"],
        "killed_pid": result["killed"].get("pid"),
        "killed_after_200s": result["killed"].get("at"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0, help="load at most this long")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_model import make_data, train_tiny

    from sbi_service.store.db import Store
    from sbi_service.workflows.models import load_posterior

    with tempfile.TemporaryDirectory(prefix="sbi-replica-kill-") as tmp:
        home = Path(tmp) / "home"
        store = Store(home)
        train_tiny(store, make_data(Path(tmp)))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "SBI_SERVICE_HOME": str(home), "SBI_SERVICE_RELOAD_INTERVAL_S": "0"}
        cmd = [sys.executable, "-m", "sbi_service", "serve", "--backend", "ray"]
        cmd += ["--replicas", "2", "--port", str(port), "--preload", "tiny"]
        server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                assert server.poll() is None, "the server exited during start-up"
                assert time.monotonic() < deadline, "the replicas did not become ready"
                try:
                    if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            start = time.monotonic()
            result = asyncio.run(
                load_with_kill(
                    url, "tiny", args.requests, args.concurrency, args.requests // 4,
                    args.seconds, args.timeout,
                )
            )  # fmt: skip
            elapsed = time.monotonic() - start
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        posterior, _ = load_posterior(store, "tiny")
        figures = summary(result, wrong_answers(result["answers"], posterior))
    figures["seconds"] = round(elapsed, 1)
    print(json.dumps(figures))
    columns = ("sent", "200", "503", "500", "other", "hung", "wrong", "duplicates", "seconds")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---:|" * len(columns))
    print("| " + " | ".join(str(figures[k]) for k in columns) + " |")


if __name__ == "__main__":
    main()
