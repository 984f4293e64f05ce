"""Landscape of the synthetic scene: grids, terrain, water bodies and the class layout.

Everything lives on one 10 m UTM grid (``ext``) that covers the Sentinel-2 scene plus the
margins of the geographic DEM and MODIS grids, so that every raster is derived from the same
fields. Lengths are metres; ``u``/``v`` are east/north coordinates normalised by the scene size
(0..1 inside the scene), which keeps the layout (coast, lake, town) similar at every size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform_bounds
from scipy import ndimage
from scipy.spatial import cKDTree

CLASSES = ("Agriculture", "Forest", "Parcels", "Urban", "Water")
AGRI, FOREST, PARCELS, URBAN, WATER = range(5)
UTM = CRS.from_epsg(32718)
WGS84 = CRS.from_epsg(4326)
RES = 10.0
ORIGIN = (650_000.0, 5_400_000.0)  # lower-left corner of the scene, around Puerto Montt
GEO_MARGIN = 0.01  # degrees added around the scene by the DEM and MODIS grids
SEA, LAKE, RIVER = 1, 2, 3  # water_kind codes
CELL_SPACING = 1400.0  # largest mean spacing of the field-block (Voronoi) seeds
RIVER_HALF_WIDTH = 30.0


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid."""

    crs: CRS
    transform: Affine
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """left, bottom, right, top."""
        t = self.transform
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f


