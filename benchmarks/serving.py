"""Serving throughput and latency: batched server vs one pass per request vs the ceiling.

    python benchmarks/serving.py [--epochs 30] [--seconds 6] [--max-requests 3000]

1. Trains a two_moons NSF on 10^4 simulations (``train_model``, the CLI's function).
2. Starts ``sbi-service serve`` (a uvicorn subprocess on 127.0.0.1) with batching, then
   with ``--no-batching`` (one forward pass per request), and drives each with a load
   generator in a separate process: a raw asyncio HTTP/1.1 keep-alive client (request
   bytes written by hand, responses read by Content-Length), far cheaper per request
   than the server. Workloads: 1 observation x 100 samples, 1 x 1,000, and a mix with
   num_samples log-uniform in 1..10,000; concurrency 1, 16 and 64. Each run is bounded
   by ``--max-requests`` and ``--seconds``.
3. Measures the ceiling in process: ``sample_posterior`` on one observation with
   ``batch_rows`` samples per call (the engine's largest pass), and the latency of one
   direct in-process call with 100 samples.

Prints a Markdown table and writes ``benchmarks/results/serving.md`` and ``.json``.
The machine is shared and noisy: compare the rows of one run, not absolute numbers.

``--scaling`` instead compares 1 vs 2 server processes (``serve --workers N``) and 1 vs
2 Ray Serve replicas (``serve --backend ray --replicas N``, a local Ray runtime) at
concurrency 1 and 64, 1 x 100 and 1 x 1,000 samples per request, and writes
``benchmarks/results/serving_scaling.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODEL = "two_moons_bench"
OBSERVATION = [0.0, 0.1]
WORKLOADS = ("1x100", "1x1000", "mix")
CONCURRENCY = (1, 16, 64)


# -- the load generator (runs in its own process) ------------------------------------------
def num_samples_for(workload: str, rng: random.Random) -> int:
    if workload == "mix":
        return int(math.exp(rng.uniform(0.0, math.log(10_000))))
    return int(workload.split("x")[1])


async def _client(port: int, workload: str, stop: float, budget: list[int], seed: int) -> dict:
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies, samples, errors = [], 0, 0
    try:
        while budget[0] > 0 and time.perf_counter() < stop:
            budget[0] -= 1
            n = num_samples_for(workload, rng)
            body = json.dumps(
                {"observations": [OBSERVATION], "num_samples": n, "seed": rng.randrange(2**31)}
            ).encode()
            head = (
                f"POST /v1/models/{MODEL}/samples HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            start = time.perf_counter()
            writer.write(head + body)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if status == 200:
                samples += n
            else:
                errors += 1
    finally:
        writer.close()
    return {"latencies": latencies, "samples": samples, "errors": errors}


async def _load(port: int, workload: str, concurrency: int, seconds: float, max_requests: int):
    budget = [max_requests]
    cpu = time.process_time()
    start = time.perf_counter()
    parts = await asyncio.gather(
        *[_client(port, workload, start + seconds, budget, i) for i in range(concurrency)]
    )
    elapsed = time.perf_counter() - start
    latencies = sorted(t for p in parts for t in p["latencies"])
    return {
        "requests": len(latencies),
        "errors": sum(p["errors"] for p in parts),
        "seconds": elapsed,
        "samples_per_s": sum(p["samples"] for p in parts) / elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": 1e3 * latencies[len(latencies) // 2],
        "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "client_cpu_share": (time.process_time() - cpu) / elapsed,  # cores the client used
    }


def run_load(port: int, workload: str, concurrency: int, seconds: float, max_requests: int):
    """Run the load generator in a separate process; returns its measurements."""
    cmd = [
        sys.executable, __file__, "--loadgen", str(port), workload, str(concurrency),
        str(seconds), str(max_requests),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=True)
    return json.loads(out.stdout)


# -- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int, batching: bool, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "SBI_SERVICE_HOME": str(home), "SBI_SERVICE_RELOAD_INTERVAL_S": "0"}
    flag = "--batching" if batching else "--no-batching"
    cmd = [sys.executable, "-m", "sbi_service", "serve", "--port", str(port), "--preload", MODEL]
    proc = subprocess.Popen([*cmd, flag, *flags], env=env, stderr=subprocess.DEVNULL)
    import httpx

    deadline = time.monotonic() + 300  # Ray Serve's replicas start slowly on a busy machine
    while True:
        if proc.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the server did not become ready")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- in process: the ceiling and one direct call ----------------------------------------------
def in_process(home: Path, seconds: float, batch_rows: int) -> dict:
    import numpy as np
    import torch

    from sbi_service.config import Settings
    from sbi_service.store.db import Store
    from sbi_service.workflows.models import load_posterior, sample_posterior

    torch.set_num_threads(Settings().torch_threads)
    posterior, _ = load_posterior(Store(home), MODEL)
    obs = np.array([OBSERVATION], np.float32)

    def rate(num_samples: int) -> tuple[float, list[float]]:
        sample_posterior(posterior, obs, num_samples, 0)  # warm
        times, drawn, start, seed = [], 0, time.perf_counter(), 1
        while time.perf_counter() - start < seconds or len(times) < 5:
            t = time.perf_counter()
            sample_posterior(posterior, obs, num_samples, seed)
            times.append(time.perf_counter() - t)
            drawn += num_samples
            seed += 1
        return drawn / (time.perf_counter() - start), sorted(times)

    ceiling, _ = rate(batch_rows)
    direct_rate, direct_times = rate(100)
    return {
        "ceiling_samples_per_s": ceiling,
        "ceiling_rows_per_call": batch_rows,
        "direct_100_samples_per_s": direct_rate,
        "direct_100_p50_ms": 1e3 * direct_times[len(direct_times) // 2],
        "direct_100_p99_ms": 1e3 * direct_times[int(0.99 * (len(direct_times) - 1))],
    }


def train(home: Path, epochs: int) -> dict:
    import torch

    from sbi_service.config import Settings
    from sbi_service.estimators.train import TrainConfig
    from sbi_service.store.db import Store
    from sbi_service.workflows.train import TrainRequest, train_model

    torch.set_num_threads(Settings().torch_threads)
    req = TrainRequest(
        name=MODEL,
        estimator="nsf",
        seed=0,
        simulator="two_moons",
        num_simulations=10_000,
        train=TrainConfig(max_epochs=epochs),
    )
    return train_model(Store(home), req)


# -- report --------------------------------------------------------------------------------------
def table(results: dict) -> str:
    ref = results["in_process"]
    lines = [
        "| server | workload | concurrency | samples/s | requests/s | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["runs"]:
        lines.append(
            f"| {row['server']} | {row['workload']} | {row['concurrency']} | "
            f"{row['samples_per_s']:,.0f} | {row['requests_per_s']:,.1f} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {row['errors']} |"
        )
    lines.append(
        f"| in-process ceiling | 1 x {ref['ceiling_rows_per_call']:,} per call | 1 | "
        f"{ref['ceiling_samples_per_s']:,.0f} | | | | |"
    )
    lines.append(
        f"| in-process direct | 1 x 100 per call | 1 | {ref['direct_100_samples_per_s']:,.0f} | | "
        f"{ref['direct_100_p50_ms']:.1f} | {ref['direct_100_p99_ms']:.1f} | |"
    )
    lines += ["", "| target | measured | goal | met |", "| --- | ---: | ---: | --- |"]
    for t in results["targets"]:
        lines.append(
            f"| {t['name']} | {t['value']:.2f} | {t['goal']} | {'yes' if t['met'] else 'no'} |"
        )
    return "\n".join(lines)


def targets(results: dict) -> list[dict]:
    def run(server: str, workload: str, concurrency: int) -> dict:
        return next(
            r
            for r in results["runs"]
            if (r["server"], r["workload"], r["concurrency"]) == (server, workload, concurrency)
        )

    ref = results["in_process"]
    speedup = (
        run("batched", "1x100", 64)["samples_per_s"]
        / run("unbatched", "1x100", 64)["samples_per_s"]
    )
    best_1000 = max(run("batched", "1x1000", c)["samples_per_s"] for c in CONCURRENCY)
    of_ceiling = best_1000 / ref["ceiling_samples_per_s"]
    p99 = run("batched", "1x100", 1)["p99_ms"]
    p99_ratio, p99_vs_p99 = p99 / ref["direct_100_p50_ms"], p99 / ref["direct_100_p99_ms"]
    return [
        {"name": "c=64, 1x100: batched / unbatched samples/s", "value": speedup,
         "goal": ">= 5", "met": speedup >= 5},
        {"name": "1x1000 at saturation: batched / in-process ceiling", "value": of_ceiling,
         "goal": ">= 0.7", "met": of_ceiling >= 0.7},
        {"name": "c=1, 1x100: p99 / one direct call (its p50)", "value": p99_ratio,
         "goal": "<= 1.5", "met": p99_ratio <= 1.5},
        {"name": "c=1, 1x100: p99 / p99 of direct calls (same noise)", "value": p99_vs_p99,
         "goal": "<= 1.5", "met": p99_vs_p99 <= 1.5},
    ]  # fmt: skip


SCALING_SERVERS = {
    "1 worker": ("--workers", "1"),
    "2 workers": ("--workers", "2"),
    "1 Ray replica": ("--backend", "ray", "--replicas", "1"),
    "2 Ray replicas": ("--backend", "ray", "--replicas", "2"),
}


def process_cpu(root: int) -> dict[str, float]:
    """CPU seconds so far of process ``root`` and its descendants, summed by role (Linux).

    Roles: ``ray::Name`` for Ray's processes (proxy, controller, replicas), ``worker``
    for a ``serve --workers`` process, the executable's name otherwise."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        procs[int(entry)] = (int(stat[1]), (int(stat[11]) + int(stat[12])) / tick, cmd)
    keep, frontier = set(), {root}
    while frontier:
        keep |= frontier
        frontier = {pid for pid, (ppid, _, _) in procs.items() if ppid in frontier} - keep
    totals: dict[str, float] = {}
    for pid in keep & procs.keys():
        _, cpu, cmd = procs[pid]
        text = b" ".join(cmd).decode(errors="replace")
        if text.startswith("ray::"):
            role = text.split()[0]
        elif "multiprocessing.spawn" in text:
            role = "worker" if "spawn_main" in text else "multiprocessing"
        elif "sbi_service" in text:
            role = "sbi-service serve"
        else:
            role = Path(cmd[0].decode(errors="replace")).name
        totals[role] = totals.get(role, 0.0) + cpu
    return totals


