"""Test-set statistics of a study: named test set, fold models and fold ensembles with
confidence intervals over test groups, floors, paired comparisons and poor-transfer flags.

Every cell of a study is tested on the same patches (held-out groups, or an external set such
as another city). :func:`study_test_stats` gathers, per configuration:

- ``fold_models``: the mean over its fold models (every seed and fold) of overall accuracy and
  macro F1 on the test set; ``ensemble``: the same of its fold ensembles (the k fold models'
  probabilities averaged, :mod:`geofuse.experiments.ensemble`; mean over seeds); each with a
  95% percentile bootstrap interval over test groups (:mod:`geofuse.evaluation.group_bootstrap`),
  recomputed from the predictions the cells saved (``test_predictions.npz``);
- ``val``: the cross-validation mean of the same metrics, for comparison;
- floors on the same test set: the majority class, i.e. always predicting the class most
  frequent in the cross-validation data (the training folds; a test set's own majority would
  need its labels, which a deployed model does not have; the test share of its own most
  frequent class is given beside it), and the random forest (the forest configuration on the
  same sensors, else the forest with the best test macro F1);
- a paired bootstrap over test groups of each configuration against the baseline (ensembles
  when both have them, else the fold-model means), two-sided p-values Holm-corrected across
  configurations;
- ``flags``: configurations whose fold-model test accuracy or macro F1 is below a floor.

Studies without saved predictions (evaluated before they existed) get the fold-model means
from the cells' metrics, without intervals, ensembles or paired tests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from geofuse.data.patchset import SPLIT_CODES
from geofuse.evaluation import group_bootstrap as gb
from geofuse.evaluation.metrics import confusion_matrix
from geofuse.evaluation.predictions import Predictions
from geofuse.evaluation.stats import holm
from geofuse.experiments.ensemble import (
    cell_predictions,
    ensemble_metrics,
    fold_ensembles,
    study_fold_ids,
)
from geofuse.reporting._study_load import Study

FOREST = "random_forest"
Scores = dict[str, tuple[float, np.ndarray]]


@dataclass
class TestData:
    """What the fold file tells about the test set (all folds share it)."""

    name: str
    external: bool
    indices: np.ndarray
    targets: np.ndarray
    codes: np.ndarray
    n_groups: int
    majority: np.ndarray  # (K,) one-hot (or label set) of the training folds' majority
    majority_label: str
    train_groups: int


def _fold_file(study_dir: Path) -> Path | None:
    files = sorted((study_dir / "folds").glob("fold*.h5"))
    return files[0] if files else None


def _fallback_name(study: Study) -> str:
    test = str(study.data.get("test") or "")
    if test.startswith("external: "):
        return test[len("external: "):].split(" (")[0]
    return _held_out_name(study)


def _held_out_name(study: Study) -> str:
    fraction = (study.config.get("ablation") or {}).get("test_fraction")
    return (f"held-out groups (ablation.test_fraction = {fraction})" if fraction
            else "held-out test split")


def read_test_data(study: Study) -> TestData | None:
    """The test patches, their groups and the training folds' majority from the study's fold
    file (read with h5py, without the patches); ``None`` without a fold file."""
    path = _fold_file(study.path)
    if path is None:
        return None
    with h5py.File(path, "r") as f:
        provenance = json.loads(f.attrs.get("provenance", "{}"))
        split, groups = f["split"][()], f["groups"][()]
        targets = f["multi_hot"][()] if "multi_hot" in f else f["y"][()]
        names = json.loads(f.attrs["class_names"])
    test = split == SPLIT_CODES["test"]
    external = provenance.get("external_test") or {}
    name = str(external["name"]) if external.get("name") else _held_out_name(study)
    codes, n_groups = gb.group_codes(np.char.decode(groups[test], "utf-8"))
    majority = np.zeros(len(names))
    train_targets = targets[~test]
    if targets.ndim == 2:
        rows, counts = np.unique(train_targets, axis=0, return_counts=True)
        majority[:] = rows[counts.argmax()] if len(rows) else 0
        label = " + ".join(n for n, v in zip(names, majority, strict=True) if v) or "no label"
    else:
        top = int(np.bincount(train_targets, minlength=len(names)).argmax())
        majority[top], label = 1.0, names[top]
    return TestData(name=name, external=bool(external), indices=np.flatnonzero(test),
                    targets=targets[test], codes=codes, n_groups=n_groups, majority=majority,
                    majority_label=label, train_groups=len(np.unique(groups[~test])))


def _interval(point: float, boot: np.ndarray | None) -> dict[str, float]:
    low, high = gb.percentile_ci(boot) if boot is not None else (float("nan"),) * 2
    return {"value": point, "ci_low": low, "ci_high": high}


def _summary(scores: Scores | None, points: Mapping[str, float] | None = None
             ) -> dict[str, dict[str, float]] | None:
    """{metric: {value, ci_low, ci_high}} of bootstrap scores (or plain points)."""
    if scores is not None:
        return {m: _interval(*scores[m]) for m in gb.METRICS}
    if points is not None:
        return {m: _interval(points[m], None) for m in gb.METRICS}
    return None


def _mean_metric(cells: list[dict[str, Any]], split: str, metric: str) -> float:
    values = [c[split][metric] for c in cells if isinstance(c.get(split), Mapping)
              and c[split].get(metric) is not None]
    return float(np.mean(values)) if values else float("nan")


@dataclass
class _Config:
    """Bootstrap scores of one configuration (kept out of the JSON)."""

    folds: Scores | None
    ensemble: Scores | None
    ensembles: list[Predictions]


def _config_scores(cid: str, cells: list[dict[str, Any]], preds: Mapping[Any, Predictions],
                   ensembles: Mapping[tuple[str, int], Predictions], data: TestData | None,
                   weights: np.ndarray | None) -> _Config:
    mine = [preds[k] for c in cells if (k := (cid, int(c["seed"]), int(c["fold"]))) in preds]
    ens = [p for (e_cid, _), p in ensembles.items() if e_cid == cid]
    if data is None or weights is None or not mine or len(mine) < len(cells):
        return _Config(None, None, ens)

    def scores(p: Predictions) -> Scores:
        return gb.model_scores(p.targets, p.probabilities, data.codes, data.n_groups, weights)

    return _Config(gb.mean_scores([scores(p) for p in mine]),
                   gb.mean_scores([scores(p) for p in ens]) if ens else None, ens)


def _aligned(preds: dict[Any, Predictions], data: TestData | None) -> dict[Any, Predictions]:
    """Predictions of exactly the fold file's test patches (others are left out)."""
    if data is None:
        return {}
    return {k: p for k, p in preds.items() if np.array_equal(p.indices, data.indices)}


