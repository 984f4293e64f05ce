"""End-to-end ``extract_patches`` on a tiny synthetic stack with label polygons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from shapely.geometry import Point, Polygon, box

from geofuse.config import StudyConfig, parse_config
from geofuse.data.extract import extract_patches, nodata_fraction
from geofuse.data.patchset import SPLIT_CODES, PatchSet
from geofuse.errors import ConfigError, DataNotFoundError, RasterError, SamplingError
from geofuse.raster.manifest import StackManifest, manifest_path

CRS = "EPSG:32718"
X0, Y0, RES = 600_000.0, 5_450_000.0, 10.0
HEIGHT, WIDTH = 60, 80
BANDS = {"s2": ["b2", "b3"], "dem": ["elevation"]}
NAN_ROWS, NAN_COLS = slice(0, 10), slice(60, 80)  # band 'b3' is NaN in the top-right corner


def pixbox(r0: float, r1: float, c0: float, c1: float) -> Polygon:
    return box(X0 + c0 * RES, Y0 - r1 * RES, X0 + c1 * RES, Y0 - r0 * RES)


POLYGONS = [  # (class, pixel box r0, r1, c0, c1): three polygons per class, some at the border
    ("crop", (12, 22, 0, 14)), ("crop", (30, 40, 20, 30)), ("crop", (45, 60, 40, 52)),
    ("forest", (12, 22, 20, 30)), ("forest", (30, 42, 40, 50)), ("forest", (45, 55, 60, 80)),
    ("water", (25, 35, 2, 12)), ("water", (12, 22, 40, 50)), ("water", (30, 40, 60, 72)),
]


def stack_values() -> np.ndarray:
    """(C, H, W) float32 where each value encodes its band, row and column."""
    c, r, k = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT), np.arange(3), indexing="xy")
    data = (k * 10_000 + r * 100 + c).transpose(2, 0, 1).astype(np.float32)
    data[1, NAN_ROWS, NAN_COLS] = np.nan
    return data


def write_stack(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "stack.tif"
    transform = Affine(RES, 0.0, X0, 0.0, -RES, Y0)
    bands = [b for names in BANDS.values() for b in names]
    with rasterio.open(path, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=3,
                       dtype="float32", crs=CRS, transform=transform, nodata=np.nan) as dst:
        dst.write(stack_values())
        dst.descriptions = tuple(bands)
    StackManifest(bands=bands, modalities=BANDS, crs=CRS, transform=list(transform)[:6],
                  width=WIDTH, height=HEIGHT).save(manifest_path(path))
    return path


def write_labels(path: Path, polygons: list[tuple[str, tuple]], extra: list[dict] | None = None
                 ) -> Path:
    rows = [{"name": f"P{i}", "landcover": c, "geometry": pixbox(*b)}
            for i, (c, b) in enumerate(polygons)] + (extra or [])
    gpd.GeoDataFrame(rows, geometry="geometry", crs=CRS).to_crs("EPSG:4326").to_file(path)
    return path


def make_config(tmp: Path, labels: Path, **extract: Any) -> StudyConfig:
    data = {
        "workdir": str(tmp / "work"),
        "seed": 3,
        "modalities": [{"name": m, "files": [f"{m}.tif"], "bands": b} for m, b in BANDS.items()],
        "labels": {"path": str(labels), "class_field": "landcover", "id_field": "name"},
        "extract": {"patch_size": 5, "per_polygon": 6, **extract},
        "splits": {"val_fraction": 0.3, "test_fraction": 0.3},
    }
    return parse_config(data, tmp)


@pytest.fixture()
def study(tmp_path: Path) -> StudyConfig:
    write_stack(tmp_path / "work")
    return make_config(tmp_path, write_labels(tmp_path / "labels.geojson", POLYGONS))


def rowcol(ps: PatchSet) -> tuple[np.ndarray, np.ndarray]:
    """Centre pixel of each patch from its map coordinates."""
    cols = (ps.coords[:, 0] - X0) / RES - 0.5
    rows = (Y0 - ps.coords[:, 1]) / RES - 0.5
    assert np.allclose(cols, np.round(cols)) and np.allclose(rows, np.round(rows))
    return np.round(rows).astype(int), np.round(cols).astype(int)


@pytest.mark.parametrize("patch_size", [1, 4, 5, 8])
def test_patches_match_direct_window_reads(tmp_path: Path, patch_size: int) -> None:
    write_stack(tmp_path / "work")
    cfg = make_config(tmp_path, write_labels(tmp_path / "l.geojson", POLYGONS[:6] + POLYGONS[7:]),
                      patch_size=patch_size, on_nodata="flag")
    cfg.splits.test_fraction = 0.0
    ps = extract_patches(cfg, progress=False)
    assert ps.x.shape == (len(ps), 3, patch_size, patch_size) and ps.x.dtype == np.float32
    rows, cols = rowcol(ps)
    h = patch_size // 2
    with rasterio.open(cfg.stack_path) as src:
        for i in range(len(ps)):
            window = Window(cols[i] - h, rows[i] - h, patch_size, patch_size)
            np.testing.assert_array_equal(ps.x[i], src.read(window=window))
    # the centre pixel carries the centre's row and col in every band
    centre = ps.x[:, 0, h, h]
    assert np.array_equal(centre, rows * 100 + cols)


def test_extract_writes_complete_patchset(study: StudyConfig) -> None:
    ps = extract_patches(study, progress=False)
    assert study.patches_path.is_file()
    assert len(ps) == 6 * len(POLYGONS)
    assert ps.band_names == ["b2", "b3", "elevation"] and ps.modalities == BANDS
    assert ps.class_names == ["crop", "forest", "water"] and ps.crs == CRS
    assert sorted(set(ps.groups.tolist())) == sorted(f"polygon:P{i}" for i in range(9))
    for g, cls, (x, y) in zip(ps.groups, ps.y, ps.coords, strict=True):
        i = int(g.removeprefix("polygon:P"))
        assert POLYGONS[i][0] == ps.class_names[cls]
        assert pixbox(*POLYGONS[i][1]).buffer(0.01).contains(Point(x, y))
    assert not np.isnan(ps.x).any() and np.all(ps.nodata_fraction == 0)
    for name in SPLIT_CODES:
        assert set(ps.y[ps.split_indices(name)].tolist()) == {0, 1, 2}
    for g in np.unique(ps.groups):
        assert len(np.unique(ps.split[ps.groups == g])) == 1
    prov = ps.provenance
    for key in ("stack_path", "labels_path", "patch_size", "sampling", "polygons", "seed",
                "geofuse_version", "created_utc", "splits", "nodata"):
        assert key in prov, key
    assert prov["patch_size"] == 5 and prov["seed"] == 3 and prov["sampling"]["per_polygon"] == 6
    assert prov["polygons"]["n_features"] == 9


def test_patchset_round_trips(study: StudyConfig) -> None:
    ps = extract_patches(study, progress=False)
    back = PatchSet.load(study.patches_path)
    np.testing.assert_array_equal(back.x, ps.x)
    for name in ("y", "groups", "coords", "split", "nodata_fraction"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ps, name))
    assert back.band_names == ps.band_names and back.modalities == ps.modalities
    assert back.class_names == ps.class_names and back.crs == ps.crs
    assert back.provenance == ps.provenance


def test_deterministic_by_seed(study: StudyConfig) -> None:
    a = extract_patches(study, progress=False)
    b = extract_patches(study, progress=False)
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.split, b.split)
    study.seed = 4
    c = extract_patches(study, progress=False)
    assert not np.array_equal(a.coords, c.coords)


def nodata_study(tmp_path: Path, **extract: Any) -> StudyConfig:
    write_stack(tmp_path / "work")
    extra = [{"name": "corner", "landcover": "crop", "geometry": pixbox(0, 12, 58, 80)}]
    return make_config(tmp_path, write_labels(tmp_path / "l.geojson", POLYGONS, extra), **extract)


def test_nodata_patches_dropped_with_warning(tmp_path: Path) -> None:
    cfg = nodata_study(tmp_path, patch_size=3, per_polygon=20, max_nodata_fraction=0.4)
    with pytest.warns(UserWarning, match=r"dropped \d+ of \d+ patches with a nodata share"):
        ps = extract_patches(cfg, progress=False)
    assert ps.nodata_fraction.max() <= 0.4
    corner = ps.groups == "polygon:corner"
    assert 0 < corner.sum() < 20  # the corner polygon straddles the NaN block
    assert ps.provenance["nodata"]["n_over_threshold"] == 9 * 20 + 20 - len(ps)


def test_nodata_patches_flagged(tmp_path: Path) -> None:
    cfg = nodata_study(tmp_path, patch_size=3, per_polygon=20, on_nodata="flag")
    ps = extract_patches(cfg, progress=False)
    assert len(ps) == 10 * 20
    assert np.array_equal(ps.nodata_fraction, nodata_fraction(ps.x))
    flagged = ps.nodata_fraction > 0
    assert flagged.any() and set(ps.groups[flagged].tolist()) == {"polygon:corner"}
    assert np.isnan(ps.x[flagged]).any(axis=(1, 2, 3)).all()
    assert ps.provenance["nodata"]["n_over_threshold"] == int(flagged.sum())


def test_nodata_fraction_counts_pixels_with_any_nan_band() -> None:
    x = np.zeros((2, 3, 2, 2), dtype=np.float32)
    x[0, 1, 0, 0] = np.nan
    x[0, 2, 0, 0] = np.nan  # same pixel, another band
    x[1, 0, :, 1] = np.nan
    assert nodata_fraction(x).tolist() == [0.25, 0.5]


def test_all_polygons_outside_is_sampling_error(tmp_path: Path) -> None:
    write_stack(tmp_path / "work")
    far = [("crop", (500, 510, 500, 510))]
    cfg = make_config(tmp_path, write_labels(tmp_path / "far.geojson", far))
    with pytest.warns(UserWarning, match="entirely outside"), pytest.raises(SamplingError) as err:
        extract_patches(cfg, progress=False)
    assert "far.geojson" in str(err.value) and "1 outside" in str(err.value)
    assert not cfg.patches_path.exists()


def test_patch_larger_than_stack_is_sampling_error(study: StudyConfig) -> None:
    study.extract.patch_size = 70
    with pytest.warns(UserWarning, match="no centre whose 70x70"), \
            pytest.raises(SamplingError, match=r"smaller extract.patch_size \(now 70\)"):
        extract_patches(study, progress=False)


def test_all_patches_nodata_is_sampling_error(tmp_path: Path) -> None:
    write_stack(tmp_path / "work")
    inside_nan = [("crop", (1, 9, 62, 78))]
    cfg = make_config(tmp_path, write_labels(tmp_path / "nan.geojson", inside_nan), patch_size=1)
    with pytest.raises(SamplingError, match=r"nan.geojson: all 6 sampled patches .*on_nodata"):
        extract_patches(cfg, progress=False)


def test_existing_output_kept_on_failure(study: StudyConfig) -> None:
    first = extract_patches(study, progress=False)
    study.extract.patch_size = 70
    with pytest.warns(UserWarning), pytest.raises(SamplingError):
        extract_patches(study, progress=False)
    assert len(PatchSet.load(study.patches_path)) == len(first)


def test_missing_inputs(tmp_path: Path, study: StudyConfig) -> None:
    manifest_path(study.stack_path).unlink()
    with pytest.raises(DataNotFoundError, match="geofuse prepare"):
        extract_patches(study, progress=False)
    no_labels = parse_config({"modalities": study.model_dump()["modalities"]}, tmp_path)
    with pytest.raises(ConfigError, match="no 'labels' section"):
        extract_patches(no_labels, progress=False)


def test_manifest_mismatch_is_raster_error(study: StudyConfig) -> None:
    path = manifest_path(study.stack_path)
    manifest = StackManifest.load(path)
    manifest.bands = ["x", "y", "z"]
    manifest.modalities = {"s2": ["x", "y", "z"]}
    manifest.save(path)
    with pytest.raises(RasterError, match=r"does not match its manifest .*band descriptions"):
        extract_patches(study, progress=False)


def test_coords_are_pixel_centres(study: StudyConfig) -> None:
    ps = extract_patches(study, progress=False)
    frac_x = ((ps.coords[:, 0] - X0) / RES) % 1
    frac_y = ((Y0 - ps.coords[:, 1]) / RES) % 1
    assert np.allclose(frac_x, 0.5) and np.allclose(frac_y, 0.5)


def test_windowed_reading_gives_the_same_patchset(study: StudyConfig) -> None:
    in_memory = extract_patches(study, progress=False)
    study.extract.memory_limit_mb = 0
    windowed = extract_patches(study, progress=False)
    np.testing.assert_array_equal(in_memory.x, windowed.x)
    np.testing.assert_array_equal(in_memory.coords, windowed.coords)


def test_non_ascii_polygon_ids_round_trip(tmp_path: Path) -> None:
    write_stack(tmp_path / "work")
    labels = write_labels(tmp_path / "l.gpkg", POLYGONS)
    frame = gpd.read_file(labels)
    frame["name"] = [f"Río Bueno {i}" for i in range(len(frame))]
    frame.to_file(labels)
    cfg = make_config(tmp_path, labels)
    ps = extract_patches(cfg, progress=False)
    assert "polygon:Río Bueno 0" in set(ps.groups.tolist())
    np.testing.assert_array_equal(PatchSet.load(cfg.patches_path).groups, ps.groups)
