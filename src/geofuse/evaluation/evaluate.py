"""Evaluate the best checkpoint of a run directory on its validation and test splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from geofuse.config import load_config
from geofuse.data.datamodule import PatchDataModule
from geofuse.data.normalize import BandStats, TabularStats, compute_band_stats
from geofuse.data.patchset import PatchSet
from geofuse.errors import RunDirError
from geofuse.evaluation.calibrate import calibrate_task, calibration_record
from geofuse.evaluation.metrics import classification_metrics
from geofuse.evaluation.multilabel_metrics import multilabel_metrics
from geofuse.evaluation.predictions import save_predictions
from geofuse.evaluation.tta import probabilities, tta_probabilities
from geofuse.io_utils import atomic_write_json
from geofuse.models.forest import evaluate_baseline, is_baseline
from geofuse.rundir import RunDir, read_history
from geofuse.training.guards import GuardVerdict, print_verdict, run_guards
from geofuse.training.task import ClassificationTask

EVAL_SPLITS = ("val", "test")
EVAL_BATCH_SIZE = 256


def load_task(checkpoint: Path) -> tuple[ClassificationTask, int]:
    """Rebuild the task stored in a Lightning checkpoint; returns it (eval mode) and its epoch."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hparams = dict(ckpt["hyper_parameters"])
    # The checkpoint holds every weight: the pretrained file is not needed (it may have moved).
    model_kwargs = dict(hparams.get("model_kwargs") or {})
    model_kwargs.pop("pretrained_path", None)
    hparams["model_kwargs"] = model_kwargs
    task = ClassificationTask(**hparams)
    task.load_state_dict(ckpt["state_dict"])
    return task.eval(), int(ckpt["epoch"])


