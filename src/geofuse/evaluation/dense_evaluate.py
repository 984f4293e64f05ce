"""Evaluate a dense-regression run: a value per pixel of the best checkpoint on val and test.

Writes the same ``metrics.json`` layout as patch regression runs (``val``, ``test``,
``guard``): each split holds :func:`~geofuse.evaluation.regression_metrics.regression_metrics`
pooled over its labelled pixels (``n`` = pixels) plus ``dense: True``, ``n_tiles`` and the
per-tile RMSE distribution; each split's true and predicted values are saved as
``{split}_values.npz`` for the report's figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from geofuse.config import GuardConfig
from geofuse.evaluation.regression_metrics import regression_metrics
from geofuse.evaluation.seg_evaluate import undo_dihedral
from geofuse.evaluation.tta import DIHEDRAL, dihedral
from geofuse.io_utils import atomic_path
from geofuse.training.guards import GuardVerdict, run_guards

EVAL_SPLITS = ("val", "test")


def values_file(run_dir: Path, split: str) -> Path:
    """The true and predicted pixel values of one split (``val_values.npz``, ...)."""
    return Path(run_dir) / f"{split}_values.npz"


def dense_values(task: torch.nn.Module, image: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Values (B, H, W) in the target's unit of a dense-regression task; ``tta`` averages
    them over the 8 flips and rotations, each mapped back onto the input's orientation."""
    views = DIHEDRAL if tta else DIHEDRAL[:1]
    total = torch.zeros(())
    for k, flip in views:
        out = task.scaler.decode(task(dihedral(image, k, flip))[:, 0])
        total = total + undo_dihedral(out, k, flip)
    return total / len(views)


@torch.inference_mode()
def predict_dense_values(task: torch.nn.Module, loader: DataLoader[Any], tta: bool = False
                         ) -> tuple[np.ndarray, np.ndarray]:
    """True (NaN = unlabelled) and predicted values (N, H, W) float32 over a loader."""
    task.eval()
    truth, preds = [], []
    for batch in loader:
        preds.append(dense_values(task, batch["image"].to(task.device), tta).float().cpu()
                     .numpy())
        truth.append(np.asarray(batch["label"], dtype=np.float32))
    if not truth:
        empty = np.zeros((0, 0, 0), dtype=np.float32)
        return empty, empty
    return np.concatenate(truth), np.concatenate(preds)


def tile_rmse(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Median, quartiles and extremes of the tiles' RMSE over their labelled pixels."""
    err = np.where(np.isfinite(true), (pred - true) ** 2, np.nan).reshape(len(true), -1)
    per_tile = np.sqrt(np.nanmean(err, axis=1)) if len(true) else np.zeros(0)
    if not len(per_tile):
        return {}
    q = np.quantile(per_tile, [0, 0.25, 0.5, 0.75, 1])
    return dict(zip(("min", "q25", "median", "q75", "max"), map(float, q), strict=True))


def split_value_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Pooled pixel metrics of one split (``n`` = labelled pixels), its tile count and the
    per-tile RMSE distribution."""
    labelled = np.isfinite(true)
    out = regression_metrics(true[labelled], pred[labelled])
    out.update(dense=True, n_pixels=out["n"], n_tiles=len(true),
               per_tile_rmse=tile_rmse(true, pred))
    return out


def save_values(run_dir: Path, split: str, indices: np.ndarray, true: np.ndarray,
                pred: np.ndarray) -> Path:
    """Write a split's true and predicted values (PatchSet rows ``indices``) atomically."""
    path = values_file(run_dir, split)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, indices=np.asarray(indices, dtype=np.int64),
                            true=true.astype(np.float32), pred=pred.astype(np.float32))
    return path


def load_values(run_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(indices, true, predicted) of a split saved by :func:`save_values`, or None."""
    path = values_file(run_dir, split)
    if not path.is_file():
        return None
    with np.load(path) as f:
        return f["indices"], f["true"], f["pred"]


def evaluate_dense_values(
    run_dir: Path, patches: Any, task: Any, data: Any, tta: bool, guard: GuardConfig,
    history: Sequence[Mapping[str, Any]], frozen: float | None = None,
    stop_reason: str | None = None,
) -> tuple[dict[str, Any], GuardVerdict]:
    """Metrics of every evaluated split (val, test) and the collapse verdict of a dense
    regression run (the guard of patch regression, on pixels); saves :func:`values_file`."""
    results: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        indices = patches.split_indices(split)
        if not len(indices):
            continue
        true, pred = predict_dense_values(task, data.loader(split), tta=tta)
        results[split] = split_value_metrics(true, pred)
        save_values(run_dir, split, indices, true, pred)
    return results, run_guards(results, history, guard, frozen=frozen, stop_reason=stop_reason)
