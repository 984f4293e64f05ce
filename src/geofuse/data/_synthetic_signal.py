"""Sensor signal of the synthetic scene: Sentinel-2 reflectance, MODIS NDVI, DEM, clouds.

Each pixel is a linear mixture of endmember spectra (tree canopy, green vegetation, soil,
impervious surfaces, water) with class-dependent, spatially correlated abundances.

The signal is designed so that Sentinel-2 alone confuses classes that the other sensors separate:

* Parcels (rural residential lots) are either grassy or wooded. Grassy parcels have the same
  abundance distributions as Agriculture, wooded ones the same as Forest, so one S2 date cannot
  tell them apart.
* MODIS NDVI is a composite from a later date, after the harvest: Agriculture has lost most of
  its green cover while Parcels and Forest have not, so MODIS separates Agriculture from Parcels.
* Forest grows on the higher field blocks (see ``_synthetic_world``), Parcels and Agriculture on
  the lowlands, so elevation separates Forest from wooded Parcels.
"""

from __future__ import annotations

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import Resampling, reproject

from geofuse.data._synthetic_world import (
    AGRI,
    FOREST,
    LAKE,
    PARCELS,
    RIVER,
    URBAN,
    WATER,
    Grid,
    World,
    smooth_noise,
)

# Surface reflectance of B2, B3, B4, B8, B11, B12.
TREE = np.array([0.020, 0.040, 0.024, 0.290, 0.125, 0.055], dtype=np.float32)
GREEN = np.array([0.035, 0.075, 0.045, 0.400, 0.215, 0.105], dtype=np.float32)
SOIL = np.array([0.085, 0.115, 0.150, 0.245, 0.320, 0.245], dtype=np.float32)
CONCRETE = np.array([0.140, 0.150, 0.160, 0.215, 0.290, 0.265], dtype=np.float32)
RED_ROOF = np.array([0.070, 0.080, 0.150, 0.210, 0.300, 0.250], dtype=np.float32)
ASPHALT = np.array([0.060, 0.070, 0.078, 0.110, 0.150, 0.135], dtype=np.float32)
CLEAR_WATER = np.array([0.042, 0.040, 0.024, 0.012, 0.006, 0.004], dtype=np.float32)
TURBID_WATER = np.array([0.070, 0.090, 0.072, 0.032, 0.011, 0.008], dtype=np.float32)
VIGOUR_RESPONSE = np.array([-0.3, 0.1, -0.5, 1.0, 0.3, 0.1], dtype=np.float32)
RED, NIR = 2, 3  # band indices of B4 and B8
CLOUD_FRACTION = 0.03
MODIS_STEP = 5  # MODIS NDVI is computed on a 50 m lattice, then averaged to 250 m


def cell_params(rng: np.random.Generator, cell_class: np.ndarray) -> dict[str, np.ndarray]:
    """Mean abundances and vigour of every field block, drawn by its class."""
    n = len(cell_class)
    agri, forest, parcels = cell_class == AGRI, cell_class == FOREST, cell_class == PARCELS
    wooded = (forest | (parcels & (rng.random(n) < 0.5)))

    def draw(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n).astype(np.float32)

    return {
        "tree": np.where(wooded, draw(0.58, 0.88), draw(0.0, 0.08)),
        "soil": np.where(wooded, draw(0.0, 0.08), draw(0.05, 0.40)),
        "imperv": np.where(parcels, draw(0.0, 0.04), 0).astype(np.float32),
        "vigour": draw(0.85, 1.12),
        "soil_gain": draw(0.8, 1.2),
        "modis_green": np.where(agri, draw(0.2, 0.5), draw(0.82, 1.0)),
    }


