"""Ablation grid and runner: cells, results, resume, crash safety, parallel/Ray parity, CLI."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import geofuse.experiments.runner as runner_mod
from factories import S2, make_config, make_patchset
from geofuse.cli import app
from geofuse.config import StudyConfig
from geofuse.errors import ConfigError
from geofuse.experiments.ablation import finish_study, run_ablation
from geofuse.experiments.grid import Cell, build_grid, sensor_subsets
from geofuse.experiments.runner import load_cells, results_frame

pytestmark = pytest.mark.slow

CELL_KEYS = {
    "schema_version", "status", "slug", "config_id", "modalities", "model", "options",
    "overrides", "seed", "fold", "fingerprint", "bands", "class_names", "run_dir", "val",
    "test", "guard", "history", "overfitting", "epochs_trained", "max_epochs", "stopped_early",
    "num_params", "n_train", "duration_s", "finished_at", "importance", "calibration",
}


def _cfg(root: Path, **ablation: Any) -> StudyConfig:
    cfg = make_config(root, epochs=1, batch_size=16, model={"hidden": 16})
    cfg.ablation.folds = 2
    for key, value in ablation.items():
        setattr(cfg.ablation, key, value)
    return cfg


def _val(study: Path) -> dict[str, dict[str, Any]]:
    return {c["slug"]: c["val"] for c in load_cells(study)}


# -- grid ---------------------------------------------------------------------------------
def test_default_sensor_subsets_and_explicit_lists() -> None:
    assert sensor_subsets(["s2", "modis", "dem"]) == [
        ["s2"], ["s2", "modis"], ["s2", "dem"], ["s2", "modis", "dem"]]
    assert sensor_subsets(["s2", "dem"]) == [["s2"], ["s2", "dem"]]
    assert sensor_subsets(["s2", "dem"], primary="dem") == [["dem"], ["dem", "s2"]]
    assert sensor_subsets(["s2", "dem"], explicit=[["dem"]]) == [["dem"]]
    with pytest.raises(ConfigError, match=r"unknown: \['viirs'\]"):
        sensor_subsets(["s2", "dem"], explicit=[["s2", "viirs"]])
    with pytest.raises(ConfigError, match="'lidar' is not a modality"):
        sensor_subsets(["s2", "dem"], primary="lidar")


def test_grid_cells_have_readable_stable_ids(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, models=["late_fusion", {"name": "late_fusion",
                                                 "options": {"merge": "attention"}}],
               seeds=[1, 2])
    cells = build_grid(cfg)
    assert len(cells) == 2 * 2 * 2 * 2  # subsets x models x seeds x folds
    ids = list(dict.fromkeys(c.config_id for c in cells))
    assert ids == ["s2/late_fusion", "s2/late_fusion[merge=attention]",
                   "s2+dem/late_fusion", "s2+dem/late_fusion[merge=attention]"]
    assert cells[0].slug == "s2__late_fusion__seed1__fold0"
    assert len({c.slug for c in cells}) == len(cells)
    assert Cell.from_dict(cells[5].to_dict()) == cells[5]
    assert build_grid(cfg)[5].slug == cells[5].slug
    cfg.ablation.models = [{"name": "simple_cnn", "options": {"hiden": 3}}]
    with pytest.raises(ConfigError, match="invalid options"):
        build_grid(cfg)


# -- running ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StudyConfig, Path]]:
    """2 sensor subsets x 1 model x 1 seed x 2 folds, trained serially."""
    root = tmp_path_factory.mktemp("ablation")
    cfg = _cfg(root)
    study = run_ablation(cfg, progress=False, patchset=make_patchset(n=48))
    yield cfg, study


def test_ablation_writes_cells_results_and_study_files(serial: tuple[StudyConfig, Path]) -> None:
    cfg, study = serial
    assert study == cfg.workdir_path / "studies" / "toy"
    cells = load_cells(study)
    assert [c["config_id"] for c in cells] == ["s2/simple_cnn"] * 2 + ["s2+dem/simple_cnn"] * 2
    for cell in cells:
        assert set(cell) == CELL_KEYS
        assert 0 <= cell["val"]["f1_macro"] <= 1 and cell["test"] is None
        assert cell["bands"] == (S2 if cell["modalities"] == ["s2"] else cfg.band_names)
        assert len(cell["history"]) == 1 and cell["overfitting"]["final_epoch"] == 0
        assert cell["overfitting"]["final"]["gap_accuracy"] == pytest.approx(
            cell["history"][-1]["train_accuracy"] - cell["history"][-1]["val_accuracy"])
        run = study / cell["run_dir"]
        assert (run / "metrics.json").is_file() and not (run / "checkpoints").exists()
    frame = pd.read_csv(study / "results.csv")
    assert len(frame) == 4 and frame["fold"].tolist() == [0, 1, 0, 1]
    for col in ("val_accuracy", "val_f1_macro", "val_f1_water", "best_epoch", "final_epoch",
                "gap_accuracy", "duration_s", "val_ece", "temperature"):
        assert col in frame.columns
    assert frame["val_ece"].between(0, 1).all()
    assert np.allclose(frame["val_f1_macro"], results_frame(study)["val_f1_macro"])
    meta = json.loads((study / "study.json").read_text())
    assert meta["grid"]["config_ids"] == ["s2/simple_cnn", "s2+dem/simple_cnn"]
    assert meta["folds"]["n_folds"] == 2 and meta["config"]["ablation"]["folds"] == 2
    folds = json.loads((study / "folds.json").read_text())
    assert len(folds["groups"]) == 48 and set(folds["groups"].values()) == {0, 1}
    data = meta["data"]  # the report's data summary: counts per class and fold, test set
    assert data["n_patches"] == 48 and data["class_counts"] == {c: 12 for c in meta["class_names"]}
    per_fold = [sum(data["split_counts"][f"fold{k}"].values()) for k in (0, 1)]
    assert sum(per_fold) == 48 and min(per_fold) > 0 and data["test"] == "none"
    report = (study / "report.md").read_text()
    assert "- patches: 48" in report and "| forest | 12 |" in report
    assert "held-out test set: none" in report
    assert "## Calibration of the probabilities" in report and "| s2/simple_cnn | " in report


def test_resume_retrains_only_the_missing_cell(
    serial: tuple[StudyConfig, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, study = serial
    before = _val(study)
    victim = study / "cells" / "s2+dem__simple_cnn__seed7__fold1.json"
    victim.unlink()
    calls: list[str | None] = []
    real = runner_mod.train_model

    def counting(*args: Any, **kwargs: Any) -> Path:
        calls.append(kwargs.get("run_name"))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_mod, "train_model", counting)
    run_ablation(cfg, progress=False, patchset=make_patchset(n=48))
    assert calls == ["s2+dem__simple_cnn__seed7__fold1"]
    assert victim.is_file() and _val(study) == before  # deterministic: same result again
    run_ablation(cfg, progress=False, patchset=make_patchset(n=48))
    assert len(calls) == 1  # everything done: nothing trained


def test_crash_mid_grid_keeps_finished_cells_and_rerun_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(tmp_path, sensors=[["s2"]])
    real = runner_mod.train_model
    calls: list[str] = []

    def crashing(*args: Any, **kwargs: Any) -> Path:
        calls.append(kwargs["run_name"])
        if len(calls) == 2:
            (cfg.workdir_path / "studies/toy/runs" / kwargs["run_name"]).mkdir(parents=True)
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_mod, "train_model", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_ablation(cfg, progress=False, patchset=make_patchset(n=48))
    study = cfg.workdir_path / "studies" / "toy"
    first = study / "cells" / "s2__simple_cnn__seed7__fold0.json"
    kept = first.read_text()
    assert json.loads(kept)["status"] == "done"
    assert sorted(p.name for p in (study / "cells").iterdir()) == [first.name]  # no temp files
    assert len(pd.read_csv(study / "results.csv")) == 1
    calls.clear()
    run_ablation(cfg, progress=False, patchset=make_patchset(n=48))
    assert calls == ["s2__simple_cnn__seed7__fold1"] and first.read_text() == kept
    assert len(load_cells(study)) == 2


def test_workers_and_ray_give_the_serial_results(serial: tuple[StudyConfig, Path]) -> None:
    cfg, study = serial
    cfg = cfg.model_copy(deep=True)
    cfg.ablation.sensors = [["s2", "dem"]]  # 2 cells: one per worker
    expected = {k: v for k, v in _val(study).items() if k.startswith("s2+dem")}
    assert len(expected) == 2
    pooled = run_ablation(cfg, study_name="pool", workers=2, progress=False,
                          patchset=make_patchset(n=48))
    assert _val(pooled) == expected
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_ablation(cfg, study_name="ray", ray_address="local", progress=False,
                              patchset=make_patchset(n=48))
        assert ray.is_initialized()  # a session it did not start is left running
    finally:
        ray.shutdown()
    assert _val(remote) == expected


def test_importance_is_recorded_per_cell(tmp_path: Path) -> None:
    pytest.importorskip("geofuse.evaluation.importance")
    cfg = _cfg(tmp_path, sensors=[["s2", "dem"]], importance=True, importance_repeats=2)
    study = run_ablation(cfg, progress=False, patchset=make_patchset(n=48))
    for cell in load_cells(study):
        imp = cell["importance"]
        assert set(imp["modality"]) == {"s2", "dem"} and len(imp["band"]) == 6
        # predict_fn (checkpoint + normalisation on raw patches) reproduces the evaluation
        assert imp["baseline"] == pytest.approx(cell["val"]["accuracy"])
    assert {"importance_s2", "importance_dem"} <= set(results_frame(study).columns)


def test_cli_ablate_runs_and_rejects_a_typo(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    make_patchset(n=48).save(cfg.patches_path)
    data = cfg.model_dump(mode="json")
    data["ablation"].update(sensors=[["s2"]])
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["ablate", "-c", str(path), "--name", "cli"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(cfg.workdir_path / "studies/cli/results.csv")) == 2
    data["ablation"]["fold"] = 3
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["ablate", "-c", str(path)])
    assert result.exit_code == 2
    assert "unknown key 'ablation.fold'; did you mean 'folds'?" in result.output


def test_without_study_report_module_the_table_is_printed(
    serial: tuple[StudyConfig, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, study = serial
    monkeypatch.setitem(sys.modules, "geofuse.reporting.study_report", None)
    assert finish_study(study, progress=True) is None
    out = capsys.readouterr().out
    assert "s2+dem/simple_cnn" in out and "val macro F1" in out
