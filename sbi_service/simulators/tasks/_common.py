"""Helpers shared by the built-in tasks: input checks and float64 conversion.

Every built-in simulator computes in float64 on the CPU and returns float32, so that
results do not depend on the device or dtype of the ``theta`` it is given.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sbi_service.errors import UserError
from sbi_service.simulators.priors import Prior


def theta64(theta: Tensor, prior: Prior) -> Tensor:
    """Check that ``theta`` is ``(n, prior.dim)`` and return it as a float64 CPU tensor."""
    theta = torch.as_tensor(theta)
    prior.check_theta(theta)
    return theta.detach().to("cpu", torch.float64)


def x_o64(x_o: Tensor, dim_x: int) -> Tensor:
    """Check that one observation has ``dim_x`` entries; return it as a flat float64 tensor."""
    x_o = torch.as_tensor(x_o).detach().to("cpu", torch.float64)
    if x_o.ndim == 2 and x_o.shape[0] == 1:
        x_o = x_o[0]
    if x_o.shape != (dim_x,):
        raise UserError(
            f"observation has shape {tuple(x_o.shape)}, expected ({dim_x},) for this task"
        )
    return x_o


def check_num_samples(num_samples: int) -> int:
    """Return ``num_samples`` as an int after checking it is positive."""
    if int(num_samples) < 1:
        raise UserError(f"num_samples must be a positive integer, got {num_samples}")
    return int(num_samples)


def rejection_sample(
    draw: Callable[[int], Tensor], num_samples: int, batch: int | None = None
) -> Tensor:
    """Collect ``num_samples`` rows from ``draw(batch)``, which returns the accepted rows.

    Raises a ``UserError`` when nothing is accepted after 200 batches: the observation
    then lies (almost) outside what the prior can produce.
    """
    num_samples = check_num_samples(num_samples)
    batch = batch or max(1024, 2 * num_samples)
    kept: list[Tensor] = []
    total, tries = 0, 0
    while total < num_samples:
        rows = draw(batch)
        kept.append(rows)
        total += rows.shape[0]
        tries += 1
        if total == 0 and tries >= 200:
            raise UserError(
                f"rejection sampling accepted none of {tries * batch} proposals: the "
                "observation is too far outside the prior's reach for an exact reference"
            )
    return torch.cat(kept)[:num_samples]
