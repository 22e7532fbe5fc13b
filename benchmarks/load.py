"""Overload: an open loop at twice the measured capacity, then back to normal.

    python benchmarks/load.py [--seconds 60] [--deadline 2] [--workers 1] [--home DIR]
    python benchmarks/load.py --home DIR --train-only    # train first, outside the bench lock

1. Trains the two_moons NSF of ``benchmarks/serving.py`` and starts ``sbi-service serve``
   on 127.0.0.1 (a subprocess).
2. Capacity: a closed loop of 32 clients for ``--calibrate`` seconds, 1 observation x 100
   samples per request (or ``--capacity``, to compare two builds at the same rates);
   then the normal latency: an open loop at half that rate.
3. Overload: an open loop (Poisson arrivals, which do not wait for answers) at twice the
   capacity for ``--seconds``, each request with ``X-Request-Timeout: --deadline``; then
   ``--after`` seconds at half the capacity again.
4. Hostile bodies: three 8 MiB anonymous bodies at once.

Throughout, ``/healthz`` is polled every 50 ms from a process of its own, the server's
resident memory is read from /proc every 0.25 s, and this client's own event-loop lag is
watched (a large lag means the client, not the server, was late). Prints: requests sent,
shed fraction (503, and how many carried Retry-After), 500s (must be 0), other statuses,
hung requests (no answer within deadline + 3 s), p50/p99 latency per phase, the recovery
time (from the end of the overload to the last request after it slower than twice the
normal p99), /healthz max and p99, max RSS against the stated bound (``BODY_EXPANSION``),
both maxima also per phase (overload, after, hostile bodies),
then ``held`` or ``MISSED`` per promise; exits 1 on a miss. Every loop is bounded in
count and time; loopback only. Writes ``benchmarks/results/load.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from servers import free_port, start_server, stop_server  # noqa: E402
from serving import MODEL, OBSERVATION, train  # noqa: E402

from sbi_service.config import Settings  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MAX_CONNECTIONS = 1024
# The stated memory bound: the resident memory once ready, plus 16 bytes for each byte of
# request body the server may hold at once (SBI_SERVICE_MAX_PENDING_BODY_BYTES, 32 MiB by
# default): a JSON number of ~9 bytes becomes a float object and a list slot (32 bytes)
# while it is parsed, and the queued rows of samples are far smaller than that.
BODY_EXPANSION = 16
HEALTHZ_TARGET_MS = 100
RECOVERY_TARGET_S = 5


class Client:
    """A raw HTTP/1.1 keep-alive client over a pool of loopback connections."""

    def __init__(self, port: int):
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: str = "", timeout: float = 10
    ) -> tuple[int, dict[str, str], float]:
        """(status, headers, seconds); status 0 for a client timeout or a dropped connection.

        A kept-alive connection the server has closed (its keep-alive timeout) is dropped
        before reuse, and one it closes while the request is on its way is replaced by a
        fresh connection once, as HTTP clients do.
        """
        start = time.perf_counter()
        data = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        status, answer = await self._exchange(data, timeout, self._idle_connection())
        if status is None:
            remaining = timeout - (time.perf_counter() - start)
            status, answer = await self._exchange(data, remaining, None)
        return status or 0, answer, time.perf_counter() - start

    def _idle_connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The most recently used open connection, or None; those the server has closed
        (its keep-alive timeout) are dropped, as HTTP clients check before reuse."""
        while self.idle:
            reader, writer = self.idle.pop()
            if not reader.at_eof():
                return reader, writer
            writer.close()
            self.open -= 1
        return None

    async def _exchange(
        self,
        data: bytes,
        timeout: float,
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[int | None, dict[str, str]]:
        """One request on ``connection`` (a new one if None): None when it was closed
        before any answer."""
        if connection is None:
            if self.open >= MAX_CONNECTIONS:
                return -1, {}  # the client ran out of connections: counted apart
            try:
                connection = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return 0, {}
            self.open += 1
        reader, writer = connection
        try:
            writer.write(data)
            status, answer = await asyncio.wait_for(_read(reader), timeout)
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as e:
            writer.close()
            self.open -= 1
            return None if isinstance(e, ClosedBeforeAnswer) else 0, {}
        if answer.get("connection") == "close":
            writer.close()
            self.open -= 1
        else:
            self.idle.append((reader, writer))
        return status, answer


class ClosedBeforeAnswer(ConnectionError):
    """The server closed the connection without a byte of answer."""


async def _read(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await reader.readline()
    if not line:
        raise ClosedBeforeAnswer("the server closed the connection before answering")
    status = int(line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        if not line:
            raise ConnectionResetError("the server closed the connection mid-answer")
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers


def sample_body(seed: int, num_samples: int = 100) -> bytes:
    body = {"observations": [OBSERVATION], "num_samples": num_samples, "seed": seed}
    return json.dumps(body).encode()


async def closed_loop(port: int, clients: int, seconds: float, max_requests: int) -> float:
    """Requests per second that ``clients`` back-to-back clients get served."""
    client, done, stop = Client(port), [0], time.perf_counter() + seconds

    async def one(i: int) -> None:
        while time.perf_counter() < stop and done[0] < max_requests:
            status, _, _ = await client.request(
                "POST", f"/v1/models/{MODEL}/samples", sample_body(i)
            )
            done[0] += status == 200

    start = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(clients)])
    return done[0] / (time.perf_counter() - start)


async def open_loop(
    port: int, rate: float, seconds: float, deadline: float, num_samples: int = 100
) -> list[dict]:
    """Poisson arrivals at ``rate``/s for ``seconds``; one record per request."""
    client, rng, records, tasks = Client(port), random.Random(0), [], []
    headers = f"X-Request-Timeout: {deadline}\r\n"

    async def one(seed: int, sent: float) -> None:
        status, answer, took = await client.request(
            "POST",
            f"/v1/models/{MODEL}/samples",
            sample_body(seed, num_samples),
            headers,
            timeout=deadline + 3,
        )
        records.append(
            {"sent": sent, "status": status, "seconds": took, "retry": "retry-after" in answer}
        )

    start = time.perf_counter()
    next_at, seed = start, 0
    max_requests = int(rate * seconds * 2) + 10
    while next_at < start + seconds and seed < max_requests:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(seed, next_at)))
        seed += 1
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    return records


