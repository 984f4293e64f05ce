"""Pooled out-of-fold comparison: each configuration against the baseline on the validation
predictions of all folds at once.

In k-fold cross-validation every patch outside the test set lies in exactly one validation
fold, so the k fold models of a (configuration, seed) together predict every such patch once,
each by a model that never trained on it. Pooled, these out-of-fold predictions form one test
set as large as the study's training data; resampling its groups (the patches' polygons, cells
or blocks, as the test-set bootstrap does) gives a paired comparison with far more power than
a t-test over k fold means (5 units for 5 folds). With ``train.checkpoint: last`` nothing was
selected on the validation folds and the figures are as fair as a held-out test's; with
``best`` the epoch was picked on them, which flatters the networks a little (the forest
selects nothing).

The figures come from ``val_predictions.npz`` of every cell (:mod:`geofuse.evaluation.
predictions`); studies evaluated before those were saved have no such section.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from geofuse.data.patchset import SPLIT_CODES
from geofuse.evaluation import group_bootstrap as gb
from geofuse.evaluation.predictions import Predictions, load_predictions
from geofuse.reporting._study_load import Study
from geofuse.reporting._study_test import FOREST, Scores, _comparisons, _Config, _fold_file
from geofuse.reporting._study_test_blocks import effective_train


def _pool(study: Study) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """Indices, targets and group codes of every patch outside the test set."""
    path = _fold_file(study.path)
    if path is None:
        return None
    with h5py.File(path, "r") as f:
        split, groups = f["split"][()], f["groups"][()]
        targets = f["multi_hot"][()] if "multi_hot" in f else f["y"][()]
    pooled = np.flatnonzero(split != SPLIT_CODES["test"])
    codes, n_groups = gb.group_codes(np.char.decode(groups[pooled], "utf-8"))
    return pooled, targets[pooled], codes, n_groups


def _out_of_fold(cells: list[dict[str, Any]], study: Study, pooled: np.ndarray
                 ) -> list[Predictions]:
    """One pooled prediction per seed whose folds together cover exactly ``pooled``."""
    by_seed: dict[int, list[Predictions]] = {}
    for c in cells:
        run_dir = c.get("run_dir") or f"runs/{c.get('slug')}"
        pred = load_predictions(study.path / run_dir, "val")
        if pred is not None:
            by_seed.setdefault(int(c["seed"]), []).append(pred)
    out = []
    for preds in by_seed.values():
        indices = np.concatenate([p.indices for p in preds])
        order = np.argsort(indices, kind="stable")
        if not np.array_equal(indices[order], pooled):
            continue  # a fold missing or predicted twice: this seed does not pool
        out.append(Predictions(indices[order],
                               np.concatenate([p.probabilities for p in preds])[order],
                               np.concatenate([p.targets for p in preds])[order]))
    return out


def study_oof_stats(study: Study, baseline: str | None, alpha: float = 0.05,
                    resamples: int = gb.RESAMPLES, seed: int = gb.SEED
                    ) -> dict[str, Any] | None:
    """Pooled out-of-fold scores with intervals over groups and paired comparisons with the
    baseline (Holm over configurations); ``None`` without saved validation predictions."""
    pool = _pool(study)
    if pool is None:
        return None
    pooled, targets, codes, n_groups = pool
    weights = gb.resample_weights(n_groups, resamples, seed)
    configs: dict[str, _Config] = {}
    rows: dict[str, dict[str, Any]] = {}
    for cid in study.config_ids:
        cells = [c for c in study.cells if c["config_id"] == cid
                 and isinstance(c.get("val"), Mapping)]
        preds = _out_of_fold(cells, study, pooled)
        if not preds or not np.array_equal(preds[0].targets, targets):
            continue
        scores: Scores = gb.mean_scores([gb.model_scores(p.targets, p.probabilities, codes,
                                                         n_groups, weights) for p in preds])
        configs[cid] = _Config(scores, None, [])
        train = effective_train(study.config, cid)
        rows[cid] = {"n_seeds": len(preds), "selected": cells[0].get("model") != FOREST
                     and train.get("checkpoint", "best") != "last",
                     **{m: {"value": scores[m][0], "ci_low": gb.percentile_ci(scores[m][1])[0],
                            "ci_high": gb.percentile_ci(scores[m][1])[1]} for m in gb.METRICS}}
    if not rows:
        return None
    comparisons = _comparisons(configs, baseline, alpha)
    for row in comparisons:
        row["compared"] = "out-of-fold"
    return {"n_patches": len(pooled), "n_groups": n_groups, "resamples": resamples,
            "seed": seed, "configs": rows, "baseline": baseline if baseline in configs else None,
            "comparisons": comparisons, "alpha": alpha}
