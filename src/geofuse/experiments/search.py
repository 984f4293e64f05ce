"""``geofuse search``: pilot-fold hyperparameter search, then full CV of winner and baseline.

Trials (grid or random combinations of ``search.space``) are trained on one fold
(``search.fold``) and ranked by validation macro F1 (IoU in segmentation studies). Then the
winner and the baseline config (the study config as written) are cross-validated over every
fold and seed with the ablation runner, so that paired statistics can compare them. Layout::

    <workdir>/<ablation.output>/<name>-search/
      search.json         space, method, fold, trials ranked (params, val metrics), best, baseline
      trials.csv          the ranked trial table
      pilot/              a study folder of the trials (config ids trial-00, trial-01, ...)
      study.json, cells/, results.csv, folds.json   CV of config ids 'baseline' and 'best'
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from geofuse.config import SearchConfig, StudyConfig
from geofuse.data.patchset import PatchSet
from geofuse.errors import ConfigError
from geofuse.experiments.ablation import (
    console,
    finish_study,
    load_patches,
    run_study,
    study_folds,
    study_path,
)
from geofuse.experiments.grid import Cell
from geofuse.io_utils import atomic_write_json, atomic_write_text

BASELINE_ID = "baseline"
BEST_ID = "best"


def search_trials(search: SearchConfig, seed: int) -> list[dict[str, Any]]:
    """Parameter combinations to try: every one (grid, capped by n_trials) or a random sample.

    Raises:
        ConfigError: the search space is empty.
    """
    if not search.space:
        raise ConfigError(
            "search.space is empty; add dotted keys with values to try, e.g. "
            "search: {space: {train.lr: [0.001, 0.0003]}}"
        )
    keys = list(search.space)
    combos = [dict(zip(keys, values, strict=True))
              for values in itertools.product(*(search.space[k] for k in keys))]
    if search.method == "random":
        n = min(search.n_trials or len(combos), len(combos))
        pick = np.random.default_rng(seed).choice(len(combos), size=n, replace=False)
        return [combos[i] for i in sorted(pick.tolist())]
    return combos[: search.n_trials] if search.n_trials else combos


def get_dotted(data: dict[str, Any], key: str) -> Any:
    """``data["a"]["b"]`` for ``key = "a.b"`` (None when missing)."""
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _modalities(cfg: StudyConfig) -> tuple[str, ...] | None:
    return tuple(cfg.train.modalities) if cfg.train.modalities else None


def _cells(
    cfg: StudyConfig, config_id: str, params: dict[str, Any], seeds: list[int], folds: list[int]
) -> list[Cell]:
    return [Cell(config_id, seed, fold, dict(params), _modalities(cfg), cfg.train.model.name)
            for seed in seeds for fold in folds]


def rank_trials(
    trials: list[dict[str, Any]], results: list[dict[str, Any]], metric: str = "f1_macro"
) -> list[dict[str, Any]]:
    """Trials with their pilot metrics, best validation ``metric`` first (macro F1; IoU in
    segmentation studies, R2 in regression studies; ties: earlier trial)."""
    by_id = {r["config_id"]: r for r in results}
    key = f"val_{metric}"
    rows = []
    for i, params in enumerate(trials):
        res = by_id.get(f"trial-{i:02d}") or {}
        val = res.get("val") or {}
        rows.append({"trial": f"trial-{i:02d}", "params": params, key: val.get(metric),
                     "val_accuracy": val.get("accuracy"),
                     "collapsed": (res.get("guard") or {}).get("collapsed"),
                     "duration_s": res.get("duration_s")})
    rows.sort(key=lambda r: -(r[key] if r[key] is not None else -math.inf))  # R2 may be < -1
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def _write_table(out_dir: Path, ranked: list[dict[str, Any]], progress: bool) -> None:
    frame = pd.DataFrame([{"rank": r["rank"], "trial": r["trial"], **r["params"],
                           **{k: v for k, v in r.items() if k.startswith("val_")},
                           "collapsed": r["collapsed"]} for r in ranked])
    atomic_write_text(out_dir / "trials.csv", frame.to_csv(index=False))
    if progress:
        table = Table(*[str(c) for c in frame.columns], title="pilot-fold search")
        for row in frame.itertuples(index=False):
            table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
        Console().print(table)


def run_search(
    cfg: StudyConfig, study_name: str | None = None, workers: int | None = None,
    ray_address: str | None = None, progress: bool = True, patchset: PatchSet | None = None,
) -> Path:
    """Search ``cfg.search.space`` on the pilot fold, then cross-validate winner and baseline.

    Returns:
        The search folder (``search.json``, ``trials.csv``, ``pilot/`` and the CV study).

    Raises:
        ConfigError: empty space or a pilot fold outside ``ablation.folds``.
        SplitError: the folds are impossible.
    """
    s = cfg.search
    if s.fold >= cfg.ablation.folds:
        raise ConfigError(
            f"search.fold = {s.fold} but ablation.folds = {cfg.ablation.folds}; pick a fold "
            f"between 0 and {cfg.ablation.folds - 1}"
        )
    from geofuse.preflight import check_grid

    trials = search_trials(s, cfg.seed)
    patches = load_patches(cfg, patchset)
    source = cfg.patches_path if patchset is None else None
    check_grid(cfg, patches, "search")  # every trial's model, options and names: before any
    folds = study_folds(cfg, patches)
    out_dir = study_path(cfg, study_name or f"{cfg.name}-search")
    pilot = [c for i, params in enumerate(trials)
             for c in _cells(cfg, f"trial-{i:02d}", params, [cfg.seed], [s.fold])]
    results = run_study(cfg, out_dir / "pilot", pilot, patches, folds, kind="search-pilot",
                        epochs=s.epochs or cfg.ablation.epochs, workers=workers,
                        ray_address=ray_address, progress=progress, source=source)
    metric = "iou" if patches.segmentation else "r2" if patches.regression else "f1_macro"
    ranked = rank_trials(trials, results, metric)
    data = cfg.model_dump(mode="json")
    baseline = {k: get_dotted(data, k) for k in s.space}
    best = ranked[0]["params"]
    record: dict[str, Any] = {
        "space": s.space, "method": s.method, "fold": s.fold, "metric": f"val_{metric}",
        "epochs": s.epochs or cfg.ablation.epochs or cfg.train.epochs,
        "trials": ranked, "best": {"trial": ranked[0]["trial"], "params": best},
        "baseline": {"params": baseline}, "winner_is_baseline": best == baseline,
        "cv_config_ids": {"baseline": BASELINE_ID, "best": BEST_ID},
    }
    atomic_write_json(out_dir / "search.json", record)
    _write_table(out_dir, ranked, progress)
    if not s.cross_validate:
        return out_dir
    seeds, all_folds = list(cfg.ablation.seeds or [cfg.seed]), list(range(cfg.ablation.folds))
    cells = _cells(cfg, BASELINE_ID, {}, seeds, all_folds)
    if best != baseline:
        cells += _cells(cfg, BEST_ID, best, seeds, all_folds)
    elif progress:
        console.print("the winner is the baseline config: cross-validating it once")
    run_study(cfg, out_dir, cells, patches, folds, kind="search",
              epochs=cfg.ablation.epochs, workers=workers, ray_address=ray_address,
              progress=progress, source=source,
              extra={"baseline_config_id": BASELINE_ID,
                     "search": {"best_params": best, "baseline_params": baseline,
                                "winner_is_baseline": best == baseline}})
    finish_study(out_dir, progress)
    return out_dir