# /healthz is polled from a process of its own: its latencies are the server's, not
# this client's event loop's (busy with thousands of requests at twice the capacity).
HEALTH_POLLER = """
import http.client, json, signal, sys, time
port, stop, latencies, conn = int(sys.argv[1]), [], [], None
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
while not stop:
    start = time.perf_counter()
    try:
        conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        answer = conn.getresponse()
        answer.read()
        seconds = time.perf_counter() - start if answer.status == 200 else None
        latencies.append([time.time(), seconds])
    except OSError:
        conn = None
        latencies.append([time.time(), None])
    time.sleep(0.05)
print(json.dumps(latencies))
"""


async def poll_health(port: int, stop: asyncio.Event) -> list[tuple[float, float]]:
    """(time.time(), /healthz latency in s; inf for no 200), every 50 ms until ``stop``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HEALTH_POLLER, str(port), stdout=asyncio.subprocess.PIPE
    )
    await stop.wait()
    proc.terminate()
    out, _ = await proc.communicate()
    return [(at, math.inf if t is None else t) for at, t in json.loads(out)]


async def watch_lag(stop: asyncio.Event) -> float:
    """The largest lag (s) of this client's own event loop: large means the client, not
    the server, was too slow to send on time or read answers."""
    loop, worst = asyncio.get_running_loop(), 0.0
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(0.05)
        worst = max(worst, loop.time() - start - 0.05)
    return worst


async def watch_rss(pids: list[int], stop: asyncio.Event) -> list[tuple[float, float]]:
    """(time.time(), resident MB of the server processes, summed), every 0.25 s."""
    samples = []
    while not stop.is_set():
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        samples.append((time.time(), total / 1024))
        await asyncio.sleep(0.25)
    return samples


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def summarize(records: list[dict]) -> dict:
    ok = [r["seconds"] for r in records if r["status"] == 200]
    statuses: dict[int, int] = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    shed = [r for r in records if r["status"] == 503]
    return {
        "requests": len(records),
        "ok": len(ok),
        "shed_503": len(shed),
        "shed_with_retry_after": sum(r["retry"] for r in shed),
        "errors_500": statuses.get(500, 0),
        "client_timeouts": statuses.get(0, 0),
        "client_out_of_connections": statuses.get(-1, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": 1e3 * percentile(ok, 0.5),
        "p99_ms": 1e3 * percentile(ok, 0.99),
    }


async def hostile_bodies(port: int) -> list[int]:
    """Three 8 MiB bodies of observations at once (below the default 8 MiB limit)."""
    row = "[0.123456, 0.654321],"
    count = (8 * 2**20 - 100) // len(row)
    body = ('{"observations": [' + row * (count - 1) + '[0.1, 0.2]], "num_samples": 1}').encode()
    client = Client(port)
    answers = await asyncio.gather(
        *[client.request("POST", f"/v1/models/{MODEL}/samples", body, timeout=60) for _ in range(3)]
    )
    return [status for status, _, _ in answers]


async def run(port: int, pids: list[int], args: argparse.Namespace) -> dict:
    capacity = args.capacity or await closed_loop(port, 32, args.calibrate, 20_000)
    normal = summarize(await open_loop(port, capacity / 2, args.calibrate, args.deadline))
    stop = asyncio.Event()
    health = asyncio.ensure_future(poll_health(port, stop))
    rss = asyncio.ensure_future(watch_rss(pids, stop))
    lag = asyncio.ensure_future(watch_lag(stop))
    over_start, marks = time.perf_counter(), {"overload": time.time()}
    during_task = asyncio.ensure_future(open_loop(port, 2 * capacity, args.seconds, args.deadline))
    await asyncio.sleep(args.seconds)
    over_end, marks["after"] = time.perf_counter(), time.time()
    after = await open_loop(port, capacity / 2, args.after, args.deadline)
    during = await during_task
    hostile_start, marks["hostile bodies"] = time.perf_counter(), time.time()
    hostile = await hostile_bodies(port)
    hostile_seconds, marks["end"] = time.perf_counter() - hostile_start, time.time()
    stop.set()
    health, rss_samples, client_lag = await health, await rss, await lag
    health_latencies = [t for _, t in health]
    names, bounds = list(marks)[:-1], list(marks.values())
    by_phase = {  # phase: (/healthz max ms, resident max MB)
        name: (
            1e3 * max([0.0, *(t for at, t in health if start <= at < end)]),
            max([0.0, *(mb for at, mb in rss_samples if start <= at < end)]),
        )
        for name, start, end in zip(names, bounds, bounds[1:], strict=False)
    }

    slow = 2 * normal["p99_ms"] / 1e3
    late = [r["sent"] + r["seconds"] - over_end for r in after if r["seconds"] > slow]
    pending_body = Settings().max_pending_body_bytes
    return {
        "capacity_requests_per_s": capacity,
        "offered_requests_per_s": 2 * capacity,
        "deadline_s": args.deadline,
        "overload_seconds": over_end - over_start,
        "normal": normal,
        "during": summarize(during),
        "after": summarize(after),
        "recovery_s": max([0.0, *late]),
        "healthz_max_ms": 1e3 * max(health_latencies),
        "healthz_p99_ms": 1e3 * percentile(health_latencies, 0.99),
        "healthz_polls": len(health_latencies),
        "by_phase_healthz_max_ms_rss_max_mb": by_phase,
        "client_loop_lag_max_ms": 1e3 * client_lag,
        "rss_max_mb": max(mb for _, mb in rss_samples),
        "rss_start_mb": rss_samples[0][1],
        "rss_bound_mb": rss_samples[0][1] + BODY_EXPANSION * pending_body / 2**20,
        "hostile_statuses": hostile,
        "hostile_seconds": hostile_seconds,
    }


def verdicts(r: dict) -> dict[str, bool]:
    """Each promise of the overload run: held or not."""
    d = r["during"]
    phases = (r["normal"], d, r["after"])
    return {
        "sheds with 503, each with Retry-After": d["shed_503"] > 0
        and d["shed_with_retry_after"] == d["shed_503"],
        "no 500": all(s["errors_500"] == 0 for s in phases),
        "no hung request": all(s["client_timeouts"] == 0 for s in phases),
        f"/healthz max <= {HEALTHZ_TARGET_MS} ms": r["healthz_max_ms"] <= HEALTHZ_TARGET_MS,
        f"recovery <= {RECOVERY_TARGET_S} s": r["recovery_s"] <= RECOVERY_TARGET_S,
        "resident memory within the bound": r["rss_max_mb"] <= r["rss_bound_mb"],
        "hostile bodies answered, none 500": bool(r["hostile_statuses"])
        and all(0 < s < 500 or s == 503 for s in r["hostile_statuses"]),
    }


def report(r: dict) -> str:
    d, a, n = r["during"], r["after"], r["normal"]
    lines = [
        f"capacity (closed loop, 32 clients, 1 x 100 samples): "
        f"{r['capacity_requests_per_s']:.0f} req/s; offered {r['offered_requests_per_s']:.0f} "
        f"req/s for {r['overload_seconds']:.0f} s; deadline {r['deadline_s']:g} s",
        "",
        "| phase | requests | 200 | 503 (with Retry-After) | 500 | client timeouts "
        "| p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in (("normal (half capacity)", n), ("overload (2x capacity)", d), ("after", a)):
        lines.append(
            f"| {name} | {s['requests']} | {s['ok']} | {s['shed_503']} "
            f"({s['shed_with_retry_after']}) | {s['errors_500']} | {s['client_timeouts']} | "
            f"{s['p50_ms']:.0f} | {s['p99_ms']:.0f} |"
        )
    shed = d["shed_503"] / max(d["requests"], 1)
    hung = sum(s["client_timeouts"] for s in (n, d, a))
    lines += [
        "",
        f"- shed during the overload: {shed:.1%} of requests with 503 "
        f"({d['shed_with_retry_after']} of {d['shed_503']} with Retry-After); "
        f"statuses {d['statuses']}",
        f"- 500s: {sum(s['errors_500'] for s in (n, d, a))}; hung requests (no answer "
        f"within the deadline + 3 s): {hung}",
        f"- recovery: the last slow request (> 2x the normal p99) after the overload ended "
        f"{r['recovery_s']:.2f} s after it (target <= {RECOVERY_TARGET_S} s)",
        f"- /healthz: max {r['healthz_max_ms']:.0f} ms, p99 {r['healthz_p99_ms']:.0f} ms over "
        f"{r['healthz_polls']} polls (target <= {HEALTHZ_TARGET_MS} ms), from a process "
        "of its own",
        "- by phase, /healthz max and resident memory max: "
        + "; ".join(
            f"{name} {ms:.0f} ms, {mb:.0f} MB"
            for name, (ms, mb) in r["by_phase_healthz_max_ms_rss_max_mb"].items()
        ),
        f"- this client's own event loop lagged up to {r['client_loop_lag_max_ms']:.0f} ms",
        f"- resident memory: {r['rss_start_mb']:.0f} MB at the start, max "
        f"{r['rss_max_mb']:.0f} MB; stated bound {r['rss_bound_mb']:.0f} MB (start + "
        f"{BODY_EXPANSION} x the pending body limit)",
        f"- three 8 MiB bodies at once: statuses {r['hostile_statuses']} in "
        f"{r['hostile_seconds']:.2f} s",
        "",
        *(f"- {'held' if ok else 'MISSED'}: {name}" for name, ok in verdicts(r).items()),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=60.0, help="of overload")
    parser.add_argument("--after", type=float, default=10.0, help="seconds of normal load after")
    parser.add_argument("--calibrate", type=float, default=5.0)
    parser.add_argument(
        "--capacity", type=float, help="req/s to take as the capacity (A/B runs at one rate)"
    )
    parser.add_argument("--deadline", type=float, default=2.0, help="X-Request-Timeout, s")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--home", type=Path, help="a home to keep the trained model in")
    parser.add_argument("--train-only", action="store_true", help="train into --home, stop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sbi-load-bench-") as tmp:
        home = args.home or Path(tmp)
        if not (home / "models" / MODEL).is_dir():
            train(home, args.epochs)
        if args.train_only:
            return
        port = free_port()
        flags = ["--preload", MODEL, "--batching", "--workers", str(args.workers)]
        proc = start_server(home, port, *flags)
        try:
            pids = [proc.pid, *_children(proc.pid)]
            result = asyncio.run(run(port, pids, args))
        finally:
            stop_server(proc)
    result["workers"] = args.workers
    text = report(result)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "load.md").write_text(
        "# Overload benchmark (benchmarks/load.py)\n\n"
        f"{os.cpu_count()} CPUs, workers={args.workers}\n\n{text}\n"
    )
    sys.exit(0 if all(verdicts(result).values()) else 1)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


if __name__ == "__main__":
    main()
