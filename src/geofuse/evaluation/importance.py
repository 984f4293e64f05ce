"""Permutation importance of bands and modalities (sensor contribution).

A band is "permuted" by giving every sample the whole band-patch of another, randomly chosen
sample; a modality by doing so for all its bands jointly with one permutation. The spatial
structure inside each patch, and the correlation between the bands of a modality, are kept;
only the link between that input and the label is broken. The importance is the drop of the
metric (baseline - permuted), averaged over ``n_repeats`` permutations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from geofuse.evaluation.metrics import classification_metrics
from geofuse.evaluation.multilabel_metrics import THRESHOLD, multilabel_metrics
from geofuse.evaluation.regression_metrics import regression_metrics

PredictFn = Callable[[np.ndarray], Any]
METRICS = ("accuracy", "f1_macro", "r2")
#: the metric of a regression model's values (the others compare classes)
VALUE_METRICS = ("r2",)


def _predict(predict_fn: PredictFn, x: np.ndarray, batch_size: int | None,
             multilabel: bool = False, values: bool = False) -> np.ndarray:
    """Class indices for ``x``; scores/logits of shape (N, K) are arg-maxed. Multi-label:
    probabilities (N, K) become 0/1 label sets (from 0.5). ``values``: the estimates (N,)
    of a regression model, as they are."""
    step = batch_size or len(x)
    parts = [np.asarray(predict_fn(x[i:i + step])) for i in range(0, len(x), max(step, 1))]
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if values:
        return out.astype(np.float64).ravel()
    if multilabel:
        return (out >= THRESHOLD).astype(np.uint8)
    if out.ndim == 2:
        out = out.argmax(axis=1)
    return out.astype(np.int64).ravel()


def _score(y: np.ndarray, pred: np.ndarray, metric: str, num_classes: int) -> float:
    if metric in VALUE_METRICS:  # dense targets (N, P, P): their labelled pixels
        t, p = np.asarray(y, dtype=np.float64).reshape(-1), np.asarray(pred).reshape(-1)
        keep = np.isfinite(t)
        return float(regression_metrics(t[keep], p[keep])[metric])
    if y.ndim == 2:  # label sets: accuracy is subset accuracy
        names = [str(i) for i in range(y.shape[1])]
        return float(multilabel_metrics(y, pred.astype(np.float64), names)[metric])
    if metric == "accuracy":
        return float(np.mean(y == pred)) if len(y) else 0.0
    names = [str(i) for i in range(num_classes)]
    return float(classification_metrics(y, pred, names)[metric])


def _groups(band_names: Sequence[str], modalities: Mapping[str, Sequence[str]],
            ) -> dict[str, dict[str, list[int]]]:
    """Channel indices per band and per modality; unknown band names raise ValueError."""
    index = {name: i for i, name in enumerate(band_names)}
    unknown = sorted({b for bands in modalities.values() for b in bands} - set(index))
    if unknown:
        raise ValueError(f"modality bands {unknown} are not in band_names {list(band_names)}")
    return {"band": {name: [i] for name, i in index.items()},
            "modality": {m: [index[b] for b in bands] for m, bands in modalities.items()}}


def permutation_importance(
    predict_fn: PredictFn,
    x: np.ndarray,
    y: np.ndarray,
    band_names: Sequence[str],
    modalities: Mapping[str, Sequence[str]],
    n_repeats: int = 5,
    seed: int = 0,
    metric: str = "accuracy",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Drop of ``metric`` when a band, or all bands of a modality, is permuted across samples.

    Args:
        predict_fn: maps an array (n, C, H, W) to class indices (n,) or scores (n, K); for
            multi-label ``y``, to class probabilities (n, K); for ``metric: r2``, to the
            estimated values (n,), or (n, H, W) of a dense regression.
        x: inputs (N, C, ...), channel axis 1 in the order of ``band_names``.
        y: true class indices (N,), true label sets (N, K) of 0/1, or true values (N,)
            or (N, H, W) with NaN for unlabelled pixels (``metric: r2``).
        band_names: C names.
        modalities: modality -> its band names (each a subset of ``band_names``).
        n_repeats: permutations per band/modality.
        seed: seed of the permutations (same seed, same result).
        metric: ``accuracy`` or ``f1_macro``; ``r2`` for a regression model.
        batch_size: call ``predict_fn`` on chunks of this size (default: all at once).

    Returns:
        ``{"baseline": score, "metric": metric, "n_repeats": n, "modality": {name: {"mean",
        "std"}}, "band": {name: {"mean", "std"}}}``; std uses ddof=1 (0 for one repeat).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1, got {n_repeats}")
    x = np.asarray(x)
    values = metric in VALUE_METRICS
    multilabel = np.asarray(y).ndim == 2 and not values
    y = np.asarray(y, dtype=np.float64 if values else np.int64)
    y = y if multilabel or (values and y.ndim == 3) else y.ravel()  # dense values: (N, P, P)
    if x.ndim < 2 or x.shape[1] != len(band_names) or len(x) != len(y):
        raise ValueError(f"x {x.shape} must be (N, C, ...) with C = {len(band_names)} band "
                         f"names and N = {len(y)} labels")
    groups = _groups(band_names, modalities)
    base_pred = _predict(predict_fn, x, batch_size, multilabel, values)
    num_classes = 1 if values else int(max(y.max(initial=0), base_pred.max(initial=0))) + 1
    baseline = _score(y, base_pred, metric, num_classes)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"baseline": baseline, "metric": metric, "n_repeats": n_repeats}
    for kind in ("modality", "band"):
        out[kind] = {}
        for name, channels in groups[kind].items():
            drops = []
            for _ in range(n_repeats):
                perm = rng.permutation(len(x))
                shuffled = x.copy()
                shuffled[:, channels] = x[np.ix_(perm, channels)]
                pred = _predict(predict_fn, shuffled, batch_size, multilabel, values)
                k = 1 if values else max(num_classes, int(pred.max(initial=0)) + 1)
                drops.append(baseline - _score(y, pred, metric, k))
            std = float(np.std(drops, ddof=1)) if n_repeats > 1 else 0.0
            out[kind][name] = {"mean": float(np.mean(drops)), "std": std}
    return out


def aggregate_importance(
    results: Sequence[Mapping[str, Any] | None],
) -> dict[str, dict[str, dict[str, float]]]:
    """Combine :func:`permutation_importance` results of several runs (e.g. folds x seeds).

    Per kind (``modality``, ``band``) and name: ``mean`` over the runs, ``std`` across the runs'
    means (ddof=1; with a single run, that run's std over its repeats) and ``n`` runs. ``None``
    results (importance not computed) are ignored; kinds without any value are left out.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind in ("modality", "band"):
        per: dict[str, list[tuple[float, float]]] = {}
        for result in results:
            for name, v in ((result or {}).get(kind) or {}).items():
                per.setdefault(name, []).append((float(v["mean"]), float(v.get("std") or 0.0)))
        if per:
            out[kind] = {name: {"mean": float(np.mean([m for m, _ in v])),
                                "std": float(np.std([m for m, _ in v], ddof=1)) if len(v) > 1
                                else v[0][1], "n": len(v)} for name, v in per.items()}
    return out
