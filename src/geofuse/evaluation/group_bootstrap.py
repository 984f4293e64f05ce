"""Bootstrap over test groups: confidence intervals and paired comparisons on one test set.

Patches of one group (a label polygon, a 1 km cell, a tile) are not independent: they share
their ground, their date and usually their class, so resampling patches understates the
uncertainty of a test score. Here the groups are resampled with replacement (every patch of a
drawn group comes along, once per draw) and the metric is recomputed from saved predictions.

Overall accuracy and macro F1 are functions of counts that add up over patches (a confusion
matrix; for label sets the exact matches and per-class true positives, supports and
predictions), so each group is reduced once to its counts (:func:`group_counts`) and a
resample is a weighted sum of group counts: 1000 resamples of a 10,000-patch test set take a
few milliseconds. Every model of a study is evaluated on the same resamples
(:func:`resample_weights` with one seed), which makes differences between models paired.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geofuse.evaluation.multilabel_metrics import THRESHOLD

RESAMPLES = 1000
SEED = 0
METRICS = ("accuracy", "f1_macro")


def group_codes(groups: Sequence[str] | np.ndarray) -> tuple[np.ndarray, int]:
    """Integer code (N,) of each patch's group and the number of groups."""
    _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return codes.astype(np.int64), int(codes.max()) + 1 if len(codes) else 0


def resample_weights(n_groups: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n_groups) times each group is drawn, drawing ``n_groups`` with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(resamples, n_groups))
    return np.stack([np.bincount(row, minlength=n_groups) for row in draws]).astype(np.float64)


def group_counts(targets: np.ndarray, probabilities: np.ndarray, codes: np.ndarray,
                 n_groups: int, threshold: float = THRESHOLD) -> np.ndarray:
    """(n_groups, S) additive counts of each group's predictions.

    Single-label (``targets`` (N,)): the flattened K x K confusion matrix (rows = true).
    Multi-label (``targets`` (N, K)): patches, exact label-set matches, then per class the
    true positives, supports and predictions (``probabilities >= threshold``).
    """
    k = probabilities.shape[1]
    if targets.ndim == 1:
        cell = targets.astype(np.int64) * k + probabilities.argmax(axis=1)
        flat = codes * (k * k) + cell
        return np.bincount(flat, minlength=n_groups * k * k).reshape(n_groups, k * k) \
            .astype(np.float64)
    y, pred = targets.astype(bool), probabilities >= threshold
    per_patch = np.column_stack([np.ones(len(y)), (y == pred).all(axis=1), y & pred, y, pred])
    out = np.zeros((n_groups, per_patch.shape[1]))
    np.add.at(out, codes, per_patch.astype(np.float64))
    return out


def metrics_from_counts(counts: np.ndarray, k: int, multilabel: bool) -> dict[str, np.ndarray]:
    """Accuracy (subset accuracy of label sets) and macro F1 from summed counts (..., S).

    Macro F1 averages the classes present in the truth or the predictions, as
    :func:`~geofuse.evaluation.metrics.classification_metrics` and
    :func:`~geofuse.evaluation.multilabel_metrics.multilabel_metrics` do.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if multilabel:
        n, exact = counts[..., 0], counts[..., 1]
        tp, support, predicted = (counts[..., 2 + i * k: 2 + (i + 1) * k] for i in range(3))
    else:
        cm = counts.reshape(*counts.shape[:-1], k, k)
        tp = np.diagonal(cm, axis1=-2, axis2=-1)
        support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
        n, exact = support.sum(axis=-1), tp.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        present = (support + predicted) > 0
        macro = np.where(present.any(axis=-1), (f1 * present).sum(axis=-1)
                         / present.sum(axis=-1), 0.0)
        accuracy = np.where(n > 0, exact / n, 0.0)
    return {"accuracy": accuracy, "f1_macro": macro}


def model_scores(targets: np.ndarray, probabilities: np.ndarray, codes: np.ndarray,
                 n_groups: int, weights: np.ndarray) -> dict[str, tuple[float, np.ndarray]]:
    """Per metric: the score on the test set as it is and its (resamples,) bootstrap values
    under ``weights`` (:func:`resample_weights`)."""
    counts = group_counts(targets, probabilities, codes, n_groups)
    k, multilabel = probabilities.shape[1], targets.ndim == 2
    point = metrics_from_counts(counts.sum(axis=0), k, multilabel)
    boot = metrics_from_counts(weights @ counts, k, multilabel)
    return {m: (float(point[m]), boot[m]) for m in METRICS}


def mean_scores(scores: Sequence[dict[str, tuple[float, np.ndarray]]]
                ) -> dict[str, tuple[float, np.ndarray]]:
    """The mean over several models of :func:`model_scores` (point and each resample)."""
    return {m: (float(np.mean([s[m][0] for s in scores])),
                np.mean([s[m][1] for s in scores], axis=0)) for m in METRICS}


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap values (NaN, NaN when there are none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a paired difference being 0: twice the smaller share of
    resampled differences on either side of 0 (with the +1 correction), at most 1."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan")
    tail = min((d <= 0).sum(), (d >= 0).sum())
    return float(min(1.0, 2 * (tail + 1) / (len(d) + 1)))
