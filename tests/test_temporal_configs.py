"""The ready temporal configs: the land-take experiment and the eo-learn Slovenia patch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from typer.testing import CliRunner

from factories import ready_config_copy
from geofuse.cli import app
from geofuse.config import load_config
from geofuse.data.datasets.build import build_dataset_patches
from geofuse.data.patchset import MASK_IGNORE, PatchSet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LAND_TAKE = CONFIGS / "land_take.yaml"
SLOVENIA = CONFIGS / "eolearn_slovenia.yaml"


def test_land_take_config_is_the_experiment(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["config", "--check", str(LAND_TAKE)])
    assert result.exit_code == 0, result.output
    cfg = load_config(LAND_TAKE)
    assert cfg.train.model.name == "lstm_unet" and cfg.train.monitor == "val_iou"
    assert cfg.train.loss.name == "focal" and cfg.train.loss.class_weights == [0.75, 0.25]
    assert set(cfg.search.space) == {"train.lr", "train.optimizer", "train.scheduler",
                                     "train.model.lstm_hidden_dim"}
    cfg.workdir = str(tmp_path)
    patches = build_dataset_patches(cfg)
    assert patches.x.shape == (50, 7 * 9, 64, 64) and patches.time_steps == 7
    assert patches.timestamps == [str(y) for y in range(2018, 2025)]
    levels = np.bincount(patches.y, minlength=3)
    assert levels.min() >= 5 and levels[1] == levels.max()  # mostly moderate, as the experiment


def test_slovenia_config_runs_a_temporal_study_on_the_real_patch(
        tmp_path: Path, shared_data: Path) -> None:
    """extract + ablate (1 epoch, 2 folds): an LSTM-UNet and a per-pixel forest on the NDVI
    series of the real EOPatch produce masks of the tiles' shape, scored per pixel."""
    torch.set_num_threads(1)
    root = shared_data / "eolearn_slovenia" / "TestEOPatch"
    path = ready_config_copy(SLOVENIA, tmp_path, root)
    data = yaml.safe_load(path.read_text())
    data["train"].update(epochs=1)
    data["train"]["baseline"] = {"n_estimators": 10, "max_pixels": 5000}
    path.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    for command in (["extract", "-c", str(path)], ["ablate", "-c", str(path), "--name", "smoke"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    study = tmp_path / "work" / "studies" / "smoke"
    cells = [json.loads(f.read_text()) for f in sorted((study / "cells").glob("*.json"))]
    assert {c["config_id"] for c in cells} == {"s2/lstm_unet", "s2/random_forest"}
    assert len(cells) == 4
    for cell in cells:
        val = cell["val"]
        assert val["segmentation"] and 0 <= val["iou"] <= 1 and len(val["per_class"]) >= 3
        run = study / cell["run_dir"]
        masks = np.load(run / "val_masks.npz")
        assert masks["pred"].shape == (val["n"], 16, 16)
        assert set(np.unique(masks["pred"])) <= set(range(len(val["per_class"])))
    p = PatchSet.load(tmp_path / "work" / "patches.h5")
    assert p.time_steps == 10 and (p.masks == MASK_IGNORE).any()
    assert "Main metric: **iou**" in (study / "report.md").read_text()
