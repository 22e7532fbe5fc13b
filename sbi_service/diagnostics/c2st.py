"""Classifier two-sample test (C2ST) accuracy, as defined by sbibm.

Given samples P = {p_i} (n, d) from a reference distribution and Q = {q_j} (m, d) from
an approximation, label p_i with 0 and q_j with 1 and train a classifier to tell them
apart. The C2ST score is the classifier's held-out accuracy:

    c2st(P, Q) = (1 / K) sum_k  accuracy of f_k on fold k,   f_k fitted on the other folds,

which is 0.5 when the two distributions are identical (the classifier can only guess)
and 1.0 when they do not overlap. Following sbibm (Lueckmann et al. 2021):

- both sets are z-scored by the *reference's* statistics,
  z = (s - mean(P)) / std(P), so the score is invariant to affine rescaling of theta;
- the classifier is an MLP with two hidden layers of 10 * d ReLU units, trained with
  Adam (scikit-learn's ``MLPClassifier``, ``max_iter=10000``);
- accuracy is averaged over K = 5 shuffled folds (``KFold(shuffle=True)``).

Two methods compute it:

``"sbibm"``           exactly the definition above: each fold's MLP is trained until the
                      training loss stops improving (scikit-learn's default stopping, up to
                      10,000 epochs). Slow: tens of seconds per call for 10,000 + 10,000
                      samples on one core.
``"early_stopping"``  the same MLP, folds and z-scoring, but each fold's fit holds out 10 %
                      of its training rows and stops when their accuracy has not improved
                      for 10 epochs (``early_stopping=True``) and uses larger minibatches.
                      Much faster; ``benchmarks/c2st_agreement.py`` shows the two agree
                      within 0.01.
"""

from __future__ import annotations

import warnings

import numpy as np
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
    if method not in C2ST_METHODS:
        raise ValueError(f"unknown C2ST method {method!r}; expected one of {C2ST_METHODS}")
    p = np.asarray(samples_p, dtype=np.float64)
    q = np.asarray(samples_q, dtype=np.float64)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"expected samples (n, d) and (m, d), got {p.shape} and {q.shape}")
    mean, std = p.mean(0), p.std(0, ddof=1)
    std = np.where(std > 0, std, 1.0)
    data = np.concatenate([(p - mean) / std, (q - mean) / std])
    target = np.concatenate([np.zeros(len(p)), np.ones(len(q))])
    dim = p.shape[1]
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = []
    for train_idx, test_idx in folds.split(data):
        clf = _classifier(dim, seed, method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(data[train_idx], target[train_idx])
        scores.append(clf.score(data[test_idx], target[test_idx]))
    return float(np.mean(scores))


def _classifier(dim: int, seed: int, method: str) -> MLPClassifier:
    common = dict(
        activation="relu",
        hidden_layer_sizes=(10 * dim, 10 * dim),
        solver="adam",
        max_iter=10000,
        random_state=seed,
    )
    if method == "sbibm":
        return MLPClassifier(**common)
    return MLPClassifier(
        **common,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=10,
        batch_size=512,
        learning_rate_init=2e-3,
    )
