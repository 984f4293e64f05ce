"""Temperature scaling of a trained run (``train.calibration``), and its calibration record.

After training, :func:`calibrate_task` fits the temperature on the validation split's logits
(:func:`geofuse.evaluation.calibration.fit_temperature`), sets it on the task and writes it
into ``best.ckpt``, so that every later reader of the checkpoint (evaluation, fold ensembles,
``geofuse predict`` and its uncertainty rasters) gets calibrated probabilities without knowing
about it. Refitting starts from T = 1, so re-evaluating a run gives the same temperature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from geofuse.data.patchset import MASK_IGNORE
from geofuse.evaluation.calibration import (
    MIN_FIT_ERRORS,
    MIN_FIT_SAMPLES,
    calibration_summary,
    fit_temperature,
    reliability,
    scaled_probabilities,
)
from geofuse.io_utils import atomic_path
from geofuse.training.task import ClassificationTask

TEMPERATURE_KEY = "logit_temperature"
#: labelled pixels of a segmentation split sampled to fit and judge the calibration
MAX_PIXELS = 200_000
Collect = Callable[[ClassificationTask, DataLoader[Any]], tuple[np.ndarray, np.ndarray]]


@torch.inference_mode()
def predict_logits(task: ClassificationTask, loader: DataLoader[Any], masks: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """True targets and the task's logits (N, K) over a loader (no test-time augmentation);
    ``masks``: the true masks (N, H, W, uint8) and per-pixel logits (N, K, H, W, float16)."""
    task.eval()
    targets, logits = [], []
    for batch in loader:
        tab = batch["tab"].to(task.device) if "tab" in batch else None
        z = task(batch["image"].to(task.device), tab)
        logits.append((z.half() if masks else z.float()).cpu().numpy())
        targets.append(np.asarray(batch["mask"], dtype=np.uint8) if masks
                       else np.asarray(batch["label"]))
    if not targets:
        k = int(task.hparams["num_classes"])
        if masks:
            return np.zeros((0, 0, 0), np.uint8), np.zeros((0, k, 0, 0), np.float16)
        return np.zeros((0, k) if task.multilabel else (0,)), np.zeros((0, k))
    return np.concatenate(targets), np.concatenate(logits)


def save_temperature(checkpoint: Path, temperature: float) -> None:
    """Write ``temperature`` into a Lightning checkpoint's state dict (atomically)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["state_dict"][TEMPERATURE_KEY] = torch.tensor(float(temperature))
    with atomic_path(checkpoint) as tmp:
        torch.save(ckpt, tmp)


def _unfittable(logits: np.ndarray, targets: np.ndarray, multilabel: bool) -> str | None:
    """Why the validation split cannot fit a temperature, or None.

    Too few samples, or too few errors: with (almost) every validation prediction right the
    likelihood keeps rising as T shrinks, which would make every later mistake a confident one.
    """
    if len(targets) < MIN_FIT_SAMPLES:
        return (f"{len(targets)} validation samples, fewer than {MIN_FIT_SAMPLES}: the "
                "probabilities are left uncalibrated (T = 1)")
    wrong = int(((logits >= 0) != targets.astype(bool)).sum() if multilabel
                else (logits.argmax(axis=1) != targets).sum())
    if wrong < MIN_FIT_ERRORS:
        return (f"{wrong} wrong validation {'labels' if multilabel else 'predictions'}, fewer "
                f"than {MIN_FIT_ERRORS}: too few to tell over-confidence from skill; the "
                "probabilities are left uncalibrated (T = 1)")
    return None


def pixel_sample(true: np.ndarray, scores: np.ndarray, max_pixels: int = MAX_PIXELS
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Labelled pixels of masks (N, H, W) and their scores (N, K, H, W) as samples
    (M,) and (M, K); a fixed uniform sample of at most ``max_pixels`` of them, the same pixels
    for the same masks."""
    labelled = true != MASK_IGNORE
    n = int(labelled.sum())
    if n > max_pixels:
        labelled &= np.random.default_rng(0).random(true.shape) < max_pixels / n
    n_img, rows, cols = np.nonzero(labelled)
    return (true[n_img, rows, cols].astype(np.int64),
            np.asarray(scores[n_img, :, rows, cols], dtype=np.float64))


def mask_samples(task: ClassificationTask, loader: DataLoader[Any]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(targets, logits) of a fixed sample of a segmentation split's labelled pixels."""
    return pixel_sample(*predict_logits(task, loader, masks=True))


def calibrate_task(task: ClassificationTask, val_loader: DataLoader[Any], checkpoint: Path,
                   other_loaders: Mapping[str, DataLoader[Any]] | None = None,
                   collect: Collect = predict_logits,
                   ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Fit and store the task's temperature on the validation loader.

    Args:
        collect: (task, loader) -> (targets, logits) of the samples to fit and judge on:
            patches (:func:`predict_logits`), or pixels of masks (:func:`mask_samples`).

    Returns:
        The fit (``temperature``, ``fit_samples``, ``skipped`` reason or None) and the
        reliability of the uncalibrated model (T = 1) per split: ``val`` and every split of
        ``other_loaders``, for the before/after comparison.
    """
    task.logit_temperature.fill_(1.0)
    y_val, z_val = collect(task, val_loader)
    before = {"val": reliability(scaled_probabilities(z_val, 1.0, task.multilabel), y_val,
                                 task.multilabel)}
    for split, loader in (other_loaders or {}).items():
        y, z = collect(task, loader)
        before[split] = reliability(scaled_probabilities(z, 1.0, task.multilabel), y,
                                    task.multilabel)
    skipped = _unfittable(z_val, y_val, task.multilabel)
    temperature = 1.0 if skipped else fit_temperature(z_val, y_val, task.multilabel)
    task.logit_temperature.fill_(temperature)
    save_temperature(checkpoint, temperature)
    return {"temperature": temperature, "fit_samples": len(y_val),
            "skipped": skipped}, before


def calibration_record(method: str, fit: Mapping[str, Any] | None,
                       before: Mapping[str, dict[str, Any]],
                       final: Mapping[str, tuple[np.ndarray, np.ndarray]],
                       multilabel: bool) -> dict[str, Any]:
    """metrics.json's ``calibration``: the fit and, per split, the reliability of the final
    probabilities (``final``: split -> (targets, probabilities)) against ``before``."""
    after = {split: reliability(p, y, multilabel) for split, (y, p) in final.items()}
    fit = fit or {}
    return calibration_summary(method, fit.get("temperature", 1.0), fit.get("fit_samples", 0),
                               dict(before) or after, after, fit.get("skipped"))
