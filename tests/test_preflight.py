"""Preflight: every problem of a config reported up front, together, before any work.

One synthetic scene is prepared and extracted once; each row of the table writes a broken copy
of its config into a fresh folder (absolute paths into the scene), runs one command through the
CLI and asserts exit 2, one error line naming key, value and fix, and that nothing was written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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
Edit = Callable[[dict[str, Any], Path], None]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared and extracted synthetic study (folder holding study.yaml and work/)."""
    folder = tmp_path_factory.mktemp("preflight")
    cfg = generate_scene(folder, seed=2, size_m=4000.0, n_polygons=40)
    for command in ("prepare", "extract"):
        result = runner.invoke(app, [command, "-c", str(cfg)])
        assert result.exit_code == 0, result.output
    return folder


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _config(scene: Path, out: Path, edit: Edit | None = None) -> Path:
    """The scene's study config with absolute paths, edited, written into ``out``."""
    data = yaml.safe_load((scene / "study.yaml").read_text())
    for m in data["modalities"]:
        m["files"] = [str(scene / f) for f in m["files"]]
    data["labels"]["path"] = str(scene / data["labels"]["path"])
    data["workdir"] = str(scene / "work")
    if edit is not None:
        edit(data, scene)
    path = out / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set(dotted: str, value: Any) -> Edit:
    def edit(data: dict[str, Any], scene: Path) -> None:
        *parents, key = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[int(key) if key.isdigit() else key] = value(scene) if callable(value) else value
    return edit


def _all(*edits: Edit) -> Edit:
    def edit(data: dict[str, Any], scene: Path) -> None:
        for e in edits:
            e(data, scene)
    return edit


def _error_line(code: int, out: str) -> str:
    assert code == 2, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out
    return lines[0]


CASES: list[tuple[str, str, Edit, list[str]]] = [
    ("unknown_model", "train", _set("train.model", {"name": "late_fusoin"}),
     ["train.model.name = 'late_fusoin'", "unknown model", "did you mean 'late_fusion'?"]),
    ("unknown_ablation_model", "ablate", _set("ablation.models", ["simple_cnn", "late_fusoin"]),
     ["ablation.models[1] = 'late_fusoin'", "did you mean 'late_fusion'?"]),
    ("unknown_ablation_model_entry", "ablate",
     _set("ablation.models", [{"name": "simple_cnn"}, {"name": "resnet81"}]),
     ["ablation.models[1].name = 'resnet81'", "did you mean 'resnet18'?"]),
    ("bad_model_option", "train", _set("train.model", {"name": "simple_cnn", "merge": "attention"}),
     ["train.model.merge = 'attention'", "does not take option 'merge'", "remove it"]),
    ("bad_ablation_option", "ablate",
     _set("ablation.models", [{"name": "simple_cnn", "options": {"se_reduction": 4}}]),
     ["ablation.models[0].options.se_reduction = 4", "'simple_cnn'", "does not take"]),
    ("unknown_encoder", "train", _set("train.model", {"name": "late_fusion",
                                                      "encoders": {"dem": "smal_cnn"}}),
     ["train.model.encoders.dem = 'smal_cnn'", "did you mean 'small_cnn'?"]),
    ("missing_pretrained", "train", _set("train.model", {"name": "resnet18",
                                                         "pretrained_path": "nope.pth"}),
     ["train.model.pretrained_path = 'nope.pth'", "does not exist"]),
    ("unknown_band", "train", _set("train.bands", ["B4", "B8A"]),
     ["train.bands = 'B8A'", "unknown band", "PatchSet", "fix train.bands"]),
    ("unknown_search_model", "search",
     _set("search.space", {"train.model.name": ["simple_cnn", "late_fusoin"]}),
     ["search.space['train.model.name'] = 'late_fusoin'", "did you mean 'late_fusion'?"]),
    ("unknown_sensor", "ablate", _set("ablation.sensors", [["s2"], ["s2", "modsi"]]),
     ["ablation.sensors[1] = ['s2', 'modsi']", "unknown modality 'modsi'",
      "did you mean 'modis'?"]),
    ("missing_labels", "extract", _set("labels.path", lambda s: str(s / "labls.geojson")),
     ["labels.path = ", "labls.geojson", "does not exist", "did you mean 'labels.geojson'?"]),
    ("bad_class_field", "extract", _set("labels.class_field", "klass"),
     ["labels.class_field = 'klass'", "did you mean 'class'?"]),
    ("missing_modality_file", "prepare",
     _set("modalities.2.files", lambda s: [str(s / "dem_missing.tif")]),
     ["modalities[2].files[0] = ", "dem_missing.tif", "does not exist", "fix the path"]),
    ("glob_matches_nothing", "prepare",
     _set("modalities.1.files", lambda s: [str(s / "modis_*.tiff")]),
     ["modalities[1].files[0] = ", "modis_*.tiff", "matches no file"]),
    ("folds_over_groups", "ablate", _set("ablation.folds", 500),
     ["ablation.folds = 500", "has only", "polygon groups", "at most"]),
    ("search_fold", "search", _all(_set("search.space", {"train.lr": [0.1]}),
                                   _set("search.fold", 3)),
     ["search.fold = 3", "folds 0..2"]),
    ("patchset_missing", "train", _set("extract.output", "nothing.h5"),
     ["extract.output = 'nothing.h5'", "run 'geofuse extract"]),
    ("workdir_under_a_file", "prepare", _set("workdir", lambda s: str(s / "s2.tif" / "work")),
     ["workdir = ", "is a file, not a folder"]),
    ("several_at_once", "check",
     _all(_set("train.model", {"name": "simple_cnm"}), _set("train.bands", ["B4", "B99"]),
          _set("labels.path", lambda s: str(s / "missing.geojson")),
          _set("ablation.models", ["simple_cnn", "early_fusoin"])),
     ["4 problems in", "1) ", "2) ", "3) ", "4) ", "labels.path", "train.bands = 'B99'",
      "train.model.name = 'simple_cnm'", "ablation.models[1] = 'early_fusoin'"]),
]


