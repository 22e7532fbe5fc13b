"""Train a posterior estimator and store it as a new model version.

The simulations come from a registered simulator (``simulator`` +
``num_simulations``, simulated with ``seed`` on ``backend``), from a dataset uploaded
to the store (``dataset`` id + ``prior``) or, from the CLI only, from a local .npz
(``data`` + ``prior``). Everything is checked before training starts, and nothing is
written to the store unless training succeeds. Simulated chunks are kept under
``$SBI_SERVICE_HOME/simulations/`` until the model is saved, so a rerun of an
interrupted training simulates only what is missing. The model's config records the
simulator's name and version (or the dataset id) and ``data_sha256``, the sha256 of
the training data (``sbi_service.simulators.simulate.data_sha256``).
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
from sbi_service.estimators.train import ProgressFn, TrainConfig, train
from sbi_service.simulators.priors import Prior, prior_from_spec
from sbi_service.simulators.registry import get_task
from sbi_service.simulators.simulate import (
    checkpoint_folder,
    data_sha256,
    load_simulations,
    remove_checkpoint,
    simulate,
)
from sbi_service.store.db import Store, check_name


@dataclass
class TrainRequest:
    """What to train. Exactly one of ``simulator``, ``dataset`` or ``data`` is given."""

    name: str
    estimator: str
    seed: int = 0
    simulator: str | None = None
    num_simulations: int | None = None
    data: Path | None = None
    dataset: str | None = None  # an uploaded dataset's id
    prior: dict[str, Any] | None = None
    backend: str = "local"  # where the simulations run: local or ray
    workers: int = 1  # simulation processes (local) or the local Ray runtime's CPUs
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


SimulationProgress = Callable[[int, int], None]  # (rows simulated, rows in all)


def load_training_data(
    store: Store, req: TrainRequest, progress: SimulationProgress | None = None
) -> tuple[torch.Tensor, torch.Tensor, Prior, dict, Path | None]:
    """Check the request; returns theta (n, d), x (n, *x_shape), the prior, provenance,
    and the folder of simulated chunks (to remove once the model is saved)."""
    sources = [req.simulator, req.data, req.dataset]
    if sum(s is not None for s in sources) != 1:
        raise UserError(
            "give one of --simulator with --num-simulations, --dataset with --prior, "
            "or --data with --prior"
        )
    if req.simulator is not None:
        if req.num_simulations is None:
            raise UserError("--simulator needs --num-simulations")
        stored = store.list_simulators()
        task = get_task(req.simulator, stored)
        folder = checkpoint_folder(store.home, task, req.num_simulations, req.seed)
        sims = simulate(
            task,
            req.num_simulations,
            req.seed,
            workers=req.workers,
            backend=req.backend,
            checkpoint=folder,
            progress=progress,
            stored=stored,
        )
        provenance = {
            "simulator": task.name,
            "simulator_version": task.version,
            "num_simulations": len(sims.theta),
            "simulation": sims.report.to_dict(),
        }
        return sims.theta, sims.x, task.prior, provenance, folder
    if req.prior is None:
        raise UserError(
            "--data and --dataset need --prior PRIOR.json (the prior the simulations were "
            "drawn from)"
        )
    prior = prior_from_spec(req.prior)
    if req.dataset is not None:
        from sbi_service.workflows.datasets import get_dataset

        record = get_dataset(store, req.dataset)
        label = f"dataset {req.dataset}"
        theta, x = load_simulations(store.dataset_path(record["id"]), label=label)
        provenance = {"simulator": None, "dataset": req.dataset}
    else:
        label = str(req.data)
        theta, x = load_simulations(req.data)
        provenance = {"simulator": None, "data": label}
    if theta.shape[1] != prior.dim:
        raise UserError(
            f"the prior has dimension {prior.dim} but theta in {label} has {theta.shape[1]} columns"
        )
    outside = int((~prior.in_support(theta)).sum())
    if outside:
        raise UserError(
            f"{outside} of {theta.shape[0]} theta rows in {label} lie outside the prior's "
            "support: "
            "was the prior file written for this data?"
        )
    return theta, x, prior, {**provenance, "num_simulations": len(theta)}, None


def train_model(
    store: Store,
    req: TrainRequest,
    progress: ProgressFn | None = None,
    simulation_progress: SimulationProgress | None = None,
) -> dict[str, Any]:
    """Simulate or load, train, save as the next version of ``req.name``; returns a summary.

    ``progress(epoch, train_loss, val_loss, done)`` after each epoch (``done`` in [0, 1]:
    ``estimators.train.done_fraction``); ``simulation_progress(rows done, rows)`` while
    simulating. A store that could not save the model (read-only ``models/``) is refused
    before any simulation or training is spent.
    """
    check_name(req.name)
    store.check_writable(req.name)
    check_kind(req.estimator)
    theta, x, prior, provenance, chunks = load_training_data(store, req, simulation_progress)
    provenance["data_sha256"] = data_sha256(theta, x)
    config = estimator_config(
        req.estimator,
        prior.dim,
        x.shape[1:],
        len(theta),
        prior.spec["type"],
        req.embedding,
        req.estimator_options,
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
    remove_checkpoint(chunks)
    return {
        "model": req.name,
        "version": saved["version"],
        "estimator": estimator.kind,
        "simulator": provenance["simulator"],
        "num_simulations": provenance["num_simulations"],
        "data_sha256": provenance["data_sha256"],
        "train_seconds": round(result.train_seconds, 3),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "best_validation_loss": result.best_validation_loss,
        "stopped_because": result.stopped_because,
        "path": saved["path"],
    }
