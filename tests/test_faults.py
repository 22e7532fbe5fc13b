"""Faults: damaged files, a read-only or full store, processes killed by SIGKILL.

The damaged-file checks run in process; the read-only, full-disk and kill -9 cases run
real processes (``benchmarks/faults.py`` runs the longer kill -9 matrix and prints it).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from tiny_model import make_data, train_tiny

from sbi_service.api.app import create_app
from sbi_service.config import Settings
from sbi_service.errors import ModelFileError
from sbi_service.jobs import run_job
from sbi_service.store import files
from sbi_service.store.db import Store
from sbi_service.workflows.diagnose import DiagnoseRequest, diagnose_model
from sbi_service.workflows.models import load_posterior

OBS = [[0.1, 0.2]]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("faults"), n=500)


@pytest.fixture
def store(home, data):
    store = Store(home)
    train_tiny(store, data)
    train_tiny(store, data, seed=1)
    return store


def sample_args(tmp_path: Path, version: int | None = None) -> list[str]:
    obs = tmp_path / "obs.npy"
    np.save(obs, np.array(OBS, dtype=np.float32))
    args = ["sample", "tiny", "--observations", str(obs), "--num-samples", "4", "--seed", "0"]
    args += ["--out", str(tmp_path / "out.npy")]
    return args + (["--version", str(version)] if version else [])


def flip_exponent_bits(path: Path) -> None:
    """Flip the top exponent bits of the last float32 in the file: a silent corruption."""
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x40
    path.write_bytes(bytes(raw))


DAMAGES = {
    "truncated weights": (
        "weights.safetensors",
        lambda p: p.write_bytes(p.read_bytes()[:-100]),
        "truncated",
    ),
    "flipped weight bits": ("weights.safetensors", flip_exponent_bits, "sha256"),
    "altered config": (
        "config.json",
        lambda p: p.write_text(p.read_text().replace('"transforms": 2', '"transforms": 3')),
        "sha256",
    ),
    "deleted weights": ("weights.safetensors", lambda p: p.unlink(), "missing"),
    "deleted folder": (".", lambda p: shutil.rmtree(p), "folder is missing"),
}


@pytest.mark.parametrize("case", DAMAGES)
def test_a_damaged_version_is_refused_everywhere_and_others_still_serve(
    case, store, home, run_cli, tmp_path
):
    name, damage, message = DAMAGES[case]
    damage(home / "models/tiny/2" / name)

    with pytest.raises(ModelFileError, match=message):
        load_posterior(store, "tiny", 2)
    code, out, err = run_cli(*sample_args(tmp_path))
    assert code == 2 and err.startswith("error: model 'tiny' version 2") and message in err, err
    assert "Traceback" not in err and not (tmp_path / "out.npy").exists()
    assert run_cli(*sample_args(tmp_path, version=1))[0] == 0  # the earlier version is whole

    settings = Settings(home=home, reload_interval_s=0)
    with TestClient(create_app(settings)) as client:
        body = {"observations": OBS, "num_samples": 4, "seed": 0}
        r = client.post("/v1/models/tiny/samples", json=body)
        assert r.status_code == 409, r.text
        detail = r.json()["detail"][0]
        assert detail["field"] == "model" and message in detail["message"]
        assert str(home) not in r.text  # no server path in the answer
        assert client.post("/v1/models/tiny/samples", json={**body, "version": 1}).is_success
        r = client.post("/v1/models/tiny/log_prob", json={"observations": OBS, "parameters": OBS})
        assert r.status_code == 409 and r.json()["detail"][0]["field"] == "model"


def test_checksums_are_recorded_at_save_time(store, home):
    record = store.get_model_version("tiny", 1)
    assert store.verified_path(record) == home / "models/tiny/1"
    with sqlite3.connect(home / "sbi_service.db") as db:
        rows = db.execute(
            "SELECT file, sha256, bytes FROM model_files WHERE version = 1"
        ).fetchall()
    assert {f for f, _, _ in rows} == {"config.json", "weights.safetensors"}
    for file, digest, size in rows:
        raw = (home / "models/tiny/1" / file).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == digest and len(raw) == size


def test_a_version_saved_before_checksums_loads_unchecked_until_verify_records_them(
    store, home, run_cli, caplog
):
    with sqlite3.connect(home / "sbi_service.db") as db:  # as an older release saved it
        db.execute("DELETE FROM model_files WHERE version = 1")
    assert load_posterior(store, "tiny", 1)[1]["version"] == 1
    assert "no recorded checksums" in caplog.text and "models verify --record" in caplog.text

    code, out, _ = run_cli("models", "verify", "tiny")
    assert code == 0 and "v1   unchecked" in out and "v2   ok" in out, out
    code, out, _ = run_cli("models", "verify", "--record")
    assert code == 0 and "v1   recorded" in out, out
    assert store.checksums_recorded("tiny", 1)
    flip_exponent_bits(home / "models/tiny/1/weights.safetensors")
    code, out, _ = run_cli("models", "verify", "--json")
    rows = {r["version"]: r for r in json.loads(out)}
    assert code == 2 and rows[1]["status"] == "damaged" and "sha256" in rows[1]["message"]
    assert rows[2]["status"] == "ok"
    with pytest.raises(ModelFileError, match="sha256"):
        load_posterior(store, "tiny", 1)


@pytest.fixture(scope="module")
def test_pairs(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("test-pairs"), n=30)


def diagnose_tiny(store: Store, data: Path, **options) -> dict:
    """Diagnose tiny v1 on the test pairs ``data`` (TARP only, loose thresholds)."""
    request = {"model": "tiny", "version": 1, "data": str(data), "tarp": True, "sbc": False}
    request.update({"num_posterior_samples": 20, "thresholds": {"max_atc": 1.0}, **options})
    return diagnose_model(store, DiagnoseRequest.from_dict(request))


def test_a_damaged_report_is_refused_and_a_new_diagnosis_replaces_it(store, home, test_pairs):
    diagnose_tiny(store, test_pairs)
    with sqlite3.connect(home / "sbi_service.db") as db:
        recorded = {f for (f,) in db.execute("SELECT file FROM report_files WHERE version = 1")}
    assert {"report.json", "report.html"} <= recorded
    report = home / "models/tiny/1/diagnostics/report.json"
    report.write_text(report.read_text().replace('"model"', '"modal"', 1))  # same size

    settings = Settings(home=home, reload_interval_s=0)
    with TestClient(create_app(settings)) as client:
        r = client.get("/v1/models/tiny/versions/1/report", headers={"Accept": "application/json"})
        assert r.status_code == 409, r.text
        detail = r.json()["detail"][0]
        assert detail["field"] == "version" and "report.json" in detail["message"]
        assert "diagnose" in detail["message"] and str(home) not in r.text
        diagnose_tiny(store, test_pairs)  # a new run replaces the report and its checksums
        r = client.get("/v1/models/tiny/versions/1/report", headers={"Accept": "application/json"})
        assert r.status_code == 200 and r.json()["model"] == "tiny"


def test_opening_the_store_cleans_up_after_dead_writers_only(store, home):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    model_dir, version_dir = home / "models/tiny", home / "models/tiny/1"
    folders = {
        "dead writer": model_dir / f".tmp-{dead}.1-aa",
        "older release": version_dir / ".tmp-diagnostics-0123abcd",
        "reused process id": model_dir / f".tmp-{os.getpid()}.1-bb",
        "live writer": model_dir / f".tmp-{files.owner_token()}-cc",
        "moved aside, place empty": version_dir / f".old-{dead}.1-dd-extra",
        "moved aside, place taken": version_dir / f".old-{dead}.1-ee-config.json",
    }
    for folder in folders.values():
        folder.mkdir()
        (folder / "part").write_bytes(b"half")
    Store(home)
    assert not folders["dead writer"].exists() and not folders["older release"].exists()
    assert not folders["reused process id"].exists() and folders["live writer"].exists()
    assert (version_dir / "extra" / "part").is_file()  # put back in its place
    assert not folders["moved aside, place taken"].exists()
    assert (version_dir / "config.json").is_file()


KILL_IN_REPORT_SWAP = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    import torch
    from test_faults import diagnose_tiny
    from sbi_service.store import files
    from sbi_service.store.db import Store
    real_rename = os.rename

    def rename(source, target):
        real_rename(source, target)
        if Path(source).name == "diagnostics":  # moved aside, the new one not yet in place
            os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(1)
    files.os.rename = rename
    diagnose_tiny(Store(Path({home!r})), Path({data!r}), num_posterior_samples=30)
    """
)


