"""Reading an ablation study directory: :class:`Study`, :func:`load_study`, :func:`cell_scores`.

A study directory (written by the ablation runner) holds ``study.json`` and one
``cells/<slug>.json`` per (configuration, seed, fold). Two spellings of the layout are read:
the flat one (``baseline``, ``grid.configs``, ``data``; cells with ``best_val_f1_macro``,
``final_val_f1_macro``, ``train_val_gap``, ``best_epoch``) and the runner's
(``baseline_config_id``, ``grid.config_ids``/``grid.cells``, ``folds``, ``class_names``; cells
with an ``overfitting`` block). When ``grid.cells`` lists slugs, only those cell files are read
and missing ones are reported as unfinished.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geofuse.errors import RunDirError
from geofuse.evaluation import stats as st

CELL_DEFAULTS: dict[str, Any] = {
    "modalities": [], "model": None, "options": {}, "test": None, "guard": {}, "history": [],
    "best_epoch": None, "final_epoch": None, "best_val_f1_macro": None,
    "final_val_f1_macro": None, "train_val_gap": None, "duration_s": None, "importance": None,
}


@dataclass
class Study:
    """A loaded study directory; ``skipped`` lists cells that could not be used, with why."""

    path: Path
    name: str
    config: dict[str, Any]
    grid: dict[str, Any]
    baseline: str | None
    data: dict[str, Any]
    cells: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    kind: str | None = None
    config_file: str | None = None

    @property
    def config_ids(self) -> list[str]:
        """Configurations in grid order, then any others found among the cells."""
        ids = [c["config_id"] for c in self.grid.get("configs", []) if "config_id" in c]
        return ids + sorted({c["config_id"] for c in self.cells} - set(ids))

    @property
    def segmentation(self) -> bool:
        """Whether the cells hold segmentation metrics (``val`` with ``segmentation: True``)."""
        return any(isinstance(c.get("val"), Mapping) and c["val"].get("segmentation")
                   for c in self.cells)

    @property
    def regression(self) -> bool:
        """Whether the cells hold regression metrics (``val`` with ``regression: True``)."""
        return any(isinstance(c.get("val"), Mapping) and c["val"].get("regression")
                   for c in self.cells)

    @property
    def primary_metric(self) -> str:
        """The metric the statistics compare unless told otherwise: IoU of segmentation
        studies, R2 of regression studies, macro F1 otherwise."""
        return "iou" if self.segmentation else "r2" if self.regression else "f1_macro"

    @property
    def multilabel(self) -> bool:
        """Whether the cells hold multi-label metrics (``val`` with ``multilabel: True``)."""
        return any(isinstance(c.get("val"), Mapping) and c["val"].get("multilabel")
                   for c in self.cells)

    @property
    def strata_names(self) -> list[str]:
        """The patches' classes (``y``): the strata of a segmentation study's tiles (e.g. its
        change levels), the classes otherwise."""
        return list(self.data.get("class_names") or self.class_names)

    @property
    def class_names(self) -> list[str]:
        """Class names from study.json (of a segmentation study: the mask's classes), else
        from the first cell's per-class metrics."""
        names = self.data.get("mask_names") or self.data.get("class_names")
        if names:
            return list(names)
        return list(self.cells[0]["val"].get("per_class", {})) if self.cells else []


def _read_cell(path: Path) -> dict[str, Any]:
    """One cell with defaults filled in; ValueError names what is wrong."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"unreadable JSON ({err})") from None
    missing = [k for k in ("config_id", "seed", "fold") if k not in raw]
    if missing:
        raise ValueError(f"missing keys {missing}")
    if not isinstance(raw.get("val"), dict) or not ({"f1_macro", "r2"} & set(raw["val"])):
        raise ValueError("no validation metrics ('val')")
    over = raw.get("overfitting") or {}
    best, final = over.get("best") or {}, over.get("final") or {}
    # the selection score: IoU of a segmentation cell (and its train - val IoU gap, the
    # land-take experiment's overfitting analysis), else macro F1 and the accuracy gap
    seg = raw["val"].get("segmentation") and best.get("val_iou") is not None
    score = "val_iou" if seg else "val_r2" if raw["val"].get("regression") else "val_f1_macro"
    gap = (best["train_iou"] - best["val_iou"] if seg and best.get("train_iou") is not None
           else best.get("gap_accuracy"))
    runner = {"best_epoch": over.get("best_epoch"), "final_epoch": over.get("final_epoch"),
              "best_val_f1_macro": best.get(score), "final_val_f1_macro": final.get(score),
              "train_val_gap": gap}
    return {**CELL_DEFAULTS, **{k: v for k, v in runner.items() if v is not None},
            **{k: v for k, v in raw.items() if v is not None}}


def _normalise_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """study.json in the flat spelling (see the module docstring), whichever was written."""
    grid = dict(meta.get("grid") or {})
    folds = meta.get("folds") if isinstance(meta.get("folds"), dict) else {}
    if "configs" not in grid and grid.get("config_ids"):
        grid["configs"] = [{"config_id": cid} for cid in grid["config_ids"]]
    if isinstance(grid.get("folds"), list) or "folds" not in grid:
        grid["folds"] = folds.get("n_folds", len(grid.get("folds") or []) or "?")
    grid.setdefault("group_by", folds.get("group_by", "?"))
    if folds.get("buffer"):
        grid.setdefault("buffer", folds["buffer"])
        grid.setdefault("buffer_excluded", folds.get("buffer_excluded") or {})
    data = dict(meta.get("data") or {})
    data.setdefault("class_names", meta.get("class_names"))
    data.setdefault("mask_names", meta.get("mask_names"))
    data.setdefault("value_name", meta.get("value_name"))
    return {"name": meta.get("name"), "config": meta.get("config") or {}, "grid": grid,
            "baseline": meta.get("baseline", meta.get("baseline_config_id")), "data": data,
            "kind": meta.get("kind"), "config_file": meta.get("config_file")}


def load_study(study_dir: str | Path) -> Study:
    """Read ``study.json`` and ``cells/*.json``.

    Raises:
        RunDirError: study.json is missing or unreadable, or no cell is usable.
    """
    path = Path(study_dir)
    meta_path = path / "study.json"
    if not meta_path.is_file():
        raise RunDirError(f"{path}: no study.json; pass a study directory written by the "
                          "ablation runner")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise RunDirError(f"{meta_path}: not valid JSON ({err}); re-run the study") from None
    meta = _normalise_meta(meta)
    slugs = [c["slug"] for c in meta["grid"].get("cells") or [] if isinstance(c, dict)
             and c.get("slug")]
    files = ([path / "cells" / f"{slug}.json" for slug in slugs] if slugs
             else sorted((path / "cells").glob("*.json")))
    cells, skipped = [], []
    for cell_path in files:
        if not cell_path.is_file():
            skipped.append(f"`{cell_path.name}`: not finished (no result file)")
            continue
        try:
            cells.append(_read_cell(cell_path))
        except ValueError as err:
            skipped.append(f"`{cell_path.name}`: {err}")
    if not cells:
        raise RunDirError(f"{path / 'cells'}: no usable cell results ({len(skipped)} skipped); "
                          "run the study first")
    return Study(path=path, name=meta["name"] or path.name, config=meta["config"],
                 grid=meta["grid"], baseline=meta["baseline"], data=meta["data"], cells=cells,
                 skipped=skipped, kind=meta["kind"], config_file=meta["config_file"])


def cell_scores(study: Study, metric: str, split: str = "val") -> dict[str, dict[st.Key, float]]:
    """config_id -> (seed, fold) -> metric of ``split`` (cells without that split left out)."""
    out: dict[str, dict[st.Key, float]] = {cid: {} for cid in study.config_ids}
    for c in study.cells:
        if isinstance(c.get(split), Mapping) and c[split].get(metric) is not None:
            out[c["config_id"]][(int(c["seed"]), int(c["fold"]))] = float(c[split][metric])
    return {cid: s for cid, s in out.items() if s}


def metric_names(study: Study, split: str = "val") -> list[str]:
    """The numeric metrics found in the ``split`` metrics of the cells (what ``metric=`` takes)."""
    return sorted({k for c in study.cells if isinstance(c.get(split), Mapping)
                   for k, v in c[split].items()
                   if isinstance(v, int | float) and not isinstance(v, bool)})
