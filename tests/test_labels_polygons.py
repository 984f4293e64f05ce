"""Reading, validating, repairing and reporting label polygons."""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from shapely.geometry import Point, Polygon, box

from geofuse.errors import DataNotFoundError, LabelError
from geofuse.labels.polygons import read_label_polygons
from geofuse.labels.sampling import SamplingParams, sample_centres

CRS = "EPSG:32718"
X0, Y0 = 600_000.0, 5_450_000.0


def square(col: float, row: float, size: float = 100.0) -> Polygon:
    """A square with its top-left corner ``col``/``row`` 10 m pixels from (X0, Y0)."""
    x, y = X0 + col * 10, Y0 - row * 10
    return box(x, y - size, x + size, y)


def write_labels(path: Path, rows: list[dict], crs: str = CRS, to_crs: str | None = None) -> Path:
    """Write features (dicts with 'geometry') to ``path``; optionally reproject first."""
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)
    if to_crs is not None:
        frame = frame.to_crs(to_crs)
    frame.to_file(path, engine="pyogrio")
    return path


@pytest.fixture()
def basic(tmp_path: Path) -> Path:
    rows = [
        {"fid": "a1", "label": "forest", "geometry": square(0, 0)},
        {"fid": "a2", "label": "water", "geometry": square(20, 0)},
        {"fid": "a3", "label": "crop", "geometry": square(0, 20)},
        {"fid": "a4", "label": "forest", "geometry": square(20, 20)},
    ]
    return write_labels(tmp_path / "labels.geojson", rows, to_crs="EPSG:4326")