def test_kill_9_between_the_renames_of_a_report_keeps_the_earlier_report(store, home, test_pairs):
    diagnose_tiny(store, test_pairs)
    before = (home / "models/tiny/1/diagnostics/report.json").read_text()
    script = KILL_IN_REPORT_SWAP.format(
        tests=str(Path(__file__).parent), home=str(home), data=str(test_pairs)
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (home / "models/tiny/1/diagnostics").exists()  # the kill left its place empty
    store = Store(home)  # opening it puts the earlier report back
    folder = store.verified_report("tiny", 1)
    assert (folder / "report.json").read_text() == before
    assert not [p for p in (home / "models/tiny/1").iterdir() if p.name.startswith(".")]


# -- processes: read-only store, full disk, kill -9 ----------------------------------------
def cli(home: Path, *args: str, read_only: Path | None = None, fsize: int | None = None):
    """Run ``sbi-service ARGS`` in a new process, with ``read_only`` mounted or made read-only
    (a read-only bind mount in its own mount namespace when root, whom modes do not stop),
    and files limited to ``fsize`` bytes (writes past it fail as on a full disk)."""
    env = {**os.environ, "SBI_SERVICE_HOME": str(home)}
    cmd = [sys.executable, "-m", "sbi_service", *args]
    if read_only is not None and os.geteuid() == 0:
        if subprocess.run(["unshare", "-m", "mount", "--bind", "/", "/mnt"]).returncode != 0:
            pytest.skip("running as root without the right to make a read-only mount")
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
        cmd = ["unshare", "-m", "sh", "-c", script, str(read_only), *cmd]
    elif read_only is not None:
        for p in [read_only, *read_only.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
    limit = None
    if fsize is not None:
        limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))  # noqa: E731
    try:
        return subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=120, preexec_fn=limit
        )
    finally:
        if read_only is not None and os.geteuid() != 0:
            for p in [read_only, *read_only.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.fixture
def shared_home(data, tmp_path):
    home = tmp_path / "home"
    train_tiny(Store(home), data)
    shutil.copy(data, tmp_path / "sims.npz")
    (tmp_path / "prior.json").write_text((data.parent / "prior.json").read_text())
    return home


TRAIN_DATA = ["--data", "{d}/sims.npz", "--prior", "{d}/prior.json", "--seed", "0"]


def train_args(home: Path, name: str = "tiny", *more: str) -> list[str]:
    data = [a.format(d=home.parent) for a in TRAIN_DATA]
    return ["train", "--name", name, *data, "--max-epochs", "2", *more]


def test_a_read_only_store_is_a_clear_error(shared_home):
    for args in (["models", "list"], train_args(shared_home)):
        proc = cli(shared_home, *args, read_only=shared_home)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and "writable" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_read_only_models_folder_is_refused_before_training(shared_home):
    args = train_args(shared_home, "tiny", "--max-epochs", "100000")
    proc = cli(shared_home, *args, read_only=shared_home / "models")
    assert proc.returncode == 2 and "not writable" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [m["versions"] for m in Store(shared_home).list_models()] == [[1]]


def test_a_full_disk_saves_nothing_and_leaves_no_temporary_folder(shared_home):
    big = ["--options", json.dumps({"transforms": 2, "hidden_features": [128, 128]})]
    proc = cli(shared_home, *train_args(shared_home, "big", *big), fsize=100_000)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: no space left") and "nothing was saved" in proc.stderr
    assert not (shared_home / "models/big").exists() or not any(
        (shared_home / "models/big").iterdir()
    )
    assert [m["model"] for m in Store(shared_home).list_models()] == ["tiny"]


KILL_IN_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from tiny_model import train_tiny
    import sbi_service.store.db as db
    from sbi_service.store import Store

    real_rename = os.rename

    def die(*args):
        if {where!r} == "after rename":
            real_rename(*args)
        os.kill(os.getpid(), signal.SIGKILL)

    if {where!r} == "while writing":
        import sbi_service.estimators.io as io
        io.save = lambda state: die()
    else:
        db.os.rename = die
    train_tiny(Store(Path({home!r})), {data!r})
    """
)


@pytest.mark.parametrize("where", ["while writing", "after rename"])
def test_kill_9_inside_a_save_leaves_earlier_versions_whole(shared_home, where):
    script = KILL_IN_SAVE.format(
        tests=str(Path(__file__).parent),
        where=where,
        home=str(shared_home),
        data=str(shared_home.parent / "sims.npz"),
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p.name for p in (shared_home / "models/tiny").iterdir()]
    assert set(leftovers) - {"1"}, "the killed save left nothing to clean up"
    store = Store(shared_home)  # opening the store cleans up after the dead process
    assert sorted(p.name for p in (shared_home / "models/tiny").iterdir()) in (["1"], ["1", "2"])
    assert [m["versions"] for m in store.list_models()] == [[1]]
    posterior, _ = load_posterior(store, "tiny", 1)
    assert train_tiny(store, shared_home.parent / "sims.npz")["version"] == 2
    assert load_posterior(store, "tiny", 2)[1]["version"] == 2


def test_kill_9_of_the_cli_mid_training(shared_home):
    args = train_args(shared_home, "tiny", "--max-epochs", "100000", "--patience", "100000")
    env = {**os.environ, "SBI_SERVICE_HOME": str(shared_home)}
    proc = subprocess.Popen([sys.executable, "-m", "sbi_service", *args], env=env)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=8)  # still training: --max-epochs 2 takes well under a second
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    store = Store(shared_home)
    assert [m["versions"] for m in store.list_models()] == [[1]]
    assert sorted(p.name for p in (shared_home / "models/tiny").iterdir()) == ["1"]
    assert train_tiny(store, shared_home.parent / "sims.npz")["version"] == 2  # the rerun


def test_kill_9_of_the_server_mid_diagnose_job_then_rerun(shared_home):
    """A diagnose job running when the server is killed reads interrupted, and reruns.

    (A train job killed with its server: ``test_api_server``; every case with real
    processes: ``benchmarks/faults.py``.)
    """
    from test_api_server import free_port, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SBI_SERVICE_HOME": str(shared_home),
        "SBI_SERVICE_API_KEYS": "k",
        "SBI_SERVICE_RELOAD_INTERVAL_S": "0",
    }
    cmd = [sys.executable, "-m", "sbi_service", "serve", "--port", str(port)]
    key = {"X-API-Key": "k"}

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def state(job_id: str) -> dict:
        return http.get(f"/v1/jobs/{job_id}").json()

    server = start()
    http = httpx.Client(base_url=url, timeout=60)
    try:
        wait_ready(url, server)
        upload = http.post(
            "/v1/datasets",
            content=(shared_home.parent / "sims.npz").read_bytes(),
            headers={**key, "Content-Type": "application/octet-stream"},
        )
        assert upload.status_code == 201, upload.text
        diagnose = {"kind": "diagnose", "model": "tiny", "dataset": upload.json()["id"]}
        r = http.post("/v1/jobs", json={**diagnose, "num_posterior_samples": 50_000}, headers=key)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time_left(120)
        while state(job_id)["state"] != "running":
            assert deadline(), state(job_id)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        server = start()
        wait_ready(url, server)
        deadline = time_left(60)
        while (info := state(job_id))["state"] != "interrupted":
            assert deadline(), info
        body = {"observations": OBS, "num_samples": 3}
        assert http.post("/v1/models/tiny/samples", json=body).status_code == 200
    finally:
        http.close()
        server.kill()
        server.wait(10)
    # the interrupted job reruns (here in this process, as a job worker runs it)
    request = {**info["request"], "num_posterior_samples": 50}
    assert run_job(str(shared_home), job_id, "diagnose", request)["model"] == "tiny"
    assert Store(shared_home).get_job(job_id)["state"] == "succeeded"


def time_left(seconds: float):
    """A callable that sleeps a little and says whether ``seconds`` have not yet passed."""
    import time

    end = time.monotonic() + seconds

    def more() -> bool:
        time.sleep(0.1)
        return time.monotonic() < end

    return more
