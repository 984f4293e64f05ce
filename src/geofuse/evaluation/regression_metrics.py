"""Metrics of a continuous target (regression): errors in the target's unit and fit scores."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Scores of predicted against true values (both in the target's unit).

    Returns:
        ``regression: True``, ``n``, ``rmse``, ``mae``, ``bias`` (mean of predicted - true),
        ``r2`` (1 - SSE / SST, as scikit-learn's ``r2_score``; 0 when the truth is constant),
        ``pearson_r`` and ``spearman_r`` (NaN when either side is constant), ``mean_true``,
        ``std_true`` and ``std_pred`` (population standard deviations, for the collapse
        guard), and ``r2_log1p``: R2 of log(1 + value), the agreement in orders of magnitude
        of non-negative targets such as counts (NaN when a value is negative). Every value
        is NaN for an empty split (``n`` = 0).
    """
    t = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if len(t) != len(p):
        raise ValueError(f"{len(t)} true values but {len(p)} predictions")
    keys = ("rmse", "mae", "bias", "r2", "pearson_r", "spearman_r", "mean_true", "std_true",
            "std_pred", "r2_log1p")
    if not len(t):
        return {"regression": True, "n": 0, **dict.fromkeys(keys, float("nan"))}
    err = p - t
    constant = t.std() == 0 or p.std() == 0
    return {
        "regression": True, "n": len(t),
        "rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean()),
        "bias": float(err.mean()),
        "r2": _r2(t, p),
        "pearson_r": float("nan") if constant else float(stats.pearsonr(t, p)[0]),
        "spearman_r": float("nan") if constant else float(stats.spearmanr(t, p)[0]),
        "mean_true": float(t.mean()), "std_true": float(t.std()), "std_pred": float(p.std()),
        "r2_log1p": _r2(np.log1p(t), np.log1p(p)) if min(t.min(), p.min()) >= 0
        else float("nan"),
    }


def _r2(t: np.ndarray, p: np.ndarray) -> float:
    sst = float(((t - t.mean()) ** 2).sum())
    return 1 - float(((p - t) ** 2).sum()) / sst if sst > 0 else 0.0
