"""A report of an unfinished study compares only configurations with the same finished cells
as the baseline, names no "best" measured on fewer folds, and says what is missing."""

from __future__ import annotations

import json
from pathlib import Path

from geofuse.reporting.study_report import compute_study_stats, load_study, write_study_report
from test_study_report import BASELINE, CONFIGS, FOLDS, SEEDS, make_study

PARTIAL = "s2+dem/simple_cnn"  # the strongest configuration, cut to fold 0


def _runner_grid(root: Path, config_file: str) -> None:
    """Give study.json the runner's cell list (the whole grid) and drop PARTIAL's later folds."""
    meta = json.loads((root / "study.json").read_text())
    cells = []
    for path in sorted((root / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        cells.append({"slug": path.stem, **{k: cell[k] for k in ("config_id", "seed", "fold")}})
        if cell["config_id"] == PARTIAL and cell["fold"] > 0:
            path.unlink()
    meta["grid"]["cells"] = cells
    meta.update(kind="ablation", config_file=config_file)
    (root / "study.json").write_text(json.dumps(meta))


def test_unfinished_study_ranks_only_comparable_configurations(tmp_path: Path) -> None:
    root = make_study(tmp_path / "study")
    full = compute_study_stats(load_study(root))
    assert full["best"] == PARTIAL and full["completeness"]["finished"]

    _runner_grid(root, "/data/my_study.yaml")
    s = compute_study_stats(load_study(root))
    total = len(CONFIGS) * len(SEEDS) * len(FOLDS)
    assert s["completeness"]["done"] == total - len(SEEDS) * (len(FOLDS) - 1)
    assert s["completeness"]["total"] == total and not s["completeness"]["finished"]
    assert PARTIAL not in s["completeness"]["comparable"] and s["best"] != PARTIAL
    assert s["best"] in s["completeness"]["comparable"]
    assert PARTIAL not in [c["config_id"] for c in s["comparisons"]]
    assert s["configs"][PARTIAL]["n"] == 1  # still shown, with its one fold

    md = write_study_report(root).read_text()
    assert "UNFINISHED STUDY" in md and f"left out: {PARTIAL}" in md
    assert f"{PARTIAL}: missing seed 0 fold 1, seed 0 fold 2" in md
    assert "geofuse ablate -c /data/my_study.yaml" in md
    assert f"Best configuration: **{s['best']}**" in md and BASELINE in md