def _forest_for(cid: str, rows: dict[str, dict[str, Any]], cells: dict[str, list[dict[str, Any]]]
                ) -> str | None:
    forests = [f for f in rows if cells[f][0].get("model") == FOREST]
    if not forests or cid in forests:
        return None
    same = [f for f in forests if cells[f][0].get("modalities") == cells[cid][0].get("modalities")]
    if same:
        return same[0]
    return max(forests, key=lambda f: np.nan_to_num(rows[f]["fold_models"]["f1_macro"]["value"],
                                                    nan=-1.0))


def _flag(cid: str, row: dict[str, Any], floors: dict[str, Any], forest: str | None,
          rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Where a configuration's fold-model test scores fall below a floor, with the gaps."""
    below = []
    refs = [("majority class", floors["majority"])]
    if forest is not None:
        refs.append((f"random forest {forest}", rows[forest]["fold_models"]))
    for label, ref in refs:
        for m in gb.METRICS:
            value, floor = row["fold_models"][m]["value"], ref[m]["value"]
            if np.isfinite(value) and np.isfinite(floor) and value < floor:
                below.append({"floor": label, "metric": m, "value": value, "floor_value": floor,
                              "gap": value - floor})
    return {"config_id": cid, "below": below} if below else None


def _comparisons(configs: dict[str, _Config], baseline: str | None, alpha: float
                 ) -> list[dict[str, Any]]:
    base = configs.get(baseline) if baseline else None
    if base is None or base.folds is None:
        return []
    out = []
    for cid, c in configs.items():
        if cid == baseline or c.folds is None:
            continue
        use_ens = c.ensemble is not None and base.ensemble is not None
        a, b = (c.ensemble, base.ensemble) if use_ens else (c.folds, base.folds)
        assert a is not None and b is not None
        row: dict[str, Any] = {"config_id": cid, "compared": "ensemble" if use_ens
                               else "fold models"}
        for m in gb.METRICS:
            diff = a[m][1] - b[m][1]
            low, high = gb.percentile_ci(diff)
            row[m] = {"diff": a[m][0] - b[m][0], "ci_low": low, "ci_high": high,
                      "p": gb.paired_p_value(diff)}
        out.append(row)
    for m in gb.METRICS:
        for row, p in zip(out, holm([r[m]["p"] for r in out]), strict=True):
            row[m]["p_holm"] = p
            row[m]["significant"] = bool(p < alpha)
    return out


def _confusion(c: _Config, cells: list[dict[str, Any]]) -> tuple[list[list[int]], str] | None:
    if c.ensembles and not c.ensembles[0].multilabel:
        k = c.ensembles[0].probabilities.shape[1]
        total = sum(confusion_matrix(p.targets, p.labels(), k) for p in c.ensembles)
        return np.asarray(total).tolist(), "fold ensemble"
    mats = [c_["test"]["confusion_matrix"] for c_ in cells
            if isinstance(c_.get("test"), Mapping) and c_["test"].get("confusion_matrix")]
    return (np.sum(mats, axis=0).tolist(), "fold models") if mats else None


def study_test_stats(study: Study, baseline: str | None, alpha: float = 0.05,
                   resamples: int = gb.RESAMPLES, seed: int = gb.SEED) -> dict[str, Any] | None:
    """The test-set section's figures (JSON-able; see the module docstring); ``None`` when no
    cell has test metrics."""
    tested = [c for c in study.cells if isinstance(c.get("test"), Mapping)]
    if not tested:
        return None
    data = read_test_data(study)
    preds = _aligned(cell_predictions(study.path, tested), data)
    ensembles, _ = fold_ensembles(preds, study_fold_ids(study.path))
    weights = gb.resample_weights(data.n_groups, resamples, seed) if data else None
    by_config = {cid: [c for c in tested if c["config_id"] == cid] for cid in study.config_ids}
    by_config = {cid: cells for cid, cells in by_config.items() if cells}
    configs = {cid: _config_scores(cid, cells, preds, ensembles, data, weights)
               for cid, cells in by_config.items()}
    rows: dict[str, dict[str, Any]] = {}
    for cid, cells in by_config.items():
        c = configs[cid]
        ens = [ensemble_metrics(p, study.class_names) for p in c.ensembles]
        points = {m: _mean_metric(cells, "test", m) for m in (*gb.METRICS, "map")}
        rows[cid] = {
            "n_models": len(cells), "n_ensembles": len(c.ensembles),
            "val": {m: _mean_metric(cells, "val", m) for m in gb.METRICS},
            "fold_models": _summary(c.folds, points), "ensemble": _summary(c.ensemble),
            "map": {"fold_models": points["map"], "ensemble": float(np.mean(
                [e["map"] for e in ens])) if ens and study.multilabel else float("nan")},
            "confusion": _confusion(c, cells) if not study.multilabel else None,
        }
    floors = _floors(data, weights, tested)
    forests = {cid: _forest_for(cid, rows, by_config) for cid in rows}
    flags = [f for cid, row in rows.items() if (f := _flag(cid, row, floors, forests[cid], rows))]
    best = max(rows, key=lambda cid: np.nan_to_num(_headline(rows[cid])["f1_macro"]["value"],
                                                   nan=-1.0))
    return {
        "name": data.name if data else _fallback_name(study),
        "external": bool(data.external) if data else str(study.data.get("test", "")).startswith(
            "external"),
        "n_patches": len(data.indices) if data else int(tested[0]["test"].get("n", 0)),
        "n_groups": data.n_groups if data else None,
        "train_groups": data.train_groups if data else None,
        "resamples": resamples if weights is not None else 0, "seed": seed,
        "has_predictions": bool(preds), "has_ensembles": bool(ensembles),
        "configs": rows, "floors": floors, "forest_for": forests, "best": best,
        "comparisons": _comparisons(configs, baseline, alpha), "baseline": baseline,
        "flags": flags, "alpha": alpha,
    }


def _headline(row: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The ensemble's figures when there is one, else the fold models' mean."""
    return row["ensemble"] or row["fold_models"]


def _floors(data: TestData | None, weights: np.ndarray | None, tested: list[dict[str, Any]]
            ) -> dict[str, Any]:
    """The majority-class floor (the training folds' majority class, or label set, predicted
    for every test patch) on the test set."""
    test_rate = _mean_metric(tested, "test", "majority_rate")
    if data is None or weights is None:
        return {"majority": {m: _interval(float("nan"), None) for m in gb.METRICS},
                "majority_label": None, "test_majority_rate": test_rate}
    probs = np.tile(data.majority, (len(data.targets), 1))  # one-hot rows: argmax = majority
    scores = gb.model_scores(data.targets, probs, data.codes, data.n_groups, weights)
    return {"majority": _summary(scores), "majority_label": data.majority_label,
            "test_majority_rate": test_rate}
