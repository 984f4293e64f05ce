"""``geofuse ablate``: the sensor-subset x model x seed grid, cross-validated over grouped folds.

:func:`run_ablation` builds the folds (:mod:`~geofuse.experiments.folds`) and the grid
(:mod:`~geofuse.experiments.grid`), runs the cells (:mod:`~geofuse.experiments.runner`, whose
docstring defines the study folder and result schema) and writes ``results.csv`` and, when
:mod:`geofuse.reporting.study_report` is available, the study report.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rich.console import Console
from rich.table import Table

import geofuse
from geofuse.config import StudyConfig
from geofuse.data.patchset import PatchSet
from geofuse.errors import ConfigError, SplitError, StopRequested
from geofuse.experiments._parallel import check_ray_address
from geofuse.experiments.folds import (
    TEST_FOLD,
    FoldAssignment,
    change_level_strata,
    fold_summary,
    make_folds,
)
from geofuse.experiments.grid import Cell, build_grid
from geofuse.experiments.runner import (
    SCHEMA_VERSION,
    StudyContext,
    cell_fingerprint,
    load_cells,
    pending_cells,
    results_frame,
    run_cells,
    write_results,
)
from geofuse.io_utils import atomic_path, atomic_write_json
from geofuse.locks import locked

console = Console(stderr=True)


def study_path(cfg: StudyConfig, name: str) -> Path:
    """``<workdir>/<ablation.output>/<name>``."""
    return cfg.in_workdir(cfg.ablation.output) / name


def study_folds(cfg: StudyConfig, patches: PatchSet) -> FoldAssignment:
    """The study's folds from ``cfg.ablation`` (stratified by class or change level)."""
    a = cfg.ablation
    strata = None
    if a.stratify == "change_level":
        if "positive_fraction" not in patches.tabular_names or patches.tabular is None:
            raise SplitError(
                "ablation.stratify 'change_level' needs the share of changed pixels per patch "
                "(a tabular column 'positive_fraction'); add it or use stratify: class"
            )
        column = patches.tabular_names.index("positive_fraction")
        strata = change_level_strata(patches.tabular[:, column])
    return make_folds(patches, a.folds, a.group_by, a.block_size, a.tile_regex,
                      a.test_fraction, cfg.seed, strata=strata, buffer=a.buffer)


def _data_fingerprint(patches: PatchSet, folds: FoldAssignment) -> str:
    h = hashlib.sha1()
    values = () if patches.values is None else (patches.values,)
    for arr in (patches.x, patches.targets(), *values, folds.fold):
        h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
    h.update(json.dumps([patches.band_names, patches.class_names,
                         folds.units.tolist()]).encode())
    if folds.buffer:  # the fold files' training splits depend on it
        h.update(f"buffer={folds.buffer!r}".encode())
    return h.hexdigest()[:16]


def _write_fold_sets(
    study_dir: Path, patches: PatchSet, folds: FoldAssignment, fingerprint: str,
    needed: set[int], source: Path | None = None,
) -> dict[int, str]:
    """One PatchSet per fold with its split codes (rewritten only when the folds changed).

    With ``source`` (the file ``patches`` was read from) each fold file is a copy of it with
    new split codes: the patches are not compressed again (LCZ: 0.1 s instead of 5 s a fold).
    """
    folds_json = study_dir / "folds.json"
    old = json.loads(folds_json.read_text()).get("fingerprint") if folds_json.is_file() else None
    paths = {k: study_dir / "folds" / f"fold{k}.h5" for k in sorted(needed)}
    for k, path in paths.items():
        if old != fingerprint or not path.is_file():
            if source is not None:
                _copy_with_split(source, path, folds.split_codes(k))
            else:
                patches._replace(split=folds.split_codes(k)).save(path)
    atomic_write_json(folds_json, {**folds.to_json(patches.groups), "fingerprint": fingerprint})
    return {k: str(p.resolve()) for k, p in paths.items()}


def _copy_with_split(source: Path, path: Path, split: np.ndarray) -> None:
    """Copy the PatchSet file ``source`` to ``path`` (atomically) with new split codes."""
    with atomic_path(path, suffix=".h5") as tmp:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as f:
            f["split"][...] = split


