"""Unit tests of the reference grid, footprints and the window-by-window QC accumulators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform as transform_coords
from rasterio.windows import Window
from shapely import Polygon

from geofuse.config import GridConfig, ModalityConfig
from geofuse.errors import RasterError
from geofuse.raster.align import footprint, grid_from_config, grid_from_files
from geofuse.raster.io import Grid, RasterInfo
from geofuse.raster.qc import BandStats, CoverageStats, expected_range, qc_paths

UTM = CRS.from_epsg(32634)


def info(transform: Affine, width: int, height: int, crs: CRS = UTM, name: str = "t") -> RasterInfo:
    return RasterInfo(Path(f"{name}.tif"), crs, transform, width, height, 1, "uint16", None)


def test_grid_from_files_is_union_snapped_to_first_tile() -> None:
    first = info(from_origin(344_484.064208, 6_034_382.72286, 10, 10), 114, 113)
    # A tile 2.12 m off the first tile's pixel grid, to the south-west (like So2Sat DEM cells).
    other = info(from_origin(342_016.185, 6_018_585.885, 10, 10), 113, 113)
    grid = grid_from_files([first, other])
    left, bottom, right, top = grid.bounds
    assert (grid.transform.a, grid.transform.e) == (10, -10)
    assert (left - 344_484.064208) / 10 == pytest.approx(round((left - 344_484.064208) / 10))
    assert (top - 6_034_382.72286) / 10 == pytest.approx(round((top - 6_034_382.72286) / 10))
    for tile in (first, other):
        tl, tb, tr, tt = tile.bounds
        assert left <= tl and bottom <= tb and right >= tr and top >= tt
    assert left > other.bounds[0] - 10 and bottom > other.bounds[1] - 10
    assert top == 6_034_382.72286 and right == pytest.approx(first.bounds[2])


def test_grid_from_files_rejects_rotated_first_file() -> None:
    rotated = info(Affine(10, 2, 0, 2, -10, 100), 10, 10, name="rotated")
    with pytest.raises(RasterError, match=r"rotated\.tif.*'grid' section"):
        grid_from_files([rotated])


def test_grid_from_config_rounds_size_up() -> None:
    grid = grid_from_config(GridConfig(crs="EPSG:32634", resolution=30, bounds=(0, 0, 100, 60)))
    assert grid.transform == from_origin(0, 60, 30, 30)
    assert (grid.width, grid.height) == (4, 2)
    assert grid.crs_string() == "EPSG:32634"


def test_grid_windows_cover_grid_once() -> None:
    grid = Grid(UTM, from_origin(0, 100, 1, 1), 130, 70)
    hits = np.zeros(grid.shape, int)
    for w in grid.windows(64):
        hits[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert (hits == 1).all() and grid.n_windows(64) == len(list(grid.windows(64))) == 6


def test_footprint_of_geographic_tile_in_utm() -> None:
    geo = info(from_origin(18.5, 54.4, 0.001, 0.001), 100, 50, crs=CRS.from_epsg(4326))
    fp = footprint(geo, UTM)
    lons, lats = [18.5, 18.6, 18.6, 18.5], [54.4, 54.4, 54.35, 54.35]
    xs, ys = transform_coords("EPSG:4326", UTM, lons, lats)
    corners = Polygon(zip(xs, ys, strict=True))
    assert fp.bounds == pytest.approx(corners.bounds, abs=5.0)  # edges bend by metres only
    assert fp.area == pytest.approx(corners.area, rel=1e-3)
    assert fp.contains(corners.centroid) and 6_000 < corners.bounds[2] - corners.bounds[0] < 7_000
    same = footprint(info(from_origin(0, 100, 10, 10), 5, 4), UTM)
    assert same.bounds == (0.0, 60.0, 50.0, 100.0) and same.area == 2000.0


def test_band_stats_merge_equals_numpy() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(5, 2, size=(60, 50)).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = np.nan
    covered = np.ones(values.shape, bool)
    covered[:, 45:] = False
    values[:, 45:] = np.nan
    stats = BandStats("b", "m", (0.0, 8.0))
    for rows in (slice(0, 7), slice(7, 40), slice(40, 60)):
        stats.update(values[rows], covered[rows])
    valid = values[~np.isnan(values)].astype(np.float64)
    d = stats.to_dict()
    assert d["mean"] == pytest.approx(valid.mean(), rel=1e-12)
    assert d["std"] == pytest.approx(valid.std(), rel=1e-12)
    assert (d["min"], d["max"]) == (valid.min(), valid.max())
    assert d["nan_count"] == int(np.isnan(values).sum())
    assert d["uncovered_count"] == 60 * 5
    assert d["nodata_count"] == d["nan_count"] - 300
    assert d["out_of_range_count"] == int(((valid < 0) | (valid > 8)).sum()) > 0
    assert d["valid_fraction"] == pytest.approx(valid.size / values.size)


def test_band_stats_all_nan_band() -> None:
    stats = BandStats("b", "m", None)
    stats.update(np.full((4, 4), np.nan, np.float32), np.zeros((4, 4), bool))
    d = stats.to_dict()
    assert d["valid_fraction"] == 0.0 and d["mean"] is None and d["out_of_range_count"] is None
    assert stats.invalid_fraction == 1.0


def test_coverage_stats_bounds_of_uncovered_area() -> None:
    grid = Grid(UTM, from_origin(1000, 2000, 10, 10), 8, 6)
    cov = CoverageStats("m", 1)
    mask = np.ones(grid.shape, bool)
    mask[4:, 5:] = False  # bottom-right corner uncovered
    for w in (Window(0, 0, 8, 3), Window(0, 3, 8, 3)):
        cov.update(mask[w.row_off : w.row_off + w.height], w)
    d = cov.to_dict(grid)
    assert d["uncovered_pixels"] == 6 and d["covered_fraction"] == pytest.approx(42 / 48)
    assert d["uncovered_bounds"] == [1050.0, 1940.0, 1080.0, 1960.0]


def test_expected_range_and_qc_paths() -> None:
    m = ModalityConfig(name="dem", files=["d.tif"], bands=["elev"], sensor="dem")
    assert expected_range(m) == (-450.0, 8900.0)
    assert expected_range(m.model_copy(update={"valid_range": (0, 5)})) == (0.0, 5.0)
    assert expected_range(ModalityConfig(name="x", files=["x.tif"], bands=["x"])) is None
    assert qc_paths(Path("/w/stack.tif")) == (Path("/w/stack_qc.json"), Path("/w/stack_qc.md"))
