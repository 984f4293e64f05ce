"""Segmentation metrics from predicted and true class masks (plain numpy, JSON-able).

Pixels whose true value is :data:`~geofuse.data.patchset.MASK_IGNORE` (255) are unlabelled and
count nowhere. Everything derives from one confusion matrix over the labelled pixels (rows are
true classes, columns predictions), accumulated tile by tile with :class:`SegmentationCounts`
or at once with :func:`segmentation_confusion`.

Conventions:

- Pooled ratios (over all pixels) that are undefined (0 / 0) are 0, as scikit-learn's
  ``zero_division`` default and :func:`~geofuse.evaluation.metrics.classification_metrics`.
- Mean IoU and macro F1/precision/recall run over the classes present in the truth or the
  predictions (a split lacking a class is not penalised for it).
- Binary masks (two classes): the top-level ``iou``, ``f1``, ``precision`` and ``recall`` are
  the change class's (index 1), pooled over pixels. For more classes they are the mean IoU and
  the macro F1, precision and recall.
- Per tile (:func:`per_tile_metrics`), a tile with no positive pixel in truth nor prediction
  scores IoU = F1 = 1 (nothing to find, nothing found); a tile without a labelled pixel scores
  None and is left out of the tile means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geofuse.data.patchset import MASK_IGNORE
from geofuse.evaluation.metrics import _mean, _safe_divide


def segmentation_confusion(
    true_masks: np.ndarray, pred_masks: np.ndarray, num_classes: int
) -> np.ndarray:
    """Pixel counts (K, K) over labelled pixels; rows are true classes, columns predictions.

    Args:
        true_masks: true class indices of any shape (``(N, H, W)``), 255 where unlabelled.
        pred_masks: predicted class indices of the same shape.
        num_classes: number of classes K.

    Raises:
        ValueError: the shapes differ.
    """
    true = np.asarray(true_masks).astype(np.int64, copy=False).reshape(-1)
    pred = np.asarray(pred_masks).astype(np.int64, copy=False).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"{np.shape(pred_masks)} predicted for {np.shape(true_masks)} true "
                         "masks; give one prediction per pixel")
    valid = true != MASK_IGNORE
    flat = true[valid] * num_classes + pred[valid]
    return np.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


class SegmentationCounts:
    """Confusion matrix of a split accumulated batch by batch.

    Args:
        num_classes: number of classes K.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred_masks: np.ndarray, true_masks: np.ndarray) -> None:
        """Add the labelled pixels of a batch of predicted and true masks."""
        self.confusion += segmentation_confusion(true_masks, pred_masks, self.num_classes)

    def metrics(self, class_names: Sequence[str]) -> dict[str, Any]:
        """:func:`segmentation_metrics` of the pixels added so far."""
        return segmentation_metrics(self.confusion, class_names)


def segmentation_metrics(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Pixel accuracy, per-class and averaged IoU/F1/precision/recall of a confusion matrix.

    Args:
        confusion: (K, K) pixel counts, rows true (:func:`segmentation_confusion`).
        class_names: one name per class, in index order.

    Returns:
        A JSON-able dict: ``n`` (labelled pixels), ``accuracy`` (pixel accuracy; also as
        ``pixel_accuracy``), ``iou``, ``f1``, ``precision``, ``recall`` (change class of a
        binary mask, else the means), ``positive_class`` (its name, None for K > 2),
        ``mean_iou``, ``f1_macro``, ``precision_macro``, ``recall_macro``, ``per_class``
        (name -> iou, f1, precision, recall, support, predicted), ``confusion_matrix`` (rows =
        true) and ``prediction_counts``.

    Raises:
        ValueError: the matrix is not (K, K) for the K names.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {k} classes "
                         f"{list(class_names)}; give a ({k}, {k}) matrix")
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * tp, support + predicted)
    iou = _safe_divide(tp, support + predicted - tp)
    present = (support + predicted) > 0
    n = int(cm.sum())
    accuracy = float(tp.sum() / n) if n else 0.0
    averages = {"mean_iou": _mean(iou[present]), "f1_macro": _mean(f1[present]),
                "precision_macro": _mean(precision[present]),
                "recall_macro": _mean(recall[present])}
    if k == 2:
        headline = {"iou": float(iou[1]), "f1": float(f1[1]),
                    "precision": float(precision[1]), "recall": float(recall[1])}
    else:
        headline = {"iou": averages["mean_iou"], "f1": averages["f1_macro"],
                    "precision": averages["precision_macro"],
                    "recall": averages["recall_macro"]}
    per_class = {
        name: {"iou": float(j), "f1": float(f), "precision": float(p), "recall": float(r),
               "support": int(s), "predicted": int(q)}
        for name, j, f, p, r, s, q in zip(class_names, iou, f1, precision, recall, support,
                                          predicted, strict=True)
    }
    return {
        "n": n, "accuracy": accuracy, "pixel_accuracy": accuracy, **headline,
        "positive_class": class_names[1] if k == 2 else None, **averages,
        "per_class": per_class, "confusion_matrix": cm.tolist(),
        "prediction_counts": {name: int(c) for name, c in zip(class_names, predicted,
                                                              strict=True)},
    }


