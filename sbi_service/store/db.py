"""The SQLite store: simulators, models and their versions, and jobs.

Layout under ``home``::

    sbi_service.db                      this database
    models/{model}/{version}/           config.json + weights.safetensors
    models/{model}/{version}/diagnostics/  the latest diagnostic report of that version
    datasets/{id}.npz                   uploaded simulation sets (theta, x)
    uploads/{upload_id}/                chunks of a resumable upload not yet complete
    simulations/{key}/                  chunks of a simulation run not yet consumed

A model version is written into a temporary folder beside its final place and
renamed into place only when complete; its database row is inserted after the
rename in one transaction. A crash at any point leaves earlier versions untouched
and never a row pointing at a half-written folder.

Several processes (``serve --workers N``, job workers, the CLI) use one database at
once: it runs in WAL mode (readers never block the writer), every write is one short
``BEGIN IMMEDIATE`` transaction, and a writer waits up to ``BUSY_TIMEOUT_S`` for the
lock instead of failing.

A job is leased: its row names the process that holds it (``owner``, host:pid) and
that process renews ``heartbeat_at`` every few seconds while the job is queued or
running (``renew_leases``). ``mark_interrupted_jobs`` marks a job interrupted only
when its owner is really gone: a process of this host that no longer exists, or a
lease not renewed for ``LEASE_S`` seconds. A live server's jobs are never touched.

The sha256 of every saved file is recorded with its version (``model_files``) and
checked before the version is loaded (``store.files``); so are the files of a stored
diagnostic report (``report_files``, replaced with its verdict), checked before the
report is read. Versions saved before checksums were recorded load unchecked
(``verified_path`` logs a warning) until ``record_checksums`` records theirs. A store
that cannot be written, or a disk that fills up, is a ``StoreUnwritableError`` naming
the folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sbi_service.errors import NotFoundError, StoreUnwritableError, UserError
from sbi_service.store import files

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS simulators (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,              -- import_path | remote | data
    spec TEXT NOT NULL,              -- JSON, with "version": 1, 2, ... per registration
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,             -- the first 16 hex digits of sha256
    sha256 TEXT NOT NULL,            -- of the .npz file
    num_simulations INTEGER NOT NULL,
    dim_theta INTEGER NOT NULL,
    x_shape TEXT NOT NULL,           -- JSON list
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_versions (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    config TEXT NOT NULL,            -- JSON, the same as config.json
    created_at REAL NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS verdicts (  -- the latest diagnose run of each version
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    passed INTEGER NOT NULL,
    checks TEXT NOT NULL,            -- JSON list of {diagnostic, name, statistic, ...}
    details TEXT NOT NULL,           -- JSON: seed, test_data, num_tests, thresholds, skipped
    report_path TEXT NOT NULL,       -- the report folder, relative to home
    diagnosed_at REAL NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS promotions (  -- explicit choices of the served version
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    forced INTEGER NOT NULL,
    actor TEXT NOT NULL,
    verdict TEXT NOT NULL,           -- the version's verdict when it was promoted
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,             -- queued | running | succeeded | failed | interrupted
    progress REAL NOT NULL DEFAULT 0,
    request TEXT NOT NULL,           -- JSON
    result TEXT,                     -- JSON
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_files (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    file TEXT NOT NULL,              -- a file name in the version's folder
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (model, version, file)
);
CREATE TABLE IF NOT EXISTS report_files (  -- the files of the verdict's stored report
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    file TEXT NOT NULL,              -- a file name in the report folder
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (model, version, file)
);
"""
# Columns added after the first release; added to older databases on open.
JOB_LEASE_COLUMNS = {"owner": "TEXT", "heartbeat_at": "REAL"}  # host:pid, its last renewal
BUSY_TIMEOUT_S = 30.0
LEASE_S = 15.0  # a job whose lease was not renewed for this long has lost its owner
INTERRUPTED = "the server stopped before the job finished; rerun it (POST /v1/jobs/{id}/rerun)"

