"""Classification metrics from true and predicted class indices (plain numpy, JSON-able)."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes); rows are true classes, columns predictions."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    flat = y_true * num_classes + y_pred
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def majority_rate(y_true: np.ndarray, num_classes: int) -> float:
    """Accuracy of always predicting the most frequent true class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) == 0:
        return 0.0
    return float(np.bincount(y_true, minlength=num_classes).max() / len(y_true))


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Overall accuracy, macro and per-class precision/recall/F1, confusion matrix, support.

    Macro averages run over the classes that occur in ``y_true`` or ``y_pred`` (as scikit-learn
    and torchmetrics do), so a test split lacking a class is not penalised for it; undefined
    per-class ratios are 0.

    Returns:
        A JSON-able dict with keys ``n``, ``accuracy``, ``precision_macro``, ``recall_macro``,
        ``f1_macro``, ``majority_class``, ``majority_rate``, ``per_class`` (name -> precision,
        recall, f1, support), ``confusion_matrix`` (rows = true) and ``prediction_counts``.
    """
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    n = int(cm.sum())
    present = (support + predicted) > 0
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
    }
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "precision_macro": _mean(precision[present]),
        "recall_macro": _mean(recall[present]),
        "f1_macro": _mean(f1[present]),
        "majority_class": class_names[int(support.argmax())] if n else None,
        "majority_rate": majority_rate(y_true, k),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "prediction_counts": {name: int(c) for name, c in zip(class_names, predicted, strict=True)},
    }
