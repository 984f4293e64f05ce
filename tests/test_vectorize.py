"""``geofuse vectorize``: minimum mapping unit (sieve), polygons with class, area and mean
uncertainty, class areas before and after, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from typer.testing import CliRunner

from class_maps import ORIGIN, write_class_map
from geofuse.cli import app
from geofuse.errors import RasterError
from geofuse.mapping.outputs import CLASS_NODATA
from geofuse.mapping.vectorize import vectorize_map
from geofuse.raster.io import write_raster

NAMES = ["water", "forest", "urban"]
WATER, FOREST, URBAN = 0, 1, 2
TF = from_origin(*ORIGIN, 10.0, 10.0)  # 10 m pixels: 0.01 ha each


def _map() -> np.ndarray:
    m = np.full((60, 60), FOREST, np.uint8)
    m[10:30, 10:30] = WATER
    m[15:17, 15:17] = URBAN      # 4 px island in the water: below an MMU of 5 px
    m[50, 50] = URBAN            # a single pixel in the forest
    m[40:43, 5:8] = URBAN        # 9 px: kept
    m[45, 45] = m[46, 46] = WATER  # two diagonal pixels: one region only when 8-connected
    m[0:5, 50:60] = CLASS_NODATA
    return m


def _write_map(folder: Path, data: np.ndarray) -> Path:
    return write_class_map(folder, "classes", data, NAMES)


def test_mmu_merges_small_regions_and_writes_polygons_with_areas_and_doubt(
    tmp_path: Path,
) -> None:
    original = _map()
    path = _write_map(tmp_path / "map", original)
    entropy = np.random.default_rng(0).uniform(0, 1, original.shape).astype(np.float32)
    entropy[original == CLASS_NODATA] = np.nan
    write_raster(tmp_path / "map" / "uncertainty.tif", np.stack([entropy, entropy / 2]),
                 "EPSG:32633", TF, descriptions=["entropy", "one_minus_max_probability"])
    result = CliRunner().invoke(app, ["vectorize", str(path), "--mmu", "0.05", "-o",
                                      str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "MMU 0.05 ha (5 px, 4-connected)" in result.output
    with rasterio.open(tmp_path / "out" / "classes_mmu.tif") as src, rasterio.open(path) as ref:
        sieved = src.read(1)
        assert src.crs == ref.crs and src.transform == ref.transform
        assert json.loads(src.tags()["class_names"]) == NAMES
        assert src.colormap(1)[URBAN] == ref.colormap(1)[URBAN]
    want = original.copy()
    want[15:17, 15:17] = WATER   # the island joins the water around it
    want[50, 50] = FOREST
    want[45, 45] = want[46, 46] = FOREST
    np.testing.assert_array_equal(sieved, want)
    polygons = gpd.read_file(tmp_path / "out" / "classes_mmu.gpkg")
    assert polygons.crs.to_epsg() == 32633
    assert sorted(polygons["class_name"]) == ["forest", "urban", "water"]
    mapped = (want != CLASS_NODATA).sum()
    assert polygons["pixels"].sum() == mapped
    np.testing.assert_allclose(polygons.geometry.area, polygons["area_ha"] * 1e4)
    water = polygons[polygons["class_name"] == "water"].iloc[0]
    assert water["area_ha"] == pytest.approx(4.0)
    assert water["mean_entropy"] == pytest.approx(entropy[want == WATER].mean(), rel=1e-6)
    record = json.loads((tmp_path / "out" / "classes_vectorize.json").read_text())
    assert record["pixels_changed"] == 7 and record["polygons"] == 3
    urban = next(c for c in record["classes"] if c["class"] == "urban")
    assert urban["area_ha_before"] == pytest.approx(0.14)
    assert urban["area_ha_after"] == pytest.approx(0.09) and urban["polygons"] == 1


def test_eight_connected_regions_join_across_corners(tmp_path: Path) -> None:
    path = _write_map(tmp_path, _map())
    four = vectorize_map(path, tmp_path / "four", min_pixels=2, connectivity=4)
    eight = vectorize_map(path, tmp_path / "eight", min_pixels=2, connectivity=8)
    with rasterio.open(four.map_path) as a, rasterio.open(eight.map_path) as b:
        assert a.read(1)[45, 45] == FOREST and b.read(1)[45, 45] == WATER
    diagonal = gpd.read_file(eight.polygons_path)
    assert ((diagonal["class_name"] == "water") & (diagonal["pixels"] == 2)).sum() == 1
    assert four.record["mmu_pixels"] == 2 and eight.record["connectivity"] == 8
    # regions that touch themselves at a corner are written as valid (multi)polygons
    assert diagonal.geometry.is_valid.all()
    np.testing.assert_allclose(diagonal.geometry.area, diagonal["area_ha"] * 1e4)


def test_clusters_of_small_regions_merge_and_islands_in_nodata_are_flagged(
    tmp_path: Path,
) -> None:
    noisy = np.random.default_rng(1).integers(0, 3, (60, 60)).astype(np.uint8)
    noisy[0:3, 0:3] = CLASS_NODATA
    noisy[1, 1] = URBAN  # one pixel surrounded by nodata: nothing to merge with
    result = vectorize_map(write_class_map(tmp_path, "noisy", noisy, NAMES), min_pixels=20)
    polygons = gpd.read_file(result.polygons_path)
    small = polygons[polygons["pixels"] < 20]
    assert len(small) == 1 and small["below_mmu"].all() and result.record["below_mmu"] == 1
    assert polygons["pixels"].sum() == (noisy != CLASS_NODATA).sum()
    assert result.map_path.name == "noisy_mmu.tif"  # named after the map
    # other integer types than GDAL's sieve takes are read as well
    wide = noisy.astype(np.int64)
    write_raster(tmp_path / "wide.tif", wide, "EPSG:32633", TF, nodata=CLASS_NODATA)
    other = vectorize_map(tmp_path / "wide.tif", classes=NAMES, min_pixels=20)
    with rasterio.open(other.map_path) as a, rasterio.open(result.map_path) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_vectorize_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    path = _write_map(tmp_path / "map", _map())
    runner = CliRunner()
    cases = [
        (["vectorize", str(path)], ["--mmu HECTARES or --mmu-pixels N"]),
        (["vectorize", str(path), "--mmu-pixels", "3", "--connectivity", "6"],
         ["--connectivity 6", "give 4 or 8"]),
        (["vectorize", str(tmp_path / "nothing.tif"), "--mmu", "1"], ["nothing.tif"]),
    ]
    write_raster(tmp_path / "float.tif", np.zeros((8, 8), np.float32), "EPSG:32633", TF)
    cases.append((["vectorize", str(tmp_path / "float.tif"), "--mmu", "1"],
                  ["float32 values, not class indices"]))
    write_raster(tmp_path / "small.tif", np.zeros((8, 8), np.float32), "EPSG:32633", TF)
    cases.append((["vectorize", str(path), "--mmu", "1", "--uncertainty",
                   str(tmp_path / "small.tif")], ["on another grid", "small.tif"]))
    cases += [
        (["vectorize", str(path), "--mmu", "inf"], ["--mmu inf", "positive area"]),
        (["vectorize", str(path), "--mmu", "500"], ["not smaller than the class map"]),
    ]
    for args, words in cases:
        result = runner.invoke(app, args)
        out = " ".join(result.output.split())
        assert result.exit_code == 2, out
        assert all(w in out for w in words), (words, out)
        assert "Traceback" not in out
    assert not list((tmp_path / "map").glob("classes_mmu*"))  # nothing half-done
    with pytest.raises(RasterError, match="more than vectorize holds at once"):
        vectorize_map(path, tmp_path / "big", min_pixels=2, max_pixels=1000)


def test_a_study_publishes_its_map_once_per_unit_and_never_fails_on_it(tmp_path: Path) -> None:
    from geofuse.experiments.study_map import _publish

    write_class_map(tmp_path, "classes", _map(), NAMES)
    record = tmp_path / "classes_vectorize.json"
    _publish(tmp_path, 0.05, redo=False, progress=False)
    first = record.stat().st_mtime_ns
    _publish(tmp_path, 0.05, redo=False, progress=False)  # same unit, same map: kept
    assert record.stat().st_mtime_ns == first
    _publish(tmp_path, 0.1, redo=False, progress=False)  # another unit: redone
    assert json.loads(record.read_text())["mmu_pixels"] == 10
    _publish(tmp_path, None, redo=False, progress=False)  # the unit removed: no stale files
    assert not list(tmp_path.glob("classes_mmu*")) and not record.exists()
    with pytest.warns(UserWarning, match="not published with a minimum mapping unit"):
        _publish(tmp_path, 1000.0, redo=True, progress=False)  # larger than the map
    assert not record.exists()
