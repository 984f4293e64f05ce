"""Run the cells of a study (ablation grid or search trials): resumable, crash-safe, parallel.

Study folder layout (``<workdir>/<ablation.output>/<study name>/``)::

    study.json        {"schema_version", "kind" (ablation|search), "name", "created_at",
                       "updated_at", "geofuse_version", "primary_metric": "f1_macro",
                       "baseline_config_id" (or null), "grid": {"config_ids": [...],
                       "seeds": [...], "folds": [...], "cells": [Cell.to_dict(), ...], ...},
                       "folds": {"n_folds", "group_by", "fingerprint", "summary":
                       {"fold0": {"patches", "units", "per_class"}, ..., "test": {...}}},
                       "config": the resolved study config}
    folds.json        FoldAssignment.to_json(): {"n_folds", "group_by", "fingerprint",
                       "units": {unit: fold}, "groups": {group: fold}, "test_units",
                       "test_groups"}  (fold -1 = held-out test)
    folds/fold<k>.h5  the PatchSet with split codes of fold k (train / val / test)
    cells/<slug>.json one result per finished cell (schema below), written atomically
    runs/<slug>/      the cell's run directory (checkpoints deleted unless keep_checkpoints;
                      test_predictions.npz and val_predictions.npz kept for the ensembles,
                      the test-set statistics and the pooled out-of-fold comparison)
    results.csv       one row per cell: see :func:`results_frame`
    ensembles.json    fold ensembles on the test set (:mod:`geofuse.experiments.ensemble`)

Cell result JSON (``slug = <config_id with / -> __>__seed<seed>__fold<fold>``)::

    schema_version, status ("done"), slug, config_id, modalities [names], model, options
    {train.model options}, overrides {dotted key: value}, seed, fold, fingerprint, bands,
    class_names, run_dir (relative to the study folder),
    val   classification_metrics dict: n, accuracy, precision_macro, recall_macro, f1_macro,
          majority_class, majority_rate, per_class {name: {precision, recall, f1, support}},
          confusion_matrix (rows = true), prediction_counts
    test  same as val, or null without a held-out test set
    guard collapse-guard verdict (GuardVerdict.to_dict(): collapsed, reasons, ...)
    history  [{epoch, train_loss, train_accuracy, train_f1_macro, val_loss, val_accuracy,
              val_f1_macro, lr}]
    overfitting {best_epoch, final_epoch, epochs_trained, best {epoch, train_loss, val_loss,
          train_accuracy, val_accuracy, train_f1_macro, val_f1_macro, gap_accuracy, gap_loss},
          final {...},
          f1_drop_after_best}   gap_accuracy = train - val accuracy, gap_loss = val - train loss
    epochs_trained, max_epochs, stopped_early, num_params, duration_s, finished_at,
    importance  null, or {"modality": {name: {"mean", "std"}}, "band": {name: {...}}}

A cell counts as done when its JSON parses and its ``fingerprint`` (cell config, epochs, folds,
data) matches; anything else is trained again with its run directory overwritten. Killing the
process loses at most the cells in progress.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geofuse.config import StudyConfig, parse_config
from geofuse.evaluation.calibration import cell_calibration
from geofuse.evaluation.predictions import (
    load_predictions,
    predictions_file,
    save_predictions,
)
from geofuse.experiments import _parallel
from geofuse.experiments.grid import Cell, cell_config
from geofuse.io_utils import atomic_write_json, atomic_write_text
from geofuse.rundir import RunDir, read_history
from geofuse.training.train import train_model

SCHEMA_VERSION = 1
HISTORY_KEYS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "train_f1_macro",
                "val_f1_macro", "train_iou", "val_iou", "train_r2", "val_r2", "val_rmse")


@dataclass(frozen=True)
class StudyContext:
    """Everything a worker needs to run a cell (plain data: picklable for spawn and Ray)."""

    config: dict[str, Any]
    base_dir: str
    study_dir: str
    fold_paths: dict[int, str]
    epochs: int | None = None
    keep_checkpoints: bool = False
    cell_figures: bool = False
    importance: bool = False
    importance_repeats: int = 5
    threads: int | None = None

    def study_config(self) -> StudyConfig:
        return parse_config(self.config, Path(self.base_dir), source="study config")


def cell_path(study_dir: Path, slug: str) -> Path:
    return Path(study_dir) / "cells" / f"{slug}.json"


def _point(row: dict[str, Any]) -> dict[str, Any]:
    out = {"epoch": row.get("epoch"), **{k: row.get(k) for k in HISTORY_KEYS}}
    ta, va, tl, vl = (row.get(k) for k in ("train_accuracy", "val_accuracy", "train_loss",
                                            "val_loss"))
    if ta is None and va is None:  # regression: the R2 gap
        ta, va = row.get("train_r2"), row.get("val_r2")
    out["gap_accuracy"] = ta - va if ta is not None and va is not None else None
    out["gap_loss"] = vl - tl if tl is not None and vl is not None else None
    return out


def overfitting_summary(history: list[dict[str, Any]], best_epoch: int | None) -> dict[str, Any]:
    """Best-checkpoint epoch vs final epoch: validation metrics and train-val gaps."""
    if not history:
        return {"best_epoch": best_epoch, "final_epoch": None, "epochs_trained": 0,
                "best": None, "final": None, "f1_drop_after_best": None}
    final = history[-1]
    best = next((r for r in history if r["epoch"] == best_epoch), None)
    if best is None:
        losses = [r for r in history if r.get("val_loss") is not None] or history
        best = min(losses, key=lambda r: r.get("val_loss") or 0.0)
    bf, ff = best.get("val_f1_macro"), final.get("val_f1_macro")
    return {
        "best_epoch": best["epoch"], "final_epoch": final["epoch"],
        "epochs_trained": len(history), "best": _point(best), "final": _point(final),
        "f1_drop_after_best": bf - ff if bf is not None and ff is not None else None,
    }


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None, recursively (results must be strict JSON)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def execute_cell(ctx: StudyContext, cell_data: dict[str, Any]) -> dict[str, Any]:
    """Train one cell, record its result JSON atomically and return it (worker entry point)."""
    import torch

    # workers x threads <= the cores given: a busy machine slows a study, never stalls it
    torch.set_num_threads(ctx.threads or _parallel.threads_per_worker(1))
    cell = Cell.from_dict(cell_data)
    study_dir = Path(ctx.study_dir)
    cfg = cell_config(ctx.study_config(), cell)
    cfg.extract.output = ctx.fold_paths[cell.fold]
    cfg.train.output = str(study_dir / "runs")
    cfg.train.run_name = None
    started = time.perf_counter()
    fingerprint = cell_data.get("fingerprint")
    run = RunDir(study_dir / "runs" / cell.slug)
    state = _run_state(run, fingerprint)
    if state == "trained":  # stopped after training, while evaluating: finish that only
        _finish_evaluation(run, ctx.cell_figures)
    else:
        train_model(cfg, progress=False, epochs=ctx.epochs, run_name=cell.slug,
                    overwrite=state == "fresh", resume=state == "resume",
                    run_info_extra={"cell_fingerprint": fingerprint},
                    figures=ctx.cell_figures)
    metrics, info = run.read_json(run.metrics), run.read_json(run.run_json)
    history = read_history(run.history)
    importance = None
    if ctx.importance:
        from geofuse.experiments._importance import cell_importance

        importance = cell_importance(run.path, ctx.importance_repeats, cell.seed)
    if not ctx.keep_checkpoints and run.checkpoints.is_dir():
        shutil.rmtree(run.checkpoints)
    result = {
        "schema_version": SCHEMA_VERSION, "status": "done", **cell.to_dict(),
        "fingerprint": cell_data.get("fingerprint"), "bands": info.get("bands"),
        "class_names": info.get("class_names"), "run_dir": f"runs/{cell.slug}",
        "val": metrics.get("val"), "test": metrics.get("test"), "guard": metrics.get("guard"),
        "history": history,
        "overfitting": overfitting_summary(history, metrics.get("best_epoch")),
        "epochs_trained": info.get("epochs_trained"), "max_epochs": info.get("max_epochs"),
        "stopped_early": info.get("stopped_early"), "num_params": info.get("num_params"),
        "n_train": info.get("n_train"),
        "duration_s": round(time.perf_counter() - started, 3),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "importance": importance, "calibration": cell_calibration(metrics),
    }
    result = _json_safe(result)
    atomic_write_json(cell_path(study_dir, cell.slug), result)
    for split, key in PREDICTIONS_KEYS.items():  # travel back with the result: see run_cells
        if (predictions := load_predictions(run.path, split)) is not None:
            result[key] = predictions
    return result


def _run_state(run: RunDir, fingerprint: str | None) -> str:
    """What a cell's run directory holds of this cell (same fingerprint): ``trained`` (its
    training finished; evaluation may be missing), ``resume`` (interrupted or killed, with a
    checkpoint) or ``fresh`` (nothing usable: train from scratch)."""
    try:
        info = json.loads(run.run_json.read_text())
    except (OSError, ValueError):
        return "fresh"
    if fingerprint is None or info.get("cell_fingerprint") != fingerprint:
        return "fresh"
    if info.get("status") == "finished" and run.best_ckpt.is_file():
        return "trained"
    if info.get("status") in ("running", "interrupted") and run.last_ckpt.is_file():
        return "resume"
    return "fresh"


def _finish_evaluation(run: RunDir, figures: bool) -> None:
    """Evaluate and report a run whose training finished (skipped when already done)."""
    from geofuse.evaluation.evaluate import evaluate_run
    from geofuse.reporting.report import write_report

    if not run.metrics.is_file():
        evaluate_run(run.path, verbose=False)
    if not run.report.is_file():
        write_report(run.path, figures=figures)


def cell_fingerprint(cfg: StudyConfig, cell: Cell, epochs: int | None, extra: str) -> str:
    """Hash of what determines a cell's result: its config, epochs, folds/data (``extra``)."""
    data = cell_config(cfg, cell).model_dump(mode="json")
    train = {k: v for k, v in data["train"].items()
             if k not in ("output", "run_name", "num_workers")}
    key = {"cell": cell.to_dict(), "seed": data["seed"], "train": train,
           "guards": data["guards"], "epochs": epochs, "extra": extra,
           "importance": [cfg.ablation.importance, cfg.ablation.importance_repeats]}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_cell(path: Path) -> dict[str, Any] | None:
    """A finished cell's result, or None when missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("status") == "done" else None


def load_cells(study_dir: str | Path) -> list[dict[str, Any]]:
    """Finished cell results of a study, in grid order (only cells of its current grid)."""
    study_dir = Path(study_dir)
    study_json = study_dir / "study.json"
    if study_json.is_file():
        slugs = [c["slug"] for c in json.loads(study_json.read_text())["grid"]["cells"]]
    else:
        slugs = sorted(p.stem for p in (study_dir / "cells").glob("*.json"))
    cells = [read_cell(cell_path(study_dir, s)) for s in slugs]
    return [c for c in cells if c is not None]


def _flatten(cell: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "config_id": cell["config_id"], "modalities": "+".join(cell.get("modalities") or []),
        "model": cell.get("model"), "seed": cell["seed"], "fold": cell["fold"],
    }
    for split in ("val", "test"):
        m = cell.get(split)
        if not m:
            continue
        for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro"):
            row[f"{split}_{key}"] = m.get(key)
        if m.get("segmentation"):  # the change class of a binary mask, else averages
            for key in ("iou", "f1", "precision", "recall", "mean_iou"):
                row[f"{split}_{key}"] = m.get(key)
        if m.get("regression"):
            for key in ("r2", "rmse", "mae", "bias", "pearson_r", "spearman_r", "r2_log1p"):
                row[f"{split}_{key}"] = m.get(key)
        for name, pc in (m.get("per_class") or {}).items():
            row[f"{split}_f1_{name}"] = pc.get("f1")
        row[f"{split}_ece"] = ((cell.get("calibration") or {}).get("ece") or {}).get(split)
    row["temperature"] = (cell.get("calibration") or {}).get("temperature")
    of = cell.get("overfitting") or {}
    best, final = of.get("best") or {}, of.get("final") or {}
    row.update(
        best_epoch=of.get("best_epoch"), final_epoch=of.get("final_epoch"),
        epochs_trained=of.get("epochs_trained"), best_val_f1_macro=best.get("val_f1_macro"),
        final_val_f1_macro=final.get("val_f1_macro"), gap_accuracy=final.get("gap_accuracy"),
        gap_loss=final.get("gap_loss"), f1_drop_after_best=of.get("f1_drop_after_best"),
        collapsed=(cell.get("guard") or {}).get("collapsed"), duration_s=cell.get("duration_s"),
    )
    for name, value in ((cell.get("importance") or {}).get("modality") or {}).items():
        row[f"importance_{name}"] = value.get("mean") if isinstance(value, dict) else value
    return row


def results_frame(study_dir: str | Path) -> pd.DataFrame:
    """One row per finished cell with flattened metrics.

    Columns: config_id, modalities, model, seed, fold, val_accuracy, val_f1_macro,
    val_precision_macro, val_recall_macro, val_f1_<class>..., test_* (with a test set),
    best_epoch, final_epoch, epochs_trained, best_val_f1_macro, final_val_f1_macro,
    gap_accuracy, gap_loss, f1_drop_after_best, collapsed, duration_s, importance_<modality>,
    val_ece / test_ece and temperature (calibration).
    """
    return pd.DataFrame([_flatten(c) for c in load_cells(study_dir)])


def write_results(study_dir: Path) -> Path:
    """Write ``results.csv`` atomically; returns its path."""
    path = Path(study_dir) / "results.csv"
    atomic_write_text(path, results_frame(study_dir).to_csv(index=False))
    return path


def pending_cells(study_dir: Path, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells without a finished result whose fingerprint matches."""
    out = []
    for cell in cells:
        done = read_cell(cell_path(study_dir, cell["slug"]))
        if done is None or done.get("fingerprint") != cell.get("fingerprint"):
            out.append(cell)
    return out