def test_reads_reprojects_and_sorts_classes(basic: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        polys = read_label_polygons(basic, class_field="label", crs=CRS)
    assert polys.class_names == ["crop", "forest", "water"]
    assert polys.ids == ["0", "1", "2", "3"]
    assert polys.y.tolist() == [1, 2, 0, 1]
    assert polys.crs == CRS
    # back in UTM, the first square is where it was drawn (to within reprojection error)
    assert polys.geometries[0].symmetric_difference(square(0, 0)).area < 1.0
    assert polys.report.n_features == 4 and polys.report.n_kept == 4


def test_explicit_class_order_and_id_field(basic: Path) -> None:
    polys = read_label_polygons(basic, class_field="label", classes=["water", "forest", "crop"],
                                id_field="fid")
    assert polys.class_names == ["water", "forest", "crop"]
    assert polys.ids == ["a1", "a2", "a3", "a4"]
    assert polys.y.tolist() == [1, 0, 2, 1]


@pytest.mark.parametrize("suffix", [".gpkg", ".shp"])
def test_reads_geopackage_and_shapefile(tmp_path: Path, suffix: str) -> None:
    rows = [{"cls": 3, "geometry": square(0, 0)}, {"cls": 7, "geometry": square(20, 0)}]
    path = write_labels(tmp_path / f"labels{suffix}", rows)
    polys = read_label_polygons(path, class_field="cls")
    assert polys.class_names == ["3", "7"]  # numeric classes become names
    assert len(polys) == 2


def test_null_and_empty_geometries_dropped_with_ids(tmp_path: Path) -> None:
    rows = [
        {"key": "keep", "label": "a", "geometry": square(0, 0)},
        {"key": "nullgeom", "label": "a", "geometry": None},
        {"key": "emptygeom", "label": "b", "geometry": Polygon()},
    ]
    path = write_labels(tmp_path / "labels.gpkg", rows)
    with pytest.warns(UserWarning, match=r"null or empty geometry, ids: nullgeom, emptygeom"):
        polys = read_label_polygons(path, class_field="label", id_field="key")
    assert polys.ids == ["keep"]
    assert polys.report.dropped_null == ["nullgeom", "emptygeom"]
    assert polys.class_names == ["a", "b"]  # class set does not depend on dropped rows
    assert polys.report.to_dict()["n_dropped_null"] == 2


def test_bow_tie_repaired_with_warning(tmp_path: Path) -> None:
    x, y = X0, Y0
    bow_tie = Polygon([(x, y), (x + 100, y - 100), (x + 100, y), (x, y - 100), (x, y)])
    assert not bow_tie.is_valid
    rows = [{"label": "a", "geometry": square(20, 20)}, {"label": "a", "geometry": bow_tie}]
    path = write_labels(tmp_path / "labels.geojson", rows)
    with pytest.warns(UserWarning, match=r"repaired 1 invalid .* ids: 1$"):
        polys = read_label_polygons(path, class_field="label")
    repaired = polys.geometries[1]
    assert repaired.is_valid and repaired.geom_type in ("Polygon", "MultiPolygon")
    assert repaired.area == pytest.approx(5000.0)  # two triangles of 50 x 100 m
    assert polys.report.repaired == ["1"]


def test_line_geometry_has_no_area_and_is_dropped(tmp_path: Path) -> None:
    spike = Polygon([(X0, Y0), (X0 + 100, Y0), (X0, Y0)])  # collapses to a line when repaired
    rows = [{"label": "a", "geometry": square(0, 0)}, {"label": "a", "geometry": spike}]
    path = write_labels(tmp_path / "labels.geojson", rows)
    with pytest.warns(UserWarning, match=r"no polygonal\s+area.*ids: 1"), \
            pytest.warns(UserWarning, match="repaired"):
        polys = read_label_polygons(path, class_field="label")
    assert polys.ids == ["0"]
    assert polys.report.dropped_no_area == ["1"]


def test_missing_class_attribute_names_file_field_and_columns(basic: Path) -> None:
    with pytest.raises(LabelError) as err:
        read_label_polygons(basic, class_field="class")
    msg = str(err.value)
    assert "labels.geojson" in msg and "'class'" in msg
    assert "'fid'" in msg and "'label'" in msg and "class_field" in msg


def test_unknown_class_values_named(basic: Path) -> None:
    with pytest.raises(LabelError, match=r"\{'water': 1\}.*known classes are \['crop', 'forest'\]"):
        read_label_polygons(basic, class_field="label", classes=["crop", "forest"])


def test_missing_and_duplicate_id_field(tmp_path: Path, basic: Path) -> None:
    with pytest.raises(LabelError, match="id attribute 'nope' not found"):
        read_label_polygons(basic, class_field="label", id_field="nope")
    rows = [{"k": 1, "label": "a", "geometry": square(0, 0)},
            {"k": 1, "label": "a", "geometry": square(20, 0)}]
    path = write_labels(tmp_path / "dupes.geojson", rows)
    with pytest.raises(LabelError, match=r"repeated values 1;"):
        read_label_polygons(path, class_field="label", id_field="k")


def test_features_without_class_value_dropped(tmp_path: Path) -> None:
    rows = [{"label": "a", "geometry": square(0, 0)}, {"label": None, "geometry": square(20, 0)}]
    path = write_labels(tmp_path / "labels.geojson", rows)
    with pytest.warns(UserWarning, match=r"without a class\s+value, ids: 1"):
        polys = read_label_polygons(path, class_field="label")
    assert polys.ids == ["0"] and polys.class_names == ["a"]


def test_polygons_outside_scene_reported_and_dropped(basic: Path) -> None:
    scene = (X0, Y0 - 150, X0 + 150, Y0)  # covers only the first square (0, 0)
    with pytest.warns(UserWarning, match=r"3 polygon\(s\) entirely outside .* ids: a2, a3, a4"):
        polys = read_label_polygons(basic, class_field="label", id_field="fid", crs=CRS,
                                    scene_bounds=scene)
    assert polys.ids == ["a1"]
    assert polys.report.to_dict()["n_outside"] == 3


def test_missing_file_and_missing_crs(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"nothere\.geojson"):
        read_label_polygons(tmp_path / "nothere.geojson")
    path = tmp_path / "nocrs.shp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyogrio warns that the file gets no CRS: intended
        frame = gpd.GeoDataFrame({"class": ["a"]}, geometry=[square(0, 0)])
        frame.to_file(path, engine="pyogrio")
    with pytest.raises(LabelError, match=r"nocrs\.shp' has no CRS"):
        read_label_polygons(path)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.geojson"
    path.write_text("{ not json")
    with pytest.raises(LabelError, match=r"cannot read label file .*broken\.geojson"):
        read_label_polygons(path)


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:.*gave fewer than per_polygon")
def test_los_lagos_polygons_and_centres(los_lagos_dir: Path) -> None:
    path = los_lagos_dir / "data_labels_larger_polygons.geojson"
    with pytest.warns(UserWarning, match=r"dropped 1 feature\(s\) with null .* ids: 121$"):
        polys = read_label_polygons(path, class_field="class_name", crs="EPSG:32718")
    assert polys.report.n_features == 126 and len(polys) == 125
    assert polys.report.dropped_null == ["121"] and "121" not in polys.ids
    assert polys.class_names == ["Agriculture", "Forest", "Parcels", "Urban", "Water"]
    assert np.bincount(polys.y).tolist() == [35, 16, 32, 29, 13]
    # a synthetic 10 m grid over the polygons' bounds, with a 50 m margin
    minx, miny, maxx, maxy = shapely.union_all(polys.geometries).bounds
    transform = Affine(10.0, 0.0, minx - 50, 0.0, -10.0, maxy + 50)
    height, width = int((maxy - miny + 100) // 10), int((maxx - minx + 100) // 10)
    params = SamplingParams(patch_size=8, per_polygon=5, min_distance=1.5, seed=3)
    centres = sample_centres(polys, transform, height, width, params)
    per_polygon = np.bincount(centres.polygon, minlength=len(polys))
    short = {polys.ids.index(i) for i in centres.report["short_polygons"]}
    assert len(short) <= 2 and all(per_polygon[list(short)] >= 1)
    assert all(n == 5 for i, n in enumerate(per_polygon) if i not in short)
    xs, ys = transform @ (centres.cols + 0.5, centres.rows + 0.5)
    for i, x, y in zip(centres.polygon, xs, ys, strict=True):
        assert polys.geometries[i].intersects(Point(x, y))
