"""scikit-learn baselines (random forest, logistic regression) on per-patch features.

Segmentation PatchSets (per-pixel masks) are classified pixel by pixel instead, by
:mod:`geofuse.models.pixel_forest`; the two functions below dispatch there.

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
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from geofuse.config import BaselineConfig, StudyConfig, load_config
from geofuse.data.normalize import BandStats
from geofuse.data.patchset import PatchSet
from geofuse.errors import ConfigError
from geofuse.evaluation.metrics import classification_metrics
from geofuse.evaluation.multilabel_metrics import multilabel_metrics
from geofuse.evaluation.predictions import save_predictions
from geofuse.evaluation.regression_metrics import regression_metrics
from geofuse.io_utils import atomic_path, atomic_write_json
from geofuse.rundir import RunDir, read_history, write_history
from geofuse.training._regression import TargetScaler
from geofuse.training.guards import GuardVerdict, print_verdict, run_guards

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


def build_estimator(name: str, cfg: BaselineConfig, seed: int, multilabel: bool = False,
                    regression: bool = False) -> ClassifierMixin | Pipeline:
    """The unfitted scikit-learn classifier ``name`` (features standardised for logistic).

    For multi-label targets the forest is fitted as one multi-output forest, the logistic
    regression one-vs-rest (a class absent from the train split is predicted constant). For
    continuous targets (``regression``) the forest is a regression forest.
    """
    if regression:
        if name != "random_forest":
            raise ConfigError(f"train.model.name = {name!r} is a classifier, but the patches "
                              "carry continuous targets (regression); use random_forest")
        return RandomForestRegressor(n_estimators=cfg.n_estimators, max_depth=cfg.max_depth,
                                     random_state=seed, n_jobs=torch.get_num_threads())
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=cfg.n_estimators, max_depth=cfg.max_depth,
                                      random_state=seed, n_jobs=torch.get_num_threads())
    logistic = LogisticRegression(C=cfg.c, max_iter=cfg.max_iter, random_state=seed)
    return make_pipeline(StandardScaler(),
                         OneVsRestClassifier(logistic) if multilabel else logistic)


def label_probabilities(model: Any, x: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, K) probability of each class of a multi-label baseline."""
    proba = model.predict_proba(x)
    if not isinstance(proba, list):  # one-vs-rest: already (N, K)
        return np.asarray(proba, dtype=np.float64)
    out = np.zeros((len(x), num_classes))
    for k, (p, classes) in enumerate(zip(proba, _estimator(model).classes_, strict=True)):
        if 1 in classes.tolist():  # a class never seen in training keeps probability 0
            out[:, k] = p[:, classes.tolist().index(1)]
    return out


def _estimator(model: Any) -> Any:
    return model[-1] if isinstance(model, Pipeline) else model


def _split(patches: PatchSet, split: str, kind: str, means: np.ndarray) -> tuple[np.ndarray, ...]:
    idx = patches.split_indices(split)
    targets = patches.values[idx] if patches.values is not None else patches.targets(idx)
    return patch_features(patches.x[idx], kind, means), targets


def _scaler(cfg: StudyConfig, patches: PatchSet) -> TargetScaler:
    """The target scaling of a regression forest: that of the networks (train split)."""
    assert patches.values is not None
    return TargetScaler.fit(patches.values[patches.split_indices("train")],
                            cfg.train.target_transform)


def _values(model: Any, scaler: TargetScaler, x: np.ndarray) -> np.ndarray:
    """A regression forest's predictions in the target's unit."""
    return scaler.decode_numpy(model.predict(x))


def _scores(model: Any, patches: PatchSet, x: np.ndarray, y: np.ndarray,
            scaler: TargetScaler | None = None) -> dict[str, Any]:
    """Metrics of one split (single- or multi-label, or regression with ``scaler``)."""
    if scaler is not None:
        return regression_metrics(y, _values(model, scaler, x))
    names = list(patches.class_names)
    if patches.multilabel:
        return multilabel_metrics(y, label_probabilities(model, x, len(names)), names)
    return classification_metrics(y, model.predict(x), names)


def _loss(model: Any, patches: PatchSet, x: np.ndarray, y: np.ndarray) -> float:
    """Log-loss (multi-label: the mean binary cross-entropy over classes)."""
    if patches.multilabel:
        p = np.clip(label_probabilities(model, x, patches.num_classes), 1e-15, 1 - 1e-15)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return float(log_loss(y, model.predict_proba(x), labels=list(range(patches.num_classes))))


def _history_row(model: Any, patches: PatchSet, kind: str, means: np.ndarray,
                 scaler: TargetScaler | None = None) -> dict[str, Any]:
    """Epoch-0 row of history.csv: log-loss and accuracy on train, and on val with macro F1
    (regression: the standardised target's MSE, RMSE and R2)."""
    row: dict[str, Any] = {"epoch": 0, "lr": None}
    for split in ("train", "val"):
        x, y = _split(patches, split, kind, means)
        if scaler is not None:
            z_true = scaler.encode(torch.from_numpy(np.asarray(y, np.float32))).numpy()
            row[f"{split}_loss"] = float(((model.predict(x) - z_true) ** 2).mean())
            scores = _scores(model, patches, x, y, scaler)
            row[f"{split}_rmse"], row[f"{split}_r2"] = scores["rmse"], scores["r2"]
            continue
        row[f"{split}_loss"] = _loss(model, patches, x, y)
        scores = _scores(model, patches, x, y)
        row[f"{split}_accuracy"] = scores["accuracy"]
        if split == "val":
            row["val_f1_macro"] = scores["f1_macro"]
    return row


