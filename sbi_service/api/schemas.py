"""Request and response bodies of the REST API (pydantic v2), apart from the logic.

Request bodies are strict (no "5" for 5, no 5.0 for an integer count, no true for a
number) and forbid unknown fields, so a typo is an error naming the field rather than
a silently ignored option. Arrays of numbers (observations, parameters) are nested
JSON lists checked by ``check_numbers``: numbers only (no strings, booleans or
nulls), finite (JSON's NaN, Infinity and 1e999 are refused), within float32 range,
rectangular. Their shape against the model is checked by the route.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, WithJsonSchema, field_validator

FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_NESTING = 6  # array depth: (num_obs, *x_shape) with up to 5 axes per observation


def check_numbers(value: Any, field: str) -> np.ndarray:
    """A nested list of finite numbers -> float32 array; ``ValueError`` names the bad element."""
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, list):
            if depth >= MAX_NESTING:
                raise ValueError(f"{path} is nested more than {MAX_NESTING} lists deep")
            if not item:
                raise ValueError(f"{path} is an empty list")
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ValueError(f"{path} must be a number, got {_type_name(item)}")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{path} is {item}: every value must be finite")
        elif abs(item) > FLOAT32_MAX:
            raise ValueError(f"{path} = {item:.3g} is beyond the float32 range (|v| <= 3.4e38)")
    try:
        return np.asarray(value, dtype=np.float32)
    except ValueError:
        raise ValueError(
            f"{field} is not a rectangular array: its lists have different lengths"
        ) from None


def _type_name(value: Any) -> str:
    return {str: "a string", bool: "a boolean", dict: "an object", type(None): "null"}.get(
        type(value), type(value).__name__
    )


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def nested_numbers_schema(depth: int = MAX_NESTING) -> dict[str, Any]:
    """The JSON schema ``check_numbers`` enforces: non-empty lists, nested up to ``depth``
    deep, of numbers within float32 range (no null, string or boolean). Written out level
    by level (no recursive reference); rectangularity is checked by the server only."""
    number = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
    items = number if depth == 1 else {"anyOf": [number, nested_numbers_schema(depth - 1)]}
    return {"type": "array", "minItems": 1, "items": items}


NumberArray = Annotated[
    list[Any],
    Field(min_length=1, description="nested lists of finite numbers"),
    WithJsonSchema(nested_numbers_schema()),
]


# -- sampling ------------------------------------------------------------------------------
class SamplesRequest(Strict):
    observations: NumberArray = Field(
        description="(num_obs, *x_shape); one observation of shape x_shape is also accepted"
    )
    num_samples: int = Field(ge=1, description="posterior draws per observation")
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        description="the same seed gives the same samples; "
        "without one the server picks a seed and returns it",
    )
    version: int | None = Field(None, ge=1, description="model version (default: the latest)")
    summary: bool = Field(False, description="add mean, std, quantiles and a credible interval")
    credible_level: float = Field(0.9, gt=0, lt=1, description="probability of the interval")
    return_samples: bool = Field(True, description="false: the summary only")

    @field_validator("observations")
    @classmethod
    def _observations(cls, value: list[Any], info: ValidationInfo) -> list[Any]:
        """The count first (``context["max_observations"]``), then every element."""
        limit = (info.context or {}).get("max_observations")
        count = len(value) if isinstance(value[0], list) else 1
        if limit is not None and count > limit:
            raise ValueError(too_many_observations(count, limit))
        check_numbers(value, "observations")
        return value


def too_many_observations(count: int, limit: int) -> str:
    return f"{count} observations; at most {limit} per request"


def count_observations(raw: bytes) -> int:
    """The length of the body's ``"observations"`` array, read from its brackets alone.

    Counting before the body is parsed keeps a hostile body of a million observations
    from being turned into Python objects (seconds with the GIL held) only to be refused.
    With b the bytes after the key's first ``[``, depth(i) = #``[`` - #``]`` in b[:i+1]:
    the array ends where the depth first returns to 0, and its rows are the ``[`` inside
    it at depth 2; none means one flat observation. Only brackets are read, so a body that
    is not valid JSON gets a count that the full parse then refuses for its own reason.
    """
    key = raw.find(b'"observations"')
    start = raw.find(b"[", key) if key >= 0 else -1
    if start < 0:
        return 0
    body = np.frombuffer(raw, dtype=np.uint8, offset=start)
    positions = np.flatnonzero((body == ord("[")) | (body == ord("]")))
    opens = body[positions] == ord("[")
    depth = np.cumsum(np.where(opens, 1, -1))
    closed = np.flatnonzero(depth == 0)
    end = closed[0] if len(closed) else len(depth)
    return max(1, int(np.count_nonzero(opens[:end] & (depth[:end] == 2))))


class Summary(BaseModel):
    """Per observation and parameter, each entry (num_obs, dim_theta)."""

    mean: list[list[float]]
    std: list[list[float]]
    q05: list[list[float]]
    median: list[list[float]]
    q95: list[list[float]]
    credible_interval: dict[str, Any] = Field(
        description='{"level": p, "low": (num_obs, d), "high": (num_obs, d)}: central interval'
    )


VERDICT_DESCRIPTION = (
    "the served version's diagnostic verdict: passed, failed or not_diagnosed "
    "(also in the X-Model-Verdict header)"
)


class SamplesResponse(BaseModel):
    model: str
    version: int
    verdict: Literal["passed", "failed", "not_diagnosed"] = Field(description=VERDICT_DESCRIPTION)
    seed: int
    samples: list[list[list[float]]] | None = Field(
        None, description="(num_obs, num_samples, dim_theta)"
    )
    summary: Summary | None = None


class LogProbRequest(Strict):
    observations: NumberArray = Field(
        description="(n, *x_shape) paired with the parameters, or one observation for all"
    )
    parameters: NumberArray = Field(description="(n, dim_theta)")
    version: int | None = Field(None, ge=1)

    @field_validator("observations", "parameters")
    @classmethod
    def _numbers(cls, value: list[Any], info: Any) -> list[Any]:
        check_numbers(value, info.field_name)
        return value


class LogProbResponse(BaseModel):
    model: str
    version: int
    verdict: Literal["passed", "failed", "not_diagnosed"] = Field(description=VERDICT_DESCRIPTION)
    log_prob: list[float | None] = Field(
        description="log q(theta | x) per row; null where theta is outside the prior's support"
    )


# -- models and simulators -----------------------------------------------------------------
class VersionDetail(BaseModel):
    version: int
    created_at: float
    verdict: Literal["passed", "failed", "not_diagnosed"]
    checks: list[dict[str, Any]] | None = Field(
        None, description="the latest diagnose run's checks: diagnostic, name, statistic, ..."
    )
    diagnosed_at: float | None = None
    diagnosis: dict[str, Any] | None = Field(
        None, description="seed, test data, thresholds and skipped checks of that run"
    )
    report: str | None = Field(None, description="URL path of the HTML report")


class Promotion(BaseModel):
    version: int
    forced: bool
    actor: str = Field(description="who: a fingerprint of the API key and the client address")
    verdict: str = Field(description="the version's verdict when it was promoted")
    at: float


class ModelInfo(BaseModel):
    model: str
    version: int
    versions: list[int]
    config: dict[str, Any]
    created_at: float
    loaded_versions: list[int]
    serve_policy: Literal["latest", "passed"]
    served_version: int | None = Field(
        description="the version an unpinned request gets now; null when the policy allows none"
    )
    not_served_because: str | None = None
    version_details: list[VersionDetail]
    promotions: list[Promotion] = Field(description="explicit promotions, oldest first")


class ReloadRequest(Strict):
    version: int | None = Field(
        None, ge=1, description="serve this version (default: the one the policy picks)"
    )
    force: bool = Field(
        False, description="serve it even if the policy forbids it; recorded with who and when"
    )


class ReloadResponse(BaseModel):
    model: str
    version: int
    verdict: Literal["passed", "failed", "not_diagnosed"]


class RegisterSimulator(Strict):
    """Exactly one of ``import_path`` (allowlisted modules only) or ``url`` (remote)."""

    name: str = Field(description="1-64 letters, digits, '_', '.', '-'")
    import_path: str | None = Field(
        None, min_length=3, description="package.module:attribute (SBI_SERVICE_IMPORT_ALLOWLIST)"
    )
    url: str | None = Field(
        None, min_length=8, max_length=2000, description="remote simulator (wire format: README)"
    )
    prior: dict[str, Any] | None = Field(
        None, description="prior spec, for a bare callable or a url"
    )
    x_shape: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=1, max_length=8)
    format: Literal["json", "npy"] = Field("json", description="remote wire format")
    timeout_s: float = Field(30.0, gt=0, le=600, description="seconds per remote request")
    retries: int = Field(3, ge=0, le=10, description="of a remote batch that failed")
    batch_size: int = Field(1000, ge=1, le=1_000_000, description="theta rows per request")
    max_concurrency: int = Field(4, ge=1, le=64, description="remote requests in flight")


class DatasetInfo(BaseModel):
    id: str
    sha256: str
    num_simulations: int
    dim_theta: int
    x_shape: list[int]
    bytes: int
    created_at: float


class StartUpload(Strict):
    size: int = Field(ge=1, description="bytes of the whole .npz")
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="of the whole .npz, lowercase hex")


class UploadStatus(BaseModel):
    upload_id: str
    size: int
    sha256: str
    chunk_bytes: int
    num_chunks: int
    received: list[int]
    missing: list[int]


# -- jobs ------------------------------------------------------------------------------------
class TrainSettings(Strict):
    """Overrides of ``TrainConfig``; a field left out keeps the training loop's default."""

    batch_size: int | None = Field(None, ge=0, description="0 picks one from the data size")
    learning_rate: float | None = Field(None, gt=0, le=1)
    max_epochs: int | None = Field(None, ge=1, le=100_000)
    patience: int | None = Field(None, ge=1)
    validation_fraction: float | None = Field(None, gt=0, lt=1)
    max_seconds: float | None = Field(None, gt=0, description="stop training after this long")


class JobResources(Strict):
    """What a job asks the Ray scheduler for (the ray backend; ignored by local)."""

    num_cpus: int = Field(1, ge=1, le=1024)
    num_gpus: float = Field(0, ge=0, le=64)


class TrainJob(Strict):
    """Train a model (``sbi_service.workflows.train.TrainRequest``) from a registered
    simulator (``simulator`` + ``num_simulations``) or an uploaded ``dataset`` (+ ``prior``).
    """

    kind: Literal["train"]
    name: str
    estimator: str = "auto"
    seed: int = Field(0, ge=0, lt=2**63)
    simulator: str | None = None
    num_simulations: int | None = Field(None, ge=10, le=10_000_000)
    dataset: str | None = Field(None, description="id of a dataset (POST /v1/datasets)")
    prior: dict[str, Any] | None = None
    estimator_options: dict[str, Any] = Field(default_factory=dict)
    embedding: dict[str, Any] | None = None
    train: TrainSettings = Field(default_factory=TrainSettings)
    diagnose: dict[str, Any] | None = Field(
        None,
        description="run the diagnostic gate on the new version right after training: the "
        "options of a diagnose job, without model and version",
    )
    resources: JobResources | None = None


class DiagnoseThresholds(Strict):
    """Overrides of ``sbi_service.workflows.diagnose.Thresholds``."""

    max_atc: float | None = Field(None, ge=0)
    min_ks_pvalue: float | None = Field(None, ge=0, le=1)
    max_adversarial_kl: float | None = Field(None, ge=0)
    max_c2st: float | None = Field(None, ge=0, le=1)
    max_ppc_z: float | None = Field(None, ge=0)
    min_contraction: float | None = Field(None, le=1)


class DiagnoseJob(Strict):
    """Diagnose a model (``sbi_service.workflows.diagnose.DiagnoseRequest``; the report
    folder is the server's choice, never the caller's)."""

    kind: Literal["diagnose"]
    model: str = Field(description="an existing model")
    version: int | None = Field(None, ge=1, description="default: the latest")
    tarp: bool = True
    sbc: bool = True
    coverage: bool = False
    robustness: bool = False
    c2st: bool = False
    ppc: bool = False
    num_simulations: int | None = Field(None, ge=10, le=1_000_000)
    dataset: str | None = Field(
        None, description="id of uploaded test pairs (POST /v1/datasets); default: simulate"
    )
    num_posterior_samples: int = Field(1000, ge=10, le=100_000)
    seed: int = Field(0, ge=0, lt=2**63)
    thresholds: DiagnoseThresholds = Field(default_factory=DiagnoseThresholds)
    num_robustness_observations: int = Field(50, ge=1, le=10_000)
    num_c2st_observations: int = Field(3, ge=1, le=100)
    resources: JobResources | None = None


JobRequest = Annotated[TrainJob | DiagnoseJob, Field(discriminator="kind")]


class JobCreated(BaseModel):
    id: str


class JobInfo(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "interrupted"]
    progress: float
    request: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: float
    updated_at: float


class ErrorItem(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    detail: list[ErrorItem]