@pytest.mark.parametrize(("command", "edit", "needles"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_config_fails_up_front_naming_key_value_and_fix(
    scene: Path, tmp_path: Path, command: str, edit: Edit, needles: list[str]
) -> None:
    cfg = _config(scene, tmp_path, edit)
    before, folder_before = _snapshot(scene), _snapshot(tmp_path)
    args = ["config", "--check", str(cfg)] if command == "check" else [command, "-c", str(cfg)]
    line = _error_line(*_cli(*args))
    for needle in needles:
        assert needle in line, (needle, line)
    assert _snapshot(scene) == before and _snapshot(tmp_path) == folder_before  # nothing written


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


def test_unknown_train_modality_prints_the_reason_not_the_config(
    scene: Path, tmp_path: Path
) -> None:
    cfg = _config(scene, tmp_path, _set("train.modalities", ["s2", "lidar"]))
    line = _error_line(*_cli("train", "-c", str(cfg)))
    assert "train.modalities names unknown modality 'lidar'" in line
    assert "{" not in line and "'workdir'" not in line, line


@pytest.mark.parametrize(("command", "key"), [("prepare", "prepare.output"),
                                              ("extract", "extract.output"),
                                              ("ablate", "ablation.output")])
def test_low_disk_space_is_a_problem_before_writing(
    scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, key: str
) -> None:
    cfg = _config(scene, tmp_path)
    before = _snapshot(scene)
    monkeypatch.setenv("GEOFUSE_FREE_BYTES", "1000")
    line = _error_line(*_cli(command, "-c", str(cfg)))
    assert f"{key} = " in line and "needs about" in line and "1000 B is free" in line, line
    assert "free disk space" in line
    assert _snapshot(scene) == before


def test_read_only_output_folder_is_found_by_trying_to_write(
    scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geofuse._preflight_files as files

    cfg = _config(scene, tmp_path, _set("workdir", lambda s: str(tmp_path / "ro" / "work")))
    (tmp_path / "ro").mkdir()
    if os.geteuid() != 0:  # root writes anyway: simulate the read-only mount below
        (tmp_path / "ro").chmod(0o555)
    else:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise OSError(30, "Read-only file system")
        monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    try:
        line = _error_line(*_cli("prepare", "-c", str(cfg)))
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert "workdir = " in line and "is not writable" in line and "ro'" in line, line
    assert not (tmp_path / "ro" / "work").exists()


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
