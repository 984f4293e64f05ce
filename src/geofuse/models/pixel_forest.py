"""Per-pixel scikit-learn baselines (random forest, logistic regression) on segmentation sets.

:mod:`geofuse.models.forest` routes here when the PatchSet carries masks. Every pixel is one
sample: its features are the pixel's values in all ``T * C`` channels (the whole time series,
time-major; NaN -> the training band mean, as the patch baselines do), and with
``train.baseline.features: stats`` (the default) also five summaries per band over time: the
NaN-aware mean, standard deviation, minimum and maximum over the dates, and last minus first
date (``5 * C`` more columns; none for a single date). ``features: pixels`` keeps the series
alone.

The classifier is fitted on at most ``train.baseline.max_pixels`` labelled pixels of the train
split (mask value :data:`~geofuse.data.patchset.MASK_IGNORE` never counts), drawn uniformly
without replacement with ``seed``: the sample keeps the split's class shares, so predicted
probabilities and log-losses mean what they say. Every pixel of the val and test tiles is then
predicted, a batch of tiles at a time, and the run directory gets exactly what a segmentation
network leaves: ``metrics.json`` (``val``, ``test``, ``guard``;
:func:`~geofuse.evaluation.seg_evaluate.split_mask_metrics`), ``{split}_masks.npz``, a one-row
``history.csv`` (log-loss, pixel accuracy, macro F1 and IoU; the train figures are in-sample, on
the fitted pixels) and ``model.joblib``. Permutation importance is not computed for these runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.pipeline import Pipeline

from geofuse.config import StudyConfig, load_config
from geofuse.data.normalize import BandStats
from geofuse.data.patchset import MASK_IGNORE, PatchSet
from geofuse.evaluation.seg_evaluate import save_masks, segmentation_guards, split_mask_metrics
from geofuse.evaluation.seg_metrics import segmentation_confusion, segmentation_metrics
from geofuse.io_utils import atomic_path, atomic_write_json
from geofuse.models.forest import MODEL_FILE, build_estimator, write_baseline_metrics
from geofuse.rundir import RunDir, read_history, write_history

EVAL_SPLITS = ("val", "test")
PREDICT_PIXELS = 2**18  #: pixels predicted per batch (whole tiles, at least one)
#: Options of ``train.baseline`` that only per-pixel baselines read (left out of the run.json
#: record of patch baselines).
PIXEL_OPTIONS = frozenset({"max_pixels"})
TEMPORAL_SUMMARIES = ("mean", "std", "min", "max", "last_minus_first")


def _masks(patches: PatchSet) -> np.ndarray:
    """The PatchSet's masks; ValueError for a set without (a patch-label set)."""
    if patches.masks is None:
        raise ValueError("per-pixel baselines need a segmentation PatchSet (masks); "
                         "patch-label sets go through geofuse.models.forest")
    return patches.masks


def pixel_features(values: np.ndarray, band_means: np.ndarray, time_steps: int, kind: str
                   ) -> np.ndarray:
    """Feature matrix of pixel time series.

    Args:
        values: (M, T * C) values of M pixels, time-major (channel ``t * C + c``); NaN marks
            nodata (clouds).
        band_means: per-channel training means (T * C,), used for missing values.
        time_steps: T.
        kind: ``pixels``: the filled series -> (M, T * C); ``stats``: the filled series plus,
            per band, the mean, std, min and max over the dates with a value (a band without
            any uses the filled series) and the filled last minus first date -> (M, T * C +
            5 * C); a single date (T = 1) gets no summaries.

    Returns:
        float32 (M, F) features.
    """
    raw = np.asarray(values, dtype=np.float32)
    means = np.asarray(band_means, dtype=np.float32)[None, :]
    filled = np.where(np.isnan(raw), means, raw)
    if kind == "pixels" or time_steps == 1:
        return filled
    m = len(raw)
    series = raw.reshape(m, time_steps, -1)
    fill = filled.reshape(m, time_steps, -1)
    empty = np.isnan(series).all(axis=1, keepdims=True)  # (M, 1, C): no date has a value
    series = np.where(empty, fill, series)
    summaries = [np.nanmean(series, axis=1), np.nanstd(series, axis=1),
                 np.nanmin(series, axis=1), np.nanmax(series, axis=1), fill[:, -1] - fill[:, 0]]
    return np.concatenate([filled, *summaries], axis=1).astype(np.float32)


