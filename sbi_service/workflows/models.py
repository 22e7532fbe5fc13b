"""Load stored models and draw posterior samples from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbi_service.errors import ModelFileError, UserError
from sbi_service.estimators.io import load_estimator
from sbi_service.estimators.posterior import Posterior
from sbi_service.simulators.priors import prior_from_spec
from sbi_service.store.db import Store


def load_posterior(
    store: Store, model: str, version: int | None = None, device: str = "cpu"
) -> tuple[Posterior, dict[str, Any]]:
    """The stored model as a ``Posterior`` on ``device``, and its version record.

    Its files are checked against the sha256 recorded at save time first: a missing,
    truncated or altered file raises ``ModelFileError`` and nothing is loaded.
    """
    record = store.get_model_version(model, version)
    estimator, config = load_estimator(store.verified_path(record), device)
    return Posterior(estimator, prior_from_spec(config["prior"])), record


def sample_posterior(
    posterior: Posterior, observations: Any, num_samples: int, seed: int | None
) -> np.ndarray:
    """observations (num_obs, *x_shape) -> samples (num_obs, num_samples, dim_theta) float32."""
    x = posterior.check_observations(observations)
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return posterior.sample(x, num_samples, generator).numpy().astype(np.float32)


def load_observations(path: Path) -> np.ndarray:
    """Read observations from a .npy file (no pickles)."""
    try:
        return np.load(Path(path), allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except ValueError as e:
        raise UserError(f"{path} is not a readable .npy array of numbers ({e})") from None


def summarize(samples: np.ndarray) -> dict[str, list]:
    """Per observation and parameter: mean, std and the 5%/50%/95% quantiles.

    samples (num_obs, N, d) -> each entry (num_obs, d) as nested lists.
    """
    q = np.quantile(samples, [0.05, 0.5, 0.95], axis=1)
    return {
        "mean": samples.mean(1).tolist(),
        "std": samples.std(1).tolist(),
        "q05": q[0].tolist(),
        "median": q[1].tolist(),
        "q95": q[2].tolist(),
    }


def verify_models(store: Store, model: str | None = None, record: bool = False) -> list[dict]:
    """Check the files of every version (of ``model``, or of all) against their sha256.

    One row per version: {"model", "version", "status", "message"}, status ``ok``,
    ``damaged`` (``message`` says which file and how), or ``unchecked``: saved before
    checksums were recorded. With ``record``, an unchecked version's files, taken as
    whole as they are now, get their checksums recorded (status ``recorded``).
    """
    models = store.list_models()
    if model is not None:
        models = [m for m in models if m["model"] == model]
        if not models:
            store.get_model_version(model)  # NotFoundError naming the models there are
    rows = []
    for m in models:
        for version in m["versions"]:
            row = {"model": m["model"], "version": version, "status": "ok", "message": ""}
            try:
                if store.checksums_recorded(m["model"], version):
                    store.verified_path(store.get_model_version(m["model"], version))
                elif record:
                    store.record_checksums(m["model"], version)
                    row["status"] = "recorded"
                else:
                    row["status"] = "unchecked"
            except ModelFileError as e:
                row.update(status="damaged", message=str(e))
            rows.append(row)
    return rows
