"""``temporal_tiles``: per-date GeoTIFF tile folders read through the config and the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from pydantic import ValidationError
from rasterio.transform import from_origin
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import StudyConfig, load_config
from geofuse.data.datasets.build import build_dataset_patches
from geofuse.data.datasets.temporal_tiles import (
    date_from_name,
    neighbour_groups,
    read_temporal_tiles,
)
from geofuse.data.patchset import MASK_IGNORE, PatchSet
from geofuse.data.temporal import CHANGE_LEVEL_NAMES

SIZE = 16
BANDS = ("B04", "B08", "B11")
#: File stem -> value code (band c holds 100 * c + code): quarters Q2, Q3 of 2018 and 2019.
DATES = {"2018-05-15": 1.0, "S2_20180815": 3.0, "2019-Q2": 5.0, "2019_08_20": 7.0}
NODATA = -9999.0
CHANGED = {0: 0, 1: 0, 2: 40, 3: 40, 4: 100, 5: 100}  # low, low, moderate x 2, high x 2


def _tif(path: Path, data: np.ndarray, x0: float, crs: str = "EPSG:32633",
         descriptions: tuple[str, ...] | None = BANDS, nodata: float | None = NODATA) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs=crs, nodata=nodata,
                       transform=from_origin(x0, 5_100_000.0, 10.0, 10.0)) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions


def _tile(root: Path, k: int, size: tuple[int, int] = (SIZE, SIZE), names: dict[str, str] |
          None = None, x0: float | None = None, **kw: Any) -> Path:
    """Tile ``k``: four dates (file stems of DATES, or ``names``), a binary mask."""
    folder = root / f"t{k}"
    folder.mkdir(parents=True)
    x0 = 500_000.0 + k * 1000.0 if x0 is None else x0  # 1 km apart: no neighbours
    for stem, code in DATES.items():
        data = np.stack([np.full(size, 100.0 * c + code, np.float32) for c in range(3)])
        if k == 5 and code == 7.0:  # 2019-Q3 mostly nodata: 2019 is Q2 alone
            data[:, : size[0] * 2 // 3] = NODATA
        _tif(folder / f"{(names or {}).get(stem, stem)}.tif", data, x0, **kw)
    mask = np.zeros(size, np.uint8)
    mask.ravel()[: CHANGED[k]] = 1
    mask[-1, -1] = MASK_IGNORE
    _tif(folder / "mask.tif", mask[None], x0, kw.get("crs", "EPSG:32633"), None, None)
    return folder


def _root(tmp_path: Path, n: int = 6) -> Path:
    root = tmp_path / "tiles"
    for k in range(n):
        _tile(root, k)
    return root


def _config(tmp_path: Path, root: Path, patch_size: int | None = None, **dataset: Any) -> Path:
    cfg: dict[str, Any] = {"name": "t", "workdir": "work", "seed": 1,
                           "dataset": {"name": "temporal_tiles", "root": str(root), **dataset}}
    if patch_size:
        cfg["extract"] = {"patch_size": patch_size}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_extract_writes_masks_timestamps_and_described_bands(tmp_path: Path) -> None:
    path = _config(tmp_path, _root(tmp_path))
    result = CliRunner().invoke(app, ["extract", "-c", str(path)])
    assert result.exit_code == 0, result.output
    p = PatchSet.load(tmp_path / "work" / "patches.h5")
    assert p.x.shape == (6, 2 * 3, SIZE, SIZE) and p.timestamps == ["2018", "2019"]
    assert p.band_names[:4] == ["B04@2018", "B08@2018", "B11@2018", "B04@2019"]
    assert p.masks is not None and p.masks.shape == (6, SIZE, SIZE)
    assert p.mask_names == ["no_change", "change"] and p.masks[0, -1, -1] == MASK_IGNORE
    assert p.class_names == CHANGE_LEVEL_NAMES and p.y.tolist() == [0, 0, 1, 1, 2, 2]
    # annual: the mean of Q2 and Q3; tile 5's 2019 Q3 is 67 % nodata: its Q2 alone
    assert np.allclose(p.x[0, :, 0, 0], [2, 102, 202, 6, 106, 206])
    assert np.allclose(p.x[5, 3:, -1, -1], [5, 105, 205])
    assert not np.isnan(p.x).any()
    assert p.groups.tolist() == [f"tile:t{k}" for k in range(6)] and p.crs == "EPSG:32633"
    assert np.allclose(p.coords[1], (501_080.0, 5_099_920.0))
    prov = p.provenance
    assert prov["dataset"] == "temporal_tiles" and prov["band_names_from"] == "descriptions"
    assert prov["tiles"]["t5"]["years_one_period_alone"] == 1
    assert prov["tiles"]["t0"]["dates"] == "file names"
    assert [m.name for m in load_config(path).modalities] == ["s2"]


def test_dates_json_composite_all_band_subset_and_crop(tmp_path: Path) -> None:
    root = tmp_path / "tiles"
    stems = list(DATES)
    iso = ["2018-05-15", "2018-08-15", "2019-05-01", "2019-08-20"]
    for k in range(4):
        folder = _tile(root, k, size=(SIZE, SIZE + 1), names={s: f"img{i}" for i, s in
                                                                enumerate(stems)})
        listing: Any = {f"img{i}.tif": iso[i] for i in range(4)}
        if k % 2:
            listing = [{"file": f, "date": v} for f, v in listing.items()]
        (folder / "dates.json").write_text(json.dumps(listing))
    path = _config(tmp_path, root, patch_size=8, composite="all",
                   bands={"s2": ["B11", "B04"]}, change_thresholds=[0.01, 0.3])
    p = build_dataset_patches(load_config(path))
    assert p.timestamps == ["2018-Q2", "2018-Q3", "2019-Q2", "2019-Q3"]
    assert p.step_bands == ["B11", "B04"] and p.x.shape == (4, 8, 8, 8)  # config order
    assert np.allclose(p.x[0, :4, 0, 0], [201, 1, 203, 3])
    assert p.provenance["tiles"]["t1"]["dates"] == "dates.json"
    assert p.masks is not None and p.masks.shape == (4, 8, 8)


def test_names_from_config_multiclass_masks_and_neighbours(tmp_path: Path) -> None:
    root = tmp_path / "tiles"
    for k in range(4):
        folder = _tile(root, k, descriptions=None)
        mask = np.full((SIZE, SIZE), 3 + k % 2, np.uint8)
        mask[:2] = 9  # the configured nodata value
        mask[2:4] = 7
        _tif(folder / "mask.tif", mask[None], 500_000.0 + k * 1000.0, descriptions=None,
             nodata=None)
    path = _config(tmp_path, root, bands={"opt": ["red", "nir", "swir"]}, mask_nodata=9)
    p = build_dataset_patches(load_config(path))
    assert p.step_bands == ["red", "nir", "swir"] and list(p.modalities) == ["opt"]
    assert p.mask_names == ["class_3", "class_4", "class_7"]
    assert p.class_names == ["class_3", "class_4"] and p.y.tolist() == [0, 1, 0, 1]
    assert p.masks is not None and (p.masks[:, :2] == MASK_IGNORE).all()
    no_names = build_dataset_patches(load_config(_config(tmp_path, root, mask_nodata=9)))
    assert no_names.step_bands == ["B1", "B2", "B3"]
    bounds = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [50, 50, 60, 60], [19, 5, 30, 9]])
    assert neighbour_groups(["a", "b", "c", "d"], bounds, -0.5) == [  # overlap: b and d
        "tile:a", "tile:b", "tile:c", "tile:b"]
    assert neighbour_groups(["a", "b", "c", "d"], bounds, 0.5) == [  # touching too
        "tile:a", "tile:a", "tile:c", "tile:a"]


def test_overlapping_tiles_share_a_group_touching_ones_do_not(tmp_path: Path) -> None:
    root = tmp_path / "tiles"
    for k, x0 in enumerate([500_000.0, 500_160.0, 500_250.0]):  # t1 touches t0, t2 overlaps t1
        _tile(root, k, x0=x0)
    cfg = load_config(_config(tmp_path, root))
    assert cfg.dataset is not None
    p = read_temporal_tiles(cfg.dataset, root, cfg, external=False)
    assert p.groups.tolist() == ["tile:t0", "tile:t1", "tile:t1"]


def test_date_in_file_names() -> None:
    for name, want in [("2018-06-15.tif", "2018-06-15"), ("S2_20180615.tif", "2018-06-15"),
                       ("2018-Q2.tif", "2018-04-01"), ("tile_0001_2019_H2.tif", "2019-07-01"),
                       ("20180615T101031_20180615T101316_T32TQM.tif", "2018-06-15")]:
        assert date_from_name(Path("t") / name) == want, name
    custom = re.compile(r"acq(\d{8})")
    assert date_from_name(Path("t/S2_acq20180615_T32.tif"), custom) == "2018-06-15"


@pytest.mark.parametrize(("dataset", "fragment"), [
    ({"date_pattern": "("}, "date_pattern"),
    ({"composite": "dates"}, "'dates' is for eopatch"),
    ({"test_root": "y"}, "splits.test_fraction"),
    ({"indices": {"s2": ["NDVI"]}}, "dataset.indices"),
])
def test_config_rejects(dataset: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(fragment)):
        StudyConfig.model_validate({"name": "t", "dataset": {"name": "temporal_tiles",
                                                             "root": "x", **dataset}})


def _drop(root: Path) -> None:
    (root / "t2" / "2019-Q2.tif").unlink()


def _small_mask(root: Path) -> None:
    _tif(root / "t3" / "mask.tif", np.zeros((1, 12, 12), np.uint8), 503_000.0, descriptions=None,
         nodata=None)


def _bad_name(root: Path) -> None:
    (root / "t1" / "2019-Q2.tif").rename(root / "t1" / "scene_b.tif")


def _bad_json(root: Path) -> None:
    (root / "t4" / "dates.json").write_text(json.dumps({"2019-Q2.tif": "2019-13-45"}))


def _short(root: Path) -> None:
    for stem in ("2019-Q2", "2019_08_20"):
        (root / "t2" / f"{stem}.tif").unlink()


def _other_crs(root: Path) -> None:
    shutil.rmtree(root / "t4")
    _tile(root, 4, crs="EPSG:32634")


def _other_size(root: Path) -> None:
    shutil.rmtree(root / "t1")
    _tile(root, 1, size=(SIZE + 4, SIZE + 4))


@pytest.mark.parametrize(("spoil", "extra", "fragments"), [
    (_drop, {"composite": "all"}, ["t2", "3 time steps", "'2019-Q2'"]),
    (_small_mask, {}, ["t3", "mask.tif", "12 x 12 px"]),
    (_bad_name, {}, ["t1", "scene_b.tif", "date_pattern"]),
    (_bad_json, {}, ["t4", "dates.json", "2019-13-45"]),
    (_short, {}, ["t2", "1 time step", "min_steps"]),
    (lambda root: None, {"min_steps": 3}, ["t0", "2 time step", "min_steps = 3"]),
    (lambda root: (root / "t5" / "mask.tif").unlink(), {}, ["t5", "mask.tif", "mask_file"]),
    (lambda root: shutil.rmtree(root), {}, ["tiles", "does not exist"]),
    (lambda root: [shutil.rmtree(p) for p in root.iterdir()], {}, ["tiles", "no tile folders"]),
    (_other_crs, {}, ["t4", "EPSG:32634", "share a CRS"]),
    (_other_size, {}, ["t1", "20 x 20 px", "extract.patch_size"]),
])
def test_bad_input_exits_2_with_one_line_naming_the_tile(
        tmp_path: Path, spoil: Any, extra: dict[str, Any], fragments: list[str]) -> None:
    root = _root(tmp_path)
    spoil(root)
    result = CliRunner().invoke(app, ["extract", "-c", str(_config(tmp_path, root, **extra))])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
