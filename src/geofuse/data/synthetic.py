"""The built-in synthetic scene (``geofuse synth``): real files modelled on the Los Lagos study.

:func:`generate_scene` writes, deterministically by seed, what a user of the Los Lagos
(Chile) land-cover study would have: a Sentinel-2 L2A scene with a cloud-masked hole, a MODIS
NDVI composite and an SRTM-like DEM (both in EPSG:4326 at their native resolutions), label
polygons with the usual defects, and a ready ``study.yaml``.

The five classes are Agriculture, Forest, Parcels, Urban and Water. Sentinel-2 alone confuses
Parcels with Agriculture (grassy lots) and with Forest (wooded lots); MODIS NDVI (post-harvest
date) separates Agriculture from Parcels, and elevation separates Forest (higher blocks) from
Parcels, so fusing the three sensors gives a clear gain (see ``_synthetic_signal``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml

from geofuse.config import parse_config
from geofuse.data._synthetic_labels import class_quotas, label_features, place_polygons
from geofuse.data._synthetic_signal import (
    cell_params,
    cloud_mask,
    dem_elevation,
    modis_ndvi,
    s2_reflectance,
)
from geofuse.data._synthetic_world import CLASSES, Grid, World, build_grids, build_world
from geofuse.errors import ConfigError
from geofuse.io_utils import atomic_path, atomic_write_text

__all__ = ["CLASSES", "S2_BANDS", "SyntheticScene", "build_scene", "generate_scene"]

S2_BANDS = ("B2", "B3", "B4", "B8", "B11", "B12")
S2_WAVELENGTHS_NM = (490, 560, 665, 842, 1610, 2190)
DEM_RES = 1 / 3600  # SRTM 1 arc-second, about 30 m
MODIS_RES = 0.0025  # about 250 m
S2_NODATA, MODIS_NODATA, DEM_NODATA = 0, -3000, -32768
SIZE_RANGE_M = (4_000.0, 40_000.0)
MIN_POLYGONS = 8  # the three defective features plus at least one polygon per class
PER_POLYGON = 10


@dataclass
class SyntheticScene:
    """An in-memory synthetic scene: raw rasters, label features and the true class map.

    Attributes:
        world: the landscape (grids, elevation, class layout) the rasters were made from.
        dem_grid: grid of ``dem`` (EPSG:4326).
        modis_grid: grid of ``modis`` (EPSG:4326).
        s2: uint16 (6, H, W) reflectance x 10000 on ``world.scene``; 0 under the cloud.
        modis: int16 (1, h, w) NDVI x 10000.
        dem: int16 (1, h, w) elevation in metres.
        features: GeoJSON features (EPSG:4326) with ``id`` and ``class`` properties.
    """

    world: World
    dem_grid: Grid
    modis_grid: Grid
    s2: np.ndarray
    modis: np.ndarray
    dem: np.ndarray
    features: list[dict[str, Any]]

    @property
    def class_map(self) -> np.ndarray:
        """True class index (into :data:`CLASSES`) of every Sentinel-2 pixel."""
        return self.world.crop(self.world.classes)

    @property
    def scene_grid(self) -> Grid:
        """The Sentinel-2 grid (EPSG:32718, 10 m)."""
        return self.world.scene


def _check_args(seed: int, size_m: float, n_polygons: int) -> None:
    lo, hi = SIZE_RANGE_M
    if not lo <= size_m <= hi:
        raise ConfigError(f"synthetic scene: size_m={size_m!r} is out of range; "
                          f"pass a size between {lo:.0f} and {hi:.0f} metres")
    if n_polygons < MIN_POLYGONS:
        raise ConfigError(f"synthetic scene: n_polygons={n_polygons!r} is too few; pass at "
                          f"least {MIN_POLYGONS} (one per class plus three defective features)")
    if seed < 0:
        raise ConfigError(f"synthetic scene: seed={seed!r} is negative; pass a seed >= 0")


def build_scene(seed: int = 0, size_m: float = 20_000.0, n_polygons: int = 120) -> SyntheticScene:
    """Generate the scene in memory (see :func:`generate_scene` for the arguments)."""
    _check_args(seed, size_m, n_polygons)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)]
    scene, ext, dem_grid, modis_grid = build_grids(size_m, DEM_RES, MODIS_RES)
    world = build_world(rngs[0], scene, ext)
    params = cell_params(rngs[1], world.cell_class)
    refl = s2_reflectance(rngs[2], world, params)
    s2 = np.clip(np.rint(refl * 10_000), 1, 10_000).astype(np.uint16)
    s2[:, cloud_mask(rngs[3], scene.shape)] = S2_NODATA
    ndvi = modis_ndvi(rngs[4], world, params, modis_grid)
    dem = dem_elevation(rngs[5], world, dem_grid)
    placed = place_polygons(rngs[6], world.crop(world.classes), scene,
                            class_quotas(n_polygons - 2))
    return SyntheticScene(
        world=world, dem_grid=dem_grid, modis_grid=modis_grid, s2=s2,
        modis=np.rint(ndvi * 10_000).astype(np.int16)[None],
        dem=np.rint(dem).astype(np.int16)[None],
        features=label_features(rngs[6], placed, ext),
    )


def generate_scene(
    out_dir: str | Path, seed: int = 0, size_m: float = 20_000.0, n_polygons: int = 120
) -> Path:
    """Write the synthetic scene and a ready study config into ``out_dir``.

    Files: ``s2.tif`` (Sentinel-2 L2A, 6 bands, 10 m, EPSG:32718), ``modis_ndvi.tif`` (250 m,
    EPSG:4326), ``dem.tif`` (30 m, EPSG:4326), ``labels.geojson`` and ``study.yaml``.

    Args:
        out_dir: folder to write into (created if missing; files in it are replaced).
        seed: random seed; the same seed gives identical files.
        size_m: side of the square scene in metres (4 000 to 40 000).
        n_polygons: number of label features, including the three defective ones.

    Returns:
        Path of ``out_dir/study.yaml``.

    Raises:
        ConfigError: an argument is out of range or ``out_dir`` is an existing file.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"synthetic scene: output folder {str(out)!r} is an existing file; "
                          "pass a folder path (e.g. --out synthetic)")
    scene = build_scene(seed, size_m, n_polygons)
    out.mkdir(parents=True, exist_ok=True)
    _write_rasters(scene, out)
    collection = {"type": "FeatureCollection", "name": "labels", "features": scene.features}
    atomic_write_text(out / "labels.geojson", json.dumps(collection) + "\n")
    return _write_study(out, seed, size_m)


