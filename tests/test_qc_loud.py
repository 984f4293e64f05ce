"""QC that fails loudly: empty or mostly-nodata modalities, empty label files, patches that lie
mostly outside their (too small) polygons. Each says so on the console and in the QC report,
with a status that is not "passed", and keeps the outputs written before."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geofuse.config import ModalityConfig
from geofuse.data.patchset import PatchSet
from geofuse.raster.io import Grid, write_raster
from geofuse.raster.qc import QCAccumulator
from scene_faults import (
    build_scene,
    copy_scene,
    invoke,
    one_line_error,
    set_nodata_rows,
    snapshot,
)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Config of a 4 km scene with stack and PatchSet written."""
    return build_scene(tmp_path_factory.mktemp("qc") / "base")


@pytest.fixture
def study(scene: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared scene (outputs included)."""
    return copy_scene(scene, tmp_path / "scene")


def _warnings(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("warning:")]


def test_clean_scene_passes(scene: Path) -> None:
    work = scene.parent / "work"
    assert json.loads((work / "stack_qc.json").read_text())["status"] == "passed"
    assert "Status: **passed**" in (work / "stack_qc.md").read_text()
    qc = json.loads((work / "patches_qc.json").read_text())
    assert qc["status"] == "passed" and not qc["warnings"]
    assert all(c["median_inside"] > 0.5 for c in qc["label_fit"]["classes"].values())
    assert PatchSet.load(work / "patches.h5").provenance["qc"]["status"] == "passed"


def test_all_nodata_dem_fails_prepare_naming_the_band(study: Path) -> None:
    work = study.parent / "work"
    set_nodata_rows(study.parent / "dem.tif", 1.0)
    before = snapshot(work)
    one_line_error(*invoke("prepare", "-c", str(study)), "QC failed", "'dem'", "'elevation'",
                   "0.0% valid", "nodata", "stack was not written")
    qc = json.loads((work / "stack_qc.json").read_text())
    assert qc["status"] == "failed" and not qc["passed"]
    assert qc["bands"]["elevation"]["valid_fraction"] == 0.0
    assert "Status: **FAILED**" in (work / "stack_qc.md").read_text()
    for name in ("stack.tif", "stack.json", "patches.h5"):  # outputs of the earlier run intact
        assert snapshot(work)[name] == before[name]


def test_mostly_nodata_dem_warns(study: Path) -> None:
    set_nodata_rows(study.parent / "dem.tif", 0.7)
    code, out = invoke("prepare", "-c", str(study))
    assert code == 0, out
    lines = [w for w in _warnings(out) if "mostly nodata" in w]
    assert len(lines) == 1 and "'dem'" in lines[0] and "'elevation'" in lines[0], out
    qc = json.loads((study.parent / "work" / "stack_qc.json").read_text())
    assert qc["status"] == "warning" and qc["passed"]
    assert 0.01 < qc["bands"]["elevation"]["valid_fraction"] < 0.5


def test_extract_names_the_band_that_is_nodata(study: Path) -> None:
    work = study.parent / "work"
    stack = work / "stack.tif"
    with rasterio.open(stack) as src:
        data, names, crs, transform = src.read(), src.descriptions, src.crs, src.transform
    data[-1] = np.nan  # elevation
    write_raster(stack, data, crs, transform, nodata=float("nan"), descriptions=names)
    before = snapshot(work)["patches.h5"]
    one_line_error(*invoke("extract", "-c", str(study)), "all", "modality 'dem'",
                   "elevation 100%", "max_nodata_fraction")
    assert snapshot(work)["patches.h5"] == before


def test_empty_feature_collection(study: Path) -> None:
    labels = study.parent / "labels.geojson"
    labels.write_text('{"type": "FeatureCollection", "features": []}\n')
    before = snapshot(study.parent / "work")
    one_line_error(*invoke("extract", "-c", str(study)), "labels.geojson", "holds no polygons",
                   "labels.path")
    assert snapshot(study.parent / "work") == before


def test_polygons_smaller_than_a_patch_are_flagged(study: Path) -> None:
    labels = study.parent / "labels.geojson"
    frame = gpd.read_file(labels)
    utm = frame.to_crs("EPSG:32718")
    usable = utm.geometry.notna() & ~utm.geometry.is_empty
    utm.loc[usable, "geometry"] = (  # 10 m squares; patches are 8 px x 10 m = 80 m
        utm.geometry[usable].make_valid().representative_point().buffer(5, cap_style="square")
    )
    utm.to_crs(frame.crs).to_file(labels, driver="GeoJSON")
    code, out = invoke("extract", "-c", str(study))
    assert code == 0, out
    lines = [w for w in _warnings(out) if "outside their label polygon" in w]
    assert len(lines) == 1 and "patch_size" in lines[0] and "patches_qc.md" in lines[0], out
    work = study.parent / "work"
    qc = json.loads((work / "patches_qc.json").read_text())
    assert qc["status"] == "warning" and qc["warnings"]
    classes = qc["label_fit"]["classes"]
    assert classes and all(c["flagged"] and c["share_outside"] > 0.5 for c in classes.values())
    assert all(c["polygons_smaller_than_patch"] == c["polygons"] for c in classes.values())
    assert "Status: **WARNING**" in (work / "patches_qc.md").read_text()
    assert PatchSet.load(work / "patches.h5").provenance["qc"]["status"] == "warning"


@pytest.mark.parametrize(
    ("valid_share", "status", "where"),
    [(1.0, "passed", None), (0.7, "passed", None), (0.3, "warning", "warnings"),
     (0.005, "failed", "failures"), (0.0, "failed", "failures")],
)
def test_valid_share_thresholds(valid_share: float, status: str, where: str | None) -> None:
    grid = Grid(CRS.from_epsg(32718), Affine(10, 0, 0, 0, -10, 0), 100, 100)
    mod = ModalityConfig(name="dem", files=["dem.tif"], bands=["elevation"])
    qc = QCAccumulator(grid, [mod], {"dem": 1})
    values = np.full((1, 100, 100), np.nan, dtype="float32")
    values.reshape(-1)[: round(valid_share * 10_000)] = 1.0
    qc.update("dem", values, np.ones((100, 100), bool), Window(0, 0, 100, 100))
    report = qc.report(Path("stack.tif"), max_nan_fraction=1.0)
    assert report["status"] == status and report["passed"] == (status != "failed")
    if where is not None:
        assert any("'elevation'" in m and "'dem'" in m for m in report[where])
