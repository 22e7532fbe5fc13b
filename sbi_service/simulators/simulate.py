"""Seeded, chunked, optionally parallel simulation, and the simulation-set file format.

theta is drawn from the prior with a generator seeded by ``seed``; x is simulated in
chunks of ``chunk_size`` rows, chunk k with its own generator seeded by
(seed, k). The result depends only on (task, num_simulations, seed, chunk_size),
never on the number of worker processes.

Simulation-set files (``.npz``) hold float32 arrays ``theta`` (N, dim_theta) and
``x`` (N, *x_shape).
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sbi_service.errors import UserError
from sbi_service.simulators.base import Task, as_float32

CHUNK_SIZE = 10_000


def _chunk_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def run_simulator(task: Task, theta: Tensor, seed: int) -> Tensor:
    """x = simulator(theta), seeded; (n, d) -> (n, *x_shape) float32."""
    if task.takes_generator():
        return as_float32(task.simulator(theta, generator=torch.Generator().manual_seed(seed)))
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return as_float32(task.simulator(theta))
        finally:
            np.random.set_state(state)


def _simulate_chunk(task_name: str, theta: Tensor, seed: int) -> Tensor:
    from sbi_service.simulators.registry import get_task

    return run_simulator(get_task(task_name), theta, seed)


def simulate(
    task: Task, num_simulations: int, seed: int, workers: int = 1, chunk_size: int = CHUNK_SIZE
) -> tuple[Tensor, Tensor]:
    """Draw theta ~ prior and x ~ simulator(theta): returns theta (n, d), x (n, *x_shape)."""
    if num_simulations < 1:
        raise UserError(f"--num-simulations must be at least 1, got {num_simulations}")
    theta = task.prior.sample(num_simulations, torch.Generator().manual_seed(seed)).float()
    chunks = [theta[i : i + chunk_size] for i in range(0, num_simulations, chunk_size)]
    seeds = [_chunk_seed(seed, k) for k in range(len(chunks))]
    if workers > 1 and len(chunks) > 1 and task.source == "builtin":
        with ProcessPoolExecutor(max_workers=workers) as pool:
            xs = list(pool.map(_simulate_chunk, [task.name] * len(chunks), chunks, seeds))
    else:
        xs = [run_simulator(task, c, s) for c, s in zip(chunks, seeds, strict=True)]
    x = torch.cat(xs)
    expected = (num_simulations, *task.x_shape)
    if tuple(x.shape) != expected:
        raise UserError(
            f"simulator {task.name!r} returned x of shape {tuple(x.shape)}, expected {expected}"
        )
    return theta, x


def save_simulations(path: Path, theta: Tensor, x: Tensor) -> None:
    """Write theta and x as float32 arrays to ``path`` (.npz), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, theta=theta.numpy().astype(np.float32), x=x.numpy().astype(np.float32))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_simulations(path: Path) -> tuple[Tensor, Tensor]:
    """Read and check a simulation set: returns theta (n, d), x (n, *x_shape) float32."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"theta", "x"} - set(data.files)
            if missing:
                raise UserError(
                    f"{path} lacks array(s) {sorted(missing)}: it must hold 'theta' and 'x'"
                )
            theta, x = data["theta"], data["x"]
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable .npz of numeric arrays ({e})") from None
    if theta.ndim != 2:
        raise UserError(f"{path}: 'theta' must be 2-D (N, dim_theta), got shape {theta.shape}")
    if x.ndim < 2:
        raise UserError(f"{path}: 'x' must be (N, dim_x), got shape {x.shape}")
    if theta.shape[0] != x.shape[0]:
        raise UserError(
            f"{path}: 'theta' has {theta.shape[0]} rows but 'x' has {x.shape[0]}: "
            "they must be paired"
        )
    if not (np.issubdtype(theta.dtype, np.number) and np.issubdtype(x.dtype, np.number)):
        raise UserError(f"{path}: 'theta' and 'x' must be numeric arrays")
    theta_t, x_t = (
        torch.as_tensor(theta, dtype=torch.float32),
        torch.as_tensor(x, dtype=torch.float32),
    )
    for name, t in (("theta", theta_t), ("x", x_t)):
        bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(-1)
        if bad.any():
            raise UserError(
                f"{path}: '{name}' has NaN or inf in {int(bad.sum())} rows "
                f"(first: {bad.nonzero()[0].item()}); drop or fix them"
            )
    return theta_t, x_t