def abundances(
    classes: np.ndarray, cells: np.ndarray, core: np.ndarray, params: dict[str, np.ndarray],
    texture: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Tree, green, soil and impervious abundances (summing to 1) of every land pixel."""
    urban = classes == URBAN
    tree, soil, imp = (params[k][cells] for k in ("tree", "soil", "imperv"))
    tree[urban], soil[urban] = 0.08, 0.06
    imp[urban] = 0.45 + 0.4 * core[urban]
    if texture is not None:
        tree += 0.12 * texture["tree"]
        soil += 0.10 * texture["soil"]
        imp += np.where(urban, 0.25, 0.015) * texture["imp"]
    tree, soil, imp = (np.clip(a, 0, 1) for a in (tree, soil, imp))
    total = np.maximum(tree + soil + imp, 1.0)
    tree, soil, imp = tree / total, soil / total, imp / total
    return {"tree": tree, "green": 1 - tree - soil - imp, "soil": soil, "imp": imp}


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Within-field gradients (~80 m) plus fine texture (crowns, furrows, buildings)."""
    return {
        "tree": 0.6 * smooth_noise(rng, shape, 8) + 0.8 * smooth_noise(rng, shape, 1.2),
        "soil": 0.7 * smooth_noise(rng, shape, 10) + 0.5 * smooth_noise(rng, shape, 1.5),
        "imp": smooth_noise(rng, shape, 0.8),
        "roof": smooth_noise(rng, shape, 1.5),
        "water": smooth_noise(rng, shape, 25),
    }


def s2_reflectance(
    rng: np.random.Generator, world: World, params: dict[str, np.ndarray]
) -> np.ndarray:
    """Surface reflectance (6, H, W) float32 of the scene, before clouds and scaling."""
    classes, cells = world.crop(world.classes), world.crop(world.cells)
    tex = _texture(rng, classes.shape)
    ab = abundances(classes, cells, world.crop(world.urban_core), params, tex)
    vigour, soil_gain = params["vigour"][cells], params["soil_gain"][cells]
    red_roof, asphalt = np.clip(tex["roof"], 0, 1), np.clip(-tex["roof"], 0, 1)
    water = classes == WATER
    tau = _turbidity(world.crop(world.water_kind), tex["water"])[water]
    out = np.empty((6, *classes.shape), dtype=np.float32)
    for b in range(6):
        green = GREEN[b] * (1 + (vigour - 1) * VIGOUR_RESPONSE[b])
        imp = CONCRETE[b] + red_roof * (RED_ROOF[b] - CONCRETE[b])
        imp += asphalt * (ASPHALT[b] - CONCRETE[b])
        band = ab["tree"] * TREE[b] + ab["green"] * green + ab["soil"] * SOIL[b] * soil_gain
        band += ab["imp"] * imp
        band[water] = CLEAR_WATER[b] + tau * (TURBID_WATER[b] - CLEAR_WATER[b])
        out[b] = band
    out += rng.standard_normal(out.shape, dtype=np.float32) * (0.003 + 0.03 * out)
    return out


def _turbidity(water_kind: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Sediment load: rivers turbid, the sea in between, the lake clear."""
    tau = np.clip(0.45 + 0.25 * noise, 0, 1)
    tau[water_kind == LAKE] = np.clip(0.1 + 0.05 * noise[water_kind == LAKE], 0, 1)
    tau[water_kind == RIVER] = 0.75
    return tau


def cloud_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """An irregular cloud blob covering roughly :data:`CLOUD_FRACTION` of the scene."""
    h, w = shape
    radius = np.sqrt(CLOUD_FRACTION * h * w / np.pi)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    yy, xx = np.ogrid[:h, :w]
    dist = np.hypot(yy - cy, xx - cx) / radius
    return dist + 0.3 * smooth_noise(rng, shape, radius / 4) < 1


def modis_ndvi(
    rng: np.random.Generator, world: World, params: dict[str, np.ndarray], grid: Grid
) -> np.ndarray:
    """NDVI (float32, ``grid`` shape) of a post-harvest 16-day composite, averaged to ``grid``."""
    sl = (slice(MODIS_STEP // 2, None, MODIS_STEP),) * 2
    classes, cells = world.classes[sl], world.cells[sl]
    ab = abundances(classes, cells, world.urban_core[sl], params)
    factor = params["modis_green"][cells]
    factor[classes == URBAN] = 0.85
    green = ab["green"] * factor
    soil = ab["soil"] + ab["green"] - green
    red, nir = (ab["tree"] * TREE[b] + green * GREEN[b] + soil * SOIL[b] + ab["imp"] * CONCRETE[b]
                for b in (RED, NIR))
    ndvi = (nir - red) / (nir + red)
    ndvi[classes == WATER] = -0.12
    ndvi += 0.02 * smooth_noise(rng, ndvi.shape, 10)
    src_transform = world.ext.transform @ Affine.scale(MODIS_STEP)
    out = _warp(ndvi, src_transform, world.ext.crs, grid, Resampling.average)
    out += rng.normal(0, 0.015, out.shape).astype(np.float32)
    return np.clip(out, -0.2, 1.0)


def dem_elevation(rng: np.random.Generator, world: World, grid: Grid) -> np.ndarray:
    """Elevation (float32 metres) averaged onto ``grid``, with SRTM-like noise on land."""
    out = _warp(world.elevation, world.ext.transform, world.ext.crs, grid, Resampling.average)
    land = out > 0.5
    out[land] += rng.normal(0, 1.5, int(land.sum())).astype(np.float32)
    return np.maximum(out, 0)


def _warp(src: np.ndarray, transform: Affine, crs: CRS, grid: Grid, how: Resampling) -> np.ndarray:
    """Resample ``src`` onto ``grid``."""
    out = np.zeros(grid.shape, dtype=np.float32)
    reproject(
        np.ascontiguousarray(src, dtype=np.float32), out, src_transform=transform, src_crs=crs,
        dst_transform=grid.transform, dst_crs=grid.crs, resampling=how, num_threads=2,
    )
    return out