@dataclass
class World:
    """The synthetic landscape on the ``ext`` grid; ``scene`` is the Sentinel-2 window of it."""

    size_m: float
    scene: Grid
    ext: Grid
    offset: tuple[int, int]  # row, col of the scene's top-left pixel in ext
    elevation: np.ndarray  # float32 metres
    classes: np.ndarray  # uint8 class index
    cells: np.ndarray  # int32 field-block id
    water_kind: np.ndarray  # uint8: 0 land, SEA, LAKE, RIVER
    urban_core: np.ndarray  # float32, 1 at the town centre falling to 0 at its edge
    cell_class: np.ndarray  # class of each field block

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The scene window of an ext-grid array."""
        r, c = self.offset
        return array[..., r : r + self.scene.height, c : c + self.scene.width]


def _north_up(left: float, top: float, xres: float, yres: float) -> Affine:
    """Affine transform of a north-up grid (rasterio's from_origin without its warning)."""
    return Affine(xres, 0.0, left, 0.0, -yres, top)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-correlated noise (mean 0, std 1) with correlation length ``sigma`` pixels.

    Large ``sigma`` is filtered on a coarser lattice and upsampled bilinearly (much faster).
    """
    step = max(1, int(sigma // 3))
    coarse = (-(-shape[0] // step) + 2, -(-shape[1] // step) + 2)
    field = ndimage.gaussian_filter(
        rng.standard_normal(coarse, dtype=np.float32), sigma / step, mode="wrap"
    )
    if step > 1:
        field = ndimage.zoom(field, step, order=1)
    field = field[: shape[0], : shape[1]]
    field -= field.mean()
    field /= field.std() + 1e-12
    return field


def geographic_grid(scene: Grid, res: float) -> Grid:
    """An EPSG:4326 grid of ``res`` degrees covering the scene plus :data:`GEO_MARGIN`."""
    w, s, e, n = transform_bounds(scene.crs, WGS84, *scene.bounds, densify_pts=21)
    w = math.floor((w - GEO_MARGIN) / res) * res
    s = math.floor((s - GEO_MARGIN) / res) * res
    e = math.ceil((e + GEO_MARGIN) / res) * res
    n = math.ceil((n + GEO_MARGIN) / res) * res
    return Grid(WGS84, _north_up(w, n, res, res), round((n - s) / res), round((e - w) / res))


def build_grids(size_m: float, dem_res: float, modis_res: float) -> tuple[Grid, Grid, Grid, Grid]:
    """Scene (S2), DEM and MODIS grids, and the ext grid that covers them all."""
    n = round(size_m / RES)
    left, bottom = ORIGIN
    scene = Grid(UTM, _north_up(left, bottom + n * RES, RES, RES), n, n)
    dem, modis = geographic_grid(scene, dem_res), geographic_grid(scene, modis_res)
    boxes = [transform_bounds(WGS84, UTM, *g.bounds, densify_pts=51) for g in (dem, modis)]
    pad = 200.0
    x0 = left + math.floor((min(b[0] for b in boxes) - pad - left) / RES) * RES
    y0 = bottom + math.floor((min(b[1] for b in boxes) - pad - bottom) / RES) * RES
    x1 = left + math.ceil((max(b[2] for b in boxes) + pad - left) / RES) * RES
    y1 = bottom + math.ceil((max(b[3] for b in boxes) + pad - bottom) / RES) * RES
    ext = Grid(UTM, _north_up(x0, y1, RES, RES), round((y1 - y0) / RES), round((x1 - x0) / RES))
    return scene, ext, dem, modis


def _coords(scene: Grid, ext: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Normalised u (east, row vector) and v (north, column vector) of ext pixel centres."""
    size = scene.width * RES
    left, bottom = scene.bounds[0], scene.bounds[1]
    xs = ext.transform.c + RES * (np.arange(ext.width) + 0.5)
    ys = ext.transform.f - RES * (np.arange(ext.height) + 0.5)
    u = ((xs - left) / size).astype(np.float32)[None, :]
    v = ((ys - bottom) / size).astype(np.float32)[:, None]
    return u, v


def _coastline(rng: np.random.Generator, u: np.ndarray) -> np.ndarray:
    """Northing (in v units) of the shore of the sound, per column."""
    phase = rng.uniform(0, 2 * np.pi)
    wiggle = ndimage.gaussian_filter1d(rng.standard_normal(u.shape[1]), u.shape[1] / 40)
    wiggle /= np.abs(wiggle).max() + 1e-12
    return (0.10 + 0.035 * np.sin(2 * np.pi * 1.2 * u[0] + phase) + 0.015 * wiggle)[None, :]


def _blob(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, centre: tuple[float, float],
    radius: float, lobes: tuple[int, int],
) -> np.ndarray:
    """1 - d/r(theta) for a lobed blob (positive inside), in normalised units."""
    du, dv = u - centre[0], v - centre[1]
    theta = np.arctan2(dv, du)
    p1, p2 = rng.uniform(0, 2 * np.pi, 2)
    r = radius * (1 + 0.2 * np.sin(lobes[0] * theta + p1) + 0.1 * np.sin(lobes[1] * theta + p2))
    return (1 - np.hypot(du, dv) / r).astype(np.float32)


def _river_distance(
    rng: np.random.Generator, ext: Grid, scene: Grid, coast: np.ndarray
) -> np.ndarray:
    """Distance (m) of each ext pixel to a meandering river from the eastern hills to the sea."""
    size = scene.width * RES
    left, bottom = scene.bounds[:2]
    end_u = rng.uniform(0.40, 0.50)
    col_end = int(np.clip((left + end_u * size - ext.transform.c) / RES, 0, ext.width - 1))
    a, b = np.array([1.06, rng.uniform(0.7, 0.85)]), np.array([end_u, coast[0, col_end] - 0.03])
    t = np.linspace(0, 1, 4000)[:, None]
    normal = np.array([-(b - a)[1], (b - a)[0]]) / np.linalg.norm(b - a)
    meander = 0.05 * np.sin(2 * np.pi * 2.3 * t + rng.uniform(0, 2 * np.pi)) * np.sin(np.pi * t)
    pts = a + t * (b - a) + meander * normal
    step = 2  # work on a 20 m lattice, then upsample
    cols = ((left + pts[:, 0] * size - ext.transform.c) / (RES * step)).astype(int)
    rows = ((ext.transform.f - (bottom + pts[:, 1] * size)) / (RES * step)).astype(int)
    shape = (-(-ext.height // step), -(-ext.width // step))
    ok = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    free = np.ones(shape, dtype=bool)
    free[rows[ok], cols[ok]] = False
    dist = ndimage.distance_transform_edt(free).astype(np.float32) * RES * step
    return np.repeat(np.repeat(dist, step, 0), step, 1)[: ext.height, : ext.width]


def _terrain(
    rng: np.random.Generator, ext: Grid, u: np.ndarray, v: np.ndarray, coast: np.ndarray,
    size: float,
) -> np.ndarray:
    """Land elevation (m): rising to the east, rolling hills, low near the coast."""
    x_km = np.clip(u * size / 1000, 0, None)
    hills = 55 * smooth_noise(rng, ext.shape, 1500 / RES) + 15 * smooth_noise(rng, ext.shape, 40)
    relief = np.maximum(14.0 * x_km + hills, -25)
    inland = 1 - np.exp(-np.clip((v - coast) * size / 1000, 0, None) / 1.0)
    return (3 + inland * (30 + relief)).astype(np.float32)


def _field_blocks(rng: np.random.Generator, ext: Grid, spacing: float) -> np.ndarray:
    """Field-block id per pixel: Voronoi cells of random seeds with wobbly (warped) borders."""
    step = 2
    h, w = -(-ext.height // step), -(-ext.width // step)
    n = max(16, round(ext.height * ext.width * RES**2 / spacing**2))
    seeds = rng.uniform((0, 0), (h, w), size=(n, 2))
    amp = 220.0 / (RES * step)
    rr = np.arange(h)[:, None] + amp * smooth_noise(rng, (h, w), 700 / (RES * step))
    cc = np.arange(w)[None, :] + amp * smooth_noise(rng, (h, w), 700 / (RES * step))
    _, ids = cKDTree(seeds).query(np.stack([rr.ravel(), cc.ravel()], 1), workers=-1)
    cells = ids.reshape(h, w).astype(np.int32)
    return np.repeat(np.repeat(cells, step, 0), step, 1)[: ext.height, : ext.width]


def _assign_cells(
    rng: np.random.Generator, cells: np.ndarray, elevation: np.ndarray, land: np.ndarray,
    in_scene: np.ndarray,
) -> np.ndarray:
    """Class of each field block: Forest on the higher blocks, the rest Agriculture or Parcels."""
    n = int(cells.max()) + 1
    counts = np.bincount(cells[land], minlength=n)
    mean_z = np.bincount(cells[land], elevation[land], minlength=n) / np.maximum(counts, 1)
    mean_z[counts == 0] = -np.inf  # blocks without land rank lowest
    rank = np.argsort(np.argsort(mean_z)) - np.sum(counts == 0)
    pct = rank / max(int(np.sum(counts > 0)) - 1, 1)
    forest = rng.random(n) < 1 / (1 + np.exp(-(pct - 0.62) / 0.06))
    out = np.where(forest, FOREST, np.where(rng.random(n) < 0.5, PARCELS, AGRI)).astype(np.uint8)
    big = np.bincount(cells[in_scene & land], minlength=n) * RES**2 >= 0.25e6
    _ensure_classes(out, big, mean_z)
    return out


def _ensure_classes(cell_class: np.ndarray, big: np.ndarray, mean_z: np.ndarray) -> None:
    """Give each field class at least two large in-scene blocks (small scenes need this)."""
    for cls in (FOREST, AGRI, PARCELS):
        missing = 2 - int(np.sum(big & (cell_class == cls)))
        if missing <= 0:
            continue
        others = [k for k in (AGRI, FOREST, PARCELS) if k != cls]
        donor = max(others, key=lambda k: int(np.sum(big & (cell_class == k))))
        cand = np.flatnonzero(big & (cell_class == donor))
        cand = cand[np.argsort(-mean_z[cand] if cls == FOREST else mean_z[cand])]
        cell_class[cand[: max(0, min(missing, len(cand) - 2))]] = cls


def build_world(rng: np.random.Generator, scene: Grid, ext: Grid) -> World:
    """Lay out terrain, sea, lake, river, town and field blocks on the ``ext`` grid."""
    size_m = scene.width * RES
    offset = (round((ext.transform.f - scene.transform.f) / RES),
              round((scene.transform.c - ext.transform.c) / RES))
    u, v = _coords(scene, ext)
    coast = _coastline(rng, u)
    elevation = _terrain(rng, ext, u, v, coast, size_m)
    river_d = _river_distance(rng, ext, scene, coast)
    elevation -= np.clip((elevation - 10) / 2, 0, 22) * np.exp(-((river_d / 300) ** 2))
    lake = _blob(rng, u, v, (rng.uniform(0.22, 0.32), rng.uniform(0.52, 0.62)),
                 float(np.clip(0.09 * size_m, 450, 1800)) / size_m, (2, 3))
    elevation = _lake_basin(elevation, lake)
    town = _blob(rng, u, v, (rng.uniform(0.58, 0.66), float(np.median(coast)) + 0.13),
                 float(np.clip(0.13 * size_m, 700, 3200)) / size_m, (3, 5))
    sea = v < coast
    water_kind = np.zeros(ext.shape, dtype=np.uint8)
    water_kind[river_d < RIVER_HALF_WIDTH] = RIVER
    water_kind[lake > 0] = LAKE
    water_kind[sea] = SEA
    elevation = np.where(sea, 0.0, np.maximum(elevation, 1.0)).astype(np.float32)
    cells = _field_blocks(rng, ext, float(np.clip(size_m / 8, 700, CELL_SPACING)))
    land = (water_kind == 0) & (town <= 0)
    in_scene = np.zeros(ext.shape, dtype=bool)
    in_scene[offset[0] : offset[0] + scene.height, offset[1] : offset[1] + scene.width] = True
    cell_class = _assign_cells(rng, cells, elevation, land, in_scene)
    classes = cell_class[cells]
    classes[town > 0] = URBAN
    classes[water_kind > 0] = WATER
    return World(size_m, scene, ext, offset, elevation, classes, cells, water_kind,
                 np.clip(town, 0, 1), cell_class)


def _lake_basin(elevation: np.ndarray, lake: np.ndarray) -> np.ndarray:
    """Flatten the lake to a level below its shores and slope the land down to it."""
    level = max(8.0, 0.6 * float(np.median(elevation[lake > 0]))) if np.any(lake > 0) else 8.0
    ramp = np.clip(-lake / 0.6, 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)
    out = level + (elevation - level) * ramp
    return np.where(lake > 0, level, out).astype(np.float32)
