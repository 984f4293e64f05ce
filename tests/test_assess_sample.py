"""geofuse assess --sample-design: allocation, uniform draws per stratum, round trip."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from geofuse.errors import SamplingError
from geofuse.mapping import assess_io
from geofuse.mapping.assess import assess_map
from geofuse.mapping.sample_design import allocate, design_sample
from test_assess import truth_and_map, write_map


def test_allocation_minimum_then_proportional() -> None:
    w = np.array([200_000, 150_000, 3_200_000, 6_450_000])
    alloc = allocate(641, w, 75, w)
    assert alloc.sum() == 641 and alloc[:2].tolist() == [75, 75]
    assert alloc[3] / alloc[2] == pytest.approx(6.45 / 3.2, rel=0.01)  # the rest proportional
    many = allocate(1000, np.array([0.5, 0.3, 0.2]), 10, np.array([10**6] * 3))
    assert many.tolist() == [500, 300, 200]  # proportional once every share passes the minimum
    capped = allocate(300, np.array([0.001, 0.5, 0.499]), 50, np.array([20, 10**6, 10**6]))
    assert capped[0] == 20 and capped.sum() == 300  # a class with too few pixels: all of them
    none = allocate(100, np.array([0.0, 0.6, 0.4]), 10, np.array([0, 600, 400]))
    assert none[0] == 0 and none.sum() == 100
    with pytest.raises(SamplingError, match="min-per-class"):
        allocate(100, np.array([0.5, 0.5, 0.0]), 60, np.array([10, 10**6, 0]) + 100)


def test_points_fall_on_their_stratum_and_round_trip(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    truth, mapped = truth_and_map()
    mapped[:4, :] = 255  # unmapped rows are never drawn
    cmap = write_map(tmp_path / "classes.tif", mapped, ["A", "B", "C"])
    with pytest.warns(UserWarning, match="Cochran"):
        design = design_sample(cmap, 240, min_per_class=60, seed=5, out_dir=tmp_path / "s")
    assert design.n == 240 and min(design.allocation.values()) >= 60
    pts = gpd.read_file(design.gpkg_path)
    assert list(pts.columns) == ["id", "map_class", "map_class_name", "stratum_weight",
                                 "reference", "geometry"]
    assert pts["reference"].isna().all() and pts.crs.to_epsg() == 32633
    assert pts["map_class"].value_counts().sort_index().tolist() == list(
        design.allocation.values())
    with rasterio.open(cmap) as src:
        on = np.array([v[0] for v in src.sample([(p.x, p.y) for p in pts.geometry])])
    assert (on == pts["map_class"].to_numpy()).all()
    assert not pts.geometry.duplicated().any()
    # strips do not change the draw: the ranks are drawn per class before the pass
    monkeypatch.setattr(assess_io, "STRIP_PIXELS", 1000)
    with pytest.warns(UserWarning, match="Cochran"):
        again = gpd.read_file(design_sample(cmap, 240, min_per_class=60, seed=5,
                                            out_dir=tmp_path / "t").gpkg_path)
    assert again.geometry.equals(pts.geometry)
    # a person labels the points with the truth; assess accepts the filled sample
    cols = ((pts.geometry.x.to_numpy() - 500_000) // 10).astype(int)
    rows = ((6_000_000 - pts.geometry.y.to_numpy()) // 10).astype(int)
    pts["reference"] = np.array(["A", "B", "C"])[truth[rows, cols]]
    pts.to_file(tmp_path / "filled.gpkg")
    res = assess_map(cmap, polygons=tmp_path / "filled.gpkg", class_field="reference",
                     out_dir=tmp_path / "a").result
    counts = np.array(res["confusion_matrix"])
    assert counts.sum() == 240 and counts.sum(axis=1).tolist() == list(
        design.allocation.values())
    assert counts[0, 1] == counts[2, 0] == 0 and counts[1, 0] > 0  # only A mapped as B
    assert res["reference"]["kind"] == "points"


def test_zero_means_cochran_size(tmp_path: Path) -> None:
    _, mapped = truth_and_map()
    cmap = write_map(tmp_path / "classes.tif", mapped, None)
    design = design_sample(cmap, 0, target_se=0.03, expected_ua=0.8, min_per_class=20)
    assert design.recommended_n == 178  # ceil((0.4 / 0.03)^2)
    assert design.n == 178 and set(design.allocation) == {"class_0", "class_1", "class_2"}
    assert design.gpkg_path.parent == tmp_path
