"""LCZ segmentation from the So2Sat-POP Gdansk layers (dataset.target: mask) on real data."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.data.datasets.so2sat_lcz import LCZ_NAMES, load_so2sat_lcz
from geofuse.data.datasets.so2sat_lcz_masks import load_so2sat_lcz_masks
from geofuse.data.external_test import with_external_test
from geofuse.data.patchset import MASK_IGNORE, SPLIT_CODES, PatchSet

pytestmark = pytest.mark.realdata

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "so2sat_lcz_segmentation.yaml"
ARGS = {"seasons": ["summer"], "layers": ["dem"], "patch_size": 24, "stride": 24,
        "max_nodata_fraction": 0.0}


@pytest.fixture(scope="module")
def masks(gdansk_dir: Path) -> PatchSet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_so2sat_lcz_masks(gdansk_dir, **ARGS, min_cells_per_class=3,
                                     min_labelled=0.05)


def test_every_window_carries_the_lcz_raster_under_it(masks: PatchSet, gdansk_dir: Path
                                                       ) -> None:
    p = masks
    assert p.segmentation and p.x.shape[1:] == (4, 24, 24) and p.masks.shape[1:] == (24, 24)
    assert set(p.mask_names) <= set(LCZ_NAMES.values()) and len(p.mask_names) >= 8
    assert set(p.class_names) <= set(p.mask_names)
    assert all(g.startswith("cell:") for g in p.groups)
    # the class reader labels the same lattice windows by their centre pixel: the mask's
    # centre pixel must decode to that class wherever both readers keep the window
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        centres = load_so2sat_lcz(gdansk_dir, **ARGS, min_cells_per_class=1)
    index = {tuple(np.round(c, 3)): i for i, c in enumerate(masks.coords)}
    checked = 0
    for j, c in enumerate(centres.coords):
        i = index.get(tuple(np.round(c, 3)))
        if i is None or p.masks[i, 12, 12] == MASK_IGNORE:
            continue
        assert p.mask_names[p.masks[i, 12, 12]] == centres.class_names[centres.y[j]]
        checked += 1
    assert checked > 500
    # every window has labelled pixels; its stratum is a class of its own mask
    labelled = p.masks != MASK_IGNORE
    assert labelled.any(axis=(1, 2)).all()
    for i in range(0, len(p), 37):
        present = {p.mask_names[k] for k in np.unique(p.masks[i][labelled[i]])}
        assert p.class_names[p.y[i]] in present
    # each stratum spans at least min_cells_per_class cells
    for k in range(len(p.class_names)):
        assert len(set(p.groups[p.y == k].tolist())) >= 3


def test_an_external_test_city_keeps_its_masks_in_the_training_classes(masks: PatchSet
                                                                        ) -> None:
    train = masks.subset(np.arange(len(masks)) % 2 == 0)
    train = train._replace(split=np.zeros(len(train), np.uint8))
    test = masks.subset(np.arange(len(masks)) % 2 == 1)
    other = test._replace(mask_names=[*test.mask_names[1:], test.mask_names[0]])  # reordered
    merged = with_external_test(train, other, name="elsewhere")
    t = merged.split == SPLIT_CODES["test"]
    assert t.sum() == len(test) and merged.masks.shape == (len(merged), 24, 24)
    # pixel k of the test set was named other.mask_names[k]: recoded into training indices
    def decode(masks: np.ndarray, names: list[str]) -> np.ndarray:
        index = np.where(masks == MASK_IGNORE, -1, masks.astype(np.int64))
        return np.array([*names, "?"])[index]

    got, want = decode(merged.masks[t], train.mask_names), decode(test.masks, other.mask_names)
    assert (got == want).all()


def test_the_ready_config_extracts_and_trains_a_segmentation_run(
    gdansk_dir: Path, tmp_path: Path,
) -> None:
    """The ready config, shrunk: extract and one epoch of its late-fusion U-Net (studies of
    mask sets are tested in test_segmentation_flow.py and test_mask_tiles.py)."""
    data = yaml.safe_load(CONFIG.read_text())
    data["dataset"].update(city_dir=str(gdansk_dir), seasons=["summer"], stride=64)
    data["workdir"] = str(tmp_path / "work")
    data["extract"].update(patch_size=32, min_labelled=0.8)
    data["train"].update(epochs=1, model={"name": "unet_late",
                                          "decoder_channels": [16, 8, 8, 8, 8]})
    path = tmp_path / "lcz_masks.yaml"
    path.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    result = runner.invoke(app, ["config", "--check", str(CONFIG)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["extract", "-c", str(path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "-c", str(path), "--run-name", "late"])
    assert result.exit_code == 0, result.output
    assert "val: IoU" in result.output
    info = json.loads((tmp_path / "work" / "runs" / "late" / "run.json").read_text())
    assert info["task"] == "segmentation" and len(info["mask_names"]) >= 8
    assert list(info["modalities"]) == ["s2_summer", "dem", "viirs"]
