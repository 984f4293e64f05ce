"""Permutation importance of a finished cell run on its validation fold.

The importance computation itself lives in :mod:`geofuse.evaluation.importance`; this module
builds its ``predict_fn`` (raw patches -> class indices) from a run directory's best checkpoint
and normalisation statistics. When that module is not available, importance is skipped with a
warning instead of failing the cell.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geofuse.config import load_config
from geofuse.data.datamodule import normalized_tabular
from geofuse.data.normalize import BandStats, normalize
from geofuse.data.patchset import PatchSet
from geofuse.data.transforms import standardize_patches
from geofuse.evaluation.evaluate import load_tabular_stats
from geofuse.rundir import RunDir

BATCH = 256


def _importance_fn() -> Callable[..., dict[str, Any]] | None:
    try:
        from geofuse.evaluation.importance import permutation_importance
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("geofuse.evaluation"):
            return None
        raise
    return permutation_importance


def make_predict_fn(
    run_dir: Path, tabular: np.ndarray | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """``predict_fn(x)``: raw float32 (N, C, P, P) patches -> predicted class indices (N,)
    (of a multi-label run: class probabilities (N, K); of a regression run: values (N,), or
    (N, P, P) of a dense one).

    ``tabular`` (N, F), already normalised, is passed with the patches in row order.
    """
    from geofuse.evaluation.evaluate import load_task

    run = RunDir(run_dir)
    task, _ = load_task(run.best_ckpt)
    stats = BandStats.load(run.normalization)
    per_patch = load_config(run.config).train.normalization == "per_patch"

    @torch.inference_mode()
    def predict_fn(x: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(x), BATCH):
            xb = torch.from_numpy(normalize(x[i:i + BATCH], stats))
            xb = standardize_patches(xb) if per_patch else xb
            tb = None if tabular is None else torch.from_numpy(tabular[i:i + BATCH])
            logits = task(xb, tb)
            if task.dense:  # a value per pixel (B, H, W), in the target's unit
                out.append(task.scaler.decode(logits[:, 0]).numpy())
            elif task.regression:  # values in the target's unit
                out.append(task.scaler.decode(logits.reshape(len(logits), -1)[:, 0]).numpy())
            else:
                out.append(logits.sigmoid().numpy() if task.multilabel
                           else logits.argmax(dim=1).numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    return predict_fn


def cell_importance(run_dir: Path, n_repeats: int, seed: int) -> dict[str, Any] | None:
    """Per-modality and per-band permutation importance on the run's val split, or None.

    None (with a warning) when :mod:`geofuse.evaluation.importance` is missing, the run has
    no network checkpoint (scikit-learn baselines) or is a segmentation run (masks).
    """
    permutation_importance = _importance_fn()
    if permutation_importance is None:
        warnings.warn("geofuse.evaluation.importance is not available; permutation importance "
                      "skipped (install/update geofuse)", stacklevel=2)
        return None
    run = RunDir(run_dir)
    if not run.best_ckpt.is_file():
        warnings.warn(f"{run.name}: no network checkpoint (baseline model); permutation "
                      "importance skipped", stacklevel=2)
        return None
    info = run.read_json(run.run_json)
    if info.get("task") == "segmentation":
        warnings.warn(f"{run.name}: permutation importance is not computed for "
                      f"{info['task']} runs; skipped", stacklevel=2)
        return None
    patches = PatchSet.load(info["patches_path"]).select_bands(info["bands"])
    val = patches.split_indices("val")
    tab = normalized_tabular(patches, load_tabular_stats(run, patches))  # the run's own stats
    predict_fn = make_predict_fn(run.path, None if tab is None else tab[val])
    regression = info.get("task") == "regression"
    truth = patches.values[val] if regression else patches.targets(val)
    result = permutation_importance(
        predict_fn, patches.x[val], truth, list(patches.band_names),
        {m: list(b) for m, b in patches.modalities.items()}, n_repeats, seed,
        metric="r2" if regression else "accuracy",
    )
    return dict(result)
