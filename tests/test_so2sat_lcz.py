"""LCZ classification from the So2Sat-POP Gdansk layers: reader, config, cross-city study."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import load_config
from geofuse.data.datasets.so2sat_lcz import LCZ_NAMES, lattice, load_so2sat_lcz
from geofuse.data.external_test import external_test_mask
from geofuse.data.patchset import SPLIT_CODES, PatchSet
from geofuse.errors import ConfigError

pytestmark = pytest.mark.realdata

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "so2sat_pop_lcz.yaml"
MISPLACED = {"cell:39", "cell:50", "cell:99"}  # dem/lcz rasters 12-19 km off


@pytest.fixture(scope="module")
def summer_dem(gdansk_dir: Path) -> PatchSet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_so2sat_lcz(gdansk_dir, seasons=["summer"], layers=["dem"], patch_size=16,
                               stride=24)


def test_lattice_is_centred_in_the_window() -> None:
    assert lattice(96, 32, 32).tolist() == [0, 32, 64]
    assert lattice(96, 32, 16).tolist() == [0, 16, 32, 48, 64]
    assert lattice(96, 16, 24).tolist() == [4, 28, 52, 76]


def test_patches_carry_the_lcz_code_of_their_centre(summer_dem: PatchSet, gdansk_dir: Path
                                                     ) -> None:
    p = summer_dem
    assert p.x.shape[1:] == (4, 16, 16) and len(p) > 1000
    assert p.band_names == ["summer_R", "summer_G", "summer_B", "dem_elevation"]
    assert np.isfinite(p.x).all()  # max_nodata_fraction 0: no pixel outside the cell
    assert not MISPLACED & set(p.groups.tolist())
    assert set(p.provenance["dropped_cells"]) == {"39", "50", "99"}
    codes = p.provenance["lcz_codes"]
    assert set(p.class_names) <= set(LCZ_NAMES.values()) and "low_plants" in p.class_names
    # independent check: sample the cell's lcz file at the patch's centre pixel (centre of the
    # pixel right/below the patch centre); windows may shift by under a pixel, LCZ is blocky
    rng = np.random.default_rng(0)
    agree = []
    for i in rng.choice(len(p), 150, replace=False):
        cell = p.groups[i].removeprefix("cell:")
        path = next(gdansk_dir.glob(f"lcz/Class_*/{cell}_lcz.tif"))
        with rasterio.open(path) as src:
            value = next(src.sample([(p.coords[i, 0] + 5, p.coords[i, 1] - 5)]))[0]
        agree.append(value == codes[p.class_names[p.y[i]]])
    assert np.mean(agree) > 0.9
    # DEM in metres (Gdansk: delta below sea level, SRTM dips over water, hills to ~200 m)
    assert p.x[:, 3].min() > -100 and p.x[:, 3].max() < 250 and p.x[:, :3].max() < 3


def test_rare_classes_are_dropped_with_a_warning(gdansk_dir: Path) -> None:
    with pytest.warns(UserWarning, match="fewer than 30 cells"):
        p = load_so2sat_lcz(gdansk_dir, seasons=["winter"], patch_size=32, stride=32,
                            min_cells_per_class=30)
    dropped = p.provenance["dropped_classes"]
    assert dropped and all(n < 30 for n in dropped.values())
    for k, name in enumerate(p.class_names):
        assert len(set(p.groups[p.y == k].tolist())) >= 30, name
    with pytest.raises(ConfigError, match="patch_size=200"):
        load_so2sat_lcz(gdansk_dir, seasons=["winter"], patch_size=200)
    with pytest.raises(ConfigError, match="seasons="):
        load_so2sat_lcz(gdansk_dir, seasons=["monsoon"])


def test_ready_config_extracts_the_gdansk_study(tmp_path: Path) -> None:
    cfg = load_config(CONFIG)
    assert [m.name for m in cfg.modalities] == [
        "s2_spring", "s2_summer", "s2_autumn", "s2_winter", "dem", "viirs"]
    assert cfg.dataset is not None and cfg.dataset.city_dir.endswith("so2sat_pop/gdansk")
    assert cfg.resolve(cfg.dataset.city_dir).is_dir()
    assert cfg.ablation.group_by == "cell"
    assert cfg.train.loss.class_weights is None  # balanced weights lost 7 points held out
    seasons_only = ["s2_spring", "s2_summer", "s2_autumn", "s2_winter"]
    assert seasons_only in cfg.ablation.sensors and ["s2_summer"] in cfg.ablation.sensors
    data = yaml.safe_load(CONFIG.read_text())
    data["workdir"] = str(tmp_path / "work")
    data["dataset"]["city_dir"] = str(cfg.resolve(cfg.dataset.city_dir))
    path = tmp_path / "lcz.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["extract", "-c", str(path)])
    assert result.exit_code == 0, result.output
    p = PatchSet.load(tmp_path / "work" / "patches.h5")
    assert p.x.shape == (4202, 14, 32, 32) and len(p.class_names) == 15
    assert len(set(p.groups.tolist())) == 264
    for name in ("train", "val"):  # grouped split: every class in both, no shared cell
        assert min(p.class_counts(name).values()) > 0
    train_cells = set(p.groups[p.split == SPLIT_CODES["train"]].tolist())
    assert not train_cells & set(p.groups[p.split == SPLIT_CODES["val"]].tolist())
    result = CliRunner().invoke(app, ["prepare", "-c", str(path)])
    assert result.exit_code == 2 and "skip prepare" in result.output


def _fake_city(src: Path, dst: Path, cells: set[str]) -> Path:
    """A city folder with a subset of ``src``'s cells (symlinks; the real layout)."""
    for layer in ("sen2_rgb_summer", "dem", "lcz"):
        for f in src.glob(f"{layer}/Class_*/*_{layer}.tif"):
            if f.name.split("_")[0] in cells:
                target = dst / layer / f.parent.name / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(f)
    return dst