def fit_baseline(
    cfg: StudyConfig, run: RunDir, patches: PatchSet, stats: BandStats, info: dict[str, Any]
) -> Path:
    """Fit ``cfg.train.model.name`` on the train split; write the model, history and run.json.

    A segmentation PatchSet (masks) is fitted per pixel (:mod:`geofuse.models.pixel_forest`).

    Args:
        cfg: the study config.
        run: the run directory (config.yaml, normalization.json and run.json already written).
        patches: PatchSet restricted to the run's bands, splits checked.
        stats: training-split band statistics (their means fill NaN).
        info: the run.json record to complete.

    Returns:
        Path of the saved model.
    """
    from geofuse.models import pixel_forest

    if patches.segmentation:  # one sample per pixel: geofuse.models.pixel_forest
        return pixel_forest.fit_pixel_baseline(cfg, run, patches, stats, info)
    if patches.dense_values:  # a value per pixel: geofuse.models.pixel_value_forest
        from geofuse.models.pixel_value_forest import fit_pixel_value_baseline

        return fit_pixel_value_baseline(cfg, run, patches, stats, info)
    name, base = cfg.train.model.name, cfg.train.baseline
    means = np.asarray(stats.mean)
    started = time.perf_counter()
    x, y = _split(patches, "train", base.features, means)
    scaler = _scaler(cfg, patches) if patches.regression else None
    if scaler is not None:  # the networks' standardised target
        y = scaler.encode(torch.from_numpy(np.asarray(y, np.float32))).numpy()
    model = build_estimator(name, base, cfg.seed, patches.multilabel,
                            patches.regression).fit(x, y)
    seconds = time.perf_counter() - started
    path = run.path / MODEL_FILE
    with atomic_path(path, suffix=".joblib") as tmp:
        joblib.dump(model, tmp)
    write_history(run.history, [_history_row(model, patches, base.features, means, scaler)])
    if scaler is not None:
        info["target_scaler"] = scaler.to_dict()
    info["model"] = {"name": name, "kwargs": base.model_dump(
        mode="json", exclude=set(pixel_forest.PIXEL_OPTIONS))}
    info["sessions"][-1].update(train_s=round(seconds, 3), epochs_at_end=1)
    info.update(status="finished", epochs_trained=1, max_epochs=1, stopped_early=False,
                train_s_total=round(seconds, 3), model_file=MODEL_FILE,
                num_features=int(x.shape[1]), frozen_fraction=0.0)
    atomic_write_json(run.run_json, info)
    return path


def write_baseline_metrics(run: RunDir, results: dict[str, Any], verdict: GuardVerdict,
                           verbose: bool = True) -> dict[str, Any]:
    """Write a baseline run's ``metrics.json`` (its split results and guard) atomically and
    print the guard's verdict (always when it collapsed); returns the metrics."""
    metrics = {"run_name": run.name, "checkpoint": MODEL_FILE, "best_epoch": 0, **results,
               "guard": verdict.to_dict()}
    atomic_write_json(run.metrics, metrics)
    if verbose or verdict.collapsed:
        print_verdict(verdict)
    return metrics


def evaluate_baseline(run_dir: str | Path, verbose: bool = True) -> dict[str, Any]:
    """Metrics of a baseline run on val and test; writes metrics.json like a network run, and
    with a test split ``test_predictions.npz`` (:mod:`geofuse.evaluation.predictions`); a
    segmentation run is evaluated per pixel (:mod:`geofuse.models.pixel_forest`).

    Raises:
        RunDirError: run.json, config.yaml, normalization.json or the model file is missing.
    """
    run = RunDir(Path(run_dir))
    model_path = run.path / MODEL_FILE
    run.require(run.run_json, run.config, run.normalization, model_path)
    info = run.read_json(run.run_json)
    if info.get("task") == "segmentation":  # masks: geofuse.models.pixel_forest
        from geofuse.models import pixel_forest

        return pixel_forest.evaluate_pixel_baseline(run, info, verbose=verbose)
    if info.get("dense"):  # a value per pixel: geofuse.models.pixel_value_forest
        from geofuse.models.pixel_value_forest import evaluate_pixel_value_baseline

        return evaluate_pixel_value_baseline(run, info, verbose=verbose)
    cfg = load_config(run.config)
    patches = PatchSet.load(info["patches_path"]).select_bands(info["bands"])
    means = np.asarray(BandStats.load(run.normalization).mean)
    model = joblib.load(model_path)
    scaler = TargetScaler(**info["target_scaler"]) if "target_scaler" in info else None
    results: dict[str, Any] = {}
    final: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in EVAL_SPLITS:
        if len(patches.split_indices(split)):
            x, y = _split(patches, split, cfg.train.baseline.features, means)
            results[split] = _scores(model, patches, x, y, scaler)
            if split in ("val", "test"):  # for fold ensembles and bootstraps over groups
                k = patches.num_classes
                if scaler is not None:
                    probs = _values(model, scaler, x)[:, None]
                elif patches.multilabel:
                    probs = label_probabilities(model, x, k)
                else:  # columns of the classes seen in training; the others keep 0
                    probs = np.zeros((len(x), k))
                    probs[:, _estimator(model).classes_.astype(int)] = model.predict_proba(x)
                save_predictions(run.path, patches.split_indices(split), probs, y, split)
                final[split] = (y, probs)
    verdict = run_guards(results, read_history(run.history), cfg.guards, frozen=0.0)
    if scaler is None:  # how honest the forest's vote fractions are, as for the networks
        from geofuse.evaluation.calibrate import calibration_record

        results["calibration"] = calibration_record("none", None, {}, final,
                                                    patches.multilabel)
    return write_baseline_metrics(run, results, verdict, verbose)
