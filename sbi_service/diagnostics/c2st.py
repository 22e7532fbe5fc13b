"""Classifier two-sample test (C2ST) accuracy, as defined by sbibm.

Given samples P = {p_i} (n, d) from a reference distribution and Q = {q_j} (m, d) from
an approximation, label p_i with 0 and q_j with 1 and train a classifier to tell them
apart. The C2ST score is the classifier's held-out accuracy:

    c2st(P, Q) = (1 / K) sum_k  accuracy of f_k on fold k,   f_k fitted on the other folds,

which is 0.5 when the two distributions are identical (the classifier can only guess)
and 1.0 when they do not overlap. Following sbibm (Lueckmann et al. 2021):

- both sets are z-scored by the *reference's* statistics,
  z = (s - mean(P)) / std(P), so the score is invariant to affine rescaling of theta;
- the classifier is an MLP with two hidden layers of 10 * d ReLU units and one logistic
  output, trained with Adam (learning rate 1e-3, betas 0.9/0.999, eps 1e-8) on the
  binary cross-entropy plus the L2 penalty (alpha / 2) ||W||^2 / batch (alpha = 1e-4,
  weights only), in shuffled minibatches of 200, from Glorot-uniform weights and biases,
  until the epoch's training loss has failed to improve on its best by 1e-4 for more
  than 10 epochs in a row (at most 10,000 epochs); the last epoch's weights classify;
- accuracy is averaged over K = 5 shuffled folds (``KFold(shuffle=True)``).

That is scikit-learn's ``MLPClassifier(hidden_layer_sizes=(10 d, 10 d), max_iter=10000)``
with its defaults, which sbibm calls. Two methods compute it:

``"sbibm"``           exactly the definition above, written in torch so that the K folds of
                      many sample pairs train at once as one batch of independent networks
                      (``torch.baddbmm`` over a leading network axis; each network keeps its
                      own shuffles and stops by its own rule, then leaves the batch).
                      ``benchmarks/c2st_agreement.py`` compares it with scikit-learn's
                      classifier as sbibm calls it (within 0.002 in 2-d). For one pair
                      scikit-learn is faster; the batch pays off for many pairs at once.
``"early_stopping"``  the same MLP, folds and z-scoring (scikit-learn), but each fold's fit
                      holds out 10 % of its training rows and stops when their accuracy has
                      not improved for 10 epochs, with larger minibatches. Faster still for
                      one pair, and less sensitive to fine structure than sbibm's definition.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold
from sklearn.neural_network import MLPClassifier

C2ST_METHODS = ("sbibm", "early_stopping")


def c2st(
    samples_p: ArrayLike,
    samples_q: ArrayLike,
    seed: int = 0,
    method: str = "sbibm",
    n_folds: int = 5,
) -> float:
    """C2ST accuracy between samples_p (n, d), the reference, and samples_q (m, d).

    Returns the mean held-out accuracy over ``n_folds`` folds, in [0, 1] (about 0.5 for
    identical distributions, 1.0 for disjoint ones). ``method`` is ``"sbibm"`` or
    ``"early_stopping"`` (see the module docstring).
    """
    return c2st_many([(samples_p, samples_q)], [seed], method, n_folds)[0]


def c2st_many(
    pairs: Sequence[tuple[ArrayLike, ArrayLike]],
    seeds: Sequence[int],
    method: str = "sbibm",
    n_folds: int = 5,
) -> list[float]:
    """C2ST of each (reference (n, d), approximation (m, d)) pair, with its own seed.

    Each seed fixes its pair's folds. With ``method="sbibm"`` all pairs' folds of the same
    size train together, and the first seed draws their initial weights and shuffles.
    """
    if method not in C2ST_METHODS:
        raise ValueError(f"unknown C2ST method {method!r}; expected one of {C2ST_METHODS}")
    if len(pairs) != len(seeds):
        raise ValueError(f"got {len(pairs)} sample pairs but {len(seeds)} seeds")
    folds = [
        fold
        for pair, seed in zip(pairs, seeds, strict=True)
        for fold in _folds(*pair, seed, n_folds)
    ]
    if method == "sbibm":
        accuracy = np.zeros(len(folds))
        by_shape: dict[tuple, list[int]] = {}
        for i, fold in enumerate(folds):
            by_shape.setdefault((fold[0].shape, fold[2].shape), []).append(i)
        for index in by_shape.values():
            accuracy[index] = _fit_mlps([folds[i] for i in index])
    else:
        accuracy = np.array([_fit_sklearn_early_stopping(fold) for fold in folds])
    return accuracy.reshape(len(pairs), n_folds).mean(1).tolist()


Fold = tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, int
]  # x_train, y_train, x_test, y_test, seed


def _folds(samples_p: ArrayLike, samples_q: ArrayLike, seed: int, n_folds: int) -> list[Fold]:
    p = np.asarray(samples_p, dtype=np.float64)
    q = np.asarray(samples_q, dtype=np.float64)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"expected samples (n, d) and (m, d), got {p.shape} and {q.shape}")
    mean, std = p.mean(0), p.std(0, ddof=1)
    std = np.where(std > 0, std, 1.0)
    data = np.concatenate([(p - mean) / std, (q - mean) / std]).astype(np.float32)
    target = np.concatenate([np.zeros(len(p)), np.ones(len(q))]).astype(np.float32)
    split = KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(data)
    return [(data[tr], target[tr], data[te], target[te], seed) for tr, te in split]


def _fit_mlps(
    folds: list[Fold],
    alpha: float = 1e-4,
    learning_rate: float = 1e-3,
    tol: float = 1e-4,
    n_iter_no_change: int = 10,
    max_epochs: int = 10_000,
    batch_size: int = 200,
) -> np.ndarray:
    """Train one sbibm MLP per fold, all at once; held-out accuracy per fold, (B,).

    Shapes: x (B, n, d), y (B, n) for B networks of layers d -> 10d -> 10d -> 1, whose
    weights are (B, fan_in, fan_out) and biases (B, 1, fan_out). A network that meets its
    stopping rule keeps its weights and leaves the batch, so later epochs cost only what
    is still training.
    """
    x = torch.from_numpy(np.stack([f[0] for f in folds]))
    y = torch.from_numpy(np.stack([f[1] for f in folds]))
    nets, n, dim = x.shape
    generator = torch.Generator().manual_seed(folds[0][4])
    params = []
    for fan_in, fan_out in [(dim, 10 * dim), (10 * dim, 10 * dim), (10 * dim, 1)]:
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        for shape in [(nets, fan_in, fan_out), (nets, 1, fan_out)]:
            params.append((2 * torch.rand(shape, generator=generator) - 1) * bound)
    final = [p.clone() for p in params]  # each network's weights when it stopped
    first, second = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    training = torch.arange(nets)  # the networks still in the batch
    best, stalled = torch.full((nets,), math.inf), torch.zeros(nets)
    batch, t = min(batch_size, n), 0  # t: Adam's update count
    for _ in range(max_epochs):
        order = torch.argsort(torch.rand(len(training), n, generator=generator), dim=1)
        x_epoch = torch.gather(x, 1, order[..., None].expand(-1, -1, dim))
        y_epoch = torch.gather(y, 1, order)
        params = [p.requires_grad_() for p in params]
        epoch_loss = torch.zeros(len(training))
        for start in range(0, n, batch):
            rows = slice(start, start + batch)
            size = min(batch, n - start)
            logits = _forward(params, x_epoch[:, rows])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, y_epoch[:, rows], reduction="none"
            ).mean(1)
            loss = loss + 0.5 * alpha * sum((w * w).sum((1, 2)) for w in params[0::2]) / size
            grads = torch.autograd.grad(loss.sum(), params)
            t += 1
            with torch.no_grad():
                epoch_loss += loss * size
                rate = learning_rate * math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
                for p, g, m, v in zip(params, grads, first, second, strict=True):
                    m.mul_(0.9).add_(g, alpha=0.1)
                    v.mul_(0.999).addcmul_(g, g, value=0.001)
                    p.sub_(rate * m / (v.sqrt() + 1e-8))
        params = [p.detach() for p in params]
        epoch_loss /= n
        stalled = torch.where(epoch_loss > best - tol, stalled + 1, 0.0)
        best = torch.minimum(best, epoch_loss)
        done = stalled > n_iter_no_change
        if done.any():
            for f, p in zip(final, params, strict=True):
                f[training[done]] = p[done]
            keep = ~done
            training, best, stalled = training[keep], best[keep], stalled[keep]
            params = [p[keep] for p in params]
            first, second = [m[keep] for m in first], [v[keep] for v in second]
            x, y = x[keep], y[keep]
            if len(training) == 0:
                break
    for f, p in zip(final, params, strict=True):
        f[training] = p
    with torch.no_grad():
        logits = _forward(final, torch.from_numpy(np.stack([f[2] for f in folds])))
    y_test = torch.from_numpy(np.stack([f[3] for f in folds]))
    return ((logits > 0).float() == y_test).float().mean(1).numpy()


def _forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x (B, rows, d) -> logits (B, rows) of the B networks."""
    h = torch.relu(torch.baddbmm(params[1], x, params[0]))
    h = torch.relu(torch.baddbmm(params[3], h, params[2]))
    return torch.baddbmm(params[5], h, params[4]).squeeze(-1)


def _fit_sklearn_early_stopping(fold: Fold) -> float:
    x_train, y_train, x_test, y_test, seed = fold
    dim = x_train.shape[1]
    clf = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(10 * dim, 10 * dim),
        solver="adam",
        max_iter=10000,
        random_state=seed,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=10,
        batch_size=512,
        learning_rate_init=2e-3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))
