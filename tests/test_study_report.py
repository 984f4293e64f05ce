"""Study report: stats.json against scipy, report.md sections, self-contained report.html."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.errors import RunDirError
from geofuse.evaluation.metrics import classification_metrics
from geofuse.reporting.study_report import load_study, write_study_report

CLASSES = ["forest", "water", "urban"]
BASELINE = "s2/simple_cnn"
CONFIGS = {  # config_id -> (modalities, accuracy of the simulated predictions)
    "s2/simple_cnn": (["s2"], 0.70),
    "s2+dem/simple_cnn": (["s2", "dem"], 0.85),
    "dem/simple_cnn": (["dem"], 0.45),
}
SEEDS, FOLDS = [0, 1], [0, 1, 2]
COLLAPSED = ("dem/simple_cnn", 1, 2)


def _metrics(rng: np.random.Generator, accuracy: float, n: int = 60) -> dict[str, Any]:
    y = np.arange(n) % len(CLASSES)
    pred = np.where(rng.random(n) < accuracy, y, rng.integers(0, len(CLASSES), n))
    return classification_metrics(y, pred, CLASSES)


def _history(rng: np.random.Generator, peak: float, epochs: int = 8) -> list[dict[str, Any]]:
    rows = []
    for e in range(1, epochs + 1):
        f1 = peak * min(1.0, e / 5) - 0.02 * max(0, e - 5) + 0.01 * rng.standard_normal()
        rows.append({"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e + 0.01 * e,
                     "val_accuracy": f1, "val_f1_macro": f1, "train_accuracy": min(1, f1 + 0.1)})
    return rows


def make_study(root: Path, baseline: str | None = BASELINE, test: bool = True) -> Path:
    """A study directory exactly as the ablation runner writes it (seeded, deterministic)."""
    rng = np.random.default_rng(0)
    grid = {"configs": [{"config_id": cid, "modalities": m, "model": "simple_cnn",
                         "options": {}} for cid, (m, _) in CONFIGS.items()],
            "seeds": SEEDS, "folds": len(FOLDS), "group_by": "polygon", "test": test}
    study = {"name": "fusion-ablation", "config": {"name": "fusion-ablation", "seed": 42,
                                                   "train": {"epochs": 8, "lr": 0.001}},
             "grid": grid, "baseline": baseline,
             "data": {"class_names": CLASSES, "class_counts": {"forest": 90, "water": 60,
                                                               "urban": 30},
                      "n_patches": 180, "bands": ["B2", "B3", "B4", "B8", "elevation"],
                      "modalities": {"s2": ["B2", "B3", "B4", "B8"], "dem": ["elevation"]},
                      "grid": {"crs": "EPSG:32718", "res": 10.0}}}
    (root / "cells").mkdir(parents=True)
    (root / "study.json").write_text(json.dumps(study))
    for cid, (mods, acc) in CONFIGS.items():
        for seed in SEEDS:
            for fold in FOLDS:
                val = _metrics(rng, acc + 0.03 * fold)
                history = _history(rng, val["f1_macro"])
                collapsed = (cid, seed, fold) == COLLAPSED
                cell = {"config_id": cid, "modalities": mods, "model": "simple_cnn",
                        "options": {}, "seed": seed, "fold": fold, "val": val,
                        "test": _metrics(rng, acc) if test else None,
                        "guard": {"collapsed": collapsed, "diagnosis": "flat loss" if collapsed
                                  else "", "reasons": ["val: predicts 'forest' for 95%"]
                                  if collapsed else []},
                        "history": history, "best_epoch": 5, "final_epoch": 8,
                        "best_val_f1_macro": max(r["val_f1_macro"] for r in history),
                        "final_val_f1_macro": history[-1]["val_f1_macro"],
                        "train_val_gap": 0.1, "duration_s": 1.5,
                        "importance": {"modality": {m: {"mean": 0.2 / len(mods), "std": 0.01}
                                                    for m in mods},
                                       "band": {"B4": {"mean": 0.1, "std": 0.02}}}}
                slug = f"{cid.replace('/', '__').replace('+', '-')}__s{seed}__f{fold}"
                (root / "cells" / f"{slug}.json").write_text(json.dumps(cell))
    return root


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_study(tmp_path_factory.mktemp("study") / "fusion")
    write_study_report(root)
    return root


def _fold_means(root: Path, cid: str) -> list[float]:
    cells = [json.loads(p.read_text()) for p in (root / "cells").glob("*.json")]
    return [np.mean([c["val"]["f1_macro"] for c in cells
                     if c["config_id"] == cid and c["fold"] == f]) for f in FOLDS]


def _strict(text: str) -> Any:
    def reject(value: str) -> None:
        raise AssertionError(f"non-standard JSON constant {value}")
    return json.loads(text, parse_constant=reject)


def test_stats_json_matches_scipy_on_the_cells(study_dir: Path) -> None:
    s = _strict((study_dir / "stats.json").read_text())
    assert s["unit"] == "fold" and s["baseline"] == BASELINE and s["best"] == "s2+dem/simple_cnn"
    base = _fold_means(study_dir, BASELINE)
    p_values = []
    for row in s["comparisons"]:
        cand = _fold_means(study_dir, row["config_id"])
        assert row["n"] == len(FOLDS)
        assert row["p_t"] == pytest.approx(sps.ttest_rel(cand, base).pvalue)
        assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(np.subtract(cand, base)).pvalue)
        assert row["diff"] == pytest.approx(np.mean(cand) - np.mean(base))
        p_values.append(row["p_t"])
    lo, hi = sorted(p_values)
    holm_hand = {lo: min(1, 2 * lo), hi: max(min(1, 2 * lo), hi)}
    for row in s["comparisons"]:
        assert row["p_holm"] == pytest.approx(holm_hand[row["p_t"]])
        assert row["significant"] == (row["p_holm"] < 0.05)
    summary = s["configs"][BASELINE]
    assert summary["mean"] == pytest.approx(np.mean(base))
    assert summary["std"] == pytest.approx(np.std(base, ddof=1))
    assert summary["ci_high"] == pytest.approx(
        sps.t.interval(0.95, 2, loc=np.mean(base), scale=sps.sem(base))[1])
    assert s["collapsed"] == [{"config_id": "dem/simple_cnn", "seed": 1, "fold": 2,
                               "reasons": ["val: predicts 'forest' for 95%"],
                               "diagnosis": "flat loss"}]
    assert np.sum(s["confusion"][BASELINE]) == 60 * len(SEEDS) * len(FOLDS)
    assert s["importance"]["s2+dem/simple_cnn"]["modality"]["dem"]["mean"] == pytest.approx(0.1)


def test_report_md_has_every_section(study_dir: Path) -> None:
    text = (study_dir / "report.md").read_text()
    for heading in ("# Study report: fusion-ablation", "## Results",
                    "## Significance against the baseline", "## Per-class F1",
                    "## Confusion matrices", "## Training curves and overfitting",
                    "## Sensor contribution", "## Data", "## Reproduce", "### Test split"):
        assert heading in text
    assert "> [!CAUTION]" in text and "MODEL COLLAPSE DETECTED in 1 cell(s)" in text
    assert "**dem/simple_cnn** seed 1 fold 2: val: predicts 'forest' for 95%" in text
    assert "| configuration | n | diff | 95% CI of diff | p_t | p_wilcoxon | p_holm | d |" in text
    assert "| forest | 90 |" in text and "folds: 3, grouped by `polygon`" in text
    assert "```yaml\nname: fusion-ablation\nseed: 42\n" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"plots/ablation.png", "plots/per_class_f1.png", "plots/confusion_baseline.png",
            "plots/confusion_best.png", "plots/training_curves.png",
            "plots/importance_modality.png"} <= set(links)
    for link in links:
        assert (study_dir / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_html_is_self_contained(study_dir: Path) -> None:
    page = (study_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    md_links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (study_dir / "report.md").read_text())
    assert len(images) == len(md_links) >= 6
    disk = {(study_dir / link).read_bytes() for link in md_links}
    assert {base64.b64decode(b, validate=True) for b in images} == disk
    assert page.count("<table>") >= 6 and 'class="alert caution"' in page
    assert "<td>s2+dem/simple_cnn</td>" in page and "<strong>yes</strong>" in page


def test_loader_tolerates_missing_optional_keys_and_lists_bad_cells(tmp_path: Path) -> None:
    root = tmp_path / "s"
    (root / "cells").mkdir(parents=True)
    (root / "study.json").write_text(json.dumps({"baseline": "a"}))
    rng = np.random.default_rng(1)
    for cid, acc in (("a", 0.6), ("b", 0.8)):
        for fold in range(3):
            (root / "cells" / f"{cid}{fold}.json").write_text(json.dumps(
                {"config_id": cid, "seed": 0, "fold": fold, "val": _metrics(rng, acc)}))
    (root / "cells" / "broken.json").write_text("{not json")
    (root / "cells" / "noval.json").write_text(json.dumps({"config_id": "a", "seed": 1,
                                                           "fold": 0}))
    study = load_study(root)
    assert study.name == "s" and study.class_names == CLASSES and study.config_ids == ["a", "b"]
    assert len(study.cells) == 6 and len(study.skipped) == 2
    md = write_study_report(root).read_text()
    assert "2 cell file(s) skipped" in md and "`broken.json`: unreadable JSON" in md
    assert "Not computed for this study." in md and "Collapse guard: passed" in md
    stats = _strict((root / "stats.json").read_text())
    assert stats["comparisons"][0]["config_id"] == "b" and stats["test"] == {}


def test_no_baseline_and_degenerate_study_do_not_crash(tmp_path: Path) -> None:
    root = make_study(tmp_path / "nb", baseline=None, test=False)
    md = write_study_report(root).read_text()
    assert "No baseline configuration named" in md and "### Test split" not in md
    single = tmp_path / "single"
    (single / "cells").mkdir(parents=True)
    (single / "study.json").write_text(json.dumps({"baseline": "a"}))
    for cid in ("a", "b"):
        (single / "cells" / f"{cid}.json").write_text(json.dumps(
            {"config_id": cid, "seed": 0, "fold": 0,
             "val": classification_metrics(np.array([0, 1]), np.array([0, 1]), ["x", "y"])}))
    write_study_report(single)
    row = _strict((single / "stats.json").read_text())["comparisons"][0]
    assert row["p_t"] is None and not row["significant"] and "no test" in row["note"]


def test_missing_study_raises_actionable_error(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=r"study\.json"):
        load_study(tmp_path)
    (tmp_path / "study.json").write_text("{}")
    with pytest.raises(RunDirError, match="no usable cell"):
        load_study(tmp_path)


def test_cli_report_writes_study_report(tmp_path: Path) -> None:
    root = make_study(tmp_path / "cli")
    result = CliRunner().invoke(app, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert (root / "report.html").is_file() and (root / "stats.json").is_file()
    assert not math.isnan(_strict((root / "stats.json").read_text())["configs"][BASELINE]["mean"])


def test_runner_layout_is_read_too(tmp_path: Path) -> None:
    """The runner's spelling: baseline_config_id, grid.config_ids/cells, overfitting block."""
    root = make_study(tmp_path / "runner")
    flat = json.loads((root / "study.json").read_text())
    cells = []
    for path in sorted((root / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        best, final = cell.pop("best_val_f1_macro"), cell.pop("final_val_f1_macro")
        cell["overfitting"] = {"best_epoch": cell.pop("best_epoch"),
                               "final_epoch": cell.pop("final_epoch"),
                               "best": {"val_f1_macro": best, "gap_accuracy": cell.pop(
                                   "train_val_gap") + 0.2}, "final": {"val_f1_macro": final}}
        cell["slug"], cell["bands"] = path.stem, ["B4", "elevation"]
        path.write_text(json.dumps(cell))
        cells.append({k: cell[k] for k in ("slug", "config_id", "seed", "fold")})
    cells.append({"slug": "pending__seed9__fold0", "config_id": BASELINE, "seed": 9, "fold": 0})
    (root / "cells" / "stale__seed0__fold0.json").write_text(json.dumps(
        {"config_id": "old/model", "seed": 0, "fold": 0, "val": {"f1_macro": 0.1}}))
    (root / "study.json").write_text(json.dumps({
        "name": "runner", "baseline_config_id": BASELINE, "class_names": CLASSES,
        "grid": {"config_ids": list(CONFIGS), "seeds": SEEDS, "folds": FOLDS, "cells": cells},
        "folds": {"n_folds": 3, "group_by": "polygon"}, "config": flat["config"]}))
    study = load_study(root)
    assert study.baseline == BASELINE and study.config_ids == list(CONFIGS)
    assert len(study.cells) == 18 and "old/model" not in study.config_ids
    assert study.skipped == ["`pending__seed9__fold0.json`: not finished (no result file)"]
    md = write_study_report(root).read_text()
    s = _strict((root / "stats.json").read_text())
    assert s["overfitting"][BASELINE]["gap"] == pytest.approx(0.3)
    assert "train accuracy exceeds validation by 0.300" in md
    assert "folds: 3, grouped by `polygon`" in md and "bands (2): `B4`, `elevation`" in md
    assert "cells:" not in md.split("Ablation grid:")[1]
    assert len(s["comparisons"]) == 2
