"""Train a posterior estimator and store it as a new model version.

The simulations come either from a registered simulator (``simulator`` +
``num_simulations``, simulated with ``seed``) or from an uploaded simulation set
(``data`` .npz + ``prior`` spec). Everything is checked before training starts, and
nothing is written to the store unless training succeeds.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from sbi_service.errors import UserError
from sbi_service.estimators.auto import check_kind, estimator_config
from sbi_service.estimators.fisher import FisherRegularizer, check_fisher_support
from sbi_service.estimators.io import save_estimator
from sbi_service.estimators.registry import build_estimator
from sbi_service.estimators.train import TrainConfig, train
from sbi_service.simulators.priors import Prior, prior_from_spec
from sbi_service.simulators.registry import get_task
from sbi_service.simulators.simulate import load_simulations, simulate
from sbi_service.store.db import Store, check_name


@dataclass
class TrainRequest:
    """What to train. Exactly one of ``simulator`` or ``data`` is given."""

    name: str
    estimator: str
    seed: int = 0
    simulator: str | None = None
    num_simulations: int | None = None
    data: Path | None = None
    prior: dict[str, Any] | None = None
    estimator_options: dict[str, Any] = field(default_factory=dict)
    embedding: dict[str, Any] | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    fisher_reg: float = 0.0  # beta of the Fisher-information regularizer (flows only)
    fisher_mode: str = "ema"  # "ema" (cheap, every few steps) or "full" (every step)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("sbi-service", "torch", "zuko", "numpy", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def load_training_data(
    store: Store, req: TrainRequest
) -> tuple[torch.Tensor, torch.Tensor, Prior, dict]:
    """Check the request and return theta (n, d), x (n, *x_shape), the prior and provenance."""
    if (req.simulator is None) == (req.data is None):
        raise UserError("give either --simulator with --num-simulations, or --data with --prior")
    if req.simulator is not None:
        if req.num_simulations is None:
            raise UserError("--simulator needs --num-simulations")
        task = get_task(req.simulator, store.list_simulators())
        theta, x = simulate(task, req.num_simulations, req.seed)
        return (
            theta,
            x,
            task.prior,
            {"simulator": task.name, "num_simulations": req.num_simulations},
        )
    if req.prior is None:
        raise UserError(
            "--data needs --prior PRIOR.json (the prior the simulations were drawn from)"
        )
    prior = prior_from_spec(req.prior)
    theta, x = load_simulations(req.data)
    if theta.shape[1] != prior.dim:
        raise UserError(
            f"the prior has dimension {prior.dim} but theta in {req.data} has "
            f"{theta.shape[1]} columns"
        )
    outside = int((~prior.in_support(theta)).sum())
    if outside:
        raise UserError(
            f"{outside} of {theta.shape[0]} theta rows in {req.data} lie outside the prior's "
            "support: "
            "was the prior file written for this data?"
        )
    return (
        theta,
        x,
        prior,
        {"simulator": None, "data": str(req.data), "num_simulations": len(theta)},
    )


def train_model(
    store: Store,
    req: TrainRequest,
    progress: Callable[[int, float, float], None] | None = None,
) -> dict[str, Any]:
    """Simulate or load, train, save as the next version of ``req.name``; returns a summary."""
    check_name(req.name)
    check_kind(req.estimator)
    theta, x, prior, provenance = load_training_data(store, req)
    config = estimator_config(
        req.estimator, prior.dim, x.shape[1:], len(theta), req.embedding, req.estimator_options
    )
    torch.manual_seed(req.seed)  # the network's initial weights
    estimator = build_estimator(config)
    extra_loss = None
    if req.fisher_reg:
        check_fisher_support(estimator)
        extra_loss = FisherRegularizer(req.fisher_reg, req.fisher_mode)
    result = train(
        estimator, theta, x, req.train, seed=req.seed, progress=progress, extra_loss=extra_loss
    )
    if result.best_epoch == 0:
        raise UserError(
            "training diverged (the loss was never finite); check the data for outliers"
        )
    metadata = {
        "prior": prior.spec,
        "dim_theta": prior.dim,
        "x_shape": list(x.shape[1:]),
        **provenance,
        "training": {
            "seed": req.seed,
            "config": req.train.__dict__,
            "epochs": result.epochs,
            "best_epoch": result.best_epoch,
            "best_validation_loss": result.best_validation_loss,
            "train_seconds": result.train_seconds,
            "stopped_because": result.stopped_because,
            "torch_threads": torch.get_num_threads(),
            "fisher_reg": req.fisher_reg,
            "fisher_mode": req.fisher_mode,
        },
        "versions": package_versions(),
        "created_at": time.time(),
    }

    def write(folder: Path) -> dict[str, Any]:
        save_estimator(folder, estimator, metadata)
        return {"estimator": estimator.config, **metadata}

    saved = store.save_model_version(req.name, write)
    return {
        "model": req.name,
        "version": saved["version"],
        "estimator": estimator.kind,
        "simulator": provenance["simulator"],
        "num_simulations": provenance["num_simulations"],
        "train_seconds": round(result.train_seconds, 3),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "best_validation_loss": result.best_validation_loss,
        "stopped_because": result.stopped_because,
        "path": saved["path"],
    }
