"""Per-pixel scikit-learn baselines on segmentation PatchSets (geofuse.models.pixel_forest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import StudyConfig, parse_config
from geofuse.data.datasets.land_take import make_land_take
from geofuse.data.patchset import MASK_IGNORE, PatchSet
from geofuse.data.splits import assign_splits
from geofuse.evaluation.evaluate import evaluate_run
from geofuse.models.pixel_forest import MODEL_FILE, pixel_features, sample_pixels
from geofuse.rundir import RunDir, read_history
from geofuse.training.train import train_model

TINY = {"decoder_channels": [16, 8, 8, 8, 8]}


def _land_take() -> PatchSet:
    """20 tiles of 16 px, 3 annual dates; splits stratified by change level."""
    patches = make_land_take(n_tiles=20, years=3, size=16, seed=0)
    patches.split = assign_splits(patches.y, patches.groups, 0.3, 0.2, seed=0,
                                  class_names=patches.class_names)
    return patches


def _last_date(patches: PatchSet) -> PatchSet:
    """The same tiles, splits and masks with only the last date's bands."""
    bands = patches.band_names[-len(patches.step_bands):]
    return PatchSet(x=patches.x[:, -len(bands):], y=patches.y, band_names=bands,
                    modalities={"s2": bands}, class_names=patches.class_names,
                    groups=patches.groups, coords=patches.coords, split=patches.split,
                    masks=patches.masks, mask_names=patches.mask_names,
                    timestamps=[patches.timestamps[-1]] if patches.timestamps else None)


def _config(root: Path, patches: PatchSet, run_name: str, **train: Any) -> StudyConfig:
    data = {
        "name": "lt", "workdir": "work", "seed": 3,
        "modalities": [{"name": "s2", "files": ["s2.tif"], "bands": patches.step_bands}],
        "train": {"model": {"name": "random_forest"}, "run_name": run_name,
                  "baseline": {"n_estimators": 40}, **train},
    }
    return parse_config(data, root)


@pytest.fixture(scope="module")
def patches() -> PatchSet:
    return _land_take()


@pytest.fixture(scope="module")
def forest_run(tmp_path_factory: pytest.TempPathFactory, patches: PatchSet) -> RunDir:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pixel_forest")
    return RunDir(train_model(_config(root, patches, "full"), patchset=patches, progress=False))


def test_pixel_features_fill_nan_and_summarise_each_band_over_time() -> None:
    # one pixel, 3 dates x bands (a, b); band b has no value at all, band a misses date 1
    values = np.array([[1.0, np.nan, np.nan, np.nan, 5.0, np.nan]], dtype=np.float32)
    means = np.array([2.0, 7.0, 2.0, 7.0, 2.0, 7.0])
    series = pixel_features(values, means, time_steps=3, kind="pixels")
    assert series.tolist() == [[1.0, 7.0, 2.0, 7.0, 5.0, 7.0]]
    feats = pixel_features(values, means, time_steps=3, kind="stats")
    assert feats.shape == (1, 6 + 5 * 2)
    # mean, std, min, max over the dates with a value (a: 1 and 5; b: the filled 7s), last-first
    np.testing.assert_allclose(feats[0, 6:], [3.0, 7.0, 2.0, 0.0, 1.0, 7.0, 5.0, 7.0, 4.0, 0.0])
    single = pixel_features(values[:, :2], means[:2], time_steps=1, kind="stats")
    assert single.shape == (1, 2)  # one date: nothing to summarise


def test_training_pixels_are_labelled_capped_and_seeded() -> None:
    masks = np.zeros((3, 4, 4), dtype=np.uint8)
    masks[0, :2] = 1
    masks[1] = MASK_IGNORE
    tile, row, col = sample_pixels(masks, max_pixels=100, seed=0)
    assert len(tile) == 32 and not (masks[tile, row, col] == MASK_IGNORE).any()
    capped = sample_pixels(masks, max_pixels=10, seed=0)
    assert len(capped[0]) == 10 and not (masks[capped] == MASK_IGNORE).any()

    def flat(pixels: tuple[np.ndarray, ...]) -> list[int]:
        return np.ravel_multi_index(pixels, masks.shape).tolist()

    assert flat(capped) == flat(sample_pixels(masks, 10, seed=0))
    assert flat(capped) != flat(sample_pixels(masks, 10, seed=1))


