"""Per-pixel regression forest on dense-regression sets (a value per pixel).

:mod:`geofuse.models.forest` routes here when the PatchSet's ``values`` are (N, P, P). As
the per-pixel classifiers of :mod:`geofuse.models.pixel_forest`, every labelled pixel is one
sample with the features of :func:`~geofuse.models.pixel_forest.pixel_features`; at most
``train.baseline.max_pixels`` labelled pixels of the train split are drawn uniformly with
``seed``. The forest learns the networks' standardised target
(:class:`~geofuse.training._regression.TargetScaler`) and its predictions are decoded into the
target's unit. The run directory gets what a dense network leaves: ``metrics.json``
(:func:`~geofuse.evaluation.dense_evaluate.split_value_metrics` and the regression guard),
``{split}_values.npz``, a one-row ``history.csv`` and ``model.joblib``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import torch

from geofuse.config import StudyConfig, load_config
from geofuse.data.normalize import BandStats
from geofuse.data.patchset import MASK_IGNORE, PatchSet
from geofuse.evaluation.dense_evaluate import save_values, split_value_metrics
from geofuse.evaluation.regression_metrics import regression_metrics
from geofuse.io_utils import atomic_path, atomic_write_json
from geofuse.models.forest import MODEL_FILE, build_estimator, write_baseline_metrics
from geofuse.models.pixel_forest import (
    PREDICT_PIXELS,
    pixel_features,
    sample_pixels,
    tile_pixels,
)
from geofuse.rundir import RunDir, read_history, write_history
from geofuse.training._regression import TargetScaler
from geofuse.training.guards import run_guards

EVAL_SPLITS = ("val", "test")


def _values(patches: PatchSet) -> np.ndarray:
    """The PatchSet's per-pixel values; ValueError for any other set."""
    if not patches.dense_values:
        raise ValueError("per-pixel regression baselines need a PatchSet with a value per "
                         "pixel (labels.value_raster)")
    assert patches.values is not None
    return patches.values


def predict_tile_values(model: Any, scaler: TargetScaler, x: np.ndarray, band_means: np.ndarray,
                        time_steps: int, kind: str) -> np.ndarray:
    """Values (N, P, P) float32 in the target's unit of every pixel of the tiles ``x``."""
    n, _, size, _ = x.shape
    out = np.zeros((n, size, size), dtype=np.float32)
    step = max(1, PREDICT_PIXELS // (size * size))
    for start in range(0, n, step):
        block = x[start:start + step]
        feats = pixel_features(tile_pixels(block), band_means, time_steps, kind)
        out[start:start + len(block)] = scaler.decode_numpy(model.predict(feats)).reshape(
            len(block), size, size)
    return out


def _history_row(model: Any, scaler: TargetScaler, patches: PatchSet,
                 train: tuple[np.ndarray, np.ndarray], means: np.ndarray, kind: str
                 ) -> dict[str, Any]:
    """Epoch-0 row of history.csv: MSE of the standardised target, RMSE and R2 on the fitted
    pixels (train, in-sample) and on every labelled val pixel."""
    feats, z_true = train
    z = model.predict(feats)
    true = scaler.decode_numpy(z_true)
    row: dict[str, Any] = {"epoch": 0, "lr": None,
                           "train_loss": float(((z - z_true) ** 2).mean())}
    m = regression_metrics(true, scaler.decode_numpy(z))
    row.update(train_rmse=m["rmse"], train_r2=m["r2"])
    val = patches.split_indices("val")
    if len(val):
        truth = _values(patches)[val]
        pred = predict_tile_values(model, scaler, patches.x[val], means, patches.time_steps,
                                   kind)
        labelled = np.isfinite(truth)
        z_val = scaler.encode(torch.from_numpy(truth[labelled])).numpy()
        z_pred = scaler.encode(torch.from_numpy(pred[labelled])).numpy()
        m = regression_metrics(truth[labelled], pred[labelled])
        row.update(val_loss=float(((z_pred - z_val) ** 2).mean()), val_rmse=m["rmse"],
                   val_r2=m["r2"])
    return row


def fit_pixel_value_baseline(
    cfg: StudyConfig, run: RunDir, patches: PatchSet, stats: BandStats, info: dict[str, Any]
) -> Path:
    """Fit a regression forest on labelled pixels of the train split (see the module
    docstring); write the model, a one-row history and run.json. Returns the model's path."""
    values = _values(patches)
    name, base = cfg.train.model.name, cfg.train.baseline
    means = np.asarray(stats.mean)
    started = time.perf_counter()
    train = patches.split_indices("train")
    scaler = TargetScaler.fit(values[train], cfg.train.target_transform)
    unlabelled = np.where(np.isfinite(values[train]), 0, MASK_IGNORE).astype(np.uint8)
    tile, row, col = sample_pixels(unlabelled, base.max_pixels, cfg.seed)
    feats = pixel_features(patches.x[train[tile], :, row, col], means, patches.time_steps,
                           base.features)
    z = scaler.encode(torch.from_numpy(values[train[tile], row, col])).numpy()
    model = build_estimator(name, base, cfg.seed, regression=True).fit(feats, z)
    seconds = time.perf_counter() - started
    path = run.path / MODEL_FILE
    with atomic_path(path, suffix=".joblib") as tmp:
        joblib.dump(model, tmp)
    write_history(run.history, [_history_row(model, scaler, patches, (feats, z), means,
                                             base.features)])
    info["model"] = {"name": name, "kwargs": base.model_dump(mode="json")}
    info["target_scaler"] = scaler.to_dict()
    info["sessions"][-1].update(train_s=round(seconds, 3), epochs_at_end=1)
    info.update(status="finished", epochs_trained=1, max_epochs=1, stopped_early=False,
                train_s_total=round(seconds, 3), model_file=MODEL_FILE,
                num_features=int(feats.shape[1]), train_pixels=len(z), frozen_fraction=0.0)
    atomic_write_json(run.run_json, info)
    return path


def evaluate_pixel_value_baseline(run: RunDir, info: dict[str, Any], verbose: bool = True
                                  ) -> dict[str, Any]:
    """Values of a per-pixel regression forest on val and test; writes ``metrics.json`` (the
    layout of a dense network run, with the regression guard) and ``{split}_values.npz``."""
    cfg = load_config(run.config)
    patches = PatchSet.load(info["patches_path"]).select_bands(info["bands"])
    values = _values(patches)
    means = np.asarray(BandStats.load(run.normalization).mean)
    model = joblib.load(run.path / MODEL_FILE)
    scaler = TargetScaler(**info["target_scaler"])
    results: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        indices = patches.split_indices(split)
        if not len(indices):
            continue
        pred = predict_tile_values(model, scaler, patches.x[indices], means,
                                   patches.time_steps, cfg.train.baseline.features)
        results[split] = split_value_metrics(values[indices], pred)
        save_values(run.path, split, indices, values[indices], pred)
    verdict = run_guards(results, read_history(run.history), cfg.guards, frozen=0.0)
    return write_baseline_metrics(run, results, verdict, verbose)
