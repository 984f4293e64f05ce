"""Preflight: every problem of a config reported up front, together, before any work.

The bad configs themselves (one row per problem, through the CLI) are rows of the table in
``test_robustness.py``; here: a valid config passes every command's check, the ablation and
search grids are checked before any cell trains, and the problems' one-line format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import geofuse.experiments.runner as runner_mod
from factories import make_config, make_patchset
from geofuse.cli import app
from geofuse.config import load_config
from geofuse.data.synthetic import generate_scene
from geofuse.errors import ConfigError
from geofuse.experiments.ablation import run_ablation
from geofuse.experiments.search import run_search
from geofuse.preflight import check_config, format_problems

runner = CliRunner()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared and extracted synthetic study (folder holding study.yaml and work/)."""
    folder = tmp_path_factory.mktemp("preflight")
    cfg = generate_scene(folder, seed=2, size_m=4000.0, n_polygons=40)
    for command in ("prepare", "extract"):
        result = runner.invoke(app, [command, "-c", str(cfg)])
        assert result.exit_code == 0, result.output
    return folder


def _config(scene: Path, out: Path) -> Path:
    """The scene's study config with absolute paths, written into ``out``."""
    data = yaml.safe_load((scene / "study.yaml").read_text())
    for m in data["modalities"]:
        m["files"] = [str(scene / f) for f in m["files"]]
    data["labels"]["path"] = str(scene / data["labels"]["path"])
    data["workdir"] = str(scene / "work")
    path = out / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_valid_config_passes_every_command_and_check_prints_it(
    scene: Path, tmp_path: Path
) -> None:
    cfg_path = _config(scene, tmp_path)
    cfg = load_config(cfg_path)
    for command in ("check", "prepare", "extract", "train", "ablate", "demo"):
        assert check_config(cfg, command) == [], command
    code, out = _cli("config", "--check", str(cfg_path))
    assert code == 0 and "is valid" in " ".join(out.split()) and "modalities:" in out, out


def test_ablation_grid_is_checked_before_any_cell_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(runner_mod, "train_model", lambda *a, **k: calls.append(k))
    cfg = make_config(tmp_path, epochs=1)
    cfg.ablation.folds = 2
    cfg.ablation.models = ["simple_cnn", "late_fusoin"]
    with pytest.raises(ConfigError, match=r"ablation\.models\[1\] = 'late_fusoin'.*late_fusion"):
        run_ablation(cfg, progress=False, patchset=make_patchset(n=48))
    cfg.ablation.models = None
    cfg.search.space = {"train.model.name": ["simple_cnn", "late_fusoin"]}
    with pytest.raises(ConfigError, match=r"search\.space\['train\.model\.name'\]"):
        run_search(cfg, progress=False, patchset=make_patchset(n=48))
    assert calls == [] and not (cfg.workdir_path / "studies").exists()


def test_problems_format_on_one_line() -> None:
    from geofuse.preflight import Problem

    text = format_problems([Problem("a.b", "x", "bad; fix it"), Problem("c", 1, "too\nbig")],
                           "s.yaml")
    assert text == "2 problems in s.yaml: 1) a.b = 'x': bad; fix it; 2) c = 1: too big"
