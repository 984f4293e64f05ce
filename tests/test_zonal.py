"""``geofuse zonal``: a class or value map summarised over fields, parcels or districts."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from rasterio.transform import from_origin
from shapely.geometry import LineString, box
from typer.testing import CliRunner

from class_maps import ORIGIN, write_class_map
from geofuse.cli import app
from geofuse.mapping import zonal as zonal_module
from geofuse.mapping.outputs import CLASS_NODATA
from geofuse.mapping.zonal import zonal_stats
from geofuse.raster.io import write_raster

NAMES = ["water", "forest", "urban"]
TF = from_origin(*ORIGIN, 10.0, 10.0)  # 10 m pixels: 0.01 ha


def pixbox(r0: int, r1: int, c0: int, c1: int) -> box:
    """The polygon covering pixel rows r0..r1-1 and columns c0..c1-1."""
    (x0, y0), (x1, y1) = TF @ (c0, r1), TF @ (c1, r0)
    return box(x0, y0, x1, y1)


def _map() -> np.ndarray:
    m = np.full((40, 60), 1, np.uint8)  # forest
    m[:, :20] = 0                       # water
    m[30:, 40:] = 2                     # urban
    m[0:5, 55:60] = CLASS_NODATA
    return m


def test_class_shares_majority_and_doubt_per_polygon(tmp_path: Path) -> None:
    classes = _map()
    path = write_class_map(tmp_path / "map", "classes", classes, NAMES)
    entropy = np.linspace(0, 1, classes.size, dtype=np.float32).reshape(classes.shape)
    write_raster(tmp_path / "map" / "uncertainty.tif", entropy[None], "EPSG:32633", TF,
                 descriptions=["entropy"])
    parcels = gpd.GeoDataFrame(
        {"parcel": ["half", "urban", "tiny", "outside", "line", "corner"]},
        geometry=[pixbox(0, 10, 10, 30),             # 100 water + 100 forest pixels
                  pixbox(30, 40, 50, 60),            # all urban
                  box(*(TF @ (45.2, 12.6)), *(TF @ (45.4, 12.4))),  # inside pixel (12, 45)
                  pixbox(100, 110, 100, 110),        # off the map
                  LineString([TF @ (0, 0), TF @ (5, 5)]),
                  pixbox(0, 5, 50, 60)],             # half nodata
        crs="EPSG:32633").to_crs("EPSG:4326")        # reprojected onto the map grid
    parcels.to_file(tmp_path / "parcels.gpkg")
    with pytest.warns(UserWarning) as caught:
        res = zonal_stats(path, tmp_path / "parcels.gpkg", id_field="parcel",
                          out_dir=tmp_path / "out")
    text = " | ".join(str(w.message) for w in caught)
    assert "without polygonal area" in text and "ids: line" in text
    assert "cover no mapped pixel" in text and "ids: outside" in text
    assert "1 polygon(s) smaller than a pixel" in text
    out = gpd.read_file(res.gpkg_path).set_index("parcel")
    assert out.crs == parcels.crs  # the polygons keep their CRS and attributes
    half = out.loc["half"]
    assert half["pixels"] == 200 and half["area_ha"] == pytest.approx(2.0)
    assert half["share_water"] == pytest.approx(0.5) and half["share_forest"] == 0.5
    assert half["majority_share"] == pytest.approx(0.5)
    rr, cc = np.mgrid[0:10, 10:30]
    assert half["mean_entropy"] == pytest.approx(entropy[rr, cc].mean(), rel=1e-5)
    assert out.loc["urban", "majority"] == "urban" and out.loc["urban", "share_urban"] == 1.0
    assert out.loc["tiny", "majority"] == "forest" and bool(out.loc["tiny", "from_point"])
    assert out.loc["corner", "pixels"] == 25  # the nodata half does not count
    assert np.isnan(out.loc["outside", "majority_share"]) and out.loc["outside", "pixels"] == 0
    record = json.loads(res.json_path.read_text())
    assert record["n_summarised"] == 4 and record["unmapped"] == ["outside"]
    assert half["majority"] == "water"  # a tie goes to the first class
    assert record["polygons_per_majority_class"] == {"water": 1, "forest": 2, "urban": 1}
    # the same figures in strips of a few rows (the strip loop, polygons across strips)
    zonal_module.STRIP_PIXELS = 120
    try:
        with pytest.warns(UserWarning):
            again = zonal_stats(path, tmp_path / "parcels.gpkg", id_field="parcel",
                                out_dir=tmp_path / "strips")
    finally:
        zonal_module.STRIP_PIXELS = 1 << 22
    small = gpd.read_file(again.gpkg_path).set_index("parcel")
    cols = ["pixels", "share_water", "share_forest", "share_urban", "mean_entropy"]
    np.testing.assert_allclose(small[cols].to_numpy(float), out[cols].to_numpy(float),
                               rtol=1e-6)


def test_value_map_statistics_per_polygon(tmp_path: Path) -> None:
    values = np.arange(40 * 60, dtype=np.float32).reshape(40, 60) / 10
    values[20:25, 20:25] = np.nan
    write_raster(tmp_path / "values.tif", values[None], "EPSG:32633", TF,
                 descriptions=["canopy_height"])
    gpd.GeoDataFrame({"stand": ["a", "b"]},
                     geometry=[pixbox(0, 4, 0, 5), pixbox(18, 27, 18, 27)],
                     crs="EPSG:32633").to_file(tmp_path / "stands.gpkg")
    result = CliRunner().invoke(app, ["zonal", str(tmp_path / "values.tif"), "--polygons",
                                      str(tmp_path / "stands.gpkg"), "--id-field", "stand"])
    assert result.exit_code == 0, result.output
    assert "2 of 2 polygons summarised" in result.output
    out = gpd.read_file(tmp_path / "values_zonal_stands.gpkg").set_index("stand")
    a = values[0:4, 0:5]
    assert out.loc["a", "pixels"] == 20 and out.loc["a", "mean"] == pytest.approx(a.mean())
    assert out.loc["a", "std"] == pytest.approx(a.std(), rel=1e-5)
    assert (out.loc["a", "min"], out.loc["a", "max"]) == (pytest.approx(a.min()),
                                                          pytest.approx(a.max()))
    b = values[18:27, 18:27]
    assert out.loc["b", "pixels"] == 81 - 25 and out.loc["b", "mean"] == pytest.approx(
        np.nanmean(b), rel=1e-6)


def test_zonal_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    path = write_class_map(tmp_path / "map", "classes", _map(), NAMES)
    gpd.GeoDataFrame({"n": [1]}, geometry=[pixbox(500, 510, 500, 510)],
                     crs="EPSG:32633").to_file(tmp_path / "far.gpkg")
    cases = [
        ([str(tmp_path / "none.tif"), "--polygons", str(tmp_path / "far.gpkg")],
         ["none.tif", "does not exist"]),
        ([str(path), "--polygons", str(tmp_path / "nope.gpkg")], ["nope.gpkg", "does not exist"]),
        ([str(path), "--polygons", str(tmp_path / "far.gpkg")],
         ["no polygon of", "covers a mapped pixel", "same area"]),
        ([str(path), "--polygons", str(tmp_path / "far.gpkg"), "--id-field", "name"],
         ["no attribute 'name'", "['n']"]),
    ]
    for args, words in cases:
        result = CliRunner().invoke(app, ["zonal", *args, "-o", str(tmp_path / "o")])
        out = " ".join(result.output.split())
        assert result.exit_code == 2, out
        assert all(w in out for w in words), (words, out)
        assert "Traceback" not in out
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_overlaps_clashing_columns_and_integer_values(tmp_path: Path) -> None:
    path = write_class_map(tmp_path / "map", "classes", _map(), NAMES)
    entropy = np.full((1, 40, 60), 0.5, np.float32)
    entropy[0, :, 45:] = -9999.0  # the raster's nodata
    write_raster(tmp_path / "map" / "uncertainty.tif", entropy, "EPSG:32633", TF,
                 descriptions=["entropy"], nodata=-9999.0)
    field = pixbox(10, 30, 30, 50)  # 400 forest pixels, half of them without uncertainty
    gpd.GeoDataFrame({"fid": ["a", "b"], "AREA_HA": [12.5, 7.0], "majority": ["wheat", "oat"]},
                     geometry=[field, field], crs="EPSG:32633").to_file(tmp_path / "lpis.shp")
    with pytest.warns(UserWarning) as caught:
        res = zonal_stats(path, tmp_path / "lpis.shp", out_dir=tmp_path / "o")
    text = " | ".join(str(w.message) for w in caught)
    assert "2 polygon(s) overlap another" in text and "later polygon that overlaps" in text
    assert "smaller than a pixel" not in text  # the covered duplicate is no tiny polygon
    out = gpd.read_file(res.gpkg_path)
    assert out["pixels"].tolist() == [0, 400] and not out["from_point"].any()
    assert out["AREA_HA_input"].tolist() == [12.5, 7.0]  # the user's columns are kept
    assert out["majority_input"].tolist() == ["wheat", "oat"]
    assert out["fid_input"].tolist() == ["a", "b"] and out["area_ha"].tolist()[1] == 4.0
    assert out["mean_entropy"].tolist()[1] == pytest.approx(0.5)  # nodata left out
    # an integer map without class names holds values (a tree-cover percentage)
    cover = (np.arange(40 * 60) % 101).astype(np.uint8).reshape(1, 40, 60)
    write_raster(tmp_path / "cover.tif", cover, "EPSG:32633", TF, nodata=255)
    gpd.GeoDataFrame({"n": [1]}, geometry=[pixbox(0, 2, 0, 3)],
                     crs="EPSG:32633").to_file(tmp_path / "one.gpkg")
    res = zonal_stats(tmp_path / "cover.tif", tmp_path / "one.gpkg", out_dir=tmp_path / "c")
    row = gpd.read_file(res.gpkg_path).iloc[0]
    assert res.record["kind"] == "values" and "share_class_0" not in row
    assert row["mean"] == pytest.approx(cover[0, 0:2, 0:3].mean())
    # an empty polygon file is a one-line error, not a crash
    gpd.GeoDataFrame({"n": []}, geometry=[], crs="EPSG:32633").to_file(tmp_path / "none.gpkg")
    result = CliRunner().invoke(app, ["zonal", str(path), "--polygons",
                                      str(tmp_path / "none.gpkg")])
    assert result.exit_code == 2 and "holds no features" in result.output
