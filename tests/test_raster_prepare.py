"""End-to-end tests of ``prepare_stack`` on tiny generated rasters with real CRSs.

Scene: a 10 m UTM 33N 6-band uint16 reference (s2), a 250 m EPSG:4326 int16 NDVI with nodata
covering only the west of the scene, and a 30 m EPSG:4326 float32 DEM whose values are a
linear function of lon/lat (so bilinear resampling must reproduce that function exactly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.env import get_gdal_config
from rasterio.transform import from_origin
from rasterio.warp import transform as transform_coords
from rasterio.warp import transform_bounds

from geofuse.config import StudyConfig, parse_config
from geofuse.errors import AlignmentError, ConfigError, DataNotFoundError, RasterError
from geofuse.raster.io import write_raster
from geofuse.raster.manifest import StackManifest
from geofuse.raster.prepare import prepare_stack

UTM = "EPSG:32633"
REF_TRANSFORM = from_origin(500_000.0, 4_985_000.0, 10.0, 10.0)
REF_W, REF_H = 150, 130
NDVI_NODATA = -3000
NDVI_RES = 0.0025  # degrees, ~200-280 m
DEM_RES = 0.0003  # degrees, ~25-33 m
DEM_A, DEM_B, DEM_C = 4000.0, -2500.0, 100.0  # elevation = A*(lon-15) + B*(lat-45) + C
DEM_OFFSET = -10.0


def dem_value(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return DEM_A * (lon - 15.0) + DEM_B * (lat - 45.0) + DEM_C


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(0)
    s2 = rng.integers(1, 10_000, size=(6, REF_H, REF_W), dtype=np.uint16)
    s2[0] = 1000  # constant band: scale 1e-4 -> 0.1 everywhere
    write_raster(root / "s2.tif", s2, UTM, REF_TRANSFORM)

    west, south, east, north = transform_bounds(UTM, "EPSG:4326", *_ref_bounds(), densify_pts=21)
    # NDVI covers the west ~60 % of the scene; constant 5000 (0.5) with a nodata hole.
    ncols = int(np.ceil((west + 0.6 * (east - west) - (west - 0.005)) / NDVI_RES))
    nrows = int(np.ceil((north + 0.005 - (south - 0.005)) / NDVI_RES))
    ndvi = np.full((nrows, ncols), 5000, np.int16)
    ndvi[nrows // 2, ncols // 2] = NDVI_NODATA
    ndvi_tf = from_origin(west - 0.005, north + 0.005, NDVI_RES, NDVI_RES)
    write_raster(root / "ndvi.tif", ndvi, "EPSG:4326", ndvi_tf, nodata=NDVI_NODATA)

    dem_tf = from_origin(west - 0.002, north + 0.002, DEM_RES, DEM_RES)
    dcols = int(np.ceil((east - west + 0.004) / DEM_RES))
    drows = int(np.ceil((north - south + 0.004) / DEM_RES))
    cols, rows = np.meshgrid(np.arange(dcols) + 0.5, np.arange(drows) + 0.5)
    lon, lat = dem_tf @ (cols, rows)
    write_raster(root / "dem.tif", dem_value(lon, lat).astype(np.float32), "EPSG:4326", dem_tf)
    return {"root": root, "s2": s2, "ndvi": ndvi, "ndvi_tf": ndvi_tf}


def _ref_bounds() -> tuple[float, float, float, float]:
    left, top = REF_TRANSFORM.c, REF_TRANSFORM.f
    return (left, top - 10.0 * REF_H, left + 10.0 * REF_W, top)


def scene_config(root: Path, workdir: Path, **prepare: Any) -> StudyConfig:
    data = {
        "workdir": str(workdir),
        "modalities": [
            {"name": "s2", "files": ["s2.tif"], "bands": [f"B{i}" for i in range(1, 7)],
             "scale": 1e-4, "sensor": "sentinel2"},
            {"name": "ndvi", "files": ["ndvi.tif"], "bands": ["NDVI"], "scale": 1e-4,
             "resampling": "nearest", "sensor": "modis_ndvi"},
            {"name": "dem", "files": ["dem.tif"], "bands": ["elevation"], "offset": DEM_OFFSET,
             "resampling": "bilinear", "valid_range": [0, 100]},
        ],
        "prepare": prepare,
    }
    return parse_config(data, root)


@pytest.fixture(scope="module")
def prepared(scene: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cfg = scene_config(scene["root"], tmp_path_factory.mktemp("work"), block_size=64)
    result = prepare_stack(cfg, progress=False)
    with rasterio.open(result.stack_path) as src:
        arr = src.read()
        meta = {"crs": src.crs, "transform": src.transform, "shape": (src.height, src.width),
                "descriptions": src.descriptions, "profile": src.profile,
                "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")}
    return {"result": result, "arr": arr, "meta": meta, "cfg": cfg}


def test_stack_has_reference_grid_and_band_names(prepared: dict[str, Any]) -> None:
    meta = prepared["meta"]
    assert meta["crs"].to_epsg() == 32633
    assert meta["transform"] == REF_TRANSFORM
    assert meta["shape"] == (REF_H, REF_W)
    assert meta["descriptions"] == (*[f"B{i}" for i in range(1, 7)], "NDVI", "elevation")
    assert meta["layout"] == "COG"
    assert meta["profile"]["compress"] == "deflate" and meta["profile"]["dtype"] == "float32"
    assert meta["profile"]["tiled"] and np.isnan(meta["profile"]["nodata"])


def test_reference_values_scaled(prepared: dict[str, Any], scene: dict[str, Any]) -> None:
    arr = prepared["arr"]
    np.testing.assert_allclose(arr[0], 0.1, rtol=1e-6)
    expected = scene["s2"].astype(np.float32) * np.float32(1e-4)
    np.testing.assert_array_equal(arr[:6], expected)


def test_dem_reprojected_from_4326_with_offset(prepared: dict[str, Any]) -> None:
    dem = prepared["arr"][7]
    assert not np.isnan(dem).any()
    cols, rows = np.meshgrid(np.arange(REF_W) + 0.5, np.arange(REF_H) + 0.5)
    xs, ys = REF_TRANSFORM @ (cols, rows)
    lon, lat = transform_coords(UTM, "EPSG:4326", xs.ravel(), ys.ravel())
    expected = dem_value(np.asarray(lon), np.asarray(lat)).reshape(dem.shape) + DEM_OFFSET
    np.testing.assert_allclose(dem, expected, atol=0.01)


def test_ndvi_nan_where_nodata_or_uncovered(prepared: dict[str, Any], scene: dict[str, Any]):
    ndvi = prepared["arr"][6]
    cols, rows = np.meshgrid(np.arange(REF_W) + 0.5, np.arange(REF_H) + 0.5)
    xs, ys = REF_TRANSFORM @ (cols, rows)
    lon, lat = transform_coords(UTM, "EPSG:4326", xs.ravel(), ys.ravel())
    scol, srow = ~scene["ndvi_tf"] @ (np.asarray(lon), np.asarray(lat))
    scol, srow = scol.reshape(ndvi.shape), srow.reshape(ndvi.shape)
    src = scene["ndvi"]
    inside = (scol < src.shape[1]) & (srow < src.shape[0])
    c, r = np.minimum(scol.astype(int), src.shape[1] - 1), srow.astype(int)
    expect_nan = ~inside | (src[r, c] == NDVI_NODATA)
    clear = (np.abs(scol - np.round(scol)) > 0.01) & (np.abs(srow - np.round(srow)) > 0.01)
    assert expect_nan.any() and (~expect_nan).any() and (~inside).any()
    np.testing.assert_array_equal(np.isnan(ndvi)[clear], expect_nan[clear])
    np.testing.assert_allclose(ndvi[~np.isnan(ndvi)], 0.5, rtol=1e-6)


def test_qc_report_names_uncovered_modality(prepared: dict[str, Any]) -> None:
    result, ndvi = prepared["result"], prepared["arr"][6]
    qc = json.loads(result.qc_path.read_text())
    assert result.qc_path.name == "stack_qc.json" and qc == json.loads(json.dumps(result.qc))
    cov = qc["modalities"]["ndvi"]
    assert 0.4 < cov["covered_fraction"] < 0.8
    left, _, right, top = cov["uncovered_bounds"]
    assert right == pytest.approx(REF_TRANSFORM.c + 10 * REF_W)
    assert left > REF_TRANSFORM.c + 10 * REF_W * 0.3 and top == pytest.approx(REF_TRANSFORM.f)
    assert qc["modalities"]["s2"]["covered_fraction"] == 1.0
    assert qc["modalities"]["dem"]["uncovered_bounds"] is None
    band = qc["bands"]["NDVI"]
    assert band["nan_count"] == int(np.isnan(ndvi).sum())
    assert band["nan_count"] == band["nodata_count"] + band["uncovered_count"]
    assert band["nodata_count"] > 0 and band["uncovered_count"] == cov["uncovered_pixels"]
    assert band["valid_fraction"] == pytest.approx(1 - np.isnan(ndvi).mean())
    assert any("'ndvi'" in w for w in qc["warnings"])
    md = result.qc_path.with_suffix(".md").read_text()
    assert "NDVI" in md and "ndvi" in md and "Status: **WARNING**" in md  # partly uncovered
    assert qc["status"] == "warning" and qc["passed"]


def test_qc_band_statistics(prepared: dict[str, Any]) -> None:
    qc, arr = prepared["result"].qc, prepared["arr"]
    b2 = qc["bands"]["B2"]
    assert b2["mean"] == pytest.approx(float(arr[1].astype(np.float64).mean()), rel=1e-9)
    assert b2["std"] == pytest.approx(float(arr[1].astype(np.float64).std()), rel=1e-9)
    assert b2["min"] == pytest.approx(float(arr[1].min())) and b2["valid_fraction"] == 1.0
    assert b2["out_of_range_count"] == 0 and b2["valid_range"] == [0.0, 1.6]
    dem = arr[7]
    elev = qc["bands"]["elevation"]
    assert elev["out_of_range_count"] == int(((dem < 0) | (dem > 100)).sum()) > 0
    assert elev["out_of_range_fraction"] == pytest.approx(elev["out_of_range_count"] / dem.size)


def test_manifest(prepared: dict[str, Any], scene: dict[str, Any]) -> None:
    man = StackManifest.load(prepared["result"].manifest_path)
    assert prepared["result"].manifest_path.name == "stack.json"
    assert man.bands == [*[f"B{i}" for i in range(1, 7)], "NDVI", "elevation"]
    assert man.modalities == {"s2": [f"B{i}" for i in range(1, 7)], "ndvi": ["NDVI"],
                              "dem": ["elevation"]}
    assert man.crs == UTM and man.transform == list(REF_TRANSFORM)[:6]
    assert (man.width, man.height) == (REF_W, REF_H)
    ndvi = man.sources["ndvi"]
    assert ndvi["files"] == [str(scene["root"] / "ndvi.tif")]
    assert ndvi["resampling"] == "nearest" and ndvi["scale"] == 1e-4
    assert ndvi["file_nodata"] == [NDVI_NODATA] and ndvi["covered_fraction"] < 1
    assert man.band_stats["B1"]["mean"] == pytest.approx(0.1)


def test_block_size_does_not_change_result(prepared: dict[str, Any], scene: dict[str, Any],
                                           tmp_path: Path) -> None:
    cfg = scene_config(scene["root"], tmp_path, block_size=1024)
    result = prepare_stack(cfg, progress=False)
    with rasterio.open(result.stack_path) as src:
        big = src.read()
    np.testing.assert_array_equal(big, prepared["arr"])
    for name, stats in result.qc["bands"].items():  # same up to summation order
        other = prepared["result"].qc["bands"][name]
        for key, value in stats.items():
            want = pytest.approx(other[key], rel=1e-9) if isinstance(value, float) else other[key]
            assert value == want, (name, key)


def test_max_nan_fraction_fails_and_keeps_existing_stack(scene: dict[str, Any], tmp_path: Path):
    ok = prepare_stack(scene_config(scene["root"], tmp_path), progress=False)
    before = ok.stack_path.read_bytes()
    bad = scene_config(scene["root"], tmp_path, max_nan_fraction=0.2)
    with pytest.raises(RasterError, match=r"'NDVI'.*max_nan_fraction"):
        prepare_stack(bad, progress=False)
    assert ok.stack_path.read_bytes() == before
    qc = json.loads(ok.qc_path.read_text())
    assert qc["passed"] is False and "NDVI" in qc["failures"][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "stack.json", "stack.tif", "stack_qc.json", "stack_qc.md"
    ]


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        ({"files": ["missing.tif"]}, DataNotFoundError, "missing.tif"),
        ({"files": ["nowhere/*.tif"]}, DataNotFoundError, r"nowhere/\*\.tif"),
        ({"files": ["garbage.tif"]}, RasterError, "garbage.tif"),
        ({"files": ["nocrs.tif"]}, RasterError, r"nocrs\.tif.*no CRS.*gdal_edit\.py -a_srs"),
        ({"files": ["far.tif"]}, AlignmentError, r"'ndvi'.*far\.tif.*reference grid covers"),
        ({"bands": ["a", "b"]}, RasterError, r"ndvi\.tif' has 1 band\(s\) but 'bands' lists 2"),
        ({"nodata": -1e6}, ConfigError, r"nodata = -1000000.0.*int16.*ndvi\.tif"),
    ],
)
def test_bad_input_raises_and_keeps_existing_stack(
    scene: dict[str, Any], tmp_path: Path, change: dict[str, Any], error: type, pattern: str
) -> None:
    root = scene["root"]
    (root / "garbage.tif").write_bytes(b"not a tiff at all")
    write_raster(root / "nocrs.tif", np.ones((4, 4), np.int16), None, from_origin(0, 4, 1, 1))
    write_raster(root / "far.tif", np.ones((4, 4), np.int16), "EPSG:4326",
              from_origin(-70.0, -40.0, 0.01, 0.01))
    existing = tmp_path / "stack.tif"
    existing.write_bytes(b"previous stack")
    data = json.loads(json.dumps(scene_config(root, tmp_path).model_dump(mode="json")))
    data["modalities"][1].update(change)
    with pytest.raises(error, match=pattern):
        prepare_stack(parse_config(data, root), progress=False)
    assert existing.read_bytes() == b"previous stack"
    assert [p.name for p in tmp_path.iterdir()] == ["stack.tif"]


def test_progress_bar_runs(scene: dict[str, Any], tmp_path: Path, capsys) -> None:
    result = prepare_stack(scene_config(scene["root"], tmp_path, block_size=64), progress=True)
    assert result.stack_path.is_file()
    assert "prepare 8 bands" in capsys.readouterr().err


def test_gdal_cache_is_capped_while_preparing(scene: dict[str, Any], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import geofuse.raster.prepare as prepare_module

    seen = []
    original = prepare_module.write_cog

    def spy(*args: Any, **kwargs: Any) -> None:
        seen.append(get_gdal_config("GDAL_CACHEMAX"))
        original(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "write_cog", spy)
    monkeypatch.setattr(prepare_module, "GDAL_CACHE_MB", 32)
    prepare_stack(scene_config(scene["root"], tmp_path), progress=False)
    assert seen == [32 * 1024 * 1024]
