"""Tests of the built-in synthetic scene: files, determinism, label defects, config, signal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.warp import Resampling, reproject, transform_bounds, transform_geom
from shapely.geometry import box, mapping, shape
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from geofuse.config import load_config
from geofuse.data.synthetic import CLASSES, S2_BANDS, build_scene, generate_scene
from geofuse.errors import ConfigError

SMALL = {"seed": 3, "size_m": 4000.0, "n_polygons": 30}
B8, B4 = S2_BANDS.index("B8"), S2_BANDS.index("B4")


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small")
    generate_scene(out, **SMALL)
    return out


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    generate_scene(out, seed=0)
    return out


def _features(folder: Path) -> list[dict]:
    return json.loads((folder / "labels.geojson").read_text())["features"]


def _footprint(path: Path) -> shapely.Polygon:
    """Raster footprint in EPSG:4326 (a bounding box)."""
    with rasterio.open(path) as src:
        return box(*transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21))


def test_s2_file_is_a_cloud_masked_l2a_scene(small_dir: Path) -> None:
    with rasterio.open(small_dir / "s2.tif") as src:
        assert src.crs.to_epsg() == 32718
        assert src.res == (10.0, 10.0)
        assert (src.count, src.dtypes[0], src.nodata) == (6, "uint16", 0)
        assert src.descriptions == S2_BANDS
        assert src.bounds == (650_000.0, 5_400_000.0, 654_000.0, 5_404_000.0)
        assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
        assert src.compression.name.lower() == "deflate"
        data = src.read()
    hole = (data == 0).all(axis=0)
    assert ((data == 0).any(axis=0) == hole).all(), "nodata must be all bands or none"
    assert 0.01 < hole.mean() < 0.08
    assert data[:, ~hole].min() >= 1 and data[:, ~hole].max() <= 10_000


def test_modis_and_dem_are_geographic_and_cover_the_scene(small_dir: Path) -> None:
    scene = _footprint(small_dir / "s2.tif")
    expected = {
        "modis_ndvi.tif": (0.0025, "int16", -3000, "NDVI", (-2000, 10_000)),
        "dem.tif": (1 / 3600, "int16", -32768, "elevation", (0, 2000)),
    }
    for name, (res, dtype, nodata, band, (lo, hi)) in expected.items():
        with rasterio.open(small_dir / name) as src:
            assert src.crs.to_epsg() == 4326
            assert src.res == pytest.approx((res, res))
            assert (src.count, src.dtypes[0], src.nodata) == (1, dtype, nodata)
            assert src.descriptions == (band,)
            data = src.read(1)
        assert _footprint(small_dir / name).buffer(-0.005).contains(scene), name
        assert lo <= data.min() and data.max() <= hi, name
    with rasterio.open(small_dir / "dem.tif") as src:
        dem = src.read(1)
    assert dem.min() == 0 and dem.max() > 40, "sea at 0 m and hills inland"


def test_world_has_a_flat_low_lake_and_forest_on_higher_ground() -> None:
    scene = build_scene(**SMALL)
    world = scene.world
    lake = world.water_kind == 2
    land = world.classes < 3
    assert lake.any() and np.ptp(world.elevation[lake]) == 0
    assert world.elevation[lake][0] < np.median(world.elevation[land])
    z = world.crop(world.elevation)
    forest, lowland = scene.class_map == 1, np.isin(scene.class_map, (0, 2))
    assert z[forest].mean() > z[lowland].mean() + 20


def test_same_seed_same_files_other_seed_differs(small_dir: Path, tmp_path: Path) -> None:
    generate_scene(tmp_path / "again", **SMALL)
    generate_scene(tmp_path / "other", **{**SMALL, "seed": 4})
    for name in ("s2.tif", "modis_ndvi.tif", "dem.tif"):
        with rasterio.open(small_dir / name) as a, rasterio.open(tmp_path / "again" / name) as b:
            np.testing.assert_array_equal(a.read(), b.read())
        with rasterio.open(small_dir / name) as a, rasterio.open(tmp_path / "other" / name) as c:
            assert not np.array_equal(a.read(), c.read()), name
    for name in ("labels.geojson", "study.yaml"):
        assert (small_dir / name).read_text() == (tmp_path / "again" / name).read_text()
    assert _features(small_dir) != _features(tmp_path / "other")


def test_labels_hold_the_three_defects_and_every_class(small_dir: Path) -> None:
    feats = _features(small_dir)
    assert len(feats) == SMALL["n_polygons"]
    assert sorted(f["properties"]["id"] for f in feats) == list(range(1, len(feats) + 1))
    assert {f["properties"]["class"] for f in feats} == set(CLASSES)
    assert sum(f["geometry"] is None for f in feats) == 1
    geoms = [shape(f["geometry"]) for f in feats if f["geometry"] is not None]
    invalid = [g for g in geoms if not g.is_valid]
    assert len(invalid) == 1 and "Self-intersection" in shapely.is_valid_reason(invalid[0])
    imagery = [_footprint(small_dir / n) for n in ("s2.tif", "modis_ndvi.tif", "dem.tif")]
    outside = [g for g in geoms if not any(g.intersects(fp) for fp in imagery)]
    assert len(outside) == 1
    inside_s2 = [g for g in geoms if g.within(imagery[0])]
    assert len(inside_s2) == len(geoms) - 1


def test_polygons_lie_inside_regions_of_their_class(small_dir: Path) -> None:
    scene = build_scene(**SMALL)
    assert scene.features == _features(small_dir), "build_scene must be what is written"
    grid = scene.scene_grid
    with rasterio.open(small_dir / "s2.tif") as src:
        crs = src.crs
    checked = 0
    footprint = _footprint(small_dir / "s2.tif")
    for feat in scene.features:
        if feat["geometry"] is None or not shape(feat["geometry"]).within(footprint):
            continue
        utm = transform_geom("EPSG:4326", crs, mapping(shapely.make_valid(shape(feat["geometry"]))))
        mask = rasterize([(utm, 1)], out_shape=grid.shape, transform=grid.transform).astype(bool)
        assert mask.sum() >= 100, "each polygon must give many distinct patch centres"
        classes = np.unique(scene.class_map[mask])
        assert classes.tolist() == [CLASSES.index(feat["properties"]["class"])]
        checked += 1
    assert checked == SMALL["n_polygons"] - 2


def test_study_yaml_is_a_valid_ready_config(small_dir: Path) -> None:
    cfg = load_config(small_dir / "study.yaml")
    assert [m.name for m in cfg.modalities] == ["s2", "modis", "dem"]
    s2, modis, dem = cfg.modalities
    assert (s2.sensor, s2.scale, s2.nodata, s2.resampling) == ("sentinel2", 1e-4, 0, "bilinear")
    assert s2.bands == list(S2_BANDS)
    assert (modis.sensor, modis.bands, modis.scale, modis.nodata) == (
        "modis_ndvi", ["NDVI"], 1e-4, -3000)
    assert (dem.sensor, dem.bands, dem.resampling) == ("dem", ["elevation"], "cubic")
    for m in cfg.modalities:
        assert all(p.is_file() for p in cfg.modality_files(m))
    assert cfg.labels is not None and cfg.resolve(cfg.labels.path).is_file()
    assert (cfg.labels.class_field, cfg.labels.classes) == ("class", list(CLASSES))
    assert (cfg.extract.patch_size, cfg.extract.per_polygon) == (8, 10)
    assert cfg.workdir_path == (small_dir / "work").resolve()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"size_m": 500.0}, "size_m=500.0"), ({"n_polygons": 3}, "n_polygons=3"),
     ({"seed": -1}, "seed=-1")],
)
def test_bad_arguments_raise_config_error(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        generate_scene(tmp_path, **kwargs)


def test_output_folder_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    target = tmp_path / "scene.txt"
    target.write_text("x")
    with pytest.raises(ConfigError, match="existing file"):
        generate_scene(target, size_m=4000.0)


# -- the full default scene -----------------------------------------------------------------
def _patch_table(folder: Path, per_polygon: int = 10) -> dict[str, np.ndarray]:
    """Per-patch mean and std of S2 + DEM + MODIS (resampled onto S2) for 8x8 patches."""
    with rasterio.open(folder / "s2.tif") as src:
        stack = src.read().astype(np.float32) / 10_000
        grid = (src.crs, src.transform, src.height, src.width)
    extra = []
    for name, how, scale in (("dem.tif", Resampling.cubic, 1.0),
                             ("modis_ndvi.tif", Resampling.bilinear, 1e-4)):
        out = np.full(grid[2:], np.nan, dtype=np.float32)
        with rasterio.open(folder / name) as src:
            reproject(rasterio.band(src, 1), out, dst_transform=grid[1], dst_crs=grid[0],
                      resampling=how)
        extra.append(out * scale)
    stack = np.concatenate([stack, np.stack(extra)])
    valid = stack[0] > 0
    rows = _sample_patches(folder, grid, valid, per_polygon)
    p = np.stack([stack[:, r - 4 : r + 4, c - 4 : c + 4] for r, c, _, _ in rows])
    return {"x": np.concatenate([p.mean((2, 3)), p.std((2, 3))], 1),
            "y": np.array([r[2] for r in rows]), "group": np.array([r[3] for r in rows])}


def _sample_patches(
    folder: Path, grid: tuple, valid: np.ndarray, per_polygon: int
) -> list[tuple[int, int, int, int]]:
    crs, transform, h, w = grid
    rng = np.random.default_rng(0)
    rows = []
    for feat in _features(folder):
        if feat["geometry"] is None or not shape(feat["geometry"]).is_valid:
            continue
        geom = transform_geom("EPSG:4326", crs, feat["geometry"])
        rr, cc = np.nonzero(rasterize([(geom, 1)], out_shape=(h, w), transform=transform))
        keep = (rr >= 4) & (rr < h - 4) & (cc >= 4) & (cc < w - 4)
        taken = 0
        for i in rng.permutation(np.flatnonzero(keep)):
            r, c = rr[i], cc[i]
            if taken < per_polygon and valid[r - 4 : r + 4, c - 4 : c + 4].all():
                rows.append((r, c, CLASSES.index(feat["properties"]["class"]),
                             feat["properties"]["id"]))
                taken += 1
    return rows


@pytest.fixture(scope="module")
def patches(full_dir: Path) -> dict[str, np.ndarray]:
    return _patch_table(full_dir)


def test_full_scene_has_many_polygons_per_class(
    full_dir: Path, patches: dict[str, np.ndarray]
) -> None:
    folder = full_dir
    with rasterio.open(folder / "s2.tif") as src:
        assert (src.count, src.height, src.width) == (6, 2000, 2000)
    feats = _features(folder)
    assert len(feats) == 120
    polygons = np.unique(patches["group"])
    per_class = np.bincount([patches["y"][patches["group"] == g][0] for g in polygons])
    assert len(per_class) == 5 and per_class.min() >= 15
    assert 1000 <= len(patches["y"]) <= 1500


def _cv_accuracy(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    return float(cross_val_score(model, x, y, groups=groups, cv=GroupKFold(5)).mean())


def test_fusion_beats_sentinel2_alone(patches: dict[str, np.ndarray]) -> None:
    x, y, g = patches["x"], patches["y"], patches["group"]
    n = x.shape[1] // 2  # means then stds of the 8 bands: 6 S2, elevation, NDVI

    def cols(bands: list[int]) -> list[int]:
        return bands + [b + n for b in bands]

    s2 = _cv_accuracy(x[:, cols(list(range(6)))], y, g)
    s2_dem = _cv_accuracy(x[:, cols([*range(6), 6])], y, g)
    s2_modis = _cv_accuracy(x[:, cols([*range(6), 7])], y, g)
    fused = _cv_accuracy(x, y, g)
    print(f"S2 {s2:.3f}  S2+DEM {s2_dem:.3f}  S2+MODIS {s2_modis:.3f}  all {fused:.3f}")
    assert 0.6 < s2 < 0.9
    assert s2_dem > s2 + 0.04 and s2_modis > s2 + 0.04
    assert fused > 0.92 and fused > max(s2_dem, s2_modis) + 0.03


def test_class_signal_is_physically_plausible(patches: dict[str, np.ndarray]) -> None:
    x, y = patches["x"], patches["y"]
    mean = np.stack([x[y == k, :8].mean(0) for k in range(5)])  # class x band
    agri, forest, parcels, urban, water = range(5)  # CLASSES order
    ndvi = (mean[:, B8] - mean[:, B4]) / (mean[:, B8] + mean[:, B4])
    assert min(ndvi[[agri, forest, parcels]]) > 0.6 and ndvi[urban] < 0.5 and ndvi[water] < 0
    assert mean[water, B8] < 0.05 and mean[water, S2_BANDS.index("B11")] < 0.02
    assert mean[urban, S2_BANDS.index("B12")] > mean[[agri, forest, parcels], 5].max()
    assert abs(ndvi[agri] - ndvi[parcels]) < 0.1, "S2 should barely tell them apart"
    assert mean[parcels, 7] > mean[agri, 7] + 0.15, "MODIS: post-harvest agriculture"
    assert mean[forest, 6] > mean[parcels, 6] + 50, "DEM: forest on higher ground"
