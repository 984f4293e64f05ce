"""Reports of multi-label data: the study report's columns and sections, `geofuse show` counts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from factories import make_config, make_multilabel_patchset
from geofuse.data.patchset import UNASSIGNED, PatchSet
from geofuse.errors import ConfigError, DataNotFoundError
from geofuse.experiments.ablation import run_ablation
from geofuse.reporting._study_data_figures import sample_patches
from geofuse.reporting.show import (
    _fold_figures,
    class_balance_counts,
    class_members,
    plot_class_balance,
    plot_sample_grid,
    show,
)
from geofuse.reporting.study_report import write_study_report

SPLITS = {"train": 0, "val": 1, "test": 2}


@pytest.fixture(scope="module")
def ml_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PatchSet]:
    """A tiny multi-label study: 2 configurations x 2 folds, one epoch (a few seconds)."""
    root = tmp_path_factory.mktemp("mlstudy")
    cfg = make_config(root, epochs=1, batch_size=16, model={"hidden": 8})
    cfg.ablation.folds = 2
    cfg.ablation.models = ["simple_cnn"]
    patches = make_multilabel_patchset(n=48)
    return Path(run_ablation(cfg, progress=False, patchset=patches)), patches


def _cells(study_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((study_dir / "cells").glob("*.json"))]


def _section(md: str, heading: str) -> str:
    return md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _bar_heights(fig: Any) -> list[list[int]]:
    """Heights of each bar group (one container per split/fold) of the figure's axes."""
    return [[round(b.get_height()) for b in c] for c in fig.axes[0].containers]


def test_multilabel_study_report_columns_and_sections(ml_study: tuple[Path, PatchSet]) -> None:
    study_dir, patches = ml_study
    md = write_study_report(study_dir).read_text()
    header = next(line for line in _section(md, "Results").splitlines()
                  if line.startswith("| configuration"))
    for column in ("mean f1_macro", "mean subset accuracy", "mean micro F1", "mean sample F1",
                   "mean mAP"):
        assert column in header
    assert "mean accuracy" not in header
    assert "subset accuracy is the share of patches" in md and "reaches 0.5" in md
    assert "Confusion matrices" not in md
    assert "## Per-class average precision" in md and (study_dir / "plots/per_class_ap.png"
                                                        ).is_file()
    assert "## Per-class F1" in md and "## Significance against the baseline" in md
    # the mAP column is the mean over cells of each cell's val mAP
    cells = _cells(study_dir)
    stats = json.loads((study_dir / "stats.json").read_text())
    assert stats["multilabel"] is True
    for cid, summary in stats["multilabel_means"]["map"].items():
        want = np.mean([c["val"]["map"] for c in cells if c["config_id"] == cid])
        assert summary["mean"] == pytest.approx(want)
    # Data: patches holding each class, overall and per fold
    data = _section(md, "Data")
    assert "patches holding it" in data and "counts once under each" in data
    holding = patches.multi_hot.sum(axis=0)
    assert holding.sum() > len(patches)  # some patches hold several classes
    for k, name in enumerate(patches.class_names):
        row = re.search(rf"^\| {name} \| (\d+) \| (\d+) \| (\d+) \|$", data, re.MULTILINE)
        assert row is not None, data
        assert int(row[1]) == holding[k] == int(row[2]) + int(row[3])


@pytest.mark.parametrize("metric", ["map", "f1_micro"])
def test_multilabel_study_report_other_metric(ml_study: tuple[Path, PatchSet],
                                              metric: str) -> None:
    study_dir, _ = ml_study
    md = write_study_report(study_dir, metric=metric).read_text()
    assert f"Main metric: **{metric}**" in md and f"| mean {metric} |" in md
    stats = json.loads((study_dir / "stats.json").read_text())
    assert stats["metric"] == metric
    cells = _cells(study_dir)
    for cid, summary in stats["configs"].items():
        want = np.mean([c["val"][metric] for c in cells if c["config_id"] == cid])
        assert summary["mean"] == pytest.approx(want)
    write_study_report(study_dir)  # leave the default report for the other tests


def test_study_report_unknown_metric_names_the_choices(ml_study: tuple[Path, PatchSet]) -> None:
    with pytest.raises(ConfigError, match=r"'mAP'.*'map'"):
        write_study_report(ml_study[0], metric="mAP")


def test_study_sample_patches_hold_their_class(ml_study: tuple[Path, PatchSet]) -> None:
    fold = ml_study[0] / "folds" / "fold0.h5"
    sample = sample_patches(fold, per_class=3)
    assert sample.multilabel
    for k in range(sample.num_classes):
        assert class_members(sample, k).size >= 3


def test_show_class_balance_counts_patches_holding_each_class() -> None:
    patches = make_multilabel_patchset(n=50)
    counts = class_balance_counts(patches)
    assert list(counts) == ["train", "val", "test"]
    fig = plot_class_balance(patches)
    for heights, (name, (size, per_class)) in zip(_bar_heights(fig), counts.items(),
                                                   strict=True):
        mask = patches.split == SPLITS[name]
        want = patches.multi_hot[mask].sum(axis=0)
        assert size == mask.sum()
        assert [per_class[c] for c in patches.class_names] == want.tolist() == heights
        assert want.tolist() != np.bincount(patches.y[mask], minlength=4).tolist()
    assert fig.axes[0].get_ylabel() == "patches holding the class"


def test_show_class_balance_without_splits() -> None:
    patches = make_multilabel_patchset(n=20)
    patches.split[:] = UNASSIGNED
    assert class_balance_counts(patches) == {
        "all": (20, dict(zip(patches.class_names, patches.multi_hot.sum(0).tolist(),
                             strict=True)))}
    patches.split[:10] = 0
    assert list(class_balance_counts(patches)) == ["train", "unassigned"]
    assert len(_bar_heights(plot_class_balance(patches))) == 2


def test_show_sample_grid_rows_hold_the_class() -> None:
    patches = make_multilabel_patchset(n=50)
    for k in range(patches.num_classes):
        assert class_members(patches, k).tolist() == np.flatnonzero(
            patches.multi_hot[:, k]).tolist()
    fig = plot_sample_grid(patches, per_class=4)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == [f"{name}\n(n={n})" for name, n in zip(
        patches.class_names, patches.multi_hot.sum(0), strict=True)]


def test_show_multilabel_patchset_writes_balance(tmp_path: Path) -> None:
    path = make_multilabel_patchset(n=40).save(tmp_path / "bigearth.h5")
    written = show(path, out_dir=tmp_path / "out")
    assert tmp_path / "out" / "bigearth_class_balance.png" in written
    assert tmp_path / "out" / "bigearth_samples_true_colour.png" in written


def test_show_study_dir_adds_balance_per_fold(ml_study: tuple[Path, PatchSet],
                                             tmp_path: Path) -> None:
    study_dir, patches = ml_study
    written = show(study_dir, out_dir=tmp_path)
    names = sorted(p.name for p in written)
    assert "fold0_class_balance_per_fold.png" in names and "fold0_class_balance.png" in names
    fig = _fold_figures(study_dir, multilabel=True)["class_balance_per_fold"]
    folds = json.loads((study_dir / "study.json").read_text())["data"]["split_counts"]
    heights = _bar_heights(fig)
    assert heights == [[folds[f][c] for c in patches.class_names] for f in folds]
    assert np.sum(heights, axis=0).tolist() == patches.multi_hot.sum(0).tolist()


def test_show_plain_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"study\.json"):
        show(tmp_path)
