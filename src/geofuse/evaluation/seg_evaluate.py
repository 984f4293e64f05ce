"""Evaluate a segmentation run: pixel masks of the best checkpoint on val and test.

Writes the same ``metrics.json`` layout as classification runs (``val``, ``test``, ``guard``),
each split holding :func:`~geofuse.evaluation.seg_metrics.segmentation_metrics` (pooled over
labelled pixels: IoU, F1, precision and recall of the change class of a binary mask, mean IoU
and per-class figures) plus the per-tile distribution; each split's predicted masks are saved
as ``{split}_masks.npz`` for the report's figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from geofuse.config import GuardConfig
from geofuse.evaluation.seg_metrics import (
    mask_collapse,
    per_tile_metrics,
    segmentation_confusion,
    segmentation_metrics,
)
from geofuse.evaluation.tta import DIHEDRAL, dihedral
from geofuse.io_utils import atomic_path
from geofuse.training.guards import GuardVerdict, check_flat_loss, check_losses, diagnose


def masks_file(run_dir: Path, split: str) -> Path:
    """The predicted masks of one split (``val_masks.npz``, ``test_masks.npz``)."""
    return Path(run_dir) / f"{split}_masks.npz"


def undo_dihedral(image: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The inverse of :func:`~geofuse.evaluation.tta.dihedral`: unflip, then rotate back."""
    out = torch.flip(image, dims=(-1,)) if flip else image
    return torch.rot90(out, -k, dims=(-2, -1))


def mask_probabilities(task: torch.nn.Module, image: torch.Tensor, tta: bool = False
                       ) -> torch.Tensor:
    """Per-pixel class probabilities (B, K, H, W); ``tta`` averages them over the 8 flips and
    rotations, each mapped back onto the input's orientation."""
    if not tta:
        return task(image).softmax(dim=1)
    total = torch.zeros(())
    for k, flip in DIHEDRAL:
        total = total + undo_dihedral(task(dihedral(image, k, flip)).softmax(dim=1), k, flip)
    return total / len(DIHEDRAL)


@torch.inference_mode()
def predict_masks(task: torch.nn.Module, loader: DataLoader[Any], tta: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True masks, predicted masks (N, H, W) uint8 and class probabilities (N, K, H, W)
    float16 over a loader."""
    task.eval()
    truth, preds, probs = [], [], []
    for batch in loader:
        p = mask_probabilities(task, batch["image"].to(task.device), tta).float().cpu()
        probs.append(p.half().numpy())
        preds.append(p.argmax(dim=1).to(torch.uint8).numpy())
        truth.append(np.asarray(batch["mask"], dtype=np.uint8))
    if not truth:
        empty = np.zeros((0, 0, 0), dtype=np.uint8)
        return empty, empty, np.zeros((0, 0, 0, 0), dtype=np.float16)
    return np.concatenate(truth), np.concatenate(preds), np.concatenate(probs)


def split_mask_metrics(true: np.ndarray, pred: np.ndarray, class_names: Sequence[str]
                       ) -> dict[str, Any]:
    """Pooled pixel metrics of one split, its tiles' IoU/F1 distribution and ``n`` (tiles)."""
    confusion = segmentation_confusion(true, pred, len(class_names))
    out = segmentation_metrics(confusion, list(class_names))
    out.update(n_pixels=out["n"], n=len(true), segmentation=True,
               per_tile=per_tile_metrics(pred, true))
    return out


def save_masks(run_dir: Path, split: str, indices: np.ndarray, pred: np.ndarray,
               probs: np.ndarray) -> Path:
    """Write a split's predicted masks (PatchSet row ``indices``) and the probability of
    class 1 (binary) or of every class, atomically (:func:`masks_file`)."""
    path = masks_file(run_dir, split)
    keep = probs[:, 1] if probs.shape[1] == 2 else probs
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, indices=np.asarray(indices, dtype=np.int64), pred=pred,
                            probability=keep)
    return path


def segmentation_guards(
    results: Mapping[str, Mapping[str, Any]], masks: Mapping[str, tuple[np.ndarray, np.ndarray]],
    history: list[dict[str, Any]], guard: GuardConfig, num_classes: int,
    stop_reason: str | None = None,
) -> GuardVerdict:
    """The collapse guard of a segmentation run: non-finite or flat losses, and a split whose
    predicted masks are all one class while its truth holds several."""
    reasons = check_losses(history) + check_flat_loss(history, guard)
    if stop_reason:
        reasons.append(f"training stopped by the collapse guard: {stop_reason}")
    details = {}
    for split, (true, pred) in masks.items():
        reason = mask_collapse(pred, true, num_classes)
        if reason:
            reasons.append(f"{split}: {reason}")
        m = results[split]
        support = [c["support"] for c in m["per_class"].values()]
        pixels = max(sum(support), 1)
        details[split] = {"iou": m["iou"], "accuracy": m["accuracy"],
                          "majority_rate": max(support) / pixels,
                          "max_prediction_share": max(m["prediction_counts"].values()) / pixels}
    diagnosis = diagnose(history, guard, None, stop_reason) if reasons else ""
    return GuardVerdict(collapsed=bool(reasons), reasons=reasons, details=details,
                        diagnosis=diagnosis)


def evaluate_masks(
    run_dir: Path, patches: Any, task: Any, data: Any, tta: bool,
    guard: GuardConfig, history: list[dict[str, Any]], stop_reason: str | None = None,
    calibration: str = "none", checkpoint: Path | None = None,
) -> tuple[dict[str, Any], GuardVerdict]:
    """Metrics of every evaluated split (val, test) and the collapse verdict of a
    segmentation run; saves each split's predicted masks (:func:`masks_file`).

    ``calibration: temperature`` first fits the per-pixel temperature on a sample of the
    validation split's labelled pixels and writes it into ``checkpoint``
    (:mod:`geofuse.evaluation.calibrate`); the results then hold ``calibration``.
    """
    from geofuse.evaluation.calibrate import (
        calibrate_task,
        calibration_record,
        mask_samples,
        pixel_sample,
    )

    names = list(patches.mask_names)
    results: dict[str, Any] = {}
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    splits = [s for s in ("val", "test") if len(patches.split_indices(s))]
    fit, before = None, {}
    if calibration == "temperature" and "val" in splits and checkpoint is not None:
        fit, before = calibrate_task(task, data.loader("val"), checkpoint,
                                     {s: data.loader(s) for s in splits if s != "val"},
                                     collect=mask_samples)
    final = {}
    for split in splits:
        indices = patches.split_indices(split)
        true, pred, probs = predict_masks(task, data.loader(split), tta=tta)
        results[split] = split_mask_metrics(true, pred, names)
        masks[split] = (true, pred)
        final[split] = pixel_sample(true, probs)
        save_masks(run_dir, split, indices, pred, probs)
    verdict = segmentation_guards(results, masks, history, guard, len(names), stop_reason)
    results["calibration"] = calibration_record(calibration, fit, before, final, False)
    return results, verdict
