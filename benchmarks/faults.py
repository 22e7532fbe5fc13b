"""kill -9 in the middle of training, saving and diagnosing, with real processes.

Each scenario starts from a home holding one trained model (``tiny`` v1), runs a real
``sbi-service`` process (the CLI, or ``serve`` with its job workers), kills it with
SIGKILL at the named moment, and then checks the store the way a restart sees it:

    consistent   the versions recorded are the versions before, plus at most one whole new one
    earlier      every earlier version still loads (checksums match) and samples
    reports      every stored diagnostic report still matches its checksums
    tmp          temporary save folders left by the kill, and after a Store is opened again
    job          the interrupted job's state after the server restarts ("interrupted")
    rerun        the same work run again succeeds (CLI: the command; REST: the job request)

"mid-save" is caught without any hook in the code: the model is made large enough that
writing it takes a while, and the process is killed as soon as its ``.tmp-*`` folder
appears. A killed server is killed with its job workers (its process group), as a
machine crash would.

    python benchmarks/faults.py [WORDS]     # only the scenarios whose name has all WORDS
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import free_port, kill_group, start_server  # noqa: E402
from tiny_model import PRIOR, make_data, train_tiny  # noqa: E402

from sbi_service.store.db import Store  # noqa: E402
from sbi_service.workflows.datasets import add_dataset  # noqa: E402
from sbi_service.workflows.models import load_posterior, sample_posterior  # noqa: E402

KEY = "faults-key"
BIG = {"transforms": 5, "hidden_features": [512, 512]}  # ~40 MB of weights: a slow save
LONG = ["--max-epochs", "100000", "--patience", "100000"]


def cli_process(home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "SBI_SERVICE_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "sbi_service", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def train_args(folder: Path, name: str, *more: str) -> list[str]:
    data = ["--data", str(folder / "sims.npz"), "--prior", str(folder / "prior.json")]
    return ["train", "--name", name, *data, "--seed", "0", *more]


def wait_for(condition: Callable[[], bool], seconds: float, every: float = 0.001) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(every)
    return False


def tmp_folders(home: Path) -> list[Path]:
    """Temporary folders of saves: versions (models/M/) and reports (models/M/V/)."""
    models = home / "models"
    return [*models.glob("*/.tmp-*"), *models.glob("*/*/.tmp-*"), *models.glob("*/*/.old-*")]


def check_store(home: Path, before: dict[str, list[int]]) -> dict:
    """What a restart sees: leftovers, recorded versions, every earlier version sampling."""
    leftovers = len(tmp_folders(home))
    store = Store(home)  # opening it removes the dead process's temporary folders
    after = {m["model"]: m["versions"] for m in store.list_models()}
    consistent = all(after.get(m, [])[: len(v)] == v for m, v in before.items()) and all(
        len(after[m]) <= len(before.get(m, [])) + 1 for m in after
    )
    sampled = 0
    for model, versions in after.items():
        for version in versions:
            posterior, _ = load_posterior(store, model, version)
            x = np.zeros((1, *posterior.x_shape), dtype=np.float32)
            assert sample_posterior(posterior, x, 10, 0).shape[:2] == (1, 10)
            sampled += 1
    reports = [
        store.verified_report(model, version)  # raises if a report's files do not match
        for model in after
        for version in store.verdicts(model)
    ]
    return {
        "consistent": consistent,
        "versions": after,
        "earlier_sample": f"{sampled}/{sum(len(v) for v in after.values())}",
        "reports_whole": len(reports),
        "tmp_left": leftovers,
        "tmp_after_open": len(tmp_folders(home)),
    }


# -- CLI ----------------------------------------------------------------------------------------
def cli_mid_training(folder: Path, home: Path) -> dict:
    proc = cli_process(home, *train_args(folder, "tiny", *LONG))
    time.sleep(8)  # importing, loading, then training
    killed_at = "training" if proc.poll() is None else "already finished"
    kill_group(proc)
    return {"killed_during": killed_at, **rerun_cli(folder, home)}


def cli_mid_save(folder: Path, home: Path) -> dict:
    args = train_args(folder, "big", "--max-epochs", "1", "--options", json.dumps(BIG))
    proc = cli_process(home, *args)
    caught = wait_for(lambda: bool(tmp_folders(home)) or proc.poll() is not None, 600)
    inside = caught and proc.poll() is None and bool(tmp_folders(home))
    kill_group(proc)
    return {"killed_during": "save" if inside else "missed the save", **rerun_cli(folder, home)}


def diagnose_args(folder: Path, samples: int) -> list[str]:
    report = ["--report", str(folder / "report"), "--seed", "0", "--max-atc", "1"]
    data = ["--data", str(folder / "sims.npz"), "--tarp"]
    return ["diagnose", "tiny", *data, "--num-posterior-samples", str(samples), *report]


def diagnosed(folder: Path, home: Path) -> None:
    """tiny v1 gets a first report, which the killed diagnosis must not lose."""
    proc = cli_process(home, *diagnose_args(folder, 20))
    if proc.wait(600) not in (0, 1):  # a verdict, passed or failed
        raise RuntimeError(f"the first diagnosis failed: {proc.stderr.read().decode()}")


def cli_mid_diagnose(folder: Path, home: Path) -> dict:
    diagnosed(folder, home)
    proc = cli_process(home, *diagnose_args(folder, 5000))
    time.sleep(10)  # importing, loading, then sampling 500 x 5000
    killed_at = "diagnose" if proc.poll() is None else "already finished"
    kill_group(proc)
    return {"killed_during": killed_at, **rerun_diagnose(folder, home)}


def cli_mid_report_save(folder: Path, home: Path) -> dict:
    diagnosed(folder, home)
    proc = cli_process(home, *diagnose_args(folder, 20))
    caught = wait_for(lambda: bool(tmp_folders(home)) or proc.poll() is not None, 600)
    inside = caught and proc.poll() is None and bool(tmp_folders(home))
    kill_group(proc)
    return {"killed_during": "report save" if inside else "missed", **rerun_diagnose(folder, home)}


def rerun_diagnose(folder: Path, home: Path) -> dict:
    outcome = check_store(home, {"tiny": [1]})
    proc = cli_process(home, *diagnose_args(folder, 20))
    code = proc.wait(600)
    verdict = {0: "passed", 1: "failed"}.get(code)
    outcome["rerun"] = f"verdict {verdict}" if verdict else f"exit {code}: {proc.stderr.read()}"
    return outcome


def rerun_cli(folder: Path, home: Path) -> dict:
    outcome = check_store(home, {"tiny": [1]})
    proc = cli_process(home, *train_args(folder, "tiny", "--max-epochs", "2"))
    code = proc.wait(600)
    outcome["rerun"] = "exit 0" if code == 0 else f"exit {code}: {proc.stderr.read().decode()}"
    return outcome


# -- server -------------------------------------------------------------------------------------
def server_scenario(home: Path, job: dict, moment: str, killed: Callable[[str, str], bool]) -> dict:
    """Submit ``job``, kill the server's group when ``killed(url, job_id)``, restart, and
    rerun the interrupted job (``POST /v1/jobs/{id}/rerun``: same id, same request)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": KEY})
    server = start_server(home, port, env={"SBI_SERVICE_API_KEYS": KEY})
    try:
        r = http.post("/v1/jobs", json=job)
        r.raise_for_status()
        job_id = r.json()["id"]
        caught = wait_for(lambda: killed(url, job_id), 600)
        state = http.get(f"/v1/jobs/{job_id}").json()["state"]
        kill_group(server)
        outcome = {"killed_during": moment if caught and state == "running" else "missed"}
        outcome.update(check_store(home, {"tiny": [1]}))
        start = time.perf_counter()
        server = start_server(home, port, env={"SBI_SERVICE_API_KEYS": KEY})
        wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] == "interrupted", 60, 0.1)
        info = http.get(f"/v1/jobs/{job_id}").json()
        outcome["job"] = info["state"]
        outcome["restart_s"] = round(time.perf_counter() - start, 1)
        http.post(f"/v1/jobs/{job_id}/rerun").raise_for_status()
        wait_for(
            lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] not in ("queued", "running"),
            600,
            0.2,
        )
        outcome["rerun"] = http.get(f"/v1/jobs/{job_id}").json()["state"]
        return outcome
    finally:
        http.close()
        if server.poll() is None:
            kill_group(server)


