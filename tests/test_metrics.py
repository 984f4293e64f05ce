"""Classification metrics agree with scikit-learn and handle absent classes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from geofuse.evaluation.metrics import classification_metrics, majority_rate

NAMES = ["forest", "water", "urban", "crop"]


def test_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 4, 300))
    m = classification_metrics(y_true, y_pred, NAMES)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    assert m["n"] == 300
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["precision_macro"] == pytest.approx(p.mean())
    assert m["recall_macro"] == pytest.approx(r.mean())
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    for i, name in enumerate(NAMES):
        assert m["per_class"][name] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}
        )


def test_confusion_matrix_rows_are_true_classes() -> None:
    m = classification_metrics(np.array([0, 0, 0, 1]), np.array([1, 1, 0, 1]), NAMES[:2])
    assert m["confusion_matrix"] == [[1, 2], [0, 1]]
    assert m["prediction_counts"] == {"forest": 1, "water": 3}
    assert m["per_class"]["forest"]["support"] == 3


def test_macro_average_ignores_classes_absent_from_split() -> None:
    y_true = np.array([1, 1, 3, 3, 3])
    y_pred = np.array([1, 1, 3, 3, 1])
    m = classification_metrics(y_true, y_pred, NAMES)
    assert m["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["per_class"]["forest"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_majority_rate_and_class() -> None:
    y_true = np.array([2, 2, 2, 0, 1])
    m = classification_metrics(y_true, np.full(5, 2), NAMES[:3])
    assert majority_rate(y_true, 3) == pytest.approx(0.6)
    assert m["majority_class"] == "urban"
    assert m["accuracy"] == pytest.approx(m["majority_rate"])


def test_empty_split_gives_zeros_not_errors() -> None:
    m = classification_metrics(np.array([], int), np.array([], int), NAMES)
    assert m["n"] == 0
    assert m["accuracy"] == 0.0
    assert m["majority_class"] is None
