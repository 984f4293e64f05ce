"""scikit-learn baselines: features, and complete run directories through train_model/CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import joblib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from factories import make_config, make_patchset
from geofuse.cli import app
from geofuse.config import dump_config
from geofuse.evaluation.evaluate import evaluate_run
from geofuse.models.forest import MODEL_FILE, patch_features
from geofuse.rundir import RunDir, read_history
from geofuse.training.train import train_model


def test_stats_features_are_nan_aware_per_band() -> None:
    x = np.array([[[[1.0, 3.0], [np.nan, 5.0]], [[np.nan, np.nan], [np.nan, np.nan]]]],
                 dtype=np.float32)
    feats = patch_features(x, "stats", band_means=np.array([0.0, 7.0]))
    # columns: mean(b0, b1), std(b0, b1), min(b0, b1), max(b0, b1); all-NaN b1 -> train mean
    np.testing.assert_allclose(feats[0], [3.0, 7.0, np.std([1, 3, 5]), 0.0, 1.0, 7.0, 5.0, 7.0],
                               rtol=1e-6)
    pixels = patch_features(x, "pixels", band_means=np.array([0.0, 7.0]))
    assert pixels.shape == (1, 8)
    assert pixels[0].tolist() == [1.0, 3.0, 0.0, 5.0, 7.0, 7.0, 7.0, 7.0]


@pytest.fixture(scope="module")
def forest_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    root = tmp_path_factory.mktemp("forest")
    cfg = make_config(root, model={"name": "random_forest"},
                      baseline={"features": "stats", "n_estimators": 50})
    make_patchset().save(cfg.patches_path)
    return RunDir(train_model(cfg, progress=False))


def test_random_forest_writes_a_complete_run_directory(forest_run: RunDir) -> None:
    run = forest_run
    for path in (run.config, run.run_json, run.normalization, run.metrics, run.report,
                 run.path / MODEL_FILE, run.plots / "confusion_matrix_val.png",
                 run.plots / "confusion_matrix_test.png", run.plots / "training_curves.png"):
        assert path.is_file(), path
    info = json.loads(run.run_json.read_text())
    assert info["status"] == "finished"
    assert info["model"] == {"name": "random_forest", "kwargs": {
        "features": "stats", "n_estimators": 50, "max_depth": None, "c": 1.0, "max_iter": 1000}}
    assert info["num_features"] == 6 * 4
    metrics = json.loads(run.metrics.read_text())
    assert metrics["val"]["accuracy"] > 0.9  # class means are well separated
    assert metrics["guard"]["collapsed"] is False
    assert metrics["checkpoint"] == MODEL_FILE
    history = read_history(run.history)
    assert len(history) == 1 and history[0]["val_accuracy"] > 0.9
    assert joblib.load(run.path / MODEL_FILE).n_features_in_ == 24


def test_baseline_report_links_resolve_and_evaluate_is_repeatable(forest_run: RunDir) -> None:
    text = forest_run.report.read_text()
    assert "`random_forest`" in text and "**Collapse guard: passed**" in text
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (forest_run.path / link).is_file()
    before = json.loads(forest_run.metrics.read_text())
    again = evaluate_run(forest_run.path, verbose=False)
    assert again["val"] == before["val"] and again["test"] == before["test"]


def test_logistic_regression_on_pixels_through_the_cli(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, model={"name": "logistic_regression"},
                      baseline={"features": "pixels", "max_iter": 300}, run_name="lr")
    make_patchset(n=120).save(cfg.patches_path)
    config = tmp_path / "study.yaml"
    dump_config(cfg, config)
    result = CliRunner().invoke(app, ["train", "-c", str(config)])
    assert result.exit_code == 0, result.output
    run = RunDir(cfg.runs_path / "lr")
    metrics = json.loads(run.metrics.read_text())
    assert metrics["val"]["n"] == 24
    assert metrics["val"]["accuracy"] > 0.5
    resolved = yaml.safe_load(run.config.read_text())
    assert resolved["train"]["baseline"]["features"] == "pixels"
    assert json.loads(run.run_json.read_text())["num_features"] == 6 * 8 * 8