def test_a_pixel_forest_leaves_a_segmentation_run_directory(
    forest_run: RunDir, patches: PatchSet
) -> None:
    run = forest_run
    info = json.loads(run.run_json.read_text())
    assert info["status"] == "finished" and info["task"] == "segmentation"
    assert info["num_features"] == 27 + 5 * 9  # 3 dates x 9 bands, 5 summaries per band
    labelled = patches.masks[patches.split_indices("train")] != MASK_IGNORE
    assert info["train_pixels"] == int(labelled.sum())  # fewer than max_pixels: all of them
    metrics = json.loads(run.metrics.read_text())
    assert metrics["checkpoint"] == MODEL_FILE and metrics["guard"]["collapsed"] is False
    for split in ("val", "test"):
        m = metrics[split]
        assert m["segmentation"] is True and 0 <= m["iou"] <= 1
        assert m["n"] == len(patches.split_indices(split)) == m["per_tile"]["n_tiles"]
        with np.load(run.path / f"{split}_masks.npz") as saved:
            assert saved["pred"].shape == (m["n"], 16, 16) and saved["pred"].dtype == np.uint8
            assert saved["probability"].shape == (m["n"], 16, 16)
            np.testing.assert_array_equal(saved["indices"], patches.split_indices(split))
            assert ((saved["probability"] > 0.5) == (saved["pred"] == 1)).mean() > 0.99
    (row,) = read_history(run.history)
    assert row["val_iou"] == pytest.approx(metrics["val"]["iou"])
    assert row["train_iou"] > 0.9 and row["val_loss"] > 0
    report = run.report.read_text()
    assert "`random_forest`" in report and "| IoU |" in report
    assert (run.plots / "masks_val.png").is_file()
    again = evaluate_run(run.path, verbose=False)
    assert again["val"] == metrics["val"] and again["test"] == metrics["test"]


def test_the_time_series_beats_the_last_date_alone(
    forest_run: RunDir, patches: PatchSet, tmp_path: Path
) -> None:
    # old and new built-up land look alike in any single image: only the series tells them
    last = RunDir(train_model(_config(tmp_path, patches, "last"), patchset=_last_date(patches),
                              progress=False))
    full = json.loads(forest_run.metrics.read_text())["val"]["iou"]
    single = json.loads(last.metrics.read_text())["val"]["iou"]
    assert json.loads(last.run_json.read_text())["num_features"] == 9
    assert full > single + 0.2, (full, single)  # measured 0.78 vs 0.35


def test_logistic_regression_per_pixel_with_a_pixel_cap(
    patches: PatchSet, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, patches, "lr", model={"name": "logistic_regression"},
                  baseline={"features": "pixels", "max_pixels": 500, "max_iter": 200})
    run = RunDir(train_model(cfg, patchset=patches, progress=False))
    info = json.loads(run.run_json.read_text())
    assert info["train_pixels"] == 500 and info["num_features"] == 27
    assert info["model"]["kwargs"]["max_pixels"] == 500
    metrics = json.loads(run.metrics.read_text())
    assert metrics["val"]["segmentation"] and 0 <= metrics["test"]["iou"] <= 1
    assert (run.path / "test_masks.npz").is_file()


def test_a_study_compares_the_pixel_forest_with_a_network(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = {
        "name": "lt", "workdir": "work", "seed": 1,
        "dataset": {"name": "land_take_synthetic", "n_tiles": 20, "years": 3},
        "extract": {"patch_size": 16},
        "splits": {"val_fraction": 0.3, "test_fraction": 0.2},
        "train": {"model": {"name": "unet_early"}, "epochs": 1, "batch_size": 16,
                  "monitor": "val_iou", "baseline": {"n_estimators": 20}},
        "ablation": {"folds": 2, "group_by": "polygon", "importance": True, "models": [
            {"name": "random_forest", "label": "forest"},
            {"name": "unet_early", "options": TINY, "label": "early"}]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    for command in ("extract", "ablate"):
        result = CliRunner().invoke(app, [command, "-c", str(path)])
        assert result.exit_code == 0, result.output
    study = tmp_path / "work" / "studies" / "lt"
    assert json.loads((study / "study.json").read_text())["primary_metric"] == "iou"
    md = (study / "report.md").read_text()
    assert "Main metric: **iou**" in md and "forest" in md and "early" in md
    cells = [json.loads(p.read_text()) for p in sorted((study / "cells").glob("*.json"))]
    assert len(cells) == 4 and all(c["importance"] is None for c in cells)
    forest = [c for c in cells if c["model"] == "random_forest"]
    assert len(forest) == 2 and all(0 <= c["val"]["iou"] <= 1 for c in forest)
    results = (study / "results.csv").read_text().splitlines()[0]
    assert "val_iou" in results
