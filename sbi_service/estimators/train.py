"""The training loop shared by every estimator family.

Minimizes the mean of ``estimator.loss(theta, x)`` with Adam on shuffled minibatches
held in memory (no DataLoader: the data are small tensors, moved once to the
estimator's device), keeps a held-out validation split, and stops when the validation
loss has not improved for ``patience`` epochs, restoring the best weights. z-scoring
statistics are fitted on the training split only.

Why it is fast (``benchmarks/accuracy.py`` compares it with sbi's default loop on the
same simulations): each step costs about the same for 100 or 500 rows on a CPU, so
the batch grows with the data (n_train / 20, clamped to [100, 1000]: ~20 steps per
epoch), and the learning rate grows with the batch by the square-root rule for Adam,

    lr = learning_rate * sqrt(batch / 128)      (only when the batch size is automatic;
                                                 a fixed batch_size uses learning_rate as is).
With the default learning_rate 3e-4 that is about 5.6e-4 at 10^4 simulations (batch
450), close to sbi's 5e-4: a rate three times higher trained 1.5x faster on two_moons
but lost 0.02 C2ST on two_moons and gaussian_linear. The learning rate is held until
the validation loss
stalls for ``plateau_patience`` epochs, then halved (``ReduceLROnPlateau``); training
stops after ``patience`` epochs without improvement, or at the plateau that would take
the rate below 1 / 2^``max_halvings`` (1/32) of its start. Without that rule a slowly
improving fit never stalls for ``patience`` epochs. On lotka_volterra at 10^5
simulations the sixth halving comes at epoch 137 (416 CPU s, C2ST 0.839); letting the
same run go on to a ninth halving took 345 epochs (1058 CPU s) for C2ST 0.829, and
without a floor it ran 833 epochs (before x was log-standardized).

``patience`` and ``plateau_patience`` left at ``None`` take the family's values
(``Estimator.train_defaults``; 10 and 3 unless the family says otherwise). The score
and flow-matching losses (``npse``, ``fmpe``) regress a noisy target, so their
validation loss improves slowly under epoch-to-epoch jitter, and 3 stalled epochs
halve the rate long before the fit is done: on two_moons at 10^4 simulations npse
stopped at epoch 62 (C2ST 0.72 on 3-4 of sbibm's observations); with 30 and 10 it
trains 234 epochs (C2ST 0.56). Validation uses at most
``max_validation`` rows, evaluated without gradients once per epoch, and losses are
accumulated on the device (no host synchronization per step).

Weight averaging (``average_weights``, on by default for ``npse`` and ``fmpe``): an
exponential moving average of the weights after each optimizer step t = 1, 2, ...,

    w_avg(t) = beta_t w_avg(t - 1) + (1 - beta_t) w(t),   beta_t = (1 + t) / (10 + t),

(the warm-up rule of TensorFlow's ``ExponentialMovingAverage``: the average spans about
the last tenth of the steps so far), kept by ``torch.optim.swa_utils.AveragedModel``.
Validation, the schedule, early stopping and the restored best weights all use the
average; the optimizer steps the raw weights. The score and flow-matching losses are a
noisy regression, and the raw weights wander around the fit by the minibatch noise:
on gaussian_linear at 10^4 simulations (seed 0) the average took npse's
single-observation posterior-mean error from 0.104 to 0.085 posterior standard
deviations (rms over 20 x and 10 dimensions) and the 20-observation composition
(``benchmarks/iid.py``) from C2ST 0.848 to 0.666, stopping at epoch 63 instead of 84.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from sbi_service.errors import UserError
from sbi_service.estimators.base import Estimator

TRAIN_DEFAULTS = {"patience": 10, "plateau_patience": 3, "average_weights": False}


def family_defaults(estimator: Estimator) -> dict[str, int | bool]:
    """``TRAIN_DEFAULTS`` with the estimator family's own values over them."""
    return {**TRAIN_DEFAULTS, **estimator.train_defaults}