def tile_pixels(x: np.ndarray) -> np.ndarray:
    """(N, C, P, P) tiles -> (N * P * P, C) pixel rows, tile by tile in row-major order."""
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(-1, x.shape[1])


def sample_pixels(masks: np.ndarray, max_pixels: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled pixels to train on: all of them, or ``max_pixels`` drawn uniformly.

    Args:
        masks: (N, P, P) class masks, :data:`MASK_IGNORE` where unlabelled.
        max_pixels: the most pixels returned.
        seed: seed of the draw.

    Returns:
        Tile index, row and column (each (M,), sorted by position) of the chosen pixels.
    """
    labelled = np.flatnonzero(np.asarray(masks).reshape(-1) != MASK_IGNORE)
    if len(labelled) > max_pixels:
        rng = np.random.default_rng(seed)
        labelled = np.sort(rng.choice(labelled, size=max_pixels, replace=False))
    size = masks.shape[-1]
    tile, rest = np.divmod(labelled, size * size)
    row, col = np.divmod(rest, size)
    return tile, row, col


def class_probabilities(model: Any, features: np.ndarray, num_classes: int) -> np.ndarray:
    """(M, K) probabilities; classes absent from the fitted pixels keep probability 0."""
    estimator = model[-1] if isinstance(model, Pipeline) else model
    out = np.zeros((len(features), num_classes))
    out[:, estimator.classes_.astype(int)] = model.predict_proba(features)
    return out


def predict_tiles(model: Any, x: np.ndarray, band_means: np.ndarray, time_steps: int,
                  kind: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted masks (N, P, P) uint8 and class probabilities (N, K, P, P) float16 of every
    pixel of the tiles ``x`` (N, T * C, P, P), :data:`PREDICT_PIXELS` pixels at a time."""
    n, _, size, _ = x.shape
    probs = np.zeros((n, num_classes, size, size), dtype=np.float16)
    step = max(1, PREDICT_PIXELS // (size * size))
    for start in range(0, n, step):
        block = x[start:start + step]
        feats = pixel_features(tile_pixels(block), band_means, time_steps, kind)
        p = class_probabilities(model, feats, num_classes)
        probs[start:start + len(block)] = np.moveaxis(
            p.reshape(len(block), size, size, num_classes), -1, 1)
    return probs.argmax(axis=1).astype(np.uint8), probs


def _log_loss(true: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean negative log-probability of the true class over labelled pixels (None: none).

    ``probs`` is (M, K) for M pixels ``true`` (M,), or (N, K, P, P) for masks (N, P, P).
    """
    if probs.ndim == 4:
        probs = np.moveaxis(probs, 1, -1).reshape(-1, probs.shape[1])
    true = np.asarray(true).reshape(-1)
    keep = true != MASK_IGNORE
    if not keep.any():
        return None
    p = probs[keep].astype(np.float64)[np.arange(int(keep.sum())), true[keep].astype(np.int64)]
    return float(-np.log(np.clip(p, 1e-15, 1.0)).mean())


def _row_metrics(split: str, true: np.ndarray, probs: np.ndarray, pred: np.ndarray,
                 names: list[str]) -> dict[str, Any]:
    """``{split}_loss``, ``_accuracy``, ``_f1_macro`` and ``_iou`` for history.csv."""
    m = segmentation_metrics(segmentation_confusion(true, pred, len(names)), names)
    return {f"{split}_loss": _log_loss(true, probs), f"{split}_accuracy": m["accuracy"],
            f"{split}_f1_macro": m["f1_macro"], f"{split}_iou": m["iou"]}


def _history_row(model: Any, patches: PatchSet, train: tuple[np.ndarray, np.ndarray],
                 means: np.ndarray, kind: str) -> dict[str, Any]:
    """Epoch-0 row of history.csv: the fitted pixels (train) and every val pixel."""
    names, k = list(patches.mask_names), len(patches.mask_names)
    feats, target = train
    probs = class_probabilities(model, feats, k)
    row: dict[str, Any] = {"epoch": 0, "lr": None}
    row.update(_row_metrics("train", target, probs, probs.argmax(axis=1), names))
    val = patches.split_indices("val")
    if len(val):
        pred, vprobs = predict_tiles(model, patches.x[val], means, patches.time_steps, kind, k)
        row.update(_row_metrics("val", _masks(patches)[val], vprobs, pred, names))
    return row


def fit_pixel_baseline(
    cfg: StudyConfig, run: RunDir, patches: PatchSet, stats: BandStats, info: dict[str, Any]
) -> Path:
    """Fit ``cfg.train.model.name`` on labelled pixels of the train split (see the module
    docstring); write the model, a one-row history and run.json.

    Args:
        cfg: the study config (``train.baseline``: features, max_pixels and the estimator's
            options; ``seed`` draws the pixels and seeds the estimator).
        run: the run directory (config.yaml, normalization.json and run.json already written).
        patches: segmentation PatchSet restricted to the run's bands, splits checked.
        stats: training-split band statistics (their means fill NaN).
        info: the run.json record to complete.

    Returns:
        Path of the saved model.
    """
    masks = _masks(patches)
    name, base = cfg.train.model.name, cfg.train.baseline
    means = np.asarray(stats.mean)
    started = time.perf_counter()
    train = patches.split_indices("train")
    tile, row, col = sample_pixels(masks[train], base.max_pixels, cfg.seed)
    feats = pixel_features(patches.x[train[tile], :, row, col], means, patches.time_steps,
                           base.features)
    target = masks[train[tile], row, col].astype(np.int64)
    model = build_estimator(name, base, cfg.seed).fit(feats, target)
    seconds = time.perf_counter() - started
    path = run.path / MODEL_FILE
    with atomic_path(path, suffix=".joblib") as tmp:
        joblib.dump(model, tmp)
    write_history(run.history, [_history_row(model, patches, (feats, target), means,
                                             base.features)])
    info["model"] = {"name": name, "kwargs": base.model_dump(mode="json")}
    info["sessions"][-1].update(train_s=round(seconds, 3), epochs_at_end=1)
    info.update(status="finished", epochs_trained=1, max_epochs=1, stopped_early=False,
                train_s_total=round(seconds, 3), model_file=MODEL_FILE,
                num_features=int(feats.shape[1]), train_pixels=len(target),
                frozen_fraction=0.0)
    atomic_write_json(run.run_json, info)
    return path


def evaluate_pixel_baseline(run: RunDir, info: dict[str, Any], verbose: bool = True
                            ) -> dict[str, Any]:
    """Masks of a per-pixel baseline run on val and test; writes ``metrics.json`` (the layout
    of a segmentation network run, with its collapse guard) and ``{split}_masks.npz``.

    Args:
        run: the run directory, its files checked by
            :func:`~geofuse.models.forest.evaluate_baseline`.
        info: its run.json record.
        verbose: print the collapse guard's verdict even when it passes.
    """
    model_path = run.path / MODEL_FILE
    cfg = load_config(run.config)
    patches = PatchSet.load(info["patches_path"]).select_bands(info["bands"])
    all_masks = _masks(patches)
    means = np.asarray(BandStats.load(run.normalization).mean)
    model = joblib.load(model_path)
    names = list(patches.mask_names)
    results: dict[str, Any] = {}
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in EVAL_SPLITS:
        indices = patches.split_indices(split)
        if not len(indices):
            continue
        pred, probs = predict_tiles(model, patches.x[indices], means, patches.time_steps,
                                    cfg.train.baseline.features, len(names))
        true = all_masks[indices]
        results[split] = split_mask_metrics(true, pred, names)
        masks[split] = (true, pred)
        save_masks(run.path, split, indices, pred, probs)
    verdict = segmentation_guards(results, masks, read_history(run.history), cfg.guards,
                                  len(names))
    return write_baseline_metrics(run, results, verdict, verbose)
