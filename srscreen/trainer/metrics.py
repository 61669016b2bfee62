"""Regression metrics of predictions against labels (training, evaluate and calibration share them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Metrics:
    mae: float
    rmse: float
    r2: float
    count: int


def metrics(pred: np.ndarray, true: np.ndarray) -> Metrics:
    """MAE, RMSE and R²; NaN where undefined (no crystals, or labels without spread for R²)."""
    err = pred - true
    ss_tot = float(((true - true.mean()) ** 2).sum()) if len(true) else 0.0
    return Metrics(
        mae=float(np.abs(err).mean()) if len(err) else math.nan,
        rmse=float(np.sqrt((err**2).mean())) if len(err) else math.nan,
        r2=1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else math.nan,
        count=int(len(err)),
    )


@dataclass
class UncertainMetrics(Metrics):
    """Metrics of a model with a spread, plus how well its calibrated spread ranks and sizes the errors
    (`ensemble.uncertainty_metrics`)."""

    spearman: float
    within_1std: float
    within_2std: float
    mae_most_confident_10pct: float
    mae_least_confident_10pct: float