#: Keys of a cell result carrying its test and validation predictions back to the study's
#: process (never written to the cell JSON).
PREDICTIONS_KEYS = {"test": "_test_predictions", "val": "_val_predictions"}


def run_cells(
    ctx: StudyContext, cells: list[dict[str, Any]], workers: int = 1,
    ray_address: str | None = None, ray_cpus: float = 1.0, ray_gpus: float = 0.0,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Run cells (dicts with a ``fingerprint``) serially, in processes or on Ray."""
    study_dir = Path(ctx.study_dir)
    workers = max(1, min(workers, len(cells)))

    def _done(result: dict[str, Any]) -> None:
        run_dir = study_dir / "runs" / result["slug"]
        for split, key in PREDICTIONS_KEYS.items():
            predictions = result.pop(key, None)
            if predictions is not None and not (run_dir / predictions_file(split)).is_file():
                # a remote Ray worker saved them on its own disk: the report needs them here
                save_predictions(run_dir, predictions.indices, predictions.probabilities,
                                 predictions.targets, split)
        path = cell_path(study_dir, result["slug"])
        if read_cell(path) is None:  # a remote Ray worker wrote it on its own disk
            atomic_write_json(path, result)
        write_results(study_dir)
        if on_done is not None:
            on_done(result)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        if ray_address:
            threads = max(1, int(ray_cpus))
            _parallel.run_ray(execute_cell, _with_threads(ctx, threads), cells, ray_address,
                              ray_cpus, _done, local_cpus=workers if workers > 1 else None,
                              num_gpus=ray_gpus)
        elif workers > 1:
            threads = _parallel.threads_per_worker(workers)
            _parallel.run_pool(execute_cell, _with_threads(ctx, threads), cells, workers, _done)
        else:  # one process: torch may use every core it is given, no more
            threads = _parallel.threads_per_worker(1)
            _parallel.run_serial(execute_cell, _with_threads(ctx, threads), cells, _done)


def _with_threads(ctx: StudyContext, threads: int) -> StudyContext:
    return StudyContext(**{**ctx.__dict__, "threads": threads})
