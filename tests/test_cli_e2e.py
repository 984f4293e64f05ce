"""End to end through the CLI: synth -> prepare -> extract -> train -> evaluate -> report.

The one-line, exit-code-2 errors on bad input that lose nothing already written are the rows of
the table in ``test_robustness.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.data.patchset import PatchSet
from geofuse.data.synthetic import generate_scene

runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _edit(cfg_path: Path, **sections: dict) -> Path:
    data = yaml.safe_load(cfg_path.read_text())
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg_path


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small synthetic study taken through every command once."""
    folder = tmp_path_factory.mktemp("e2e")
    cfg = generate_scene(folder, seed=5, size_m=6000.0, n_polygons=50)
    _edit(cfg, train={"epochs": 4, "batch_size": 32}, splits={"val_fraction": 0.25})
    for command in ("prepare", "extract", "train"):
        code, out = _invoke(command, "-c", str(cfg))
        assert code == 0, f"geofuse {command} failed:\n{out}"
    runs = sorted((folder / "work" / "runs").iterdir())
    assert len(runs) == 1
    return {"cfg": cfg, "work": folder / "work", "run": runs[0]}


def test_prepare_writes_aligned_stack_manifest_and_qc(flow: dict[str, Path]) -> None:
    work = flow["work"]
    with rasterio.open(work / "stack.tif") as src, rasterio.open(work.parent / "s2.tif") as ref:
        assert src.crs == ref.crs and src.transform == ref.transform
        assert src.descriptions == ("B2", "B3", "B4", "B8", "B11", "B12", "NDVI", "elevation")
        assert src.dtypes[0] == "float32"
    qc = json.loads((work / "stack_qc.json").read_text())
    assert qc["passed"] and 0.9 < qc["bands"]["B4"]["valid_fraction"] < 1.0  # the cloud hole
    assert qc["bands"]["elevation"]["valid_fraction"] == 1.0


def test_extract_writes_grouped_stratified_patchset(flow: dict[str, Path]) -> None:
    patches = PatchSet.load(flow["work"] / "patches.h5")
    assert patches.x.shape[1:] == (8, 8, 8)
    assert not np.isnan(patches.x).any()  # max_nodata_fraction 0 drops cloud patches
    train, val = set(patches.groups[patches.split == 0]), set(patches.groups[patches.split == 1])
    assert train and val and not train & val
    assert all(n > 0 for n in patches.class_counts("val").values())


def test_train_leaves_complete_run_dir_and_evaluate_report_reuse_it(
    flow: dict[str, Path],
) -> None:
    run = flow["run"]
    for name in ("config.yaml", "run.json", "metrics.json", "history.csv", "report.md",
                 "normalization.json", "checkpoints/best.ckpt", "plots/training_curves.png",
                 "plots/confusion_matrix_val.png"):
        assert (run / name).is_file(), name
    before = json.loads((run / "metrics.json").read_text())
    (run / "report.md").unlink()
    code, out = _invoke("evaluate", str(run))
    assert code == 0 and "accuracy" in out
    after = json.loads((run / "metrics.json").read_text())
    assert after["val"]["accuracy"] == pytest.approx(before["val"]["accuracy"])
    assert _invoke("report", str(run))[0] == 0
    assert "Collapse guard" in (run / "report.md").read_text()
