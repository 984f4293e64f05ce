"""Calibration of class probabilities: reliability bins, ECE, and temperature scaling.

An uncertainty map is only worth publishing when a probability of 0.8 is right about 80 % of
the time. Networks trained with cross-entropy are usually over-confident on data they did not
train on; temperature scaling (Guo et al. 2017, "On calibration of modern neural networks")
divides every logit by one scalar T > 0 fitted on the validation split by minimising the
negative log-likelihood. It leaves every argmax, hence the class map and all accuracy figures,
unchanged, and makes the probabilities (and the entropy and 1 - max probability rasters of
``geofuse predict``) honest.

Single-label scores use the top-label (confidence) reliability of Guo et al.; multi-label
scores pool every (sample, class) probability as one binary event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, log_softmax, softmax

#: equal-width confidence bins of the reliability diagram and the ECE (Guo et al.: 15)
N_BINS = 15
#: temperatures searched (a log-uniform bracket); beyond it the fit says the data are degenerate
T_BOUNDS = (0.05, 20.0)
#: fewer validation samples than this leave the model uncalibrated (T = 1): too few to fit
MIN_FIT_SAMPLES = 20
#: nor with fewer wrong validation predictions than this (T would only sharpen without end)
MIN_FIT_ERRORS = 5
EPS = 1e-12


def _binary_events(probabilities: np.ndarray, targets: np.ndarray, multilabel: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) per event: the top class of each sample, or every (sample, class)
    probability of a multi-label set (correct = the label is present)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if multilabel:
        return p.ravel(), np.asarray(targets, dtype=bool).ravel()
    top = p.argmax(axis=1)
    return p[np.arange(len(p)), top], top == np.asarray(targets, dtype=np.int64)


def reliability(probabilities: np.ndarray, targets: np.ndarray, multilabel: bool = False,
                n_bins: int = N_BINS) -> dict[str, Any]:
    """Reliability bins, expected and maximum calibration error, Brier score and NLL.

    Args:
        probabilities: (N, K) class probabilities (softmax, or per-class sigmoids).
        targets: (N,) true class indices, or (N, K) 0/1 label sets when ``multilabel``.

    Returns:
        ``{"ece", "mce", "brier", "nll", "n", "bins": [{"lower", "upper", "count",
        "confidence", "accuracy"}]}``; ECE is the count-weighted mean |accuracy - confidence|
        over the bins, MCE its largest bin value; Brier the mean squared error of the
        probability vector (multi-label: per label). Empty input gives ``None`` figures.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    conf, correct = _binary_events(p, targets, multilabel)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    if not len(conf):
        return {"ece": None, "mce": None, "brier": None, "nll": None, "n": 0, "bins": []}
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=n_bins)
    bins, gaps = [], np.zeros(n_bins)
    for b in range(n_bins):
        if counts[b]:
            gaps[b] = abs(hit_sum[b] - conf_sum[b]) / counts[b]
            bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]),
                         "count": int(counts[b]), "confidence": float(conf_sum[b] / counts[b]),
                         "accuracy": float(hit_sum[b] / counts[b])})
    if multilabel:
        y = np.asarray(targets, dtype=np.float64)
        brier = float(np.mean((p - y) ** 2))
        nll = float(-np.mean(y * np.log(p + EPS) + (1 - y) * np.log(1 - p + EPS)))
    else:
        y = np.asarray(targets, dtype=np.int64)
        onehot = np.eye(p.shape[1])[y]
        brier = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
        nll = float(-np.mean(np.log(p[np.arange(len(p)), y] + EPS)))
    return {"ece": float(np.sum(counts * gaps) / counts.sum()), "mce": float(gaps.max()),
            "brier": brier, "nll": nll, "n": len(p), "bins": bins}


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray,
                               multilabel: bool = False, n_bins: int = N_BINS) -> float | None:
    """The ECE of :func:`reliability` (None for no samples)."""
    return reliability(probabilities, targets, multilabel, n_bins)["ece"]


def scaled_nll(logits: np.ndarray, targets: np.ndarray, temperature: float,
               multilabel: bool = False) -> float:
    """Mean negative log-likelihood of ``logits / temperature`` (softmax, or per-class
    sigmoids of a multi-label model)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if multilabel:
        y = np.asarray(targets, dtype=np.float64)
        return float(-np.mean(y * log_expit(z) + (1 - y) * log_expit(-z)))
    y = np.asarray(targets, dtype=np.int64)
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(z)), y]))


def fit_temperature(logits: np.ndarray, targets: np.ndarray, multilabel: bool = False
                    ) -> float:
    """The temperature T in :data:`T_BOUNDS` minimising the NLL of ``logits / T``.

    One-dimensional and convex in 1/T, so a bounded search over log T finds the optimum.
    Perfectly separated validation data push T to the lower bound (ever sharper
    probabilities): the bound caps that over-confidence.

    Raises:
        ValueError: no samples, or non-finite logits.
    """
    z = np.asarray(logits, dtype=np.float64)
    if not len(z):
        raise ValueError("temperature scaling needs at least one sample")
    if not np.isfinite(z).all():
        raise ValueError("temperature scaling got non-finite logits")
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    result = minimize_scalar(lambda log_t: scaled_nll(z, targets, float(np.exp(log_t)),
                                                      multilabel),
                             bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def scaled_probabilities(logits: np.ndarray, temperature: float, multilabel: bool = False
                         ) -> np.ndarray:
    """Probabilities of ``logits / temperature``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    return expit(z) if multilabel else softmax(z, axis=1)


def calibration_summary(method: str, temperature: float, fitted_on: int,
                        before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
                        skipped: str | None = None) -> dict[str, Any]:
    """The ``calibration`` entry of metrics.json: the method, T, how many validation samples
    fitted it, and per split the ECE / MCE / Brier / NLL before and after (with the
    reliability bins after)."""
    splits = {}
    for split in after:
        b, a = before.get(split, {}), after[split]
        splits[split] = {
            **{f"{k}_before": b.get(k) for k in ("ece", "mce", "brier", "nll")},
            **{k: a.get(k) for k in ("ece", "mce", "brier", "nll", "n")},
            "bins": a.get("bins", []), "bins_before": b.get("bins", []),
        }
    out: dict[str, Any] = {"method": method, "temperature": float(temperature),
                           "fit_samples": int(fitted_on), "splits": splits}
    if skipped:
        out["skipped"] = skipped
    return out


def cell_calibration(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The compact calibration of one cell for its result JSON (no reliability bins)."""
    cal = metrics.get("calibration")
    if not cal:
        return None
    return {"method": cal["method"], "temperature": cal["temperature"],
            "skipped": cal.get("skipped"),
            "ece": {s: v.get("ece") for s, v in cal["splits"].items()},
            "ece_before": {s: v.get("ece_before") for s, v in cal["splits"].items()}}