def run_study(
    cfg: StudyConfig, study_dir: Path, cells: list[Cell], patches: PatchSet,
    folds: FoldAssignment, kind: str = "ablation", epochs: int | None = None,
    workers: int | None = None, ray_address: str | None = None, progress: bool = True,
    extra: dict[str, Any] | None = None, source: Path | None = None,
) -> list[dict[str, Any]]:
    """Write study.json/folds.json, run the cells still to do, write results.csv.

    ``source`` is the PatchSet file ``patches`` was read from (fold files are copies of it).

    Returns:
        The finished cell results of the grid (see :mod:`geofuse.experiments.runner`).
    """
    ray_address = ray_address or cfg.ablation.ray.address
    if ray_address and ray_address != "local":
        check_ray_address(ray_address)  # fail before anything is written
    with locked(study_dir, f"study {study_dir.name!r}"):
        return _run_study_locked(cfg, study_dir, cells, patches, folds, kind, epochs, workers,
                                 ray_address, progress, extra, source)


def _run_study_locked(
    cfg: StudyConfig, study_dir: Path, cells: list[Cell], patches: PatchSet,
    folds: FoldAssignment, kind: str, epochs: int | None, workers: int | None,
    ray_address: str | None, progress: bool, extra: dict[str, Any] | None,
    source: Path | None,
) -> list[dict[str, Any]]:
    """:func:`run_study` once the study's lock is held."""
    fingerprint = _data_fingerprint(patches, folds)
    fold_paths = _write_fold_sets(study_dir, patches, folds, fingerprint, {c.fold for c in cells},
                                  source)
    epochs = epochs or cfg.ablation.epochs
    cell_dicts = [{**c.to_dict(), "fingerprint": cell_fingerprint(cfg, c, epochs, fingerprint)}
                  for c in cells]
    _write_study_json(cfg, study_dir, kind, cell_dicts, folds, patches, fingerprint, extra)
    todo = pending_cells(study_dir, cell_dicts)
    workers = workers or cfg.ablation.workers
    where = f"Ray ({ray_address})" if ray_address else f"{workers} worker(s)"
    if progress:
        console.print(f"study [bold]{study_dir.name}[/]: {len(cells)} cells, "
                      f"{len(cells) - len(todo)} done, {len(todo)} to run on {where}")
    ctx = StudyContext(
        config=cfg.model_dump(mode="json"), base_dir=str(cfg.base_dir),
        study_dir=str(study_dir.resolve()), fold_paths=fold_paths, epochs=epochs,
        keep_checkpoints=cfg.ablation.keep_checkpoints or cfg.mapping.scene is not None,
        cell_figures=cfg.ablation.cell_figures, importance=cfg.ablation.importance,
        importance_repeats=cfg.ablation.importance_repeats,
    )
    counter = {"n": len(cells) - len(todo)}

    def _report(result: dict[str, Any]) -> None:
        counter["n"] += 1
        if progress:
            val = result.get("val") or {}
            nan = float("nan")
            val = {k: nan if v is None else v for k, v in val.items()}  # NaN stored as null
            scores = (f"val IoU {val.get('iou', nan):.3f}, F1 {val.get('f1', nan):.3f}"
                      if val.get("segmentation") else
                      f"val R2 {val.get('r2', nan):.3f}, RMSE {val.get('rmse', nan):.4g}"
                      if val.get("regression") else
                      f"val macro F1 {val.get('f1_macro', nan):.3f}, "
                      f"accuracy {val.get('accuracy', nan):.3f}")
            console.print(
                f"[{counter['n']}/{len(cells)}] {result['config_id']} seed {result['seed']} "
                f"fold {result['fold']}: {scores} ({result['duration_s']:.1f} s)",
                highlight=False, soft_wrap=True,
            )

    if todo:
        try:
            run_cells(ctx, todo, workers=workers, ray_address=ray_address,
                      ray_cpus=cfg.ablation.ray.num_cpus_per_cell,
                      ray_gpus=cfg.ablation.ray.num_gpus_per_cell, on_done=_report)
        except StopRequested as err:
            write_results(study_dir)
            raise StopRequested(err.signum, detail=(
                f"study {study_dir.name}: {len(load_cells(study_dir))} of {len(cells)} cells "
                "finished, the others continue from their last epoch")) from None
    write_results(study_dir)
    return load_cells(study_dir)


