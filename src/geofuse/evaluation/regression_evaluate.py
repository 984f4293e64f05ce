"""Evaluation of a regression run (one continuous value per patch) on val and test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from geofuse.config import GuardConfig
from geofuse.data.patchset import PatchSet
from geofuse.evaluation.predictions import save_predictions
from geofuse.evaluation.regression_metrics import regression_metrics
from geofuse.evaluation.tta import DIHEDRAL, dihedral
from geofuse.training.guards import GuardVerdict, run_guards
from geofuse.training.task import ClassificationTask

EVAL_SPLITS = ("val", "test")


@torch.inference_mode()
def predict_values(task: ClassificationTask, loader: DataLoader[Any], tta: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted values (N,) in the target's unit; ``tta`` averages the predictions
    over the eight flips and rotations of every patch (in the target's unit)."""
    task.eval()
    y_true, y_pred = [], []
    for batch in loader:
        tab = batch["tab"].to(task.device) if "tab" in batch else None
        image = batch["image"].to(task.device)
        views = DIHEDRAL if tta else DIHEDRAL[:1]
        values = torch.stack([task.scaler.decode(task(dihedral(image, k, flip), tab)[:, 0])
                              for k, flip in views]).mean(dim=0)
        y_pred.append(values.float().cpu().numpy())
        y_true.append(np.asarray(batch["label"], dtype=np.float32))
    if not y_true:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(y_true), np.concatenate(y_pred)


def evaluate_values(
    run_dir: Path, patches: PatchSet, predict: Any, guard: GuardConfig,
    history: Sequence[Mapping[str, Any]], frozen: float | None = None,
    stop_reason: str | None = None,
) -> tuple[dict[str, Any], GuardVerdict]:
    """:func:`regression_metrics` of every evaluated split, saving ``val_predictions.npz`` and
    ``test_predictions.npz`` (values as one column of ``probabilities``), and the guard.

    Args:
        run_dir: the run directory.
        patches: the run's PatchSet (bands selected).
        predict: ``split -> (true values, predicted values)``.
        guard: collapse-guard thresholds.
        history: rows of history.csv.
        frozen: share of frozen layers.
        stop_reason: why the in-training guard stopped the run, if it did.
    """
    results: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        idx = patches.split_indices(split)
        if len(idx):
            y_true, y_pred = predict(split)
            results[split] = regression_metrics(y_true, y_pred)
            save_predictions(run_dir, idx, np.asarray(y_pred)[:, None], y_true, split)
    return results, run_guards(results, history, guard, frozen=frozen, stop_reason=stop_reason)
