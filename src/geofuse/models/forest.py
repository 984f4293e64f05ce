"""scikit-learn baselines (random forest, logistic regression) on per-patch features.

``train.model.name: random_forest | logistic_regression`` routes :func:`geofuse.training.train.
train_model` here. The baseline is fitted on the train split and leaves the same run directory
as a network (config.yaml, run.json, normalization.json, a one-row history.csv, metrics.json
with the guard verdict, plots, report.md), with ``model.joblib`` in place of checkpoints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from geofuse.config import BaselineConfig, StudyConfig, load_config
from geofuse.data.normalize import BandStats
from geofuse.data.patchset import PatchSet
from geofuse.evaluation.metrics import classification_metrics
from geofuse.io_utils import atomic_path, atomic_write_json
from geofuse.rundir import RunDir, read_history, write_history
from geofuse.training.guards import print_verdict, run_guards

BASELINES = ("random_forest", "logistic_regression")
MODEL_FILE = "model.joblib"
EVAL_SPLITS = ("val", "test")


def is_baseline(name: str) -> bool:
    """Whether ``train.model.name`` names a scikit-learn baseline."""
    return name in BASELINES


def _fill_nan(x: np.ndarray, band_means: np.ndarray) -> np.ndarray:
    """Replace NaN by the band's (training) mean; x is (N, C, P, P)."""
    fill = np.broadcast_to(np.asarray(band_means, np.float32)[None, :, None, None], x.shape)
    return np.where(np.isnan(x), fill, x)


def patch_features(x: np.ndarray, kind: str, band_means: np.ndarray) -> np.ndarray:
    """Feature matrix of patches ``x`` (N, C, P, P).

    Args:
        x: patches in physical units; NaN marks nodata.
        kind: ``stats``: NaN-aware mean, std, min, max per band -> (N, 4C), a band with no
            valid pixel in a patch taking the training mean (std 0); ``pixels``: flattened
            patch with NaN -> band mean -> (N, C*P*P).
        band_means: per-band training means (C,), used for missing values.
    """
    if kind == "pixels":
        return _fill_nan(x, band_means).reshape(len(x), -1)
    valid = ~np.isnan(x).all(axis=(2, 3))  # (N, C)
    safe = np.where(valid[:, :, None, None], x, _fill_nan(x, band_means))
    feats = [np.nanmean(safe, axis=(2, 3)), np.nanstd(safe, axis=(2, 3)),
             np.nanmin(safe, axis=(2, 3)), np.nanmax(safe, axis=(2, 3))]
    return np.concatenate(feats, axis=1).astype(np.float32)


def build_estimator(name: str, cfg: BaselineConfig, seed: int) -> ClassifierMixin | Pipeline:
    """The unfitted scikit-learn classifier ``name`` (features standardised for logistic)."""
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=cfg.n_estimators, max_depth=cfg.max_depth,
                                      random_state=seed, n_jobs=torch.get_num_threads())
    return make_pipeline(StandardScaler(),
                         LogisticRegression(C=cfg.c, max_iter=cfg.max_iter, random_state=seed))


def _split(patches: PatchSet, split: str, kind: str, means: np.ndarray) -> tuple[np.ndarray, ...]:
    idx = patches.split_indices(split)
    return patch_features(patches.x[idx], kind, means), patches.y[idx]


def _history_row(model: Any, patches: PatchSet, kind: str, means: np.ndarray) -> dict[str, Any]:
    """Epoch-0 row of history.csv: log-loss and accuracy on train, and on val with macro F1."""
    labels = list(range(patches.num_classes))
    row: dict[str, Any] = {"epoch": 0, "lr": None}
    for split in ("train", "val"):
        x, y = _split(patches, split, kind, means)
        row[f"{split}_loss"] = float(log_loss(y, model.predict_proba(x), labels=labels))
        pred = model.predict(x)
        row[f"{split}_accuracy"] = float((pred == y).mean())
        if split == "val":
            names = list(patches.class_names)
            row["val_f1_macro"] = classification_metrics(y, pred, names)["f1_macro"]
    return row


def fit_baseline(
    cfg: StudyConfig, run: RunDir, patches: PatchSet, stats: BandStats, info: dict[str, Any]
) -> Path:
    """Fit ``cfg.train.model.name`` on the train split; write the model, history and run.json.

    Args:
        cfg: the study config.
        run: the run directory (config.yaml, normalization.json and run.json already written).
        patches: PatchSet restricted to the run's bands, splits checked.
        stats: training-split band statistics (their means fill NaN).
        info: the run.json record to complete.

    Returns:
        Path of the saved model.
    """
    name, base = cfg.train.model.name, cfg.train.baseline
    means = np.asarray(stats.mean)
    started = time.perf_counter()
    x, y = _split(patches, "train", base.features, means)
    model = build_estimator(name, base, cfg.seed).fit(x, y)
    seconds = time.perf_counter() - started
    path = run.path / MODEL_FILE
    with atomic_path(path, suffix=".joblib") as tmp:
        joblib.dump(model, tmp)
    write_history(run.history, [_history_row(model, patches, base.features, means)])
    info["model"] = {"name": name, "kwargs": base.model_dump(mode="json")}
    info["sessions"][-1].update(train_s=round(seconds, 3), epochs_at_end=1)
    info.update(status="finished", epochs_trained=1, max_epochs=1, stopped_early=False,
                train_s_total=round(seconds, 3), model_file=MODEL_FILE,
                num_features=int(x.shape[1]), frozen_fraction=0.0)
    atomic_write_json(run.run_json, info)
    return path


def evaluate_baseline(run_dir: str | Path, verbose: bool = True) -> dict[str, Any]:
    """Metrics of a baseline run on val and test; writes metrics.json like a network run.

    Raises:
        RunDirError: run.json, config.yaml, normalization.json or the model file is missing.
    """
    run = RunDir(Path(run_dir))
    model_path = run.path / MODEL_FILE
    run.require(run.run_json, run.config, run.normalization, model_path)
    info = run.read_json(run.run_json)
    cfg = load_config(run.config)
    patches = PatchSet.load(info["patches_path"]).select_bands(info["bands"])
    means = np.asarray(BandStats.load(run.normalization).mean)
    model = joblib.load(model_path)
    results: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        if len(patches.split_indices(split)):
            x, y = _split(patches, split, cfg.train.baseline.features, means)
            results[split] = classification_metrics(y, model.predict(x),
                                                    list(patches.class_names))
    verdict = run_guards(results, read_history(run.history), cfg.guards, frozen=0.0)
    metrics = {"run_name": run.name, "checkpoint": MODEL_FILE, "best_epoch": 0, **results,
               "guard": verdict.to_dict()}
    atomic_write_json(run.metrics, metrics)
    if verbose or verdict.collapsed:
        print_verdict(verdict)
    return metrics