def _write_study_json(
    cfg: StudyConfig, study_dir: Path, kind: str, cells: list[dict[str, Any]],
    folds: FoldAssignment, patches: PatchSet, fingerprint: str, extra: dict[str, Any] | None,
) -> None:
    path = study_dir / "study.json"
    now = datetime.now(UTC).isoformat(timespec="seconds")
    created = json.loads(path.read_text()).get("created_at", now) if path.is_file() else now
    config_ids = list(dict.fromkeys(c["config_id"] for c in cells))
    summary = fold_summary(folds, patches.targets(), list(patches.class_names))
    atomic_write_json(path, {
        "schema_version": SCHEMA_VERSION, "kind": kind, "name": study_dir.name,
        "created_at": created, "updated_at": now, "geofuse_version": geofuse.__version__,
        "config_file": str(cfg.source) if cfg.source is not None else None,
        "primary_metric": "iou" if patches.segmentation else "r2" if patches.regression
        else "f1_macro",
        **({"value_name": patches.value_name} if patches.regression else {}),
        "baseline_config_id": None, **(extra or {}),
        "grid": {
            "config_ids": config_ids,
            "seeds": sorted({c["seed"] for c in cells}),
            "folds": sorted({c["fold"] for c in cells}),
            "cells": [{k: v for k, v in c.items() if k != "fingerprint"} for c in cells],
        },
        "folds": {"n_folds": folds.n_folds, "group_by": folds.group_by,
                  "fingerprint": fingerprint, "buffer": folds.buffer,
                  "buffer_excluded": folds.buffer_excluded, "summary": summary},
        "class_names": list(patches.class_names),
        "mask_names": list(patches.mask_names),
        "data": study_data(patches, folds, summary),
        "config": cfg.model_dump(mode="json"),
    })


def _short_crs(crs: str) -> str:
    try:
        return CRS.from_user_input(crs).to_string() if crs else "n/a"
    except CRSError:
        return crs[:40]


def study_data(patches: PatchSet, folds: FoldAssignment, summary: dict[str, Any]
               ) -> dict[str, Any]:
    """Data summary for the report: patches and class counts per fold (``summary``, from
    :func:`fold_summary`), bands, grid, test set."""
    per_split = {name: d["per_class"] for name, d in summary.items()}
    n_test = int((folds.fold == TEST_FOLD).sum())
    external = patches.provenance.get("external_test")
    if external:
        test = f"external: {external['name']} ({n_test} patches, never used for training)"
    elif n_test:
        test = f"{n_test} patches ({len(np.unique(folds.units[folds.fold == TEST_FOLD]))} units)"
    else:
        test = "none"
    grid = {"crs": _short_crs(patches.crs), "patch_size": f"{patches.patch_size} px"}
    if "pixel_size_m" in patches.provenance:
        grid["pixel_size"] = f"{patches.provenance['pixel_size_m']:g} m"
    return {
        "n_patches": len(patches), "class_counts": patches.class_counts(),
        "split_counts": per_split, "bands": list(patches.band_names),
        "modalities": dict(patches.modalities), "grid": grid, "test": test,
        "dataset": patches.provenance.get("dataset"),
        "units": len(np.unique(folds.units)),
        "unit_example": str(folds.units[0]) if len(folds.units) else None,
    }


def load_patches(cfg: StudyConfig, patchset: PatchSet | None) -> PatchSet:
    """The PatchSet given, or the one at ``cfg.patches_path``."""
    return patchset if patchset is not None else PatchSet.load(cfg.patches_path)