@torch.inference_mode()
def predict_probabilities(task: ClassificationTask, loader: DataLoader[Any], tta: bool = False
                          ) -> tuple[np.ndarray, np.ndarray]:
    """True targets (class indices, or label sets (N, K)) and class probabilities (N, K) over
    a loader: softmax, or per-class sigmoids of a multi-label task; ``tta`` averages them over
    the eight flips and rotations of every patch (:mod:`geofuse.evaluation.tta`)."""
    task.eval()
    y_true, probs = [], []
    for batch in loader:
        tab = batch["tab"].to(task.device) if "tab" in batch else None
        image = batch["image"].to(task.device)
        p = tta_probabilities(task, image, tab, task.multilabel) if tta else \
            probabilities(task(image, tab), task.multilabel)
        probs.append(p.float().cpu().numpy())
        y_true.append(np.asarray(batch["label"]))
    if not y_true:
        k = int(task.hparams["num_classes"])
        shape = (0, k) if task.multilabel else (0,)
        return np.zeros(shape, dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    return np.concatenate(y_true), np.concatenate(probs)


def predict(task: ClassificationTask, loader: DataLoader[Any], tta: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted class indices over a loader; of a multi-label task, the true label
    sets (N, K) and the class probabilities (N, K). ``tta`` averages the probabilities over
    the eight flips and rotations of every patch (:mod:`geofuse.evaluation.tta`)."""
    y_true, probs = predict_probabilities(task, loader, tta)
    if task.multilabel:
        return y_true, probs
    return y_true, probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)


def split_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str],
                  multilabel: bool) -> dict[str, Any]:
    """:func:`classification_metrics` of class indices, or :func:`multilabel_metrics` of
    label sets and probabilities."""
    if multilabel:
        return multilabel_metrics(y_true, y_pred, class_names)
    return classification_metrics(y_true, y_pred, class_names)


def _load_run_patches(run: RunDir, info: dict[str, Any]) -> PatchSet:
    patches = PatchSet.load(info["patches_path"]).select_bands(info["bands"])
    if list(patches.class_names) != list(info["class_names"]) or \
            list(patches.mask_names) != list(info.get("mask_names", [])):
        raise RunDirError(
            f"PatchSet {info['patches_path']!r} now has classes {patches.class_names}, the run "
            f"in {str(run.path)!r} was trained on {info['class_names']}; re-run 'geofuse train'"
        )
    return patches


def load_tabular_stats(run: RunDir, patches: PatchSet) -> TabularStats | None:
    """The tabular statistics saved with the run (``tabular_normalization.json``).

    ``None`` when the PatchSet has no tabular attributes, or for runs written before these
    statistics were saved; the data module then computes them from the train split, as those
    runs did.

    Raises:
        RunDirError: the PatchSet's tabular columns are not those the run was trained on.
    """
    if patches.tabular is None or not run.tabular_normalization.is_file():
        return None
    stats = TabularStats.load(run.tabular_normalization)
    if list(stats.columns) != list(patches.tabular_names):
        raise RunDirError(
            f"PatchSet has tabular columns {list(patches.tabular_names)}, the run in "
            f"{str(run.path)!r} was trained on {stats.columns}; evaluate it on a PatchSet with "
            "the same attribute table or re-run 'geofuse train'"
        )
    return stats


TEST_NORMALIZATION = "normalization_test.json"


def _test_area_stats(run: RunDir, patches: PatchSet, mode: str) -> dict[str, BandStats]:
    """``{"test": the test patches' own band statistics}`` for ``train.normalization:
    test_area`` (saved in the run as normalization_test.json); ``{}`` otherwise."""
    test = patches.split_indices("test")
    if mode != "test_area" or not len(test):
        return {}
    stats = compute_band_stats(patches.x[test], list(patches.band_names),
                               patches.time_steps)
    stats.save(run.path / TEST_NORMALIZATION)
    return {"test": stats}


def evaluate_run(run_dir: str | Path, verbose: bool = True) -> dict[str, Any]:
    """Compute metrics of the best checkpoint on val and test (when present).

    Writes ``metrics.json`` atomically, and with a test split ``test_predictions.npz``
    (:mod:`geofuse.evaluation.predictions`); prints the collapse-guard verdict (a red panel
    when the model collapsed, always; a one-line pass note when ``verbose``).

    Returns:
        ``{"run_name", "checkpoint", "best_epoch", "val": {...}, "test": {...}, "guard": {...}}``
        where each split holds :func:`~geofuse.evaluation.metrics.classification_metrics`.

    Raises:
        RunDirError: the folder is not a complete run directory.
        DataNotFoundError: the PatchSet recorded in run.json is gone.
    """
    run = RunDir(Path(run_dir))
    info = run.read_json(run.run_json)
    if is_baseline(info.get("model", {}).get("name", "")):
        return evaluate_baseline(run.path, verbose=verbose)
    run.require(run.run_json, run.config, run.normalization, run.best_ckpt)
    cfg = load_config(run.config)
    patches = _load_run_patches(run, info)
    task, epoch = load_task(run.best_ckpt)
    data = PatchDataModule(patches, batch_size=EVAL_BATCH_SIZE, augment=False,
                           stats=BandStats.load(run.normalization),
                           tabular_stats=load_tabular_stats(run, patches),
                           split_stats=_test_area_stats(run, patches, cfg.train.normalization),
                           per_patch=cfg.train.normalization == "per_patch")
    results: dict[str, Any] = {}
    if task.segmentation:
        from geofuse.evaluation.seg_evaluate import evaluate_masks

        results, verdict = evaluate_masks(
            run.path, patches, task, data, cfg.train.tta, cfg.guards, read_history(run.history),
            info.get("collapse_stop", {}).get("reason"), cfg.train.calibration, run.best_ckpt)
        return _write_metrics(run, epoch, results, verdict, verbose)
    if task.dense:
        from geofuse.evaluation.dense_evaluate import evaluate_dense_values

        results, verdict = evaluate_dense_values(
            run.path, patches, task, data, cfg.train.tta, cfg.guards, read_history(run.history),
            info.get("frozen_fraction"), info.get("collapse_stop", {}).get("reason"))
        return _write_metrics(run, epoch, results, verdict, verbose)
    if task.regression:
        from geofuse.evaluation.regression_evaluate import evaluate_values, predict_values

        results, verdict = evaluate_values(
            run.path, patches, lambda split: predict_values(task, data.loader(split),
                                                            cfg.train.tta),
            cfg.guards, read_history(run.history), info.get("frozen_fraction"),
            info.get("collapse_stop", {}).get("reason"))
        return _write_metrics(run, epoch, results, verdict, verbose)
    splits = [s for s in EVAL_SPLITS if len(patches.split_indices(s))]
    fit, before = _calibrate(cfg.train.calibration, task, data, splits, run.best_ckpt)
    final = {}
    for split in splits:
        y_true, probs = predict_probabilities(task, data.loader(split), tta=cfg.train.tta)
        y_pred = probs if task.multilabel else probs.argmax(axis=1)
        results[split] = split_metrics(y_true, y_pred, list(patches.class_names),
                                       task.multilabel)
        save_predictions(run.path, patches.split_indices(split), probs, y_true, split)
        final[split] = (y_true, probs)
    verdict = run_guards(results, read_history(run.history), cfg.guards,
                         frozen=info.get("frozen_fraction"),
                         stop_reason=info.get("collapse_stop", {}).get("reason"))
    results["calibration"] = calibration_record(cfg.train.calibration, fit, before, final,
                                                task.multilabel)
    return _write_metrics(run, epoch, results, verdict, verbose)


def _calibrate(method: str, task: ClassificationTask, data: PatchDataModule, splits: list[str],
               checkpoint: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """Temperature scaling on the val split (``train.calibration: temperature``); the fit and
    the uncalibrated reliability per split, or ``(None, {})``."""
    if method != "temperature" or "val" not in splits:
        return None, {}
    others = {s: data.loader(s) for s in splits if s != "val"}
    return calibrate_task(task, data.loader("val"), checkpoint, others)


def _write_metrics(run: RunDir, epoch: int, results: dict[str, Any], verdict: GuardVerdict,
                   verbose: bool) -> dict[str, Any]:
    """Write metrics.json atomically; print the guard's verdict (always when collapsed)."""
    metrics = {
        "run_name": run.name,
        "checkpoint": str(run.best_ckpt.relative_to(run.path)),
        "best_epoch": epoch,
        **results,
        "guard": verdict.to_dict(),
    }
    atomic_write_json(run.metrics, metrics)
    if verbose or verdict.collapsed:
        print_verdict(verdict)
    return metrics
