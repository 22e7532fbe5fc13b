"""Estimator kinds by name, and rebuilding an estimator from its ``config``."""

from __future__ import annotations

from typing import Any

from sbi_service.errors import UserError
from sbi_service.estimators.base import Estimator
from sbi_service.estimators.flow_matching import FlowMatchingEstimator
from sbi_service.estimators.flows import MAFEstimator, NSFEstimator
from sbi_service.estimators.score import ScoreEstimator

ESTIMATORS: dict[str, type[Estimator]] = {
    "nsf": NSFEstimator,
    "maf": MAFEstimator,
    "npse": ScoreEstimator,
    "fmpe": FlowMatchingEstimator,
}


def build_estimator(config: dict[str, Any]) -> Estimator:
    """Rebuild the architecture from ``Estimator.config`` (weights are loaded separately)."""
    args = dict(config)
    kind = args.pop("kind", None)
    if kind not in ESTIMATORS:
        raise UserError(f"unknown estimator {kind!r}; expected one of {', '.join(ESTIMATORS)}")
    try:
        return ESTIMATORS[kind](**args)
    except TypeError as e:
        raise UserError(f"estimator {kind!r}: bad settings ({e})") from None