def _write_rasters(scene: SyntheticScene, out: Path) -> None:
    s2_tags = {
        "SENSOR": "Sentinel-2 MSI L2A surface reflectance (synthetic)",
        "SCALE_FACTOR": "0.0001",
        "CLOUD_MASKED": "cloudy pixels set to nodata 0",
    }
    _write_tif(out / "s2.tif", scene.s2, scene.scene_grid, S2_NODATA, S2_BANDS, 0.0001, s2_tags,
               {b: {"WAVELENGTH_NM": str(w)} for b, w in zip(S2_BANDS, S2_WAVELENGTHS_NM,
                                                            strict=True)})
    _write_tif(out / "modis_ndvi.tif", scene.modis, scene.modis_grid, MODIS_NODATA, ("NDVI",),
               0.0001, {"SENSOR": "MODIS MOD13Q1-like 16-day NDVI composite (synthetic)"})
    _write_tif(out / "dem.tif", scene.dem, scene.dem_grid, DEM_NODATA, ("elevation",), 1.0,
               {"SENSOR": "SRTM-like DEM (synthetic)", "UNITS": "metres"})


def _write_tif(
    path: Path, data: np.ndarray, grid: Grid, nodata: float, names: tuple[str, ...],
    scale: float, tags: dict[str, str], band_tags: dict[str, dict[str, str]] | None = None,
) -> None:
    """Write a tiled, deflate-compressed GeoTIFF atomically."""
    profile = {
        "driver": "GTiff", "height": grid.height, "width": grid.width, "count": data.shape[0],
        "dtype": data.dtype.name, "crs": grid.crs, "transform": grid.transform, "nodata": nodata,
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        "predictor": 2, "num_threads": "ALL_CPUS",
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        dst.scales = (scale,) * data.shape[0]
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
            dst.update_tags(i, **(band_tags or {}).get(name, {}))


def _study_dict(seed: int) -> dict[str, Any]:
    return {
        "name": f"synthetic_los_lagos_seed{seed}",
        "workdir": "work",
        "seed": seed,
        "modalities": [
            {"name": "s2", "files": ["s2.tif"], "bands": list(S2_BANDS), "sensor": "sentinel2",
             "scale": 0.0001, "nodata": S2_NODATA, "resampling": "bilinear"},
            {"name": "modis", "files": ["modis_ndvi.tif"], "bands": ["NDVI"],
             "sensor": "modis_ndvi", "scale": 0.0001, "nodata": MODIS_NODATA,
             "resampling": "bilinear"},
            {"name": "dem", "files": ["dem.tif"], "bands": ["elevation"], "sensor": "dem",
             "nodata": DEM_NODATA, "resampling": "cubic"},
        ],
        "labels": {"path": "labels.geojson", "class_field": "class", "classes": list(CLASSES),
                   "id_field": "id"},
        "extract": {"patch_size": 8, "per_polygon": PER_POLYGON},
        # The demo study: S2, S2+MODIS, S2+DEM, all; early (stacked bands) and late fusion;
        # 3 folds grouped by polygon.
        "ablation": {"folds": 3, "models": ["simple_cnn", "late_fusion"], "epochs": 30},
    }


def _write_study(out: Path, seed: int, size_m: float) -> Path:
    """Validate and write ``study.yaml``; return its path."""
    data = _study_dict(seed)
    parse_config(data, out, source="synthetic study.yaml")  # never write an invalid config
    header = (f"# Synthetic Los Lagos-like study written by `geofuse synth --seed {seed}`\n"
              f"# ({size_m / 1000:g} km x {size_m / 1000:g} km, EPSG:32718). "
              "Paths are relative to this file.\n")
    path = out / "study.yaml"
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False))
    return path
