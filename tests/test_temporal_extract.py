"""``geofuse extract`` of the temporal datasets (land_take_synthetic, eopatch) via the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import StudyConfig, load_config
from geofuse.data.datasets.build import build_dataset_patches
from geofuse.data.patchset import SPLIT_CODES, PatchSet
from geofuse.data.temporal import CHANGE_LEVEL_NAMES


def _write(tmp_path: Path, dataset: dict[str, Any], patch_size: int, **top: Any) -> Path:
    cfg = {"name": "t", "workdir": "work", "seed": 1, "dataset": dataset,
           "extract": {"patch_size": patch_size}, **top}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _no_group_straddles(p: PatchSet) -> None:
    for g in set(p.groups.tolist()):
        assert len(set(p.split[p.groups == g].tolist())) == 1, g


def test_land_take_extract_cli_writes_masks_timestamps_and_stratified_splits(
        tmp_path: Path) -> None:
    path = _write(tmp_path, {"name": "land_take_synthetic", "n_tiles": 20, "years": 4},
                  16, splits={"val_fraction": 0.2, "test_fraction": 0.2})
    result = CliRunner().invoke(app, ["extract", "-c", str(path)])
    assert result.exit_code == 0, result.output
    p = PatchSet.load(tmp_path / "work" / "patches.h5")
    assert p.x.shape == (20, 4 * 9, 16, 16) and p.timestamps == ["2018", "2019", "2020", "2021"]
    assert p.masks is not None and p.masks.shape == (20, 16, 16)
    assert p.mask_names == ["no_change", "land_take"] and p.class_names == CHANGE_LEVEL_NAMES
    assert p.provenance["dataset"] == "land_take_synthetic" and p.provenance["seed"] == 1
    for split in ("train", "val", "test"):  # every level in every split
        assert set(p.y[p.split == SPLIT_CODES[split]].tolist()) == {0, 1, 2}, split
    _no_group_straddles(p)
    cfg = load_config(path)
    assert [(m.name, m.bands[:2]) for m in cfg.modalities] == [("s2", ["B02", "B03"])]


def test_land_take_options_through_the_config(tmp_path: Path) -> None:
    path = _write(tmp_path, {"name": "land_take_synthetic", "n_tiles": 12, "years": 3,
                             "composite": "all", "bands": {"s2": ["B04", "B08"]},
                             "change_thresholds": [0.1, 0.4]}, 8)
    p = build_dataset_patches(load_config(path))
    assert p.timestamps == ["2018-Q2", "2018-Q3", "2019-Q2", "2019-Q3", "2020-Q2", "2020-Q3"]
    assert p.step_bands == ["B04", "B08"] and p.x.shape == (12, 12, 8, 8)
    assert p.provenance["change_thresholds"] == [0.1, 0.4]
    assert PatchSet.load(tmp_path / "work" / "patches.h5").timestamps == p.timestamps


def test_eopatch_extract_writes_masks_and_timestamps(tmp_path: Path, shared_data: Path) -> None:
    root = shared_data / "eolearn_slovenia" / "TestEOPatch"
    path = _write(tmp_path, {"name": "eopatch", "root": str(root)}, 16)
    built = build_dataset_patches(load_config(path))
    p = PatchSet.load(tmp_path / "work" / "patches.h5")
    assert p.x.shape == (36, 10, 16, 16) and p.timestamps == built.timestamps
    assert p.timestamps is not None and p.timestamps[0] == "2015-Q3"
    assert p.masks is not None and np.array_equal(p.masks, built.masks)
    assert p.mask_names == built.mask_names and "forest" in p.mask_names
    assert set(p.split.tolist()) == {SPLIT_CODES["train"], SPLIT_CODES["val"]}
    for split in ("train", "val"):
        assert set(p.y[p.split == SPLIT_CODES[split]].tolist()) == {0, 1}, split
    _no_group_straddles(p)


@pytest.mark.parametrize(("dataset", "fragment"), [
    ({"name": "land_take_synthetic", "root": "x"}, "dataset.root is not used"),
    ({"name": "land_take_synthetic", "composite": "dates"}, "'dates' is for eopatch"),
    ({"name": "land_take_synthetic", "periods_per_year": 12}, "periods_per_year 12"),
    ({"name": "land_take_synthetic", "min_clean": 0.6}, "min_clean <= max_missing"),
    ({"name": "land_take_synthetic", "change_thresholds": [0.3, 0.05]}, "increasing"),
    ({"name": "land_take_synthetic", "indices": {"s2": ["NDVI"]}}, "dataset.indices"),
    ({"name": "eopatch"}, "needs dataset.root"),
    ({"name": "eopatch", "root": "x", "test_root": "y"}, "splits.test_fraction"),
])
def test_config_rejects_what_the_temporal_datasets_cannot_use(dataset: dict[str, Any],
                                                              fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment.replace(".", r"\.")):
        StudyConfig.model_validate({"name": "t", "dataset": dataset})
