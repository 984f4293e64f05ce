"""Reference grid and resampling of every modality onto it, one window at a time.

The reference grid is ``cfg.grid`` when given, else the grid of the first modality (for a
mosaic: the union of its tiles, snapped to the first tile's pixel size and alignment, in the
first tile's CRS). Each modality becomes a :class:`ModalityPlan` that knows which file
supplies which bands, where each file lies on the grid, and how to read a window of
physical float32 values (NaN = nodata or not covered).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.features import rasterize
from rasterio.warp import transform as transform_coords
from rasterio.windows import Window
from shapely import Polygon, box, make_valid, prepare, union_all
from shapely.geometry.base import BaseGeometry

from geofuse.config import GridConfig, ModalityConfig
from geofuse.errors import AlignmentError, ConfigError, RasterError
from geofuse.raster.io import (
    Grid,
    RasterInfo,
    check_nodata,
    crs_to_string,
    parse_crs,
    read_warped,
)

_EPS = 1e-6  # tolerance, in pixels, when snapping bounds to a pixel grid
_FOOTPRINT_POINTS = 21  # points per edge when a footprint is reprojected
_DEG_TOL = 1e-6  # degrees a lon/lat raster may reach past the poles (rounding of its edges)


def grid_from_config(grid: GridConfig) -> Grid:
    """Build the explicit reference grid of the config's ``grid`` section."""
    crs = parse_crs(grid.crs, "grid.crs")
    left, bottom, right, top = grid.bounds
    if right <= left or top <= bottom:
        raise ConfigError(
            f"grid.bounds = {list(grid.bounds)} is not (left, bottom, right, top) with "
            "left < right and bottom < top; reorder the four numbers"
        )
    res = grid.resolution
    width = max(1, math.ceil((right - left) / res - _EPS))
    height = max(1, math.ceil((top - bottom) / res - _EPS))
    return Grid(crs, Affine(res, 0.0, left, 0.0, -res, top), width, height)


def grid_from_files(infos: list[RasterInfo]) -> Grid:
    """Grid covering all ``infos``, snapped to the first file's pixel size and alignment."""
    first = infos[0]
    if not first.is_north_up:
        raise RasterError(
            f"raster file {str(first.path)!r} is rotated or not north-up, so it cannot define the "
            "reference grid; add a 'grid' section (crs, resolution, bounds) to the config"
        )
    xres, yres = first.transform.a, -first.transform.e
    x0, y0 = first.transform.c, first.transform.f
    boxes = [footprint(info, first.crs).bounds for info in infos]
    minx, miny = min(b[0] for b in boxes), min(b[1] for b in boxes)
    maxx, maxy = max(b[2] for b in boxes), max(b[3] for b in boxes)
    left = x0 + math.floor((minx - x0) / xres + _EPS) * xres
    right = x0 + math.ceil((maxx - x0) / xres - _EPS) * xres
    top = y0 + math.ceil((maxy - y0) / yres - _EPS) * yres
    bottom = y0 + math.floor((miny - y0) / yres + _EPS) * yres
    width, height = round((right - left) / xres), round((top - bottom) / yres)
    return Grid(first.crs, Affine(xres, 0.0, left, 0.0, -yres, top), width, height)


def reference_grid(grid_cfg: GridConfig | None, first_infos: list[RasterInfo]) -> Grid:
    """The explicit grid if configured, else the first modality's grid."""
    return grid_from_config(grid_cfg) if grid_cfg is not None else grid_from_files(first_infos)


def footprint(info: RasterInfo, crs: CRS) -> BaseGeometry:
    """Outline of a raster in ``crs`` (edges densified so reprojected outlines stay accurate)."""
    t = np.linspace(0.0, 1.0, _FOOTPRINT_POINTS)
    w, h = info.width, info.height
    cols = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
    xs, ys = info.transform @ (cols, rows)
    _check_geographic(info)
    if info.crs != crs:
        try:
            xs, ys = transform_coords(info.crs, crs, xs, ys)
        except (RasterioError, CPLE_BaseError) as err:
            raise AlignmentError(
                f"raster file {str(info.path)!r} cannot be reprojected to {crs_to_string(crs)}: "
                f"its bounds {_fmt_bounds(info.bounds)} in {crs_to_string(info.crs)} are invalid "
                f"there ({' '.join(str(err).split())}); check the file's geotransform and CRS "
                "(gdalinfo), e.g. an origin shifted by a wrong unit or a swapped x/y"
            ) from None
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pts) < 3:
        return Polygon()
    return make_valid(Polygon(pts))


def _check_geographic(info: RasterInfo) -> None:
    """Raise AlignmentError when a lon/lat raster lies outside the globe."""
    if not info.crs.is_geographic:
        return
    left, bottom, right, top = info.bounds
    if bottom < -90 - _DEG_TOL or top > 90 + _DEG_TOL or left < -360 or right > 360:
        raise AlignmentError(
            f"raster file {str(info.path)!r} lies outside the valid coordinates of its CRS "
            f"{crs_to_string(info.crs)}: bounds {_fmt_bounds(info.bounds)}, but latitude must be "
            "within -90..90 and longitude within -180..180 (or 0..360); fix its geotransform "
            "(origin and pixel size, see gdalinfo) or its CRS"
        )


