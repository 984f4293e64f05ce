"""EOPatch reader: the real eo-learn test patch, gzipped files, several patches, bad input."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import StudyConfig
from geofuse.data.datasets.eopatch import read_eopatch
from geofuse.data.patchset import MASK_IGNORE, PatchSet
from geofuse.errors import AlignmentError, DataNotFoundError, GeofuseError, RasterError

QUARTERS = ["2015-Q3", "2015-Q4", "2016-Q1", "2016-Q2", "2016-Q3", "2016-Q4", "2017-Q1",
            "2017-Q2", "2017-Q3", "2017-Q4"]


@pytest.fixture(scope="module")
def test_patch(shared_data: Path) -> Path:
    path = shared_data / "eolearn_slovenia" / "TestEOPatch"
    if not path.is_dir():
        pytest.skip(f"real test data missing: {path}")
    return path


def _read(root: Path, patch_size: int = 16, **dataset: Any) -> PatchSet:
    cfg = StudyConfig.model_validate({"name": "t", "extract": {"patch_size": patch_size},
                                      "dataset": {"name": "eopatch", "root": str(root),
                                                  **dataset}})
    assert cfg.dataset is not None
    return read_eopatch(cfg.dataset, root, cfg, external=False)


@pytest.fixture(scope="module")
def real(test_patch: Path) -> PatchSet:
    return _read(test_patch)


def test_real_patch_quarterly_tiles(real: PatchSet, test_patch: Path) -> None:
    # 101 x 100 px -> 6 x 6 tiles of 16 px (the last 5 rows and 4 columns dropped)
    assert real.x.shape == (36, 10, 16, 16) and real.timestamps == QUARTERS
    assert real.band_names[:2] == ["NDVI@2015-Q3", "NDVI@2015-Q4"]
    assert real.modalities == {"s2": real.band_names}
    assert real.mask_names == ["cultivated_land", "forest", "grassland", "shrubland",
                               "artificial_surface"]
    assert real.class_names == ["forest", "grassland"]  # the classes that dominate a tile
    assert real.crs == "EPSG:32633" and real.provenance["cloud_mask"] == ["mask/IS_VALID"]
    lulc = np.load(test_patch / "mask_timeless" / "LULC.npy")[..., 0]
    ids = [1, 2, 3, 4, 8]
    first = lulc[:16, :16]  # tile 0: the top-left corner
    want = np.where(first == 0, MASK_IGNORE, np.searchsorted(ids, first))
    assert real.masks is not None and np.array_equal(real.masks[0], want)
    assert (real.masks == MASK_IGNORE).any()  # LULC 0 (no data) is ignored
    for m, y in zip(real.masks, real.y, strict=True):
        dominant = np.bincount(m[m != MASK_IGNORE], minlength=5).argmax()
        assert real.class_names[y] == real.mask_names[dominant]
    # 2015-Q3 of tile 0: the mean of the cloud-free NDVI of July-September 2015
    ndvi = np.load(test_patch / "data" / "NDVI.npy")[..., 0]
    valid = np.load(test_patch / "mask" / "IS_VALID.npy")[..., 0]
    dates = json.loads((test_patch / "timestamps.json").read_text())
    sel = [i for i, d in enumerate(dates) if d[:7] in ("2015-07", "2015-08", "2015-09")]
    clear = np.where(valid[sel, :16, :16], ndvi[sel, :16, :16], np.nan)
    assert np.allclose(real.x[0, 0], np.nanmean(clear, axis=0), equal_nan=True)
    x0, y1 = 465181.0522318204, 5080254.63349641
    assert np.allclose(real.coords[0], (x0 + 8 * 9.99479, y1 - 8 * 9.99745), atol=0.01)


def test_groups_are_map_blocks(real: PatchSet, test_patch: Path) -> None:
    groups = real.groups.tolist()
    assert all(g.startswith("block:") for g in groups)
    assert 9 <= len(set(groups)) <= 16  # blocks of 2 x 2 tiles on a global grid
    for g in set(groups):  # a block's tiles lie within one block side (320 m) of each other
        xy = real.coords[real.groups == g]
        assert np.ptp(xy, axis=0).max() < 320
    many = _read(test_patch, block_tiles=1)
    assert len(set(many.groups.tolist())) == 36


def test_real_patch_dates_and_annual(test_patch: Path) -> None:
    days = _read(test_patch, composite="dates", date_stride=4)
    assert days.timestamps[:3] == ["2015-07-11", "2015-09-09", "2015-12-18"]
    assert len(days.timestamps) == 17  # 67 days (two images on 2015-12-08 merged), every 4th
    valid = np.load(test_patch / "mask" / "IS_VALID.npy")[..., 0]
    # 2015-07-11 is the first image: NaN exactly where its cloud mask says invalid
    assert np.array_equal(np.isnan(days.x[0, 0]), ~valid[0, :16, :16])
    annual = _read(test_patch, 32, composite="annual")
    assert annual.timestamps == ["2015", "2016", "2017"] and annual.x.shape == (9, 3, 32, 32)


# -- small EOPatches written here ---------------------------------------------------------------
def _save(path: Path, arr: np.ndarray, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, arr)
    if gz:
        Path(f"{path}.gz").write_bytes(gzip.compress(buf.getvalue()))
    else:
        path.write_bytes(buf.getvalue())


def write_patch(folder: Path, dates: list[str], size: int = 8, origin: float = 500000.0,
                gz: bool = False, lulc_shape: tuple[int, int] | None = None,
                clm_dates: int | None = None) -> Path:
    """A tiny EOPatch: NDVI = date index, CLM clouds on the first row, LULC 2 / 3 halves."""
    t = len(dates)
    ndvi = np.arange(t, dtype=np.float32)[:, None, None, None] * np.ones((t, size, size, 1))
    _save(folder / "data" / "NDVI.npy", ndvi.astype(np.float32), gz)
    clm = np.zeros((clm_dates or t, size, size, 1), dtype=np.uint8)
    clm[:, 0] = 1
    _save(folder / "mask" / "CLM.npy", clm, gz)
    h, w = lulc_shape or (size, size)
    lulc = np.full((h, w, 1), 2, dtype=np.uint16)
    lulc[h // 2:] = 3
    lulc[0, 0] = 0
    _save(folder / "mask_timeless" / "LULC.npy", lulc, gz)
    stamps = json.dumps(dates).encode()
    (folder / ("timestamps.json.gz" if gz else "timestamps.json")).write_bytes(
        gzip.compress(stamps) if gz else stamps)
    side = 10.0 * size
    bbox = {"crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
            "type": "Polygon", "coordinates": [[[origin, 5e6], [origin, 5e6 + side],
                                                [origin + side, 5e6 + side],
                                                [origin + side, 5e6], [origin, 5e6]]]}
    (folder / "bbox.geojson").write_text(json.dumps(bbox))
    return folder


DATES = ["2018-05-01T10:00:00", "2018-08-01T10:00:00", "2019-05-01T10:00:00",
         "2019-08-01T10:00:00"]


def test_gzipped_patches_and_a_folder_of_patches(tmp_path: Path) -> None:
    write_patch(tmp_path / "a", DATES, gz=True)
    write_patch(tmp_path / "b", DATES[1:], origin=500080.0)  # adjacent to the east
    p = _read(tmp_path, 4, composite="annual", periods_per_year=2)
    assert p.timestamps == ["2018", "2019"] and len(p) == 8  # 2 patches x 4 tiles
    assert p.provenance["eopatches"] == ["a", "b"]
    assert p.provenance["cloud_mask"] == ["mask/CLM"]
    assert np.isnan(p.x[0, :, 0]).all() and not np.isnan(p.x[0, :, 1:]).any()  # row 0 cloudy
    assert np.allclose(p.x[0, 0, 1:], 0.5) and np.allclose(p.x[0, 1, 1:], 2.5)  # date means
    assert np.allclose(p.x[4, 0, 1:], 0.0) and np.allclose(p.x[4, 1, 1:], 1.5)  # b lacks May
    assert p.mask_names == ["forest", "grassland"] and p.masks is not None
    assert p.masks[0, 0, 0] == MASK_IGNORE and p.class_names == ["forest", "grassland"]
    assert p.y.tolist() == [0, 0, 1, 1] * 2
    quarters = _read(tmp_path, 4)  # default: quarterly, first to last observed quarter
    assert quarters.timestamps == ["2018-Q2", "2018-Q3", "2018-Q4", "2019-Q1", "2019-Q2",
                                   "2019-Q3"]
    assert np.isnan(quarters.x[:, 2]).all()  # 2018-Q4 had no acquisition


def _one_line_error(root: Path, kind: type[GeofuseError], *fragments: str, **dataset: Any
                    ) -> None:
    with pytest.raises(kind) as info:
        _read(root, 4, **dataset)
    msg = info.value.one_line()
    for fragment in fragments:
        assert fragment in msg, msg


def test_bad_input_errors_name_the_file_the_value_and_the_fix(tmp_path: Path) -> None:
    _one_line_error(tmp_path / "nope", DataNotFoundError, "nope", "dataset.root")
    bad_lulc = write_patch(tmp_path / "size", DATES, lulc_shape=(6, 8))
    _one_line_error(bad_lulc, AlignmentError, "LULC.npy", "6 x 8 px", "8 x 8 px", "re-export")
    bad_clm = write_patch(tmp_path / "clm", DATES, clm_dates=3)
    _one_line_error(bad_clm, AlignmentError, "CLM.npy", "(3, 8, 8)", "(4, 8, 8)")
    missing = write_patch(tmp_path / "missing", DATES)
    (missing / "mask_timeless" / "LULC.npy").unlink()
    _one_line_error(missing, DataNotFoundError, "has no mask_timeless/LULC.npy", "add it")
    bad_date = write_patch(tmp_path / "date", [*DATES[:3], "2019-13-45"])
    _one_line_error(bad_date, RasterError, "timestamps.json", "'2019-13-45'", "ISO 8601")
    two = tmp_path / "two"
    write_patch(two / "p1", DATES)
    write_patch(two / "p2", DATES[:3], origin=500080.0)
    _one_line_error(two, AlignmentError, "p2", "3 acquisition days", "p1", "4",
                    "dataset.composite", composite="dates")
    assert len(_read(two, 4)) == 8  # period means put both on one grid


def test_cli_extract_error_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = write_patch(tmp_path / "patch", DATES, lulc_shape=(6, 8))
    cfg = {"name": "t", "workdir": "work", "extract": {"patch_size": 4},
           "dataset": {"name": "eopatch", "root": str(bad)}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["extract", "-c", str(path)])
    assert result.exit_code == 2, result.output
    assert "LULC.npy" in result.output and "Traceback" not in result.output


def test_annual_composites_ignore_quarters_never_observed(shared_data: Path, tmp_path: Path
                                                          ) -> None:
    """The real patch starts in July 2015: its annual composites average the quarters it has,
    an unobserved quarter does not count as a cloudy one."""
    from geofuse.config import parse_config
    from geofuse.data.temporal import group_by_period

    root = shared_data / "eolearn_slovenia" / "TestEOPatch"
    cfg = parse_config({"name": "t", "workdir": str(tmp_path), "extract": {"patch_size": 16},
                        "dataset": {"name": "eopatch", "root": str(root),
                                    "composite": "annual"}}, tmp_path)
    p = read_eopatch(cfg.dataset, root, cfg, external=False)
    assert p.timestamps == ["2015", "2016", "2017"]
    assert np.isfinite(p.x).mean() > 0.9
    stamps = json.loads((root / "timestamps.json").read_text())
    assert group_by_period(np.zeros((len(stamps), 1, 2, 2)), stamps).counts[0, 0] == 0
