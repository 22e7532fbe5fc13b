"""Fuzz the REST API with schemathesis against its own /openapi.json; print what it found.

A server (``sbi-service serve``, 127.0.0.1, a fresh home with one tiny model and an API
key) is fuzzed by ``st run`` twice: with the key and without it. Every operation gets
the examples, coverage (boundary and invalid values), fuzzing (generated valid and
invalid bodies) and stateful phases (sequences that follow the schema's links, e.g.
submit a job, then read it; train a model, then sample it), and every check but
``positive_data_acceptance`` (a schema cannot say that observations must have the
model's shape, so a schema-valid body may rightly get a 422).

    python benchmarks/fuzz.py [--max-examples 200] [--max-time 300]

Prints, per run: operations tested, cases generated, failures by kind (check code and
name), and the exit status; exits 1 when any run found a failure. The suite runs a
short version (``tests/test_fuzz.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import free_port, start_server, stop_server  # noqa: E402

KEY = "fuzz-key"
# Every check schemathesis has, but positive_data_acceptance (see the module docstring);
# response times are not judged here (on a shared machine, that is the load benchmark's).
EXCLUDED_CHECKS = ["positive_data_acceptance"]


def run_schemathesis(
    url: str,
    report: Path,
    key: str | None,
    max_examples: int,
    max_time: float | None,
    phases: str = "examples,coverage,fuzzing,stateful",
) -> dict:
    """``st run`` on ``url``/openapi.json; returns a summary of its event report."""
    st = Path(sys.executable).parent / "st"
    cmd = [str(st), "run", f"{url}/openapi.json", "--checks", "all", "--phases", phases]
    cmd += ["--exclude-checks", ",".join(EXCLUDED_CHECKS), "--max-examples", str(max_examples)]
    cmd += ["--workers", "1", "--seed", "1", "--no-color", "--continue-on-failure"]
    cmd += ["--request-timeout", "120", "--max-response-time", "120"]
    cmd += ["--suppress-health-check", "all"]
    cmd += ["--report", "ndjson", "--report-ndjson-path", str(report)]
    if max_time is not None:
        cmd += ["--max-time", str(int(max_time))]
    if key is not None:
        cmd += ["-H", f"X-API-Key: {key}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    summary = summarize(report)
    summary.update(
        exit_code=proc.returncode, seconds=round(time.perf_counter() - start, 1), output=proc.stdout
    )
    return summary


def summarize(report: Path) -> dict:
    """Operations, cases and failures by kind from an ``st run`` ndjson event report."""
    if not report.exists():
        return {"operations": [], "cases": 0, "failures": {"st run wrote no report": 1}}
    operations: set[str] = set()
    cases = 0
    failures: Counter[str] = Counter()
    for line in report.read_text().splitlines():
        event = json.loads(line)
        for kind, body in event.items():
            if kind != "ScenarioFinished":
                continue
            recorder = body.get("recorder", {})
            label = recorder.get("label")
            if label:
                operations.add(label)
            cases += len(recorder.get("cases", {}))
            for checks in recorder.get("checks", {}).values():
                for check in checks:
                    if check.get("status") == "failure":
                        failure = (check.get("failure_info") or {}).get("failure") or {}
                        kind = f"{failure.get('code', '')} {failure.get('title', check['name'])}"
                        failures[kind.strip()] += 1
    return {"operations": sorted(operations), "cases": cases, "failures": dict(failures)}


def tiny_home(folder: Path) -> Path:
    """A home with a tiny model ``tiny`` (2-D theta and x) to sample and diagnose."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_model import make_data, train_tiny

    from sbi_service.store.db import Store

    home = folder / "home"
    train_tiny(Store(home), make_data(folder, n=500))
    return home


def fuzz(
    max_examples: int,
    max_time: float | None,
    phases: str = "examples,coverage,fuzzing,stateful",
    phases_without_key: str = "examples,coverage,fuzzing,stateful",
) -> list[dict]:
    """Both runs (with and without the key) against a fresh server; returns their summaries."""
    with tempfile.TemporaryDirectory(prefix="sbi-fuzz-") as folder:
        home = tiny_home(Path(folder))
        port = free_port()
        env = {"SBI_SERVICE_API_KEYS": KEY, "SBI_SERVICE_PRELOAD_MODELS": "tiny"}
        server = start_server(home, port, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            results = []
            for key, run_phases in ((KEY, phases), (None, phases_without_key)):
                report = Path(folder) / f"report-{'key' if key else 'nokey'}.ndjson"
                result = run_schemathesis(url, report, key, max_examples, max_time, run_phases)
                result["with_key"] = key is not None
                results.append(result)
            server_errors = httpx.get(url + "/metrics").text.count('status="500"')
            for result in results:
                result["server_500_in_metrics"] = server_errors
            return results
        finally:
            stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=200)
    parser.add_argument("--max-time", type=float, default=None)
    args = parser.parse_args()
    results = fuzz(args.max_examples, args.max_time)
    failed = False
    for r in results:
        print(f"== {'with' if r['with_key'] else 'without'} an API key ({r['seconds']} s)")
        print(f"operations tested: {len(r['operations'])}")
        for op in r["operations"]:
            print(f"  {op}")
        print(f"cases: {r['cases']}")
        print(f"failures: {sum(r['failures'].values())}")
        for kind, n in sorted(r["failures"].items()):
            print(f"  {n:6d}  {kind}")
        print(f"st exit code: {r['exit_code']}")
        failed |= r["exit_code"] != 0 or bool(r["failures"])
        if r["exit_code"] != 0:
            print(r["output"][-4000:])
    print(f"responses with status 500 in /metrics: {results[0]['server_500_in_metrics']}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
