"""Multi-label metrics from true label sets and predicted probabilities (numpy, JSON-able).

A patch carries a set of labels (BigEarthNet: the CORINE classes present in it); the model
gives one independent probability per class, and a class is predicted when its probability
reaches :data:`THRESHOLD`. The returned dict keeps the keys of
:func:`~geofuse.evaluation.metrics.classification_metrics` that the rest of geofuse reads
(``n``, ``accuracy``, ``f1_macro``, ``per_class``, ``prediction_counts``, ...), so that the
study statistics and reports work unchanged, with these meanings:

- ``accuracy``: subset accuracy, the share of patches whose whole label set is right
  (scikit-learn's ``accuracy_score`` on multi-label data);
- ``f1_macro``, ``precision_macro``, ``recall_macro``: means over the classes that occur in
  the truth or the predictions (as the single-label metrics), ``f1_micro`` over all decisions,
  ``f1_samples`` the mean F1 of each patch's label set (BigEarthNet's usual figures);
- ``map``: mean over the classes present in the truth of the average precision (area under
  the precision-recall curve, threshold-free);
- ``majority_rate``: subset accuracy of always predicting the most frequent label set;
- ``prediction_counts``: patches predicted with each class; ``empty_predictions`` and
  ``full_predictions`` count patches predicted with no class and with every class, and
  ``top_prediction_set_share`` is the share of the most frequent predicted label set (the
  collapse guard reads them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

THRESHOLD = 0.5


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Average precision of one class (scikit-learn's step-wise definition); NaN when the
    class has no positive sample."""
    y = np.asarray(y_true, dtype=bool)
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    s, hits = np.asarray(score)[order], y[order]
    # one threshold per distinct score: the last index of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(hits)[last].astype(np.float64)
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def majority_set_rate(y_true: np.ndarray) -> tuple[float, list[int]]:
    """Subset accuracy of always predicting the most frequent label set, and that set."""
    y = np.asarray(y_true, dtype=np.uint8)
    if len(y) == 0:
        return 0.0, []
    rows, counts = np.unique(y, axis=0, return_counts=True)
    best = int(counts.argmax())
    return float(counts[best] / len(y)), np.flatnonzero(rows[best]).tolist()


def multilabel_metrics(
    y_true: np.ndarray, prob: np.ndarray, class_names: list[str], threshold: float = THRESHOLD
) -> dict[str, Any]:
    """Metrics of a multi-label split (see the module docstring for the keys' meanings).

    Args:
        y_true: (N, K) 0/1 true label sets.
        prob: (N, K) predicted probabilities.
        class_names: the K class names.
        threshold: probability from which a class is predicted.
    """
    y = np.asarray(y_true, dtype=bool).reshape(-1, len(class_names))
    p = np.asarray(prob, dtype=np.float64).reshape(y.shape)
    pred = p >= threshold
    n = len(y)
    tp = (y & pred).sum(axis=0)
    support, predicted = y.sum(axis=0), pred.sum(axis=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = (support + predicted) > 0
    ap = np.array([average_precision(y[:, k], p[:, k]) for k in range(y.shape[1])])
    sample_f1 = _ratio(2 * (y & pred).sum(axis=1), y.sum(axis=1) + pred.sum(axis=1))
    majority_rate, majority_set = majority_set_rate(y)

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else 0.0

    return {
        "multilabel": True,
        "n": n,
        "threshold": threshold,
        "accuracy": float((y == pred).all(axis=1).mean()) if n else 0.0,
        "precision_macro": mean(precision[present]),
        "recall_macro": mean(recall[present]),
        "f1_macro": mean(f1[present]),
        "f1_micro": float(_ratio(2 * tp.sum(), support.sum() + predicted.sum())),
        "f1_samples": mean(sample_f1),
        "map": mean(ap[support > 0]),
        "hamming_loss": float((y != pred).mean()) if n else 0.0,
        "majority_class": " + ".join(class_names[k] for k in majority_set) or None,
        "majority_rate": majority_rate,
        "label_cardinality": float(y.sum(axis=1).mean()) if n else 0.0,
        "per_class": {
            name: {"precision": float(pr), "recall": float(rc), "f1": float(f),
                   "ap": None if np.isnan(a) else float(a), "support": int(s)}
            for name, pr, rc, f, a, s in zip(class_names, precision, recall, f1, ap, support,
                                             strict=True)
        },
        "prediction_counts": {name: int(c) for name, c in
                              zip(class_names, predicted, strict=True)},
        "top_prediction_set_share": majority_set_rate(pred)[0],
        "empty_predictions": int((pred.sum(axis=1) == 0).sum()),
        "full_predictions": int((pred.sum(axis=1) == pred.shape[1]).sum()) if pred.shape[1] > 1
        else 0,
    }
