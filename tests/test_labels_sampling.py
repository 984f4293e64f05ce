"""Patch-centre sampling inside polygons on a raster grid."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from shapely.geometry import Point, Polygon, box

from geofuse.data.stack_reader import centre_limits
from geofuse.errors import ConfigError
from geofuse.labels.polygons import LabelPolygons, PolygonReport
from geofuse.labels.sampling import (
    CentreSample,
    SamplingParams,
    polygon_pixels,
    sample_centres,
    spaced_sequence,
    spread_counts,
)

X0, Y0, RES = 600_000.0, 5_450_000.0, 10.0
TRANSFORM = Affine(RES, 0.0, X0, 0.0, -RES, Y0)
HEIGHT, WIDTH = 60, 80


def pixbox(r0: float, r1: float, c0: float, c1: float) -> Polygon:
    """Polygon covering pixel rows r0..r1 and cols c0..c1 (edges on pixel boundaries)."""
    return box(X0 + c0 * RES, Y0 - r1 * RES, X0 + c1 * RES, Y0 - r0 * RES)


def make_polygons(geoms: list[Polygon], y: list[int], names: list[str]) -> LabelPolygons:
    ids = [f"p{i}" for i in range(len(geoms))]
    return LabelPolygons(ids=ids, geometries=geoms, y=np.asarray(y), class_names=names,
                         crs="EPSG:32718", report=PolygonReport(path="mem"))


@pytest.fixture()
def polygons() -> LabelPolygons:
    geoms = [
        pixbox(0, 15, 0, 20),      # touches the top-left corner of the raster
        pixbox(20, 40, 30, 50),
        Polygon([(X0 + 600, Y0 - 100), (X0 + 790, Y0 - 100), (X0 + 790, Y0 - 500)]),  # triangle
        pixbox(45, 60, 60, 80),    # touches the bottom-right corner
        pixbox(30, 50, 2, 12),
    ]
    return make_polygons(geoms, [0, 1, 0, 1, 1], ["a", "b"])


def centre_points(s: CentreSample) -> list[Point]:
    xs, ys = TRANSFORM @ (s.cols + 0.5, s.rows + 0.5)
    return [Point(x, y) for x, y in zip(xs, ys, strict=True)]


def sample(polys: LabelPolygons, **kw: object) -> CentreSample:
    return sample_centres(polys, TRANSFORM, HEIGHT, WIDTH, SamplingParams(**kw))


@pytest.mark.parametrize("patch_size", [1, 4, 5, 8, 9])
def test_centres_inside_polygons_and_windows_inside_raster(
    polygons: LabelPolygons, patch_size: int
) -> None:
    s = sample(polygons, patch_size=patch_size, per_polygon=12, seed=1)
    assert len(s) == 12 * len(polygons)
    for i, pt in zip(s.polygon, centre_points(s), strict=True):
        assert polygons.geometries[i].intersects(pt)
    rlo, rhi = centre_limits(HEIGHT, patch_size)
    clo, chi = centre_limits(WIDTH, patch_size)
    assert rlo == patch_size // 2 and rhi == HEIGHT - patch_size + patch_size // 2
    assert s.rows.min() >= rlo and s.rows.max() <= rhi
    assert s.cols.min() >= clo and s.cols.max() <= chi
    # no duplicated centre within a polygon
    keys = set(zip(s.polygon.tolist(), s.rows.tolist(), s.cols.tolist(), strict=True))
    assert len(keys) == len(s)


def test_border_polygons_reach_the_limit(polygons: LabelPolygons) -> None:
    """The corner polygons yield centres exactly at the first/last valid centre."""
    with pytest.warns(UserWarning, match=r"4 polygon\(s\) gave fewer than per_polygon=400"):
        s = sample(polygons, patch_size=8, per_polygon=400, seed=0)
    corner = s.polygon == 0
    assert s.rows[corner].min() == 4 and s.cols[corner].min() == 4
    far = s.polygon == 3
    assert s.rows[far].max() == HEIGHT - 4 and s.cols[far].max() == WIDTH - 4


@pytest.mark.filterwarnings("ignore:.*gave fewer than per_polygon")
@pytest.mark.parametrize("min_distance", [2.0, 3.5, 6.0])
def test_min_distance_respected(polygons: LabelPolygons, min_distance: float) -> None:
    s = sample(polygons, patch_size=5, per_polygon=30, min_distance=min_distance, jitter=1.0,
               seed=2)
    for k in range(len(polygons)):
        rc = np.column_stack([s.rows[s.polygon == k], s.cols[s.polygon == k]]).astype(float)
        assert len(rc) >= 2
        d = np.sqrt(((rc[:, None] - rc[None]) ** 2).sum(-1))
        assert d[~np.eye(len(rc), dtype=bool)].min() >= min_distance


def test_deterministic_by_seed(polygons: LabelPolygons) -> None:
    a = sample(polygons, patch_size=8, per_polygon=10, jitter=2.0, min_distance=2, seed=5)
    b = sample(polygons, patch_size=8, per_polygon=10, jitter=2.0, min_distance=2, seed=5)
    c = sample(polygons, patch_size=8, per_polygon=10, jitter=2.0, min_distance=2, seed=6)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols)
    assert not (np.array_equal(a.rows, c.rows) and np.array_equal(a.cols, c.cols))


def test_polygon_streams_independent(polygons: LabelPolygons) -> None:
    """Removing one polygon leaves the centres of the others unchanged."""
    full = sample(polygons, patch_size=8, per_polygon=6, seed=9)
    fewer = make_polygons(polygons.geometries[1:], polygons.y[1:].tolist(), ["a", "b"])
    fewer.ids = polygons.ids[1:]
    part = sample(fewer, patch_size=8, per_polygon=6, seed=9)
    keep = full.polygon > 0
    assert np.array_equal(full.rows[keep], part.rows) and np.array_equal(full.cols[keep],
                                                                         part.cols)


def test_jitter_keeps_centres_inside(polygons: LabelPolygons) -> None:
    s = sample(polygons, patch_size=8, per_polygon=20, jitter=3.0, seed=4)
    for i, pt in zip(s.polygon, centre_points(s), strict=True):
        assert polygons.geometries[i].intersects(pt)


def test_per_class_spread_evenly(polygons: LabelPolygons) -> None:
    s = sample(polygons, patch_size=8, per_polygon=None, per_class=31, seed=0)
    assert np.bincount(polygons.y[s.polygon]).tolist() == [31, 31]
    per_poly = np.bincount(s.polygon, minlength=len(polygons))
    class_b = per_poly[polygons.y == 1]
    assert class_b.max() - class_b.min() <= 1  # 31 over 3 roomy polygons: 11, 10, 10


def test_per_class_shortfall_moves_to_other_polygons() -> None:
    tiny = pixbox(10, 12, 10, 12)  # 4 candidate pixels
    big = pixbox(20, 50, 20, 60)
    polys = make_polygons([tiny, big], [0, 0], ["a"])
    s = sample(polys, patch_size=3, per_polygon=None, per_class=50, seed=0)
    assert np.bincount(s.polygon).tolist() == [4, 46]


def test_per_class_too_few_warns() -> None:
    polys = make_polygons([pixbox(10, 12, 10, 12)], [0], ["a"])
    with pytest.warns(UserWarning, match=r"class 'a': only 4 of per_class=9"):
        s = sample(polys, patch_size=3, per_polygon=None, per_class=9, seed=0)
    assert len(s) == 4


def test_small_polygon_uses_representative_point() -> None:
    # a sliver between pixel centres: contains no pixel centre
    sliver = box(X0 + 201, Y0 - 309, X0 + 204, Y0 - 301)
    polys = make_polygons([sliver, pixbox(20, 30, 20, 30)], [0, 0], ["a"])
    with pytest.warns(UserWarning, match=r"contain no pixel centre.*ids: p0$"):
        s = sample(polys, patch_size=4, per_polygon=3, seed=0)
    assert s.report["fallback_polygons"] == ["p0"]
    rows, cols = s.rows[s.polygon == 0], s.cols[s.polygon == 0]
    assert rows.tolist() == [30] and cols.tolist() == [20]  # the pixel holding the sliver
    pixel = pixbox(30, 31, 20, 21)
    assert pixel.contains(sliver.representative_point())


def test_polygon_at_border_without_room_warns() -> None:
    edge = pixbox(0, 2, 0, 80)  # rows 0-1 only: too close to the top for an 8-px patch
    polys = make_polygons([edge, pixbox(20, 30, 20, 30)], [0, 0], ["a"])
    with pytest.warns(UserWarning, match=r"no centre whose 8x8 patch fits.*ids: p0"):
        s = sample(polys, patch_size=8, per_polygon=3, seed=0)
    assert s.report["unusable_polygons"] == ["p0"] and set(s.polygon.tolist()) == {1}


def test_polygon_outside_grid_is_unusable() -> None:
    far = box(X0 - 5000, Y0 - 100, X0 - 4000, Y0)
    assert polygon_pixels(far, TRANSFORM, HEIGHT, WIDTH, 4) is None


def test_neither_count_set_is_config_error(polygons: LabelPolygons) -> None:
    with pytest.raises(ConfigError, match=r"per_polygon or extract\.per_class"):
        sample(polygons, patch_size=8, per_polygon=None, per_class=None)


def test_spaced_sequence_is_prefix_consistent() -> None:
    pix = polygon_pixels(pixbox(10, 40, 10, 50), TRANSFORM, HEIGHT, WIDTH, 8)
    assert pix is not None
    short = spaced_sequence(pix, 5, 3.0, 1.0, np.random.default_rng(1))
    long = spaced_sequence(pix, 40, 3.0, 1.0, np.random.default_rng(1))
    assert np.array_equal(short[0], long[0][:5]) and np.array_equal(short[1], long[1][:5])


def test_spread_counts() -> None:
    rng = np.random.default_rng(0)
    assert spread_counts(10, np.array([100, 100]), rng).tolist() == [5, 5]
    assert spread_counts(10, np.array([2, 100, 100]), rng).tolist() == [2, 4, 4]
    assert spread_counts(10, np.array([1, 2]), rng).tolist() == [1, 2]
    counts = spread_counts(7, np.array([5, 5, 5]), rng)
    assert counts.sum() == 7 and counts.max() - counts.min() <= 1
