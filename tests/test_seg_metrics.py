"""Segmentation metrics: confusion over labelled pixels, sklearn agreement, tiles, collapse."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from geofuse.data.patchset import MASK_IGNORE
from geofuse.evaluation.seg_metrics import (
    SegmentationCounts,
    mask_collapse,
    per_tile_metrics,
    segmentation_confusion,
    segmentation_metrics,
)
from geofuse.training._epoch import EpochAccumulator, epoch_scores, segmentation_epoch_scores


def _masks(k: int, seed: int = 0, shape: tuple[int, ...] = (4, 8, 8)
           ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, shape).astype(np.uint8)
    pred = np.where(rng.random(shape) < 0.6, true, rng.integers(0, k, shape)).astype(np.uint8)
    true[rng.random(shape) < 0.2] = MASK_IGNORE
    return pred, true


def test_confusion_counts_labelled_pixels_only() -> None:
    true = np.array([[0, 1, MASK_IGNORE], [1, 1, MASK_IGNORE]])
    pred = np.array([[0, 0, 1], [1, 1, 1]])
    assert segmentation_confusion(true, pred, 2).tolist() == [[1, 0], [1, 2]]
    with pytest.raises(ValueError, match="one prediction per pixel"):
        segmentation_confusion(true, pred[:1], 2)


@pytest.mark.parametrize("k", [2, 3])
def test_metrics_agree_with_sklearn(k: int) -> None:
    pred, true = _masks(k, seed=k)
    if k == 3:
        pred[pred == 2] = 0  # class 2 never predicted, still in the truth
    names = [f"c{i}" for i in range(k)]
    got = segmentation_metrics(segmentation_confusion(true, pred, k), names)
    json.dumps(got)
    valid = true != MASK_IGNORE
    y, p = true[valid], pred[valid]
    labels = list(range(k))
    kw = {"labels": labels, "zero_division": 0}
    for name, fn in (("iou", jaccard_score), ("f1", f1_score), ("precision", precision_score),
                     ("recall", recall_score)):
        per_class = fn(y, p, average=None, **kw)
        assert [got["per_class"][c][name] for c in names] == pytest.approx(per_class)
        if k == 2:
            assert got[name] == pytest.approx(fn(y, p, pos_label=1, zero_division=0))
        else:
            assert got[name] == pytest.approx(fn(y, p, average="macro", **kw))
    assert got["mean_iou"] == pytest.approx(jaccard_score(y, p, average="macro", **kw))
    assert got["f1_macro"] == pytest.approx(f1_score(y, p, average="macro", **kw))
    assert got["accuracy"] == got["pixel_accuracy"] == pytest.approx(accuracy_score(y, p))
    assert got["n"] == int(valid.sum())
    assert got["positive_class"] == ("c1" if k == 2 else None)


def test_mean_iou_skips_classes_absent_from_truth_and_prediction() -> None:
    true = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    got = segmentation_metrics(segmentation_confusion(true, pred, 3), ["a", "b", "c"])
    assert got["mean_iou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert got["per_class"]["c"] == {"iou": 0.0, "f1": 0.0, "precision": 0.0, "recall": 0.0,
                                     "support": 0, "predicted": 0}


def test_counts_accumulate_like_one_pass() -> None:
    pred, true = _masks(3, seed=7)
    counts = SegmentationCounts(3)
    for i in range(len(pred)):
        counts.update(pred[i : i + 1], true[i : i + 1])
    assert counts.confusion.tolist() == segmentation_confusion(true, pred, 3).tolist()
    assert counts.metrics(["a", "b", "c"])["iou"] == pytest.approx(
        segmentation_metrics(segmentation_confusion(true, pred, 3), ["a", "b", "c"])["iou"])


@pytest.mark.parametrize("k", [2, 4])
def test_epoch_scores_match_segmentation_metrics(k: int) -> None:
    pred, true = _masks(k, seed=10 + k)
    want = segmentation_metrics(segmentation_confusion(true, pred, k), [str(i) for i in range(k)])
    got = epoch_scores(torch.from_numpy(pred).long(), torch.from_numpy(true).long(), k,
                       segmentation=True)
    assert set(got) == {"iou", "f1", "accuracy", "f1_macro"}
    for name in got:
        assert got[name].dtype == torch.float32 and got[name].ndim == 0
        assert got[name].item() == pytest.approx(want[name], abs=1e-6), name


def test_epoch_accumulator_takes_mask_batches_of_any_tile_size() -> None:
    acc = EpochAccumulator()
    parts = [_masks(2, seed=s, shape=(n, h, h)) for s, (n, h) in enumerate([(3, 8), (2, 6)])]
    for pred, true in parts:
        acc.update(torch.tensor(0.5), torch.from_numpy(pred).long(), torch.from_numpy(true).long())
    assert acc.sizes == [3, 2]
    preds, target = acc.predictions()
    got = segmentation_epoch_scores(preds, target, 2)
    cm = sum(segmentation_confusion(t, p, 2) for p, t in parts)
    assert got["iou"].item() == pytest.approx(segmentation_metrics(cm, ["n", "y"])["iou"])


def test_epoch_scores_without_labelled_pixels_are_zero() -> None:
    true = torch.full((1, 4, 4), MASK_IGNORE, dtype=torch.long)
    got = segmentation_epoch_scores(torch.ones_like(true), true, 2)
    assert all(v.item() == 0.0 for v in got.values())


def test_per_tile_metrics_and_the_empty_tile_convention() -> None:
    true = np.zeros((4, 2, 2), dtype=np.uint8)
    pred = np.zeros_like(true)
    true[0] = [[1, 1], [0, 0]]  # tp 1, fn 1, fp 1: IoU 1/3, F1 1/2
    pred[0] = [[1, 0], [1, 0]]
    # tile 1: no positive in truth nor prediction -> IoU = F1 = 1
    pred[2] = [[1, 0], [0, 0]]  # tile 2: a false alarm on an empty tile -> 0
    true[3] = MASK_IGNORE  # tile 3: nothing labelled -> None, left out
    pred[3] = 1
    got = per_tile_metrics(pred, true)
    json.dumps(got)
    assert got["iou"][:3] == pytest.approx([1 / 3, 1.0, 0.0]) and got["iou"][3] is None
    assert got["f1"][:3] == pytest.approx([0.5, 1.0, 0.0]) and got["f1"][3] is None
    assert got["iou_mean"] == pytest.approx((1 / 3 + 1) / 3)
    assert got["f1_mean"] == pytest.approx(1.5 / 3)
    assert (got["n_tiles"], got["empty_tiles"]) == (3, 1)
    assert got["support"] == [2, 0, 0, 0] and got["predicted"] == [2, 0, 1, 0]
    none = per_tile_metrics(np.zeros((0, 0, 0)), np.zeros((0, 0, 0)))
    assert (none["n_tiles"], none["iou"], none["iou_mean"]) == (0, [], 0.0)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        per_tile_metrics(pred[0], true[0])


def test_mask_collapse_fires_on_one_class_predictions_only() -> None:
    true = np.array([[[0, 1], [1, MASK_IGNORE]]])
    reason = mask_collapse(np.zeros_like(true), true, 2, ["stable", "land_take"])
    assert reason is not None and "'stable'" in reason and "land_take 66.7%" in reason
    assert "\n" not in reason
    # the prediction at the unlabelled pixel does not count
    assert mask_collapse(np.array([[[1, 1], [1, 0]]]), true, 2) is not None
    assert mask_collapse(np.array([[[0, 1], [0, 0]]]), true, 2) is None
    # truth of a single class: predicting it everywhere is right, not a collapse
    assert mask_collapse(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), 2) is None
