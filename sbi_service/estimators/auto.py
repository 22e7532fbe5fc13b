"""``--estimator auto``: the family and size chosen from the training data alone.

The rule looks only at what the user hands over: the parameter dimension d, the shape
of x, the number of simulations N and the prior's family (never at the task's name).
Its thresholds come from ``benchmarks/results/accuracy.md`` (sbibm's tasks, C2ST
against sbi's default NPE on the same simulations) and are explained in the README:

- x with more than one axis (a time series ``(C, T)``, an image) is embedded by a 1-d
  CNN (``cnn1d``); a flat x goes to the flow as it is (z-scored);
- the family is a neural spline flow (``nsf``): its monotone splines fit the curved,
  skewed and multimodal posteriors where an affine flow (``maf``) cannot, and reach
  the same accuracy on Gaussian ones given enough simulations;
- except from ``MANY_PARAMETERS`` (8) parameters with a Gaussian prior: there the posterior
  is close to Gaussian (the prior's tails, no box edges to bend around) and the splines'
  extra parameters overfit, so the family is the affine ``maf`` (with tanh hidden units:
  ``flows.py``). Fast C2ST over the 10 official observations at 10^3
  (``benchmarks/results/auto_small_budget.md``, with the ReLU units the MAFs had then):
  bernoulli_glm 0.824 against 0.866 for 4 spline flows (sbi's default NPE 0.817),
  gaussian_linear 0.622 against 0.640; with a box prior the splines win
  (gaussian_linear_uniform 0.690 against 0.735 for ``maf``). tanh units then took the
  accuracy table's cells (sbibm C2ST) from 0.771 to 0.742 on bernoulli_glm and from 0.559
  to 0.541 on gaussian_linear (sbi 0.763 and 0.581). Above 3,000 simulations one tanh MAF
  replaced 4 spline flows (``benchmarks/results/auto_large_budget.md``): at 10^4
  gaussian_linear 0.514 against 0.532 (sbi 0.538) at 8 training CPU seconds against 83
  (sbi 41), bernoulli_glm 0.627 against 0.619 (sbi 0.628) at 36 against 285 (sbi 85);
  at 10^5 gaussian_linear 0.503 against 0.513 (sbi 0.509) at 61 against 903 (sbi 304),
  bernoulli_glm 0.543 against 0.531 (sbi 0.542) at 160 against 2275 (sbi 760);
- up to 3,000 simulations the flow is an ensemble of 4 flows (``flows.py``): averaging
  independently fitted members cancels much of each one's error in the posterior's
  location, the error that dominates C2ST when simulations are few. Members cost training
  time linearly; above 3,000 simulations a single flow is already ahead of sbi's default
  NPE, and an ensemble's small further gain (two_moons at 10^4: 0.545 with 3 members
  against 0.557 alone, sbibm C2ST on 3 observations) would cost the 3x training-speed
  margin over sbi, so ``auto`` trains one flow there;
- from ``MANY_PARAMETERS`` (8) parameters with a box prior the spline flows have tanh
  hidden units, as the MAFs do: held-out negative log-likelihood on gaussian_linear_uniform
  (``benchmarks/results/auto_box_prior.md``, ``benchmarks/heldout_nll.py``, nats per pair,
  lower is better) 0.852 for 4 tanh spline flows against 1.020 with ReLU units at 10^3
  (sbi's default NPE 1.610, 3 seeds), and at 10^4 0.099 for one tanh spline flow against
  0.174 for the 4 ReLU ones ``auto`` trained before (sbi 0.758, 2 seeds), at a quarter of
  their training CPU. The accuracy table's cells (sbibm C2ST): 0.629 to 0.601 at 10^3
  (sbi 0.656), 0.532 to 0.527 at 10^4 (sbi 0.597) at 48 training CPU seconds against 153
  (sbi 71), 0.510 to 0.506 at 10^5 (sbi 0.573) at 527 against 1246 (sbi 261). A tanh MAF,
  cheaper still, only matched sbi at 10^4 (0.592 against 0.597): affine transforms cannot
  bend at the box's edges. Below 8 parameters tanh units fitted worse (sir, two_moons,
  slcp), so ``nsf`` keeps ReLU there.
"""

from __future__ import annotations

from typing import Any

from sbi_service.errors import UserError
from sbi_service.estimators.registry import ESTIMATORS

AUTO = "auto"
KINDS = (AUTO, *ESTIMATORS)
MANY_PARAMETERS = 8  # from this many: tanh hidden units; maf with a Gaussian prior
SMALL_BUDGET = 3_000  # up to this many simulations, an ensemble of 4 flows
GAUSSIAN_PRIORS = ("normal", "multivariate_normal")


def choose(
    dim_theta: int, x_shape: tuple[int, ...], num_simulations: int, prior_type: str
) -> dict[str, Any]:
    """The estimator config ``auto`` trains (without ``dim_theta`` and ``x_shape``).

    ``prior_type``: the prior spec's ``type`` (``box_uniform``, ``normal``, ...).
    """
    many = dim_theta >= MANY_PARAMETERS
    affine = many and prior_type in GAUSSIAN_PRIORS
    config: dict[str, Any] = {
        "kind": "maf" if affine else "nsf",
        "members": 4 if num_simulations <= SMALL_BUDGET else 1,
    }
    if many and not affine:
        config["activation"] = "tanh"  # maf's default already
    if len(x_shape) > 1:
        config["embedding"] = {"kind": "cnn1d"}
    return config


def check_kind(kind: str) -> None:
    """Raise a ``UserError`` naming the choices when ``kind`` is not ``auto`` or a family."""
    if kind not in KINDS:
        raise UserError(f"unknown estimator {kind!r}; expected one of {', '.join(KINDS)}")


def estimator_config(
    kind: str,
    dim_theta: int,
    x_shape: tuple[int, ...] | list[int],
    num_simulations: int,
    prior_type: str,
    embedding: dict | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The full ``build_estimator`` config for ``kind`` (``auto`` or a family name).

    Explicit ``embedding`` and ``options`` override what ``auto`` would choose.
    """
    check_kind(kind)
    base = (
        choose(dim_theta, tuple(x_shape), num_simulations, prior_type)
        if kind == AUTO
        else {"kind": kind}
    )
    config = {**base, "dim_theta": int(dim_theta), "x_shape": list(x_shape), **(options or {})}
    if embedding is not None:
        config["embedding"] = embedding
    return config