def per_tile_metrics(
    pred_masks: np.ndarray, true_masks: np.ndarray, positive: int = 1
) -> dict[str, Any]:
    """IoU and F1 of the ``positive`` class tile by tile, for the per-tile distribution.

    A tile with no positive pixel in its truth nor its prediction scores IoU = F1 = 1 (a
    correct "no change"); a tile without any labelled pixel scores None and is left out of
    the means and of ``n_tiles``.

    Args:
        pred_masks: predicted class indices (N, H, W).
        true_masks: true class indices (N, H, W), 255 where unlabelled.
        positive: index of the positive (change) class.

    Returns:
        A JSON-able dict: per tile lists ``iou``, ``f1``, ``support`` (true positive pixels),
        ``predicted`` (predicted positive pixels) and ``labelled`` (labelled pixels); the tile
        means ``iou_mean`` and ``f1_mean``; ``n_tiles`` (tiles with a labelled pixel) and
        ``empty_tiles`` (of those, the tiles scored 1 by the empty convention).

    Raises:
        ValueError: the shapes differ or are not (N, H, W).
    """
    true = np.asarray(true_masks)
    pred = np.asarray(pred_masks)
    if true.shape != pred.shape or true.ndim != 3:
        raise ValueError(f"per-tile metrics need predicted and true masks of one shape "
                         f"(N, H, W), got {pred.shape} and {true.shape}")
    flat = (len(true), true.shape[1] * true.shape[2])  # explicit: no tiles is fine too
    valid = (true != MASK_IGNORE).reshape(flat)
    is_true = (true == positive).reshape(flat) & valid
    is_pred = (pred == positive).reshape(flat) & valid
    tp = (is_true & is_pred).sum(axis=1)
    support, predicted, labelled = is_true.sum(axis=1), is_pred.sum(axis=1), valid.sum(axis=1)
    union = support + predicted - tp
    scored = labelled > 0
    empty = scored & (union == 0)
    iou = np.where(union > 0, _safe_divide(tp, union), 1.0)
    f1 = np.where(union > 0, _safe_divide(2 * tp, support + predicted), 1.0)
    return {
        "iou": [float(v) if s else None for v, s in zip(iou, scored, strict=True)],
        "f1": [float(v) if s else None for v, s in zip(f1, scored, strict=True)],
        "support": support.tolist(), "predicted": predicted.tolist(),
        "labelled": labelled.tolist(),
        "iou_mean": _mean(iou[scored]), "f1_mean": _mean(f1[scored]),
        "n_tiles": int(scored.sum()), "empty_tiles": int(empty.sum()),
    }


def mask_collapse(
    pred_masks: np.ndarray, true_masks: np.ndarray, num_classes: int,
    class_names: Sequence[str] | None = None,
) -> str | None:
    """The collapse guard for masks: a reason when every labelled pixel gets one class.

    Fires when the predictions over the labelled pixels hold a single class (all-zero or
    all-one for a binary mask) while the truth there holds more than one.

    Args:
        pred_masks: predicted class indices (N, H, W).
        true_masks: true class indices of the same shape, 255 where unlabelled.
        num_classes: number of classes K.
        class_names: names for the message; default the class indices.

    Returns:
        None, or a one-line reason naming the predicted class and the true class shares.
    """
    cm = segmentation_confusion(true_masks, pred_masks, num_classes)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    if np.count_nonzero(support) < 2 or np.count_nonzero(predicted) != 1:
        return None
    names = list(class_names) if class_names is not None else [str(i) for i in
                                                                range(num_classes)]
    only = int(np.flatnonzero(predicted)[0])
    shares = ", ".join(f"{names[c]} {100 * support[c] / support.sum():.1f}%"
                       for c in np.flatnonzero(support))
    return (f"every labelled pixel ({int(support.sum())}) is predicted as class "
            f"{names[only]!r} while the truth holds {np.count_nonzero(support)} classes "
            f"({shares})")
