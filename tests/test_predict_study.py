"""``geofuse predict STUDY_DIR``: the fold models of the study's best configuration map as an
ensemble whose spread is an uncertainty band; a study without checkpoints says how to keep them.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.experiments.ablation import run_ablation
from geofuse.mapping.predict import PredictOptions, predict_map
from test_predict import patchset, read, study_config, write_stack

runner = CliRunner()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-fold study of one configuration, trained one epoch per cell, checkpoints kept."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("study")
    stack = write_stack(root / "stack.tif")
    cfg = study_config(root, stack)
    cfg.ablation.folds = 2
    cfg.ablation.keep_checkpoints = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = run_ablation(cfg, progress=False, patchset=patchset(stack, n=160))
    return stack, folder


def test_a_study_maps_with_its_fold_models_and_their_spread(
    study: tuple[Path, Path], tmp_path: Path
) -> None:
    stack, folder = study
    record = predict_map(folder, stack, tmp_path, PredictOptions(tile_size=40), progress=False)
    runs = sorted(str(p) for p in (folder / "runs").iterdir())
    assert record["source"]["kind"] == "study" and record["source"]["config_id"] == "s2/simple_cnn"
    assert sorted(record["source"]["members"]) == runs and len(runs) == 2
    assert record["uncertainty_bands"] == ["entropy", "one_minus_max_probability",
                                           "member_std", "vote_disagreement"]
    with rasterio.open(tmp_path / "uncertainty.tif") as src:
        assert list(src.descriptions) == record["uncertainty_bands"]
        unc = src.read()
    classes = read(tmp_path / "classes.tif", 1)
    valid = classes != 255
    spread, votes = unc[2][valid], unc[3][valid]
    assert np.isfinite(spread).all() and (spread >= 0).all() and spread.max() <= 0.5
    assert spread.max() > 0  # two fold models never agree exactly
    assert set(np.unique(votes).round(6)) <= {0.0, 0.5}
    assert np.isnan(unc[:, ~valid]).all()


def test_a_study_without_checkpoints_is_a_one_line_error_naming_keep_checkpoints(
    study: tuple[Path, Path], tmp_path: Path
) -> None:
    stack, folder = study
    copy = tmp_path / "study"
    shutil.copytree(folder, copy)
    for ckpt in copy.glob("runs/*/checkpoints"):
        shutil.rmtree(ckpt)
    result = runner.invoke(app, ["predict", str(copy), "--stack", str(stack), "-o",
                                 str(tmp_path / "out")], terminal_width=400)
    assert result.exit_code == 2, result.output
    assert "ablation.keep_checkpoints: true" in result.output
    assert "2 of the 2 fold models" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert json.loads((copy / "study.json").read_text())["config"]["ablation"]["folds"] == 2