@dataclass
class TrainConfig:
    """Optimization settings. ``batch_size=0`` picks the batch (and scales the rate);
    ``patience``/``plateau_patience``/``average_weights`` ``None``: the estimator family's
    (``resolved_patience``, ``resolved_average_weights``).
    """

    batch_size: int = 0
    learning_rate: float = 3e-4
    max_epochs: int = 2000
    patience: int | None = None
    plateau_patience: int | None = None
    average_weights: bool | None = None
    max_halvings: int = 5
    validation_fraction: float = 0.1
    max_validation: int = 10_000
    clip_grad_norm: float = 5.0
    max_seconds: float = math.inf

    def resolved_patience(self, estimator: Estimator) -> tuple[int, int]:
        """(patience, plateau_patience): the given ones, else the family's defaults."""
        defaults = family_defaults(estimator)
        patience = self.patience if self.patience is not None else defaults["patience"]
        plateau = self.plateau_patience
        return patience, plateau if plateau is not None else defaults["plateau_patience"]

    def resolved_average_weights(self, estimator: Estimator) -> bool:
        """Whether to average the weights: the given choice, else the family's default."""
        if self.average_weights is not None:
            return self.average_weights
        return bool(family_defaults(estimator)["average_weights"])

    def resolved_batch_size(self, n_train: int) -> int:
        if self.batch_size > 0:
            return min(self.batch_size, n_train)
        return int(min(n_train, max(100, min(1000, n_train // 20))))

    def resolved_learning_rate(self, batch: int) -> float:
        if self.batch_size > 0:
            return self.learning_rate
        return self.learning_rate * math.sqrt(batch / 128)


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


# (epoch, train_loss, val_loss, done): done in [0, 1] is ``done_fraction``
ProgressFn = Callable[[int, float, float, float], None]


def done_fraction(config: TrainConfig, epoch: int, seconds: float, halvings: int) -> float:
    """How far training is toward the first stopping rule it will meet, in [0, 1].

    The largest of epoch / max_epochs, seconds / max_seconds and halvings of the
    learning rate / (max_halvings + 1) (the halving that crosses the floor stops it);
    each only grows, so the fraction never goes back. Early stopping after
    ``patience`` epochs without improvement can end training sooner.
    """
    parts = [epoch / config.max_epochs, halvings / (config.max_halvings + 1)]
    if math.isfinite(config.max_seconds):
        parts.append(seconds / config.max_seconds)
    return min(max(parts), 1.0)


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
    loss (regularizers); validation uses the plain loss. The data are moved to the
    estimator's device; the split and minibatch order come from a CPU generator seeded
    by ``seed``, so they are the same on every device.
    """
    config = config or TrainConfig()
    n = theta.shape[0]
    if n != x.shape[0]:
        raise UserError(f"theta has {n} rows but x has {x.shape[0]}: they must be paired")
    n_val = max(1, int(round(n * config.validation_fraction)))
    if n - n_val < 2:
        raise UserError(f"need at least 3 simulations to train, got {n}")
    device = estimator.theta_loc.device
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # randomness inside losses (noise levels, times)
    perm = torch.randperm(n, generator=g)
    tr, va = perm[n_val:], perm[: min(n_val, config.max_validation)]
    theta_tr, x_tr = theta[tr].to(device), x[tr].to(device)
    theta_va, x_va = theta[va].to(device), x[va].to(device)
    estimator.fit_standardization(theta_tr, x_tr)

    n_train = len(tr)
    batch = config.resolved_batch_size(n_train)
    learning_rate = config.resolved_learning_rate(batch)
    patience, plateau_patience = config.resolved_patience(estimator)
    min_learning_rate = learning_rate / 2**config.max_halvings
    optimizer = torch.optim.Adam(estimator.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=plateau_patience
    )
    # the weights validated, scheduled on and kept: their running average, or the raw ones
    kept = weight_average(estimator) if config.resolved_average_weights(estimator) else None
    model = kept.module if kept is not None else estimator
    best, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    history: dict[str, list[float]] = {"train_loss": [], "validation_loss": []}
    start, stopped = time.perf_counter(), "max_epochs"
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        estimator.train()
        order = torch.randperm(n_train, generator=g).to(device)
        total = torch.zeros((), device=device)
        for i in range(0, n_train - batch + 1, batch):  # full batches only
            idx = order[i : i + batch]
            loss = estimator.loss(theta_tr[idx], x_tr[idx]).mean()
            total += loss.detach()
            if extra_loss is not None:
                loss = loss + extra_loss(estimator, theta_tr[idx], x_tr[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(estimator.parameters(), config.clip_grad_norm)
            optimizer.step()
            if kept is not None:
                kept.update_parameters(estimator)
        train_loss = float(total) / (n_train // batch)
        val = validation_loss(model, theta_va, x_va)
        history["train_loss"].append(train_loss)
        history["validation_loss"].append(val)
        if progress is not None:
            halvings = round(math.log2(learning_rate / optimizer.param_groups[0]["lr"]))
            done = done_fraction(config, epoch, time.perf_counter() - start, halvings)
            progress(epoch, train_loss, val, done)
        if not math.isfinite(val):
            stopped = "non_finite_loss"
            break
        scheduler.step(val)
        if val < best:
            best, best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            stopped = "early_stopping"
            break
        if optimizer.param_groups[0]["lr"] < 0.99 * min_learning_rate:
            stopped = "learning_rate_floor"
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


def weight_average(estimator: Estimator) -> AveragedModel:
    """A copy of ``estimator`` whose parameters follow the average w_avg(t) (module doc);
    its buffers (the z-scoring, fitted before training) stay as they are at the copy."""

    def average(w_avg: Tensor, w: Tensor, t: Tensor) -> Tensor:
        beta = (1 + t) / (10 + t)  # t >= 1: the first update copies w
        return beta * w_avg + (1 - beta) * w

    return AveragedModel(estimator, avg_fn=average)


@torch.no_grad()
def validation_loss(estimator: Estimator, theta: Tensor, x: Tensor, chunk: int = 4096) -> float:
    """Mean loss over a held-out set theta (m, d), x (m, *x_shape), in chunks."""
    estimator.eval()
    total = torch.zeros((), device=theta.device)
    for i in range(0, theta.shape[0], chunk):
        total += estimator.loss(theta[i : i + chunk], x[i : i + chunk]).sum()
    return float(total) / theta.shape[0]