def run_ablation(
    cfg: StudyConfig, study_name: str | None = None, workers: int | None = None,
    ray_address: str | None = None, progress: bool = True, patchset: PatchSet | None = None,
) -> Path:
    """Cross-validate the ablation grid of ``cfg``; resumable (finished cells are kept).

    Args:
        cfg: the study config (``ablation`` section: folds, sensors, models, seeds, ...).
        study_name: folder name under ``<workdir>/<ablation.output>``; default ``cfg.name``.
        workers: parallel local processes (default ``ablation.workers``).
        ray_address: Ray address or 'local' (default ``ablation.ray.address``).
        progress: print one line per finished cell and the results table.
        patchset: use this PatchSet instead of reading ``cfg.patches_path``.

    Returns:
        The study folder.

    Raises:
        SplitError: the folds are impossible (too few groups for a class).
        ConfigError: unknown modalities or invalid model options in the grid.
    """
    from geofuse.preflight import check_grid

    patches = load_patches(cfg, patchset)
    check_grid(cfg, patches, "ablate")  # every cell's model, options and names: before any cell
    folds = study_folds(cfg, patches)
    cells = build_grid(cfg)
    study_dir = study_path(cfg, study_name or cfg.name)
    run_study(cfg, study_dir, cells, patches, folds, epochs=cfg.ablation.epochs,
              workers=workers, ray_address=ray_address, progress=progress,
              extra={"baseline_config_id": baseline_config_id(cfg, cells)},
              source=cfg.patches_path if patchset is None else None)
    if cfg.mapping.scene is not None:  # before the report, which then shows the map
        from geofuse.experiments.study_map import map_study

        map_study(cfg, study_dir, progress)
    finish_study(study_dir, progress)
    return study_dir


def baseline_config_id(cfg: StudyConfig, cells: list[Cell]) -> str:
    """The configuration every other one is tested against (see ``ablation.baseline``).

    Raises:
        ConfigError: the named baseline is not a configuration of the grid.
    """
    ids = list(dict.fromkeys(c.config_id for c in cells))
    baseline = cfg.ablation.baseline or ids[0]  # the grid starts with primary alone, 1st model
    if baseline not in ids:
        raise ConfigError(
            f"ablation.baseline {baseline!r} is not in the grid; choose one of {ids}"
        )
    return baseline


def finish_study(study_dir: Path, progress: bool = True) -> Path | None:
    """Write the fold ensembles (``ensembles.json``, :mod:`~geofuse.experiments.ensemble`) and
    the study report if the reporting module exists, else print the results table."""
    try:
        from geofuse.experiments.ensemble import write_ensembles

        write_ensembles(study_dir)
    except Exception as err:  # results are saved; an ensemble bug must not lose the study
        console.print(f"[yellow]warning:[/] fold ensembles failed ({type(err).__name__}: "
                      f"{err})", soft_wrap=True)
    try:
        from geofuse.reporting.study_report import write_study_report
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("geofuse.reporting"):
            raise
        if progress:
            print_results(study_dir)
        return None
    try:
        report = write_study_report(study_dir)
    except Exception as err:  # results are saved; a report bug must not lose the study
        console.print(f"[yellow]warning:[/] study report failed ({type(err).__name__}: {err}); "
                      f"results are in {study_dir / 'results.csv'}", soft_wrap=True)
        if progress:
            print_results(study_dir)
        return None
    if progress:
        console.print(f"study report: [bold]{report}[/]")
    return Path(report)


def print_results(study_dir: Path, console_out: Console | None = None) -> None:
    """Mean ± std of val macro F1 and accuracy (segmentation: IoU and F1 of the change
    class) per config over seeds and folds."""
    frame = results_frame(study_dir)
    if frame.empty:
        return
    seg, reg = "val_iou" in frame, "val_r2" in frame
    first, second = (("val_iou", "val_f1") if seg else ("val_r2", "val_rmse") if reg else
                     ("val_f1_macro", "val_accuracy"))
    names = (("val IoU", "val F1") if seg else ("val R2", "val RMSE") if reg else
             ("val macro F1", "val accuracy"))
    table = Table("config", "cells", *names, "train-val gap")
    for config_id, rows in frame.groupby("config_id", sort=False):
        def ms(col: str, rows: Any = rows) -> str:
            v = rows[col].astype(float)
            if not v.notna().any():
                return "-"
            return (f"{v.mean():.4g} ± {v.std(ddof=0):.3g}" if col == "val_rmse" else
                    f"{v.mean():.3f} ± {v.std(ddof=0):.3f}")
        table.add_row(str(config_id), str(len(rows)), ms(first), ms(second), ms("gap_accuracy"))
    (console_out or Console()).print(table)