def test_train_on_one_city_and_test_on_another(tmp_path: Path, gdansk_dir: Path) -> None:
    """Gdansk's cells split into two 'cities' (west and east): a study trains on the west,
    the east is the external test set that no fold ever sees."""
    ids = sorted(f.name.split("_")[0] for f in gdansk_dir.glob("lcz/Class_*/*_lcz.tif"))
    west = _fake_city(gdansk_dir, tmp_path / "west", set(ids[::2]))
    east = _fake_city(gdansk_dir, tmp_path / "east", set(ids[1::2]))
    data = yaml.safe_load(CONFIG.read_text())
    data["workdir"] = str(tmp_path / "work")
    data["dataset"].update(city_dir=str(west), test_city_dir=str(east), seasons=["summer"],
                           layers=["dem"], stride=32, min_cells_per_class=4)
    data["extract"]["patch_size"] = 16
    data["train"].update(epochs=2, batch_size=128)
    data["ablation"].update(folds=2, sensors=[["s2_summer"], ["s2_summer", "dem"]],
                            models=["simple_cnn"], importance=False)
    path = tmp_path / "lcz.yaml"
    path.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    result = runner.invoke(app, ["extract", "-c", str(path)])
    assert result.exit_code == 0, result.output
    p = PatchSet.load(tmp_path / "work" / "patches.h5")
    mask = external_test_mask(p)
    assert mask is not None and 0.3 < mask.mean() < 0.7
    assert all(g.startswith("east/cell:") for g in p.groups[mask])
    assert (p.split[mask] == SPLIT_CODES["test"]).all()
    assert not (p.split[~mask] == SPLIT_CODES["test"]).any()
    assert p.provenance["external_test"]["source"]["city"] == "east"
    result = runner.invoke(app, ["ablate", "-c", str(path), "--name", "xcity"])
    assert result.exit_code == 0, result.output
    study = tmp_path / "work" / "studies" / "xcity"
    folds = json.loads((study / "folds.json").read_text())
    assert set(folds["test_groups"]) == set(p.groups[mask].tolist())
    cells = [json.loads(f.read_text()) for f in sorted((study / "cells").glob("*.json"))]
    assert len(cells) == 4
    for cell in cells:
        assert cell["test"]["accuracy"] is not None and cell["val"]["accuracy"] is not None
    assert len(pd.read_csv(study / "results.csv")) == 4
    report = (study / "report.md").read_text()
    assert "external: east" in report and "Test split" in report
    data["splits"]["test_fraction"] = 0.2
    path.write_text(yaml.safe_dump(data))
    before = (tmp_path / "work" / "patches.h5").stat().st_mtime_ns
    result = runner.invoke(app, ["extract", "-c", str(path)])
    assert result.exit_code == 2 and "set splits.test_fraction to 0" in result.output
    assert (tmp_path / "work" / "patches.h5").stat().st_mtime_ns == before
