"""``Client``: the REST API from Python (httpx), one method per endpoint.

    from sbi_service.client import Client
    client = Client("http://127.0.0.1:8000", api_key="...")
    job = client.wait(client.train("tm", simulator="two_moons", num_simulations=10_000,
                                   diagnose={"num_simulations": 300}))
    served = client.sample("tm", x, num_samples=1000, seed=0)   # served.values (n, N, d)
    client.posterior("tm").sample((1000,), x=x)                 # sbi's interface, torch

Samples and log-densities travel as ``.npy`` bytes (``Accept: application/x-npy``), not
JSON lists, so large answers cost a copy rather than a parse. A 503 (queue full) is
retried after its ``Retry-After`` (at most ``max_retries`` times, each wait at most
``max_retry_wait`` seconds); any other error status raises ``ServiceError`` carrying the
server's per-field messages.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from sbi_service.client.posterior import RemotePosterior

NPY = "application/x-npy"
RESUMABLE_BYTES = 64 * 2**20  # larger uploads go in chunks
FINISHED = ("succeeded", "failed", "interrupted")


class ServiceError(Exception):
    """An error answer: ``status_code`` and the server's ``errors`` [{field, message}]."""

    def __init__(self, method: str, path: str, status_code: int, errors: list[dict[str, str]]):
        self.method, self.path, self.status_code, self.errors = method, path, status_code, errors
        fields = "; ".join(f"{e.get('field', '?')}: {e.get('message', '')}" for e in errors)
        super().__init__(f"{method} {path} answered {status_code}: {fields}")


class JobFailed(Exception):
    """A job that ended failed or interrupted; ``job`` is its final record."""

    def __init__(self, job: dict[str, Any]):
        self.job = job
        super().__init__(f"{job['kind']} job {job['id']} {job['state']}: {job.get('error')}")


class UnvalidatedPosterior(Exception):
    """The server answered from a version whose diagnostics did not pass."""


@dataclass
class Served:
    """An answer from a served model: the values and which version gave them."""

    values: np.ndarray  # samples (num_obs, num_samples, d) or log_prob (n,)
    model: str
    version: int
    verdict: str  # passed, failed or not_diagnosed
    seed: int | None = None


