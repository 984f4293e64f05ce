"""geofuse assess: the stratified estimators against Olofsson et al. (2014) and on synthetic
maps with known errors (label raster, polygons, report)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import Point, box

from geofuse.mapping import assess_io
from geofuse.mapping.assess import assess_map
from geofuse.mapping.assess_stats import Z95, cochran_sample_size, stratified_estimate

# Olofsson et al. (2014), section 5 (Tables 8-10): map classes deforestation, forest gain,
# stable forest, stable non-forest; 30 m pixels; rows map class, columns reference class.
PAPER_NAMES = ["deforestation", "forest gain", "stable forest", "stable non-forest"]
PAPER_COUNTS = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
PAPER_PIXELS = np.array([200_000, 150_000, 3_200_000, 6_450_000])
PAPER_HA_PER_PIXEL = 0.09
# Published figures (rounded as printed): areas in ha with 95 % CI half-widths, accuracies
# with their 95 % CI half-widths, the error matrix in area proportions (Table 9).
PAPER_AREA_HA = [21_158, 11_686, 285_770, 581_386]
PAPER_AREA_CI_HA = [6_158, 3_756, 15_510, 16_282]
PAPER_UA = ([0.88, 0.73, 0.93, 0.96], [0.07, 0.10, 0.04, 0.02])
PAPER_PA = ([0.75, 0.85, 0.93, 0.96], [0.21, 0.25, 0.03, 0.02])
PAPER_OA = (0.95, 0.02)
PAPER_P = [[0.0176, 0.0, 0.0013, 0.0011], [0.0, 0.0110, 0.0016, 0.0024],
           [0.0019, 0.0, 0.2967, 0.0213], [0.0040, 0.0020, 0.0179, 0.6212]]
CRS = "EPSG:32633"


def write_map(path: Path, values: np.ndarray, names: list[str] | None, pixel: float = 10.0,
              crs: str = CRS, nodata: int | None = 255,
              colours: dict[int, tuple[int, int, int, int]] | None = None) -> Path:
    """A class map as 'geofuse predict' writes it: uint8, nodata 255, class_names tag,
    optionally a colour table."""
    with rasterio.open(path, "w", driver="GTiff", width=values.shape[1],
                       height=values.shape[0], count=1, dtype="uint8", crs=crs,
                       transform=from_origin(500_000, 6_000_000, pixel, pixel),
                       nodata=nodata) as dst:
        dst.write(values.astype("uint8"), 1)
        if names is not None:
            dst.update_tags(class_names=json.dumps(names))
        if colours is not None:
            dst.write_colormap(1, colours)
    return path


def test_olofsson_2014_example_published_digits() -> None:
    est = stratified_estimate(PAPER_COUNTS, PAPER_PIXELS)
    total_ha = PAPER_PIXELS.sum() * PAPER_HA_PER_PIXEL
    assert np.round(est.proportions, 4).tolist() == PAPER_P
    assert np.round(est.area * total_ha).astype(int).tolist() == PAPER_AREA_HA
    np.testing.assert_allclose(Z95 * est.area_se * total_ha, PAPER_AREA_CI_HA, atol=1.0)
    assert np.round(est.users, 2).tolist() == PAPER_UA[0]
    assert np.round(Z95 * est.users_se, 2).tolist() == PAPER_UA[1]
    assert np.round(est.producers, 2).tolist() == PAPER_PA[0]
    assert np.round(Z95 * est.producers_se, 2).tolist() == PAPER_PA[1]
    assert (round(est.overall, 2), round(Z95 * est.overall_se, 2)) == PAPER_OA
    # more digits, hand-checked: p_.1 = 0.02*66/75 + 0.32*1/165 + 0.645*2/325
    assert est.area[0] == pytest.approx(0.02 * 66 / 75 + 0.32 / 165 + 0.645 * 2 / 325)
    assert est.overall == pytest.approx(0.9465118881, abs=1e-9)
    np.testing.assert_allclose(est.producers, [0.7486614, 0.8471564, 0.9345089, 0.9616090],
                               atol=1e-6)
    assert est.covered_share == 1.0 and not est.unsampled.any()


def test_never_mapped_and_unsampled_classes() -> None:
    counts = np.array([[40, 5, 5], [2, 48, 0], [0, 0, 0]])
    never = stratified_estimate(counts, [0.6, 0.4, 0.0])  # class 2 exists but is never mapped
    assert never.area[2] == pytest.approx(0.6 * 5 / 50) and never.producers[2] == 0.0
    assert np.isnan(never.users[2]) and not never.unsampled.any()
    assert never.overall == pytest.approx(0.6 * 0.8 + 0.4 * 0.96)
    missing = stratified_estimate(counts, [0.6, 0.3, 0.1])  # class 2 mapped, never sampled
    assert missing.unsampled.tolist() == [False, False, True]
    assert np.isnan([missing.area[2], missing.users[2], missing.producers[2]]).all()
    assert missing.covered_share == pytest.approx(0.9)
    assert missing.overall == pytest.approx((0.6 * 0.8 + 0.3 * 0.96) / 0.9)
    assert np.isfinite([missing.area_se[0], missing.producers_se[1]]).all()


def test_olofsson_2014_sample_size() -> None:
    # section 5.1: target SE(O) 0.01, expected user's accuracies 0.7, 0.6, 0.9, 0.95 -> 641
    assert cochran_sample_size(PAPER_PIXELS, [0.7, 0.6, 0.9, 0.95], 0.01) == 641


def test_olofsson_example_end_to_end_from_points(tmp_path: Path) -> None:
    """The paper's sample as labelled points on a map with its strata sizes: same areas."""
    values = np.repeat(np.arange(4), PAPER_PIXELS // 1000).reshape(100, 100)
    pixel = 30 * math.sqrt(1000)  # 1000 times the area of a 30 m pixel: totals as published
    cmap = write_map(tmp_path / "classes.tif", values, PAPER_NAMES, pixel=pixel)
    rng = np.random.default_rng(3)
    geoms, refs = [], []
    for i in range(4):
        rows, cols = np.nonzero(values == i)
        for j, n in enumerate(PAPER_COUNTS[i]):
            pick = rng.integers(0, len(rows), n)
            geoms += [Point(500_000 + (c + 0.5) * pixel, 6_000_000 - (r + 0.5) * pixel)
                      for r, c in zip(rows[pick], cols[pick], strict=True)]
            refs += [PAPER_NAMES[j]] * int(n)
    gpd.GeoDataFrame({"reference": refs}, geometry=geoms, crs=CRS).to_file(
        tmp_path / "sample.gpkg")
    res = assess_map(cmap, polygons=tmp_path / "sample.gpkg", class_field="reference").result
    assert res["confusion_matrix"] == PAPER_COUNTS.tolist()
    areas = [c["area_ha"] for c in res["per_class"]]
    assert np.round(areas).astype(int).tolist() == PAPER_AREA_HA
    half = [(c["area_ha_ci95"][1] - c["area_ha_ci95"][0]) / 2 for c in res["per_class"]]
    np.testing.assert_allclose(half, PAPER_AREA_CI_HA, atol=1.0)
    assert res["reference"]["kind"] == "points" and not res["reference"]["clustered"]


def truth_and_map(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Truth: A (left), B (right top), C (right bottom); map: 10 % of A mapped as B."""
    truth = np.zeros((160, 200), dtype=np.uint8)
    truth[:80, 100:] = 1
    truth[80:, 100:] = 2
    rng = np.random.default_rng(seed)
    mapped = truth.copy()
    mapped[(truth == 0) & (rng.random(truth.shape) < 0.10)] = 1
    return truth, mapped


def test_label_raster_sample_recovers_true_areas(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    truth, mapped = truth_and_map()
    cmap = write_map(tmp_path / "classes.tif", mapped, ["A", "B", "C"])
    labels = np.full_like(truth, 200)  # 200 = unlabelled; 4 % of the pixels are labelled
    keep = np.random.default_rng(1).random(truth.shape) < 0.04
    labels[keep] = truth[keep]
    write_map(tmp_path / "labels.tif", labels, None, nodata=None)
    monkeypatch.setattr(assess_io, "STRIP_PIXELS", 3000)  # many strips
    res = assess_map(cmap, labels=tmp_path / "labels.tif", unlabelled=200,
                     out_dir=tmp_path / "out").result
    true_ha = np.bincount(truth.ravel(), minlength=3) * 100 / 1e4
    for c, true in zip(res["per_class"], true_ha, strict=True):
        assert abs(c["area_ha"] - true) <= 3 * c["area_ha_se"], c
    a = res["per_class"][0]
    assert a["mapped_area_ha"] < a["area_ha_ci95"][0]  # the map under-counts A; the CI does not
    assert a["producers_accuracy"] == pytest.approx(0.9, abs=0.03)
    b = res["per_class"][1]  # B mapped = 8000 B + 1600 A pixels: user's accuracy 0.83
    assert abs(b["users_accuracy"] - 8000 / 9600) <= 3 * b["users_accuracy_se"]
    assert sum(map(sum, res["confusion_matrix"])) == int(keep.sum())
    assert res["reference"]["clustered"]


def test_polygons_in_another_crs_report_and_uncertainty(tmp_path: Path) -> None:
    _, mapped = truth_and_map()
    mapped[:3, :3] = 255  # a few unmapped pixels
    cmap = write_map(tmp_path / "classes.tif", mapped, ["A", "B", "C"],
                     colours={0: (10, 20, 30, 255), 1: (0, 0, 255, 255)})
    with rasterio.open(tmp_path / "uncertainty.tif", "w", driver="GTiff", width=200, height=160,
                       count=1, dtype="float32", crs=CRS, nodata=np.nan,
                       transform=from_origin(500_000, 6_000_000, 10, 10)) as dst:
        dst.write(np.random.default_rng(0).random((160, 200)).astype("float32"), 1)
    (tmp_path / "quicklook.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 16)
    x0, y0 = 500_000, 6_000_000
    polys = gpd.GeoDataFrame(
        {"class": ["A", "B", "C"]},
        geometry=[box(x0 + 100, y0 - 1500, x0 + 600, y0 - 200),  # in truth A: 50 x 130 px
                  box(x0 + 1200, y0 - 600, x0 + 1800, y0 - 100),  # in truth B
                  box(x0 + 1200, y0 - 1500, x0 + 1800, y0 - 900)],  # in truth C
        crs=CRS).to_crs("EPSG:4326")
    polys.to_file(tmp_path / "held_out.geojson")
    out = assess_map(cmap, polygons=tmp_path / "held_out.geojson", out_dir=tmp_path / "rep")
    res = out.result
    counts = np.array(res["confusion_matrix"])
    assert counts[:, 0].sum() == pytest.approx(50 * 130, rel=0.03)  # reprojected, rasterised
    assert counts[2, 0] == counts[0, 1] == 0 and counts[1, 0] > 0  # A mapped as B found
    md = out.markdown_path.read_text()
    assert "clustered" in md and "quicklook" in md and "rows: map class" in md
    assert res["uncertainty"]["n_pixels"] == 160 * 200
    assert (tmp_path / "rep" / "assessment_uncertainty.png").is_file()
    assert "data:image/png;base64," in out.html_path.read_text()
    saved = json.loads(out.json_path.read_text())
    assert saved["classes"] == ["A", "B", "C"] and saved["convention"].startswith("rows: map")
    assert saved["per_class"][0]["mapped_pixels"] == int((mapped == 0).sum())
    assert [c["colour"] for c in saved["per_class"]][:2] == ["#0a141e", "#0000ff"]


def test_map_class_without_reference_is_reported_not_estimated(tmp_path: Path) -> None:
    _, mapped = truth_and_map()
    cmap = write_map(tmp_path / "classes.tif", mapped, ["A", "B", "C"])
    gpd.GeoDataFrame({"class": ["A", "B"]},
                     geometry=[box(500_100, 5_998_500, 500_600, 5_999_800),
                               box(501_200, 5_999_400, 501_800, 5_999_900)],
                     crs=CRS).to_file(tmp_path / "ab.gpkg")
    with pytest.warns(UserWarning, match="no reference sample in map class"):
        res = assess_map(cmap, polygons=tmp_path / "ab.gpkg").result
    c = res["per_class"][2]
    assert c["area_ha"] is None and c["users_accuracy"] is None and not c["estimable"]
    assert res["per_class"][0]["area_ha"] is not None
    assert res["unassessed_classes"] == ["C"]
    assert any("C" in text and "cannot be estimated" in text for text in res["caveats"])
    assert "n/a (no reference sample)" in (tmp_path / "assessment.md").read_text()