DIAGNOSTICS_DIR = "diagnostics"
VERDICT_DETAILS = (
    "seed",
    "test_data",
    "num_tests",
    "num_posterior_samples",
    "thresholds",
    "skipped",
)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: str, what: str = "model name") -> str:
    """``name`` if it is a safe folder name (the whole string: no newline slips past)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UserError(
            f"{what} {name!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


class Store:
    """Access to ``$SBI_SERVICE_HOME``; each call opens its own short connection."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.models_dir = self.home / "models"
        self.db_path = self.home / "sbi_service.db"
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                _add_columns(db, "jobs", JOB_LEASE_COLUMNS)
            finally:
                db.close()
        except (OSError, sqlite3.OperationalError) as e:
            raise self._unusable(e) from None
        files.remove_stale_tmp(self.models_dir)

    def _unusable(self, e: OSError | sqlite3.OperationalError) -> Exception:
        """A clear error for a store that cannot be opened or written (else ``e`` itself)."""
        if isinstance(e, OSError):
            return files.unwritable(e, self.home, "the store")
        if "readonly" in str(e) or "unable to open" in str(e):
            return StoreUnwritableError(
                f"the store {self.home} cannot be written ({e}); point SBI_SERVICE_HOME at a "
                "writable folder or fix its permissions"
            )
        if "disk is full" in str(e):
            return StoreUnwritableError(
                f"no space left on the device holding {self.home} ({e}); free some space"
            )
        return e

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise self._unusable(e) from None
        try:
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as e:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError):
                    raise self._unusable(e) from None
                raise
        finally:
            db.close()

    def check_writable(self, model: str) -> None:
        """Raise ``StoreUnwritableError`` now if a version of ``model`` could not be saved."""
        check_name(model)
        files.check_writable(self.models_dir, f"model {model!r}")
        if (self.models_dir / model).is_dir():
            files.check_writable(self.models_dir / model, f"model {model!r}")

    # -- simulators ------------------------------------------------------------
    def add_simulator(self, name: str, kind: str, spec: dict[str, Any]) -> int:
        """Record (or re-register) a simulator; returns its version (1, 2, ...)."""
        check_name(name, "simulator name")
        with self._connect() as db:
            row = db.execute("SELECT spec FROM simulators WHERE name = ?", (name,)).fetchone()
            version = json.loads(row["spec"]).get("version", 1) + 1 if row else 1
            db.execute(
                "INSERT OR REPLACE INTO simulators VALUES (?, ?, ?, ?)",
                (name, kind, json.dumps({**spec, "version": version}), time.time()),
            )
        return version

    def list_simulators(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM simulators ORDER BY name").fetchall()
        return [{"name": r["name"], "kind": r["kind"], "spec": json.loads(r["spec"])} for r in rows]

    # -- datasets ----------------------------------------------------------------
    def dataset_path(self, dataset_id: str) -> Path:
        return self.home / "datasets" / f"{dataset_id}.npz"

    def add_dataset(self, record: dict[str, Any], file: Path) -> None:
        """Move the checked ``file`` into place as ``record["id"]`` and record it."""
        final = self.dataset_path(record["id"])
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            os.replace(file, final)
            db.execute(
                "INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record["id"],
                    record["sha256"],
                    record["num_simulations"],
                    record["dim_theta"],
                    json.dumps(record["x_shape"]),
                    record["bytes"],
                    time.time(),
                ),
            )

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        with self._connect() as db:
            row = db.execute("SELECT * FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"dataset {dataset_id!r} does not exist; upload it first")
        return {**dict(row), "x_shape": json.loads(row["x_shape"])}

    # -- models ------------------------------------------------------------------
    def save_model_version(self, model: str, write: Callable[[Path], dict[str, Any]]) -> dict:
        """Create the next version of ``model``: ``write(folder)`` fills a temporary folder
        and returns its config; the folder is renamed into place, then recorded.

        Returns {"model", "version", "path", "config"}. The sha256 of every file is
        recorded with the version. A full disk or an unwritable folder raises
        ``StoreUnwritableError`` and leaves nothing behind.
        """
        check_name(model)
        model_dir = files.inside(self.home, self.models_dir / model)
        tmp = files.tmp_folder(model_dir)
        final: Path | None = None
        try:
            model_dir.mkdir(parents=True, exist_ok=True)
            config = write(tmp)
            _fsync_tree(tmp)
            saved = files.digests(tmp)
            with self._connect() as db:
                row = db.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM model_versions WHERE model = ?", (model,)
                ).fetchone()
                version = int(row[0]) + 1
                final = model_dir / str(version)
                if final.exists():  # left by a crash between rename and insert
                    shutil.rmtree(final)
                os.rename(tmp, final)
                db.execute(
                    "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?)",
                    (
                        model,
                        version,
                        str(final.relative_to(self.home)),
                        json.dumps(config),
                        time.time(),
                    ),
                )
                db.executemany(
                    "INSERT INTO model_files VALUES (?, ?, ?, ?, ?)",
                    [(model, version, n, d["sha256"], d["bytes"]) for n, d in saved.items()],
                )
        except BaseException as e:
            if final is not None and final.exists() and not tmp.exists():
                shutil.rmtree(final, ignore_errors=True)  # renamed, but its row rolled back
            if isinstance(e, OSError):
                raise files.unwritable(e, model_dir, f"model {model!r}") from None
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {"model": model, "version": version, "path": str(final), "config": config}

    def verified_path(self, record: dict[str, Any]) -> Path:
        """The folder of a version record, once its files match their recorded sha256.

        Raises ``ModelFileError`` (missing, truncated or altered file) otherwise. A version
        saved before checksums were recorded has none to check: it loads, with a warning.
        """
        model, version = record["model"], record["version"]
        expected = self._recorded("model_files", model, version)
        folder = Path(record["path"])
        files.verify(folder, expected, f"model {model!r} version {version}")
        if not expected:
            log.warning(
                "model %r version %d has no recorded checksums (saved by an older release): "
                "loaded unchecked; `sbi-service models verify --record` records them",
                model,
                version,
            )
        return folder

    def checksums_recorded(self, model: str, version: int) -> bool:
        """Whether the version's file checksums were recorded (at save or by ``record``)."""
        return bool(self._recorded("model_files", model, version))

    def record_checksums(self, model: str, version: int) -> dict[str, dict[str, int | str]]:
        """Record the sha256 of the files of a version that has none recorded (one saved
        before they were): the files as they are now are taken as whole. Returns them."""
        record = self.get_model_version(model, version)
        folder = Path(record["path"])
        files.verify(folder, {}, f"model {model!r} version {version}")  # the folder exists
        found = files.digests(folder)
        with self._connect() as db:
            if db.execute(
                "SELECT 1 FROM model_files WHERE model = ? AND version = ?", (model, version)
            ).fetchone():
                raise UserError(f"model {model!r} version {version} has checksums already")
            db.executemany(
                "INSERT INTO model_files VALUES (?, ?, ?, ?, ?)",
                [(model, version, n, d["sha256"], d["bytes"]) for n, d in found.items()],
            )
        return found

    def _recorded(self, table: str, model: str, version: int) -> dict[str, dict[str, Any]]:
        """{file: {"sha256", "bytes"}} recorded in ``table`` (model_files or report_files)."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT file, sha256, bytes FROM {table} WHERE model = ? AND version = ?",
                (model, version),
            ).fetchall()
        return {r["file"]: {"sha256": r["sha256"], "bytes": r["bytes"]} for r in rows}

    def get_model_version(self, model: str, version: int | None = None) -> dict[str, Any]:
        """The given version of ``model`` (the latest when ``version`` is None)."""
        with self._connect() as db:
            if version is None:
                row = db.execute(
                    "SELECT * FROM model_versions WHERE model = ? ORDER BY version DESC LIMIT 1",
                    (model,),
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT * FROM model_versions WHERE model = ? AND version = ?", (model, version)
                ).fetchone()
        if row is None:
            known = ", ".join(m["model"] for m in self.list_models()) or "none yet"
            which = f"model {model!r}" + (f" version {version}" if version is not None else "")
            raise NotFoundError(f"{which} does not exist (models: {known}); train it first")
        return self._version_row(row)

    def list_models(self) -> list[dict[str, Any]]:
        """One entry per model: its latest version's record and the list of versions."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM model_versions ORDER BY model, version").fetchall()
        models: dict[str, dict[str, Any]] = {}
        for r in rows:
            entry = self._version_row(r)
            entry["versions"] = [*models.get(r["model"], {}).get("versions", []), r["version"]]
            models[r["model"]] = entry
        return list(models.values())

    def list_versions(self, model: str) -> list[dict[str, Any]]:
        """Every version of ``model`` (oldest first): {"version", "created_at"}."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT version, created_at FROM model_versions WHERE model = ? ORDER BY version",
                (model,),
            ).fetchall()
        return [{"version": r["version"], "created_at": r["created_at"]} for r in rows]

    def _version_row(self, row: sqlite3.Row) -> dict[str, Any]:
        return {
            "model": row["model"],
            "version": row["version"],
            "path": str(files.inside(self.home, self.home / row["path"])),
            "config": json.loads(row["config"]),
            "created_at": row["created_at"],
        }

    # -- verdicts and promotions -----------------------------------------------------
    def save_diagnosis(
        self, model: str, version: int, write: Callable[[Path], dict[str, Any]]
    ) -> dict[str, Any]:
        """Replace the diagnostic report of a version: ``write(folder)`` fills a temporary
        folder and returns the report dict (``passed``, ``checks``, ...); the folder is
        swapped in as ``{version folder}/diagnostics`` and the verdict recorded.

        Returns the verdict (``verdict_row``'s shape).
        """
        record = self.get_model_version(model, version)
        version_dir = Path(record["path"])
        final = version_dir / DIAGNOSTICS_DIR
        tmp = files.tmp_folder(version_dir)
        old = None
        try:
            report = write(tmp)
            _fsync_tree(tmp)
            saved = files.digests(tmp)
            details = {k: report.get(k) for k in VERDICT_DETAILS}
            with self._connect() as db:
                db.execute(
                    "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        model,
                        version,
                        int(bool(report["passed"])),
                        json.dumps(report["checks"]),
                        json.dumps(details),
                        str(final.relative_to(self.home)),
                        time.time(),
                    ),
                )
                db.execute(
                    "DELETE FROM report_files WHERE model = ? AND version = ?", (model, version)
                )
                db.executemany(
                    "INSERT INTO report_files VALUES (?, ?, ?, ?, ?)",
                    [(model, version, n, d["sha256"], d["bytes"]) for n, d in saved.items()],
                )
                old = files.swap_in(tmp, final)  # last: only COMMIT can fail after it
        except BaseException:
            if old is not None and not tmp.exists():  # swapped, but the verdict rolled back
                old = files.swap_in(old, final)  # the old report back; the new one aside
            raise
        finally:
            for leftover in (tmp, old):
                if leftover is not None and leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
        return self.verdicts(model)[version]

    def verified_report(self, model: str, version: int) -> Path:
        """The folder of the version's stored report, once its files match their sha256
        (``ModelFileError`` otherwise; a report stored by an older release is unchecked).
        ``NotFoundError`` when the version has no report."""
        verdict = self.verdicts(model).get(version)
        if verdict is None:
            raise NotFoundError(f"model {model!r} version {version} has no diagnostic report")
        folder = files.inside(self.home, Path(verdict["report_path"]))
        expected = self._recorded("report_files", model, version)
        what = f"the diagnostic report of model {model!r} version {version}"
        files.verify(folder, expected, what, "run `sbi-service diagnose` again")
        return folder

    def verdicts(self, model: str) -> dict[int, dict[str, Any]]:
        """{version: {"passed", "checks", "details", "report_path", "diagnosed_at"}}."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM verdicts WHERE model = ?", (model,)).fetchall()
        return {
            r["version"]: {
                "passed": bool(r["passed"]),
                "checks": json.loads(r["checks"]),
                "details": json.loads(r["details"]),
                "report_path": str(self.home / r["report_path"]),
                "diagnosed_at": r["diagnosed_at"],
            }
            for r in rows
        }

    def add_promotion(
        self, model: str, version: int, forced: bool, actor: str, verdict: str
    ) -> dict[str, Any]:
        """Record that ``actor`` chose ``version`` as the served version of ``model``."""
        self.get_model_version(model, version)
        at = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO promotions (model, version, forced, actor, verdict, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (model, version, int(forced), actor, verdict, at),
            )
        return {"version": version, "forced": forced, "actor": actor, "verdict": verdict, "at": at}

    def promotions(self, model: str) -> list[dict[str, Any]]:
        """The recorded promotions of ``model``, oldest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM promotions WHERE model = ? ORDER BY id", (model,)
            ).fetchall()
        return [
            {
                "version": r["version"],
                "forced": bool(r["forced"]),
                "actor": r["actor"],
                "verdict": r["verdict"],
                "at": r["at"],
            }
            for r in rows
        ]

    # -- jobs ----------------------------------------------------------------------
    def create_job(self, kind: str, request: dict[str, Any], owner: str | None = None) -> str:
        """A new ``queued`` job, leased to ``owner`` (see ``process_owner``) if given."""
        job_id = uuid.uuid4().hex[:16]
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, kind, state, progress, request, created_at, updated_at, "
                "owner, heartbeat_at) VALUES (?, ?, 'queued', 0, ?, ?, ?, ?, ?)",
                (job_id, kind, json.dumps(request), now, now, owner, now if owner else None),
            )
        return job_id

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set any of state, progress, result (JSON-able), error."""
        allowed = {"state", "progress", "result", "error"}
        if set(fields) - allowed:
            raise ValueError(f"unknown job fields {set(fields) - allowed}")
        if "result" in fields:
            fields["result"] = json.dumps(fields["result"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as db:
            db.execute(
                f"UPDATE jobs SET {sets}, updated_at = ? WHERE id = ?",
                (*fields.values(), time.time(), job_id),
            )

    def get_job(self, job_id: str) -> dict[str, Any]:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id!r} does not exist")
        return _job_row(row)

    def list_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent jobs, newest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_job_row(r) for r in rows]

    def renew_leases(self, owner: str) -> int:
        """Renew the lease of every queued or running job that ``owner`` holds."""
        with self._connect() as db:
            cur = db.execute(
                "UPDATE jobs SET heartbeat_at = ? "
                "WHERE owner = ? AND state IN ('queued', 'running')",
                (time.time(), owner),
            )
            return cur.rowcount

    def rerun_job(self, job_id: str, owner: str) -> dict[str, Any]:
        """Put an interrupted or failed job back in the queue, leased to ``owner``."""
        job = self.get_job(job_id)
        now = time.time()
        with self._connect() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'queued', progress = 0, result = NULL, error = NULL, "
                "owner = ?, heartbeat_at = ?, updated_at = ? "
                "WHERE id = ? AND state IN ('interrupted', 'failed')",
                (owner, now, now, job_id),
            )
        if cur.rowcount == 0:
            raise UserError(
                f"job {job_id!r} is {job['state']}: only interrupted or failed jobs can be rerun"
            )
        return self.get_job(job_id)

    def mark_interrupted_jobs(self, lease_s: float = LEASE_S) -> int:
        """Mark interrupted the queued or running jobs whose owner is gone (module docstring)."""
        now = time.time()
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, owner, heartbeat_at FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchall()
            lost = [
                r
                for r in rows
                if r["heartbeat_at"] is None
                or r["heartbeat_at"] < now - lease_s
                or _owner_gone(r["owner"])
            ]
            for r in lost:  # unchanged since read: a renewal in between keeps the job
                db.execute(
                    "UPDATE jobs SET state = 'interrupted', error = ?, updated_at = ? WHERE id = ? "
                    "AND state IN ('queued', 'running') AND heartbeat_at IS ?",
                    (INTERRUPTED.format(id=r["id"]), now, r["id"], r["heartbeat_at"]),
                )
        return len(lost)


def process_owner() -> str:
    """This process as a lease owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_gone(owner: str | None) -> bool:
    """True when ``owner`` is a process of this host that no longer exists."""
    if not owner:
        return True
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's process: only its lease can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _add_columns(db: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in have:
            try:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as e:  # another process added it just now
                if "duplicate column" not in str(e):
                    raise


def _job_row(row: sqlite3.Row) -> dict[str, Any]:
    job = dict(row)
    job["request"] = json.loads(job["request"])
    job["result"] = json.loads(job["result"]) if job["result"] else None
    return job


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