def _array(value: Any) -> list:
    """numpy arrays, torch tensors or nested lists -> nested lists of floats for JSON."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64).tolist()


class Client:
    """A connection to an sbi-service server (``url``), with an optional ``api_key``."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
    ):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.max_retries, self.max_retry_wait = max_retries, max_retry_wait

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------
    def request(self, method: str, path: str, ok: tuple[int, ...] = (), **kwargs: Any):
        """Send, retrying 503 after its Retry-After; ``ServiceError`` for other errors
        (statuses in ``ok`` are returned as they are)."""
        for attempt in range(self.max_retries + 1):
            response = self.http.request(method, path, **kwargs)
            if response.status_code != 503 or 503 in ok or attempt == self.max_retries:
                break
            time.sleep(self._retry_wait(response, attempt))
        if response.status_code >= 400 and response.status_code not in ok:
            raise ServiceError(method, path, response.status_code, _errors(response))
        return response

    def _retry_wait(self, response: httpx.Response, attempt: int) -> float:
        try:
            wait = float(response.headers.get("retry-after", ""))
        except ValueError:
            wait = 0.5 * 2**attempt
        return min(max(wait, 0.0), self.max_retry_wait)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # -- health ----------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        """/readyz's answer; ``{"status": "ready", ...}`` once models are warm."""
        return self.request("GET", "/readyz", ok=(503,)).json()

    def metrics(self) -> str:
        return self.request("GET", "/metrics").text

    # -- simulators and data -------------------------------------------------------------
    def simulators(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/simulators")

    def register_simulator(self, name: str, **spec: Any) -> dict[str, Any]:
        """POST /v1/simulators: ``url=..., prior=..., x_shape=...`` (a remote HTTP
        simulator) or ``import_path=...`` (with ``prior`` and ``x_shape`` for a callable)."""
        return self._json("POST", "/v1/simulators", json={"name": name, **spec})

    def upload_dataset(
        self,
        theta: Any = None,
        x: Any = None,
        path: str | Path | None = None,
        resumable: bool | None = None,
    ) -> dict[str, Any]:
        """Upload simulations (``theta`` (n, d) and ``x`` (n, ...), or an .npz ``path``
        holding them); returns {"id", "num_simulations", "sha256", ...}.

        ``resumable`` (default: past ``RESUMABLE_BYTES``) sends the file in the server's
        chunks (``/v1/datasets/uploads``), sending again the chunks it reports missing.
        """
        if path is not None:
            body = Path(path).read_bytes()
        else:
            buffer = io.BytesIO()
            np.savez(buffer, theta=np.asarray(theta, np.float32), x=np.asarray(x, np.float32))
            body = buffer.getvalue()
        octets = {"Content-Type": "application/octet-stream"}
        if not (len(body) > RESUMABLE_BYTES if resumable is None else resumable):
            return self._json("POST", "/v1/datasets", content=body, headers=octets)
        start = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        status = self._json("POST", "/v1/datasets/uploads", json=start)
        uploads = f"/v1/datasets/uploads/{status['upload_id']}"
        for _ in range(self.max_retries + 1):
            if not status["missing"]:
                break
            size = status["chunk_bytes"]
            for index in status["missing"]:
                chunk = body[index * size : (index + 1) * size]
                self.request("PUT", f"{uploads}/chunks/{index}", content=chunk, headers=octets)
            status = self._json("GET", uploads)
        return self._json("POST", f"{uploads}/complete")

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/datasets/{dataset_id}")

    # -- models ----------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/models")

    def model(self, name: str) -> dict[str, Any]:
        """Versions with verdicts and checks, the served version, the promotions."""
        return self._json("GET", f"/v1/models/{name}")

    def reload(self, name: str, version: int | None = None, force: bool = False) -> dict:
        """Serve what the policy picks, or promote ``version`` (``force``: despite it)."""
        body: dict[str, Any] = {"force": force} if force else {}
        if version is not None:
            body["version"] = version
        return self._json("POST", f"/v1/models/{name}/reload", json=body)

    def sample(
        self,
        model: str,
        observations: Any,
        num_samples: int,
        seed: int | None = None,
        version: int | None = None,
    ) -> Served:
        """Posterior samples: observations (num_obs, *x_shape) -> values (num_obs, N, d)."""
        body: dict[str, Any] = {"observations": _array(observations), "num_samples": num_samples}
        if seed is not None:
            body["seed"] = seed
        if version is not None:
            body["version"] = version
        response = self.request(
            "POST", f"/v1/models/{model}/samples", json=body, headers={"Accept": NPY}
        )
        return _served(response, seed=int(response.headers["x-seed"]))

    def log_prob(
        self, model: str, theta: Any, observations: Any, version: int | None = None
    ) -> Served:
        """log q(theta | x): theta (n, d) with observations (n, ...) or one for all ->
        values (n,), -inf outside the prior's support."""
        body: dict[str, Any] = {"observations": _array(observations), "parameters": _array(theta)}
        if version is not None:
            body["version"] = version
        response = self.request(
            "POST", f"/v1/models/{model}/log_prob", json=body, headers={"Accept": NPY}
        )
        return _served(response)

    def report(self, model: str, version: int) -> dict[str, Any]:
        """The version's diagnostic report (report.json)."""
        path = f"/v1/models/{model}/versions/{version}/report"
        return self._json("GET", path, headers={"Accept": "application/json"})

    def report_html(self, model: str, version: int) -> str:
        """The version's diagnostic report as one HTML page (plots embedded)."""
        path = f"/v1/models/{model}/versions/{version}/report"
        return self.request("GET", path, headers={"Accept": "text/html"}).text

    def posterior(
        self, model: str, version: int | None = None, require_passed: bool = False
    ) -> RemotePosterior:
        """The served model behind sbi's posterior interface (torch tensors in and out)."""
        from sbi_service.client.posterior import RemotePosterior

        return RemotePosterior(self, model, version, require_passed)

    # -- jobs --------------------------------------------------------------------------------
    def submit(self, request: dict[str, Any]) -> str:
        """POST /v1/jobs with a full job request; returns the job id."""
        return self._json("POST", "/v1/jobs", json=request)["id"]

    def train(self, name: str, **fields: Any) -> str:
        """Start a train job (``simulator`` + ``num_simulations``, or ``dataset`` + ``prior``;
        ``estimator``, ``seed``, ``train={...}``, ``diagnose={...}``); returns its id."""
        return self.submit({"kind": "train", "name": name, **fields})

    def diagnose(self, model: str, **fields: Any) -> str:
        """Start a diagnose job (``version``, ``tarp``, ``sbc``, ``num_simulations``, ...)."""
        return self.submit({"kind": "diagnose", "model": model, **fields})

    def rerun(self, job_id: str) -> str:
        """Run an interrupted or failed job again (same id and request); returns its id."""
        return self._json("POST", f"/v1/jobs/{job_id}/rerun")["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/jobs", params={"limit": limit})

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float = 0.5,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Poll until the job ends (a progress bar on a terminal's stderr); returns the
        final record, or raises ``JobFailed``, or ``TimeoutError`` after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        console = Console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not progress) as bar:
            task = bar.add_task(f"job {job_id}", total=1.0)
            while True:
                job = self.job(job_id)
                bar.update(task, completed=job["progress"], description=_describe(job))
                if job["state"] in FINISHED:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")
                time.sleep(poll)
        if job["state"] != "succeeded":
            raise JobFailed(job)
        return job


def _describe(job: dict[str, Any]) -> str:
    name = job["request"].get("name") or job["request"].get("model", "")
    return f"{job['kind']} {name} ({job['state']})"


def _served(response: httpx.Response, seed: int | None = None) -> Served:
    values = np.load(io.BytesIO(response.content), allow_pickle=False)
    h = response.headers
    return Served(values, h["x-model"], int(h["x-model-version"]), h["x-model-verdict"], seed)


def _errors(response: httpx.Response) -> list[dict[str, str]]:
    try:
        detail = response.json().get("detail")
    except (json.JSONDecodeError, AttributeError):
        detail = None
    if isinstance(detail, list):
        return [d if isinstance(d, dict) else {"field": "body", "message": str(d)} for d in detail]
    if isinstance(detail, str):
        return [{"field": "body", "message": detail}]
    return [{"field": "body", "message": response.text[:500] or response.reason_phrase}]
