"""``prepare_stack`` on real So2Sat-POP Gdansk cells: Sentinel-2 summer, DEM and VIIRS.

A 2 x 3 block of neighbouring 1 km cells (1kmN3500-3502 E4885-4886, spread over several
``Class_<k>`` folders). The three products' grids differ by a few metres (DEM 2.1 m, VIIRS
6.8 m east of Sentinel-2) and are 112-114 px wide, so they must be resampled onto one grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy.ndimage import map_coordinates

from geofuse.config import parse_config
from geofuse.raster.manifest import StackManifest
from geofuse.raster.prepare import prepare_stack

CELLS = "Class_*/1kmN350[0-2]E488[56]"

pytestmark = pytest.mark.realdata


def test_gdansk_cells_fused_on_one_grid(gdansk_dir: Path, tmp_path: Path) -> None:
    data = {
        "workdir": str(tmp_path),
        "modalities": [
            {"name": "s2", "files": [f"sen2_rgb_summer/{CELLS}_sen2_rgb_summer.tif"],
             "bands": ["B4", "B3", "B2"], "scale": 1e-4, "sensor": "sentinel2"},
            {"name": "dem", "files": [f"dem/{CELLS}_dem.tif"], "bands": ["elevation"],
             "sensor": "dem"},
            {"name": "viirs", "files": [f"viirs/{CELLS}_viirs.tif"], "bands": ["radiance"],
             "sensor": "viirs"},
        ],
        "prepare": {"block_size": 128},
    }
    cfg = parse_config(data, gdansk_dir)
    s2_files = cfg.modality_files(cfg.modalities[0])
    assert len(s2_files) == 6
    result = prepare_stack(cfg, progress=False)

    with rasterio.open(result.stack_path) as src:
        arr, transform, crs = src.read(), src.transform, src.crs
    with rasterio.open(s2_files[0]) as first:
        tile, tile_tf = first.read(), first.transform
    # Shared grid: first S2 tile's CRS, 10 m pixels, aligned to its pixel corners.
    assert crs.to_epsg() == 32634 and (transform.a, transform.e) == (10.0, -10.0)
    col = (tile_tf.c - transform.c) / 10
    row = (transform.f - tile_tf.f) / 10
    assert col == pytest.approx(round(col), abs=1e-6) and row == pytest.approx(round(row), abs=1e-6)
    # Roughly 2 x 3 km of cells; every band has exactly the stack's shape.
    assert arr.shape[0] == 5 and 200 < arr.shape[2] < 260 and 300 < arr.shape[1] < 360
    # The first tile wins where tiles overlap: its pixels appear unchanged (times the scale).
    r, c = round(row), round(col)
    window = arr[:3, r : r + tile.shape[1], c : c + tile.shape[2]]
    np.testing.assert_array_equal(window, tile.astype(np.float32) * np.float32(1e-4))

    # DEM: bilinear resampling of the first DEM cell (2-3 m off the S2 grid) in its interior.
    dem_files = cfg.modality_files(cfg.modalities[1])
    with rasterio.open(dem_files[0]) as src:
        dem, dem_tf = src.read(1).astype(np.float64), src.transform
    rows, cols = np.mgrid[r + 5 : r + 100, c + 5 : c + 100]
    xs, ys = transform @ (cols + 0.5, rows + 0.5)
    dcol, drow = ~dem_tf @ (xs, ys)
    expected = map_coordinates(dem, [drow - 0.5, dcol - 0.5], order=1)
    np.testing.assert_allclose(arr[3, rows, cols], expected, atol=1e-3)

    # The cells are not a perfect rectangle in UTM: ~15 % of the bounding grid is uncovered,
    # the same area for all three products (their cells differ by a few metres only).
    qc = result.qc
    s2_cov = qc["modalities"]["s2"]["covered_fraction"]
    assert 0.8 < s2_cov < 1
    for name in ("s2", "dem", "viirs"):
        assert qc["modalities"][name]["covered_fraction"] == pytest.approx(s2_cov, abs=0.01)
        assert qc["modalities"][name]["files"] == 6
    assert any("'dem'" in w for w in qc["warnings"])
    elev = qc["bands"]["elevation"]
    assert -30 < elev["min"] < elev["mean"] < elev["max"] < 300 and elev["valid_fraction"] > 0.8
    assert elev["out_of_range_count"] == 0
    radiance = qc["bands"]["radiance"]
    assert radiance["min"] >= 0 and radiance["max"] < 1000
    assert 0 < qc["bands"]["B4"]["mean"] < 0.5
    man = StackManifest.load(result.manifest_path)
    assert man.crs == "EPSG:32634" and man.bands == ["B4", "B3", "B2", "elevation", "radiance"]
    assert len(man.sources["dem"]["files"]) == 6