@dataclass
class SourceFile:
    """One input file of a modality, located on the reference grid."""

    info: RasterInfo
    bands: slice  # which of the modality's output bands this file supplies
    nodata: float | None  # raw nodata value used for this file
    footprint: BaseGeometry  # outline in the reference CRS


@dataclass
class ModalityPlan:
    """How one modality is read onto the reference grid."""

    config: ModalityConfig
    files: list[SourceFile]
    footprint: BaseGeometry = field(init=False)

    def __post_init__(self) -> None:
        self.footprint = union_all([f.footprint for f in self.files])
        prepare(self.footprint)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def n_bands(self) -> int:
        return len(self.config.bands)

    def read(self, grid: Grid, window: Window) -> np.ndarray:
        """Physical float32 values ``(bands, h, w)`` of this modality in ``window``."""
        out = np.full((self.n_bands, int(window.height), int(window.width)), np.nan, "float32")
        left, bottom, right, top = grid.window_bounds(window)
        mosaic = self.config.combine == "mosaic"
        for src in self.files:
            fl, fb, fr, ft = src.footprint.bounds
            if fl >= right or fr <= left or fb >= top or ft <= bottom:
                continue
            if mosaic and not np.isnan(out).any():
                break
            data = read_warped(src.info, grid, window, self.config.resampling, src.nodata)
            if mosaic:
                np.copyto(out, data, where=np.isnan(out))  # first valid value wins
            else:
                out[src.bands] = data
        return self._to_physical(out)

    def coverage(self, grid: Grid, window: Window) -> np.ndarray:
        """Boolean ``(h, w)``: pixel centres inside at least one source file."""
        shape = (int(window.height), int(window.width))
        wbox = box(*grid.window_bounds(window))
        if self.footprint.contains(wbox):
            return np.ones(shape, bool)
        if not self.footprint.intersects(wbox):
            return np.zeros(shape, bool)
        burned = rasterize(
            [(self.footprint, 1)], out_shape=shape, transform=grid.window_transform(window),
            fill=0, dtype="uint8",
        )
        return burned.astype(bool)

    def _to_physical(self, raw: np.ndarray) -> np.ndarray:
        if self.config.scale != 1.0:
            raw *= np.float32(self.config.scale)
        if self.config.offset != 0.0:
            raw += np.float32(self.config.offset)
        return raw


def plan_modality(modality: ModalityConfig, infos: list[RasterInfo], grid: Grid) -> ModalityPlan:
    """Check a modality's files (band counts, nodata, overlap) and locate them on ``grid``."""
    slices = _band_slices(modality, infos)
    files = []
    for info, bands in zip(infos, slices, strict=True):
        nodata = modality.nodata if modality.nodata is not None else info.nodata
        check_nodata(info, nodata, modality.name)
        files.append(SourceFile(info, bands, nodata, footprint(info, grid.crs)))
    plan = ModalityPlan(modality, files)
    if plan.footprint.intersection(box(*grid.bounds)).area <= 0:
        raise AlignmentError(_no_overlap_message(plan, grid))
    return plan


def _band_slices(modality: ModalityConfig, infos: list[RasterInfo]) -> list[slice]:
    """Output band slice per file; raise RasterError if band counts do not match 'bands'."""
    n = len(modality.bands)
    names = ", ".join(modality.bands)
    if modality.combine == "mosaic":
        for info in infos:
            if info.count != n:
                raise RasterError(
                    f"modality {modality.name!r}: raster file {str(info.path)!r} has "
                    f"{info.count} band(s) but 'bands' lists {n} ({names}); with combine: mosaic "
                    "every file must hold exactly these bands: fix 'bands' or 'files'"
                )
        return [slice(0, n)] * len(infos)
    total = sum(info.count for info in infos)
    if total != n:
        counts = ", ".join(f"{i.path} has {i.count}" for i in infos[:8])
        more = f" and {len(infos) - 8} more files" if len(infos) > 8 else ""
        raise RasterError(
            f"modality {modality.name!r}: combine: stack concatenates the files' bands, which "
            f"gives {total} band(s) ({counts}{more}) but 'bands' lists {n} ({names}); "
            "list one name per band of the files, in file order"
        )
    starts = np.cumsum([0] + [i.count for i in infos])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(starts)]


def _no_overlap_message(plan: ModalityPlan, grid: Grid) -> str:
    names = [str(f.info.path) for f in plan.files[:3]]
    more = f" and {len(plan.files) - 3} more" if len(plan.files) > 3 else ""
    src = _fmt_bounds(plan.footprint.bounds) if not plan.footprint.is_empty else "nothing"
    return (
        f"modality {plan.name!r} does not overlap the reference grid: its files "
        f"({', '.join(names)}{more}) cover {src} but the reference grid covers "
        f"{_fmt_bounds(grid.bounds)} (both in {grid.crs_string()}); check the files' CRS and "
        "extent, or the 'grid' section / first modality that defines the reference grid"
    )


def _fmt_bounds(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" if abs(v) < 1e3 else f"{v:.1f}" for v in bounds) + ")"