def running(url: str, job_id: str) -> bool:
    time.sleep(0.2)
    return httpx.get(f"{url}/v1/jobs/{job_id}").json()["state"] == "running"


def server_mid_training(folder: Path, home: Path) -> dict:
    job = {
        "kind": "train",
        "name": "moons",
        "simulator": "two_moons",
        "num_simulations": 1000,
        "estimator_options": {"transforms": 1, "hidden_features": [16]},
        "train": {"max_epochs": 100_000, "patience": 100_000, "max_seconds": 15},
    }

    def trained_a_while(url: str, job_id: str) -> bool:
        return running(url, job_id) and time.sleep(3) is None

    return server_scenario(home, job, "training", trained_a_while)


def server_mid_save(folder: Path, home: Path) -> dict:
    job = {
        "kind": "train",
        "name": "big",
        "simulator": "two_moons",
        "num_simulations": 200,
        "estimator_options": BIG,
        "train": {"max_epochs": 1},
    }
    return server_scenario(home, job, "save", lambda url, job_id: bool(tmp_folders(home)))


def server_mid_diagnose(folder: Path, home: Path) -> dict:
    diagnosed(folder, home)
    dataset = upload_dataset(home, folder / "sims.npz")  # test pairs, as a client sends them
    job = {"kind": "diagnose", "model": "tiny", "dataset": dataset, "num_posterior_samples": 5000}

    def diagnosing(url: str, job_id: str) -> bool:
        return running(url, job_id) and time.sleep(1) is None

    return server_scenario(home, job, "diagnose", diagnosing)


