"""``prepare_stack``: mosaics of tiles, stacks of per-band files, resampling and explicit grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin
from rasterio.warp import transform as transform_coords

from geofuse.config import parse_config
from geofuse.errors import ConfigError, RasterError
from geofuse.raster.io import write_raster
from geofuse.raster.prepare import PrepareResult, prepare_stack

UTM = "EPSG:32633"
ORIGIN = (400_003.0, 5_100_007.0)  # deliberately not a multiple of the pixel size


def run(tmp_path: Path, modalities: list[dict[str, Any]], **extra: Any) -> PrepareResult:
    data = {"workdir": "work", "modalities": modalities, "prepare": {"block_size": 64}, **extra}
    return prepare_stack(parse_config(data, tmp_path), progress=False)


def read(result: PrepareResult) -> tuple[np.ndarray, Affine]:
    with rasterio.open(result.stack_path) as src:
        return src.read(), src.transform


@pytest.fixture()
def original() -> np.ndarray:
    return np.random.default_rng(1).integers(1, 5000, size=(3, 90, 100), dtype=np.uint16)


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_mosaic_of_adjacent_tiles_equals_original(
    tmp_path: Path, original: np.ndarray, resampling: str
) -> None:
    tf = from_origin(*ORIGIN, 10, 10)
    # The east tile comes first: the grid must still be the union, aligned to the first tile.
    east_tf = tf * Affine.translation(40, 0)
    write_raster(tmp_path / "tiles/a_east.tif", original[:, :, 40:], UTM, east_tf)
    write_raster(tmp_path / "tiles/b_west.tif", original[:, :, :40], UTM, tf)
    result = run(tmp_path, [{"name": "s2", "files": ["tiles/*.tif"], "bands": ["r", "g", "b"],
                             "resampling": resampling}])
    arr, transform = read(result)
    assert transform == tf
    np.testing.assert_array_equal(arr, original.astype(np.float32))
    assert result.qc["modalities"]["s2"] == {
        "files": 2, "covered_fraction": 1.0, "uncovered_pixels": 0, "uncovered_bounds": None
    }


def test_mosaic_first_valid_value_wins(tmp_path: Path) -> None:
    tf = from_origin(*ORIGIN, 10, 10)
    a = np.full((20, 20), 1, np.int16)
    a[5:8, 5:8] = -1  # nodata hole: the second tile shows through
    write_raster(tmp_path / "a.tif", a, UTM, tf, nodata=-1)
    write_raster(tmp_path / "b.tif", np.full((20, 20), 2, np.int16), UTM,
                 tf * Affine.translation(10, 10))
    arr, _ = read(run(tmp_path, [{"name": "m", "files": ["a.tif", "b.tif"], "bands": ["v"]}]))
    v = arr[0]
    assert v.shape == (30, 30)
    assert (v[:20, :20][a != -1] == 1).all()
    assert np.isnan(v[5:8, 5:8]).all()  # hole outside tile b stays NaN
    assert (v[20:, 10:] == 2).all() and (v[10:20, 20:] == 2).all()
    assert np.isnan(v[20:, :10]).all() and np.isnan(v[:10, 20:]).all()


def test_mosaic_hole_filled_by_later_tile(tmp_path: Path) -> None:
    tf = from_origin(*ORIGIN, 10, 10)
    a = np.full((20, 20), 1, np.int16)
    a[12:15, 12:15] = -1
    write_raster(tmp_path / "a.tif", a, UTM, tf, nodata=-1)
    write_raster(tmp_path / "b.tif", np.full((20, 20), 2, np.int16), UTM,
                 tf * Affine.translation(10, 10), nodata=-1)
    arr, _ = read(run(tmp_path, [{"name": "m", "files": ["a.tif", "b.tif"], "bands": ["v"]}]))
    assert (arr[0, 12:15, 12:15] == 2).all() and (arr[0, 10:12, 10:12] == 1).all()


def test_mosaic_tile_in_other_crs_is_reprojected(tmp_path: Path) -> None:
    tf = from_origin(500_000.0, 4_985_000.0, 10, 10)  # UTM 33N, near 15E 45N
    write_raster(tmp_path / "utm.tif", np.full((50, 50), 3.0, np.float32), UTM, tf)
    (lon,), (lat,) = transform_coords(UTM, "EPSG:4326", [500_510.0], [4_985_000.0])
    geo_tf = from_origin(lon, lat, 0.0002, 0.0002)  # just east of the UTM tile, in degrees
    write_raster(tmp_path / "geo.tif", np.full((30, 30), 7.0, np.float32), "EPSG:4326", geo_tf)
    result = run(tmp_path, [{"name": "m", "files": ["utm.tif", "geo.tif"], "bands": ["v"]}])
    arr, transform = read(result)
    assert transform.a == 10 and transform.c == 500_000.0 and (transform.f - 4_985_000) % 10 == 0
    assert arr.shape[2] > 50 and int((arr == 3.0).sum()) == 50 * 50
    assert np.nanmax(arr) == 7.0 and int((arr == 7.0).sum()) > 300
    assert 0 < result.qc["modalities"]["m"]["covered_fraction"] < 1


def test_stack_of_per_band_files(tmp_path: Path, original: np.ndarray) -> None:
    tf = from_origin(*ORIGIN, 10, 10)
    write_raster(tmp_path / "B02.tif", original[0], UTM, tf)
    write_raster(tmp_path / "B03_B04.tif", original[1:], UTM, tf)
    coarse = original[0, ::2, ::2]  # a 20 m band, resampled onto the 10 m grid
    write_raster(tmp_path / "B11.tif", coarse, UTM, from_origin(*ORIGIN, 20, 20))
    result = run(tmp_path, [{"name": "s2", "combine": "stack", "resampling": "nearest",
                             "files": ["B02.tif", "B03_B04.tif", "B11.tif"],
                             "bands": ["B02", "B03", "B04", "B11"]}])
    arr, transform = read(result)
    assert transform == tf
    np.testing.assert_array_equal(arr[:3], original.astype(np.float32))
    np.testing.assert_array_equal(arr[3], np.kron(coarse, np.ones((2, 2))).astype(np.float32))


def test_stack_band_count_mismatch_names_files(tmp_path: Path, original: np.ndarray) -> None:
    tf = from_origin(*ORIGIN, 10, 10)
    write_raster(tmp_path / "B02.tif", original[0], UTM, tf)
    write_raster(tmp_path / "B03_B04.tif", original[1:], UTM, tf)
    with pytest.raises(RasterError, match=r"gives 3 band\(s\).*B03_B04\.tif has 2.*lists 4"):
        run(tmp_path, [{"name": "s2", "combine": "stack", "files": ["B02.tif", "B03_B04.tif"],
                        "bands": ["B02", "B03", "B04", "B08"]}])


def test_nearest_and_bilinear_differ_on_checkerboard(tmp_path: Path) -> None:
    board = (np.indices((40, 40)).sum(axis=0) % 2 * 100).astype(np.uint8)
    write_raster(tmp_path / "board.tif", board, UTM, from_origin(*ORIGIN, 10, 10))
    x0, y0 = ORIGIN
    grid = {"crs": UTM, "resolution": 10, "bounds": [x0 + 55, y0 - 355, x0 + 355, y0 - 55]}
    result = run(tmp_path, [
        {"name": "near", "files": ["board.tif"], "bands": ["n"], "resampling": "nearest"},
        {"name": "bil", "files": ["board.tif"], "bands": ["b"], "resampling": "bilinear"},
    ], grid=grid)
    arr, transform = read(result)
    assert transform == from_origin(x0 + 55, y0 - 55, 10, 10) and arr.shape == (2, 30, 30)
    assert set(np.unique(arr[0])) == {0.0, 100.0}
    np.testing.assert_allclose(arr[1], 50.0, atol=1e-4)


def test_explicit_grid_resolution_and_bounds(tmp_path: Path, original: np.ndarray) -> None:
    write_raster(tmp_path / "img.tif", original, UTM, from_origin(*ORIGIN, 10, 10))
    x0, y0 = ORIGIN
    grid = {"crs": UTM, "resolution": 20, "bounds": [x0 + 100, y0 - 500, x0 + 1010, y0 - 100]}
    result = run(tmp_path, [{"name": "s2", "files": ["img.tif"], "bands": ["r", "g", "b"],
                             "resampling": "average"}], grid=grid)
    arr, transform = read(result)
    assert transform == from_origin(x0 + 100, y0 - 100, 20, 20)
    assert arr.shape == (3, 20, 46)  # 910 m / 20 m rounds up to 46 columns
    block = original[:, 10:12, 10:12].astype(np.float64).mean(axis=(1, 2))
    np.testing.assert_allclose(arr[:, 0, 0], block, rtol=1e-5)
    assert np.isnan(arr[:, :, 45]).all() and not np.isnan(arr[:, :, :45]).any()
    assert result.qc["modalities"]["s2"]["uncovered_bounds"] == pytest.approx(
        [x0 + 1000, y0 - 500, x0 + 1020, y0 - 100]
    )


def test_reprojection_identical_for_any_block_size(tmp_path: Path) -> None:
    """GDAL's default approximate transformer would make this depend on the window layout."""
    noise = np.random.default_rng(2).random((300, 400), dtype=np.float32) * 100
    write_raster(tmp_path / "noise.tif", noise, "EPSG:4326", from_origin(14.9, 45.13, 5e-4, 5e-4))
    grid = {"crs": UTM, "resolution": 20, "bounds": [495_000, 4_983_000, 507_000, 4_995_000]}
    mods = [{"name": "n", "files": ["noise.tif"], "bands": ["v"], "resampling": "bilinear"}]
    arrays = []
    for block in (64, 1024):
        result = prepare_stack(parse_config(
            {"workdir": f"w{block}", "modalities": mods, "grid": grid,
             "prepare": {"block_size": block}}, tmp_path), progress=False)
        arrays.append(read(result)[0])
    assert arrays[0].shape == (1, 600, 600) and not np.isnan(arrays[0]).any()
    np.testing.assert_array_equal(arrays[0], arrays[1])


@pytest.mark.parametrize(
    ("grid", "pattern"),
    [
        ({"crs": "EPSG:999999", "resolution": 10, "bounds": [0, 0, 10, 10]}, "grid.crs"),
        ({"crs": UTM, "resolution": 10, "bounds": [10, 0, 0, 10]}, "grid.bounds"),
    ],
)
def test_bad_grid_raises_config_error(tmp_path: Path, grid: dict[str, Any], pattern: str) -> None:
    write_raster(tmp_path / "img.tif", np.ones((4, 4), np.uint8), UTM, from_origin(0, 40, 10, 10))
    with pytest.raises(ConfigError, match=pattern):
        run(tmp_path, [{"name": "a", "files": ["img.tif"], "bands": ["v"]}], grid=grid)
