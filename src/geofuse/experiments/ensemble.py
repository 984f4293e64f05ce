"""Fold ensembles of a study: the k fold models of a configuration averaged on the test set.

Cross-validation trains k models per (configuration, seed), each on k-1 folds; on the test set
(held-out groups or an external city), which none of them saw, their class probabilities can
simply be averaged. Each cell's probabilities come from its run's ``test_predictions.npz``
(:mod:`geofuse.evaluation.predictions`, written at evaluation time, before the checkpoints are
deleted), so ensembles need no model.

``<study>/ensembles.json`` (written by :func:`write_ensembles` when a study finishes)::

    {"schema_version": 1, "folds": [0, 1, ...], "class_names": [...],
     "ensembles": [{"config_id", "seed", "folds": [...], "n": test patches,
                    "test": classification_metrics (multilabel_metrics, or of a
                             regression study regression_metrics) of the ensemble}],
     "incomplete": [{"config_id", "seed", "reason"}]}

A (configuration, seed) gets an ensemble when every fold's cell is finished and has saved
predictions of the same test patches. Studies evaluated before predictions were saved simply
have no ensembles (and no file).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from geofuse.evaluation.metrics import classification_metrics
from geofuse.evaluation.multilabel_metrics import multilabel_metrics
from geofuse.evaluation.predictions import Predictions, load_predictions
from geofuse.evaluation.stats import finite_or_none
from geofuse.io_utils import atomic_write_json

ENSEMBLES_FILE = "ensembles.json"
SCHEMA_VERSION = 1

#: (config_id, seed, fold) of a cell; (config_id, seed) of an ensemble.
CellKey = tuple[str, int, int]
EnsembleKey = tuple[str, int]


def cell_predictions(study_dir: str | Path, cells: Iterable[Mapping[str, Any]]
                     ) -> dict[CellKey, Predictions]:
    """Saved test predictions of the cells that have them, by (config_id, seed, fold)."""
    out: dict[CellKey, Predictions] = {}
    for c in cells:
        run_dir = c.get("run_dir") or f"runs/{c.get('slug')}"
        pred = load_predictions(Path(study_dir) / run_dir)
        if pred is not None and len(pred.indices):
            out[(str(c["config_id"]), int(c["seed"]), int(c["fold"]))] = pred
    return out


def study_fold_ids(study_dir: str | Path) -> list[int]:
    """The study's cross-validation folds (``study.json`` grid), [] when unknown."""
    path = Path(study_dir) / "study.json"
    try:
        grid = json.loads(path.read_text()).get("grid") or {}
    except (OSError, ValueError):
        return []
    folds = grid.get("folds")
    if isinstance(folds, list):
        return sorted(int(f) for f in folds)
    return sorted({int(c["fold"]) for c in grid.get("cells") or [] if "fold" in c})


def average(members: list[Predictions]) -> Predictions:
    """Mean class probabilities of models tested on the same patches."""
    probs = np.mean([m.probabilities.astype(np.float64) for m in members], axis=0)
    first = members[0]
    return Predictions(first.indices, probs.astype(np.float32), first.targets)


def fold_ensembles(
    preds: Mapping[CellKey, Predictions], folds: list[int],
) -> tuple[dict[EnsembleKey, Predictions], list[dict[str, Any]]]:
    """Ensembles of every (configuration, seed) whose ``folds`` all have predictions.

    Returns:
        The ensembles, and the (configuration, seed) pairs left out with the reason.
    """
    pairs = list(dict.fromkeys((cid, seed) for cid, seed, _ in preds))
    ensembles: dict[EnsembleKey, Predictions] = {}
    incomplete: list[dict[str, Any]] = []
    for cid, seed in pairs:
        missing = [f for f in folds if (cid, seed, f) not in preds]
        if missing or not folds:
            incomplete.append({"config_id": cid, "seed": seed,
                               "reason": f"folds {missing} have no test predictions"})
            continue
        members = [preds[(cid, seed, f)] for f in folds]
        if not all(np.array_equal(m.indices, members[0].indices) for m in members):
            incomplete.append({"config_id": cid, "seed": seed,
                               "reason": "the fold models were tested on different patches"})
            continue
        ensembles[(cid, seed)] = average(members)
    return ensembles, incomplete


def ensemble_metrics(pred: Predictions, class_names: list[str]) -> dict[str, Any]:
    """The metrics a cell reports, of an ensemble's averaged probabilities (of a regression
    study, its averaged values)."""
    if pred.regression:
        from geofuse.evaluation.regression_metrics import regression_metrics

        return regression_metrics(pred.targets, pred.values())
    if pred.multilabel:
        return multilabel_metrics(pred.targets, pred.probabilities, class_names)
    return classification_metrics(pred.targets, pred.labels(), class_names)


def _class_names(study_dir: Path, cells: list[Mapping[str, Any]]) -> list[str]:
    try:
        names = json.loads((study_dir / "study.json").read_text()).get("class_names")
    except (OSError, ValueError):
        names = None
    return list(names or (cells[0].get("class_names") if cells else None) or [])


def write_ensembles(study_dir: str | Path, cells: list[dict[str, Any]] | None = None
                    ) -> Path | None:
    """Write ``ensembles.json`` (see the module docstring); ``None`` (and no file) when no
    (configuration, seed) has a complete set of fold predictions."""
    from geofuse.experiments.runner import load_cells

    study_dir = Path(study_dir)
    cells = load_cells(study_dir) if cells is None else cells
    folds = study_fold_ids(study_dir)
    ensembles, incomplete = fold_ensembles(cell_predictions(study_dir, cells), folds)
    path = study_dir / ENSEMBLES_FILE
    if not ensembles:
        path.unlink(missing_ok=True)  # an older file would describe other cells
        return None
    names = _class_names(study_dir, cells)
    atomic_write_json(path, finite_or_none({
        "schema_version": SCHEMA_VERSION, "folds": folds, "class_names": names,
        "ensembles": [{"config_id": cid, "seed": seed, "folds": folds, "n": len(p.indices),
                       "test": ensemble_metrics(p, names)}
                      for (cid, seed), p in ensembles.items()],
        "incomplete": incomplete,
    }))
    return path


def read_ensembles(study_dir: str | Path) -> list[dict[str, Any]]:
    """The ensembles recorded in ``ensembles.json`` ([] without the file)."""
    path = Path(study_dir) / ENSEMBLES_FILE
    try:
        return list(json.loads(path.read_text()).get("ensembles") or [])
    except (OSError, ValueError):
        return []