def upload_dataset(home: Path, npz: Path) -> str:
    """Store ``npz`` as an uploaded dataset of ``home`` (what ``POST /v1/datasets`` does)."""
    return add_dataset(Store(home), npz.read_bytes())["id"]


SCENARIOS = {
    "cli kill -9 mid-training": cli_mid_training,
    "cli kill -9 mid-save": cli_mid_save,
    "cli kill -9 mid-diagnose": cli_mid_diagnose,
    "cli kill -9 mid-save of a report": cli_mid_report_save,
    "server kill -9 mid-training job": server_mid_training,
    "server kill -9 mid-save (train job)": server_mid_save,
    "server kill -9 mid-diagnose job": server_mid_diagnose,
}


def main() -> None:
    rows = []
    for name, scenario in SCENARIOS.items():
        if not all(word in name for word in sys.argv[1:]):
            continue
        folder = Path(tempfile.mkdtemp(prefix="sbi-faults-"))
        try:
            make_data(folder, n=500)
            (folder / "prior.json").write_text(json.dumps(PRIOR))
            home = folder / "home"
            train_tiny(Store(home), folder / "sims.npz")
            start = time.perf_counter()
            outcome = scenario(folder, home)
            outcome["seconds"] = round(time.perf_counter() - start, 1)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        rows.append((name, outcome))
        print(f"{name}: {json.dumps(outcome)}", flush=True)
    ok = all(
        o["consistent"]
        and o["tmp_after_open"] == 0
        and o["rerun"] in ("exit 0", "succeeded", "verdict passed", "verdict failed")
        and o.get("job", "interrupted") == "interrupted"
        for _, o in rows
    )
    print("all scenarios held" if ok else "SOME SCENARIO FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
