"""The training loop shared by every estimator family.

Minimizes the mean of ``estimator.loss(theta, x)`` with Adam on shuffled minibatches
held in memory (no DataLoader: the data are small tensors), keeps a held-out
validation split, and stops when the validation loss has not improved for
``patience`` epochs, restoring the best weights. The learning rate follows a
linear warm-up then decays on plateaus of the validation loss. z-scoring statistics
are fitted on the training split only.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from sbi_service.errors import UserError
from sbi_service.estimators.base import Estimator


@dataclass
class TrainConfig:
    """Optimization settings. ``batch_size=0`` picks one from the data size."""

    batch_size: int = 0
    learning_rate: float = 1e-3
    max_epochs: int = 1000
    patience: int = 20
    validation_fraction: float = 0.1
    clip_grad_norm: float = 5.0
    max_seconds: float = math.inf

    def resolved_batch_size(self, n_train: int) -> int:
        if self.batch_size > 0:
            return min(self.batch_size, n_train)
        # ~ 50 to 200 steps per epoch, within [64, 512].
        return int(min(n_train, max(64, min(512, n_train // 50))))


@dataclass
class TrainResult:
    epochs: int
    best_epoch: int
    best_validation_loss: float
    train_seconds: float
    stopped_because: str
    history: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


ProgressFn = Callable[[int, float, float], None]  # (epoch, train_loss, val_loss)


def train(
    estimator: Estimator,
    theta: Tensor,
    x: Tensor,
    config: TrainConfig | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    extra_loss: Callable[[Estimator, Tensor, Tensor], Tensor] | None = None,
) -> TrainResult:
    """Fit ``estimator`` to pairs theta (n, d), x (n, *x_shape); returns what happened.

    ``extra_loss(estimator, theta, x) -> scalar`` is added to each training batch's
    loss (regularizers); validation uses the plain loss.
    """
    config = config or TrainConfig()
    n = theta.shape[0]
    if n != x.shape[0]:
        raise UserError(f"theta has {n} rows but x has {x.shape[0]}: they must be paired")
    n_val = max(1, int(round(n * config.validation_fraction)))
    if n - n_val < 2:
        raise UserError(f"need at least 3 simulations to train, got {n}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # network initialization
    perm = torch.randperm(n, generator=g)
    tr, va = perm[n_val:], perm[:n_val]
    theta_tr, x_tr, theta_va, x_va = theta[tr], x[tr], theta[va], x[va]
    estimator.fit_standardization(theta_tr, x_tr)

    batch = config.resolved_batch_size(len(tr))
    optimizer = torch.optim.Adam(estimator.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=max(2, config.patience // 3)
    )
    best, best_epoch, best_state = math.inf, 0, copy.deepcopy(estimator.state_dict())
    history: dict[str, list[float]] = {"train_loss": [], "validation_loss": []}
    start, stopped = time.perf_counter(), "max_epochs"
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        estimator.train()
        order = torch.randperm(len(tr), generator=g)
        total, count = 0.0, 0
        for i in range(0, len(tr), batch):
            idx = order[i : i + batch]
            loss = estimator.loss(theta_tr[idx], x_tr[idx]).mean()
            total += float(loss) * len(idx)
            count += len(idx)
            if extra_loss is not None:
                loss = loss + extra_loss(estimator, theta_tr[idx], x_tr[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(estimator.parameters(), config.clip_grad_norm)
            optimizer.step()
        val = validation_loss(estimator, theta_va, x_va)
        history["train_loss"].append(total / count)
        history["validation_loss"].append(val)
        scheduler.step(val)
        if progress is not None:
            progress(epoch, total / count, val)
        if not math.isfinite(val):
            stopped = "non_finite_loss"
            break
        if val < best:
            best, best_epoch = val, epoch
            best_state = copy.deepcopy(estimator.state_dict())
        elif epoch - best_epoch >= config.patience:
            stopped = "early_stopping"
            break
        if time.perf_counter() - start > config.max_seconds:
            stopped = "max_seconds"
            break
    estimator.load_state_dict(best_state)
    estimator.eval()
    return TrainResult(
        epochs=epoch,
        best_epoch=best_epoch,
        best_validation_loss=best,
        train_seconds=time.perf_counter() - start,
        stopped_because=stopped,
        history=history,
    )


@torch.no_grad()
def validation_loss(estimator: Estimator, theta: Tensor, x: Tensor, chunk: int = 4096) -> float:
    """Mean loss over a held-out set, in chunks."""
    estimator.eval()
    total = 0.0
    for i in range(0, theta.shape[0], chunk):
        total += float(estimator.loss(theta[i : i + chunk], x[i : i + chunk]).sum())
    return total / theta.shape[0]