def scaling(home: Path, args: argparse.Namespace) -> dict:
    """1 vs 2 workers, 1 vs 2 Ray Serve replicas; c = 1, 64; 1x100, 1x1000."""
    runs = []
    for server, flags in SCALING_SERVERS.items():
        port = free_port()
        proc = start_server(home, port, True, *flags)
        try:
            run_load(port, "1x100", 64, 2.0, 400)  # warm every worker's or replica's path
            for workload in ("1x100", "1x1000"):
                for concurrency in (1, 64):
                    before = process_cpu(proc.pid)
                    row = run_load(port, workload, concurrency, args.seconds, args.max_requests)
                    after = process_cpu(proc.pid)
                    row["cpu_ms_per_request"] = {
                        role: 1e3 * (cpu - before.get(role, 0.0)) / max(row["requests"], 1)
                        for role, cpu in after.items()
                    }
                    row.update(server=server, workload=workload, concurrency=concurrency)
                    print(json.dumps(row), flush=True)
                    runs.append(row)
        finally:
            stop_server(proc)
    return {"runs": runs, "machine": {"cpus": os.cpu_count()}}


def scaling_table(results: dict) -> str:
    def rate(server: str, workload: str, concurrency: int) -> float:
        return next(
            r["samples_per_s"]
            for r in results["runs"]
            if (r["server"], r["workload"], r["concurrency"]) == (server, workload, concurrency)
        )

    lines = [
        "| server | workload | concurrency | samples/s | requests/s | p50 ms | p99 ms | errors "
        "| client cores |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['server']} | {r['workload']} | {r['concurrency']} | {r['samples_per_s']:,.0f} "
            f"| {r['requests_per_s']:,.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['errors']} | {r['client_cpu_share']:.2f} |"
        )
    lines += [
        "",
        "| target (c = 64, 1 x 100) | measured | goal | met |",
        "| --- | ---: | ---: | --- |",
    ]
    for two, one in (("2 workers", "1 worker"), ("2 Ray replicas", "1 Ray replica")):
        ratio = rate(two, "1x100", 64) / rate(one, "1x100", 64)
        lines.append(
            f"| {two} / {one} | {ratio:.2f} | >= 1.5 | {'yes' if ratio >= 1.5 else 'no'} |"
        )
    for server in SCALING_SERVERS:
        ratio = rate(server, "1x100", 64) / rate(server, "1x100", 1)
        lines.append(
            f"| {server}: c=64 / c=1 | {ratio:.2f} | >= 3 | {'yes' if ratio >= 3 else 'no'} |"
        )
    lines.append(
        f"\n{results['machine']['cpus']} CPUs shared by the servers and the load generator (a "
        "separate process; `client cores`: its CPU seconds per second)."
    )
    lines += [
        "",
        "Server CPU ms per request at c = 64, 1 x 100, by process (all of them, summed by role;"
        " roles under 0.05 ms left out):",
        "",
        "| server | total | by process |",
        "| --- | ---: | --- |",
    ]
    for r in results["runs"]:
        if (r["workload"], r["concurrency"]) == ("1x100", 64):
            parts = sorted(r["cpu_ms_per_request"].items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"{role} {ms:.1f}" for role, ms in parts if ms >= 0.05)
            total = sum(r["cpu_ms_per_request"].values())
            lines.append(f"| {r['server']} | {total:.1f} | {shown} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=6.0, help="per load run")
    parser.add_argument("--max-requests", type=int, default=3000, help="per load run")
    parser.add_argument("--scaling", action="store_true", help="workers and replicas only")
    args = parser.parse_args()
    if args.scaling:
        with tempfile.TemporaryDirectory(prefix="sbi-serving-bench-") as tmp:
            train(Path(tmp), args.epochs)
            results = scaling(Path(tmp), args)
        markdown = scaling_table(results)
        print(markdown)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "serving_scaling.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "serving_scaling.md").write_text(
            "# Serving across processes (benchmarks/serving.py --scaling)\n\n" + markdown + "\n"
        )
        return

    from sbi_service.config import Settings

    with tempfile.TemporaryDirectory(prefix="sbi-serving-bench-") as tmp:
        home = Path(tmp)
        trained = train(home, args.epochs)
        print(f"trained {MODEL}: {trained['epochs']} epochs, {trained['train_seconds']} s")
        results = {
            "model": {"name": MODEL, "simulator": "two_moons", "num_simulations": 10_000,
                      "estimator": "nsf", "epochs": trained["epochs"]},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "torch_threads": Settings().torch_threads,
                        "batch_rows": Settings().batch_rows},
            "bounds": {"seconds_per_run": args.seconds, "max_requests_per_run": args.max_requests},
            "runs": [],
        }  # fmt: skip
        results["in_process"] = in_process(home, 3.0, Settings().batch_rows)
        for server, batching in (("batched", True), ("unbatched", False)):
            port = free_port()
            proc = start_server(home, port, batching)
            try:
                run_load(port, "1x100", 4, 1.0, 40)  # warm the connection path
                for workload in WORKLOADS:
                    for concurrency in CONCURRENCY:
                        row = run_load(port, workload, concurrency, args.seconds, args.max_requests)
                        row.update(server=server, workload=workload, concurrency=concurrency)
                        print(json.dumps(row), flush=True)
                        results["runs"].append(row)
            finally:
                stop_server(proc)
    results["targets"] = targets(results)
    markdown = table(results)
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "serving.md").write_text(
        "# Serving benchmark (benchmarks/serving.py)\n\n" + markdown + "\n"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--loadgen":
        port, workload, conc, secs, max_req = sys.argv[2:7]
        print(
            json.dumps(
                asyncio.run(_load(int(port), workload, int(conc), float(secs), int(max_req)))
            )
        )
    else:
        main()
