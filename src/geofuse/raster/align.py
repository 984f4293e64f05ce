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
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from geofuse.raster.composite import clear_observations, composite
from geofuse.raster.io import (
    Grid,
    RasterInfo,
    check_nodata,
    crs_to_string,
    parse_crs,
    read_warped,
)
from geofuse.raster.masks import MaskRule, MaskSource, invalid_pixels, rule_of

_EPS = 1e-6  # tolerance, in pixels, when snapping bounds to a pixel grid
_FOOTPRINT_POINTS = 21  # points per edge when a footprint is reprojected
_DEG_TOL = 1e-6  # degrees a lon/lat raster may reach past the poles (rounding of its edges)
#: Bytes of acquisitions a composite holds at once; larger windows are read in row strips.
COMPOSITE_BUDGET = 192 * 2**20


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
    indexes: list[int] | None = None  # 1-based data bands to read (None: all)
    mask: MaskSource | None = None  # where this file's quality flags are


@dataclass
class WindowObservations:
    """What the masks removed in one window: covered and flagged acquisition pixels, and for a
    composite the number of clear acquisitions per pixel."""

    seen: int = 0
    flagged: int = 0
    clear: np.ndarray | None = None


@dataclass
class ModalityPlan:
    """How one modality is read onto the reference grid."""

    config: ModalityConfig
    files: list[SourceFile]
    footprint: BaseGeometry = field(init=False)
    rule: MaskRule | None = field(init=False)

    def __post_init__(self) -> None:
        self.footprint = union_all([f.footprint for f in self.files])
        prepare(self.footprint)
        m = self.config.mask
        self.rule = None if m is None else rule_of(m.preset, m.invalid_values, m.invalid_bits,
                                                   m.threshold)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def n_bands(self) -> int:
        return len(self.config.bands)

    def read(self, grid: Grid, window: Window) -> np.ndarray:
        """Physical float32 values ``(bands, h, w)`` of this modality in ``window``."""
        return self.read_observed(grid, window)[0]

    def read_observed(self, grid: Grid, window: Window) -> tuple[np.ndarray, WindowObservations]:
        """:meth:`read`, with what the masks removed (for the QC report)."""
        if self.config.composite:
            return self._read_composite(grid, window)
        out = np.full((self.n_bands, int(window.height), int(window.width)), np.nan, "float32")
        mosaic = self.config.combine == "mosaic"
        seen = flagged = 0
        for src in self._overlapping(grid, window):
            if mosaic and not np.isnan(out).any():
                break
            data, s, f = self._read_file(src, grid, window)
            seen, flagged = seen + s, flagged + f
            if mosaic:
                np.copyto(out, data, where=np.isnan(out))  # first valid value wins
            else:
                out[src.bands] = data
        return self._to_physical(out), WindowObservations(seen, flagged)

    def _overlapping(self, grid: Grid, window: Window) -> Iterator[SourceFile]:
        left, bottom, right, top = grid.window_bounds(window)
        for src in self.files:
            fl, fb, fr, ft = src.footprint.bounds
            if not (fl >= right or fr <= left or fb >= top or ft <= bottom):
                yield src

    def _invalid(self, src: SourceFile, grid: Grid, window: Window) -> np.ndarray | None:
        """Flagged pixels of one file on ``window`` (``None``: the file has no mask)."""
        if src.mask is None or self.rule is None or self.config.mask is None:
            return None
        return invalid_pixels(src.mask, self.rule, grid, window, self.config.mask.buffer)

    def _read_file(self, src: SourceFile, grid: Grid, window: Window,
                   invalid: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
        """Raw values of one file with its flagged pixels NaN (``invalid``, read when not
        given); covered and flagged pixels."""
        data = read_warped(src.info, grid, window, self.config.resampling, src.nodata,
                           src.indexes)
        if invalid is None:
            invalid = self._invalid(src, grid, window)
        if invalid is None:
            return data, 0, 0
        seen = np.isfinite(data).any(axis=0)
        data[:, invalid] = np.nan
        return data, int(seen.sum()), int((invalid & seen).sum())

    def _read_composite(self, grid: Grid, window: Window
                        ) -> tuple[np.ndarray, WindowObservations]:
        """Composite of the acquisitions, in row strips that keep them within the budget."""
        h, w = int(window.height), int(window.width)
        sources = list(self._overlapping(grid, window))
        per_row = max(1, len(sources)) * self.n_bands * w * 4 * 3  # nanmedian copies twice
        strip = max(1, min(h, COMPOSITE_BUDGET // per_row))
        out = np.full((self.n_bands, h, w), np.nan, "float32")
        clear = np.zeros((h, w), np.int64)
        seen = flagged = 0
        invalid = [self._invalid(src, grid, window) for src in sources]  # once per window
        for r0 in range(0, h, strip):
            part = Window(window.col_off, window.row_off + r0, w, min(strip, h - r0))
            rows = slice(r0, r0 + int(part.height))
            obs = np.full((len(sources), self.n_bands, int(part.height), w), np.nan, "float32")
            for i, src in enumerate(sources):
                flags = invalid[i]
                obs[i], s, f = self._read_file(src, grid, part,
                                               None if flags is None else flags[rows])
                seen, flagged = seen + s, flagged + f
            obs = self._to_physical(obs)
            clear[r0 : r0 + int(part.height)] = clear_observations(obs)
            out[:, r0 : r0 + int(part.height)] = composite(
                obs, self.config.combine, self.config.bands, self.config.sensor)
        return out, WindowObservations(seen, flagged, clear)

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


def plan_modality(
    modality: ModalityConfig, infos: list[RasterInfo], grid: Grid,
    mask_infos: list[RasterInfo] | None = None,
) -> ModalityPlan:
    """Check a modality's files (band counts, nodata, overlap, masks) and locate them on
    ``grid``; ``mask_infos`` are its ``mask.files``, one per data file."""
    in_file = modality.mask is not None and not modality.mask.files
    slices = _band_slices(modality, infos, extra=1 if in_file else 0)
    masks = _mask_sources(modality, infos, mask_infos, grid)
    files = []
    for info, bands, mask in zip(infos, slices, masks, strict=True):
        nodata = modality.nodata if modality.nodata is not None else info.nodata
        check_nodata(info, nodata, modality.name)
        indexes = None
        if in_file and modality.mask is not None and modality.mask.band is not None:
            indexes = [b for b in range(1, info.count + 1) if b != modality.mask.band]
        files.append(SourceFile(info, bands, nodata, footprint(info, grid.crs), indexes, mask))
    plan = ModalityPlan(modality, files)
    if plan.footprint.intersection(box(*grid.bounds)).area <= 0:
        raise AlignmentError(_no_overlap_message(plan, grid))
    return plan


def _mask_sources(
    modality: ModalityConfig, infos: list[RasterInfo], mask_infos: list[RasterInfo] | None,
    grid: Grid,
) -> list[MaskSource | None]:
    """Where each data file's flags are; raise RasterError on a missing band or a mispairing."""
    m = modality.mask
    if m is None:
        return [None] * len(infos)
    if not m.files:
        band = int(m.band or 1)
        for info in infos:
            if band > info.count:
                raise RasterError(
                    f"modality {modality.name!r}: mask.band = {band} but raster file "
                    f"{str(info.path)!r} has {info.count} band(s); give the band that holds "
                    "the quality flags (1-based), or mask.files"
                )
        return [MaskSource(info, band) for info in infos]
    mask_infos = mask_infos or []
    if len(mask_infos) != len(infos):
        raise RasterError(
            f"modality {modality.name!r}: mask.files gives {len(mask_infos)} file(s) but "
            f"'files' gives {len(infos)}; give one mask raster per data file (paired by the "
            "date in their names, else by name order)"
        )
    band = int(m.band or 1)
    out: list[MaskSource | None] = []
    for info, mask in zip(infos, pair_masks(modality.name, infos, mask_infos), strict=True):
        if band > mask.count:
            raise RasterError(
                f"modality {modality.name!r}: mask.band = {band} but mask file "
                f"{str(mask.path)!r} has {mask.count} band(s); set mask.band to the band of "
                "the flags (1-based)"
            )
        _check_same_extent(modality.name, info, mask, grid)
        out.append(MaskSource(mask, band))
    return out


_DATE = re.compile(r"(?<!\d)(\d{4})[-_]?(0[1-9]|1[0-2])[-_]?(0[1-9]|[12]\d|3[01])(?!\d)")


def _date_of(path: Any) -> str | None:
    found = _DATE.search(Path(path).name)
    return "".join(found.groups()) if found else None


def pair_masks(name: str, infos: list[RasterInfo], masks: list[RasterInfo]) -> list[RasterInfo]:
    """The mask file of each data file: the one with the same date in its name (YYYYMMDD or
    YYYY-MM-DD) when every name has a distinct date, else the one at the same place in name
    order. Raises RasterError when a dated data file has no mask of its date."""
    data_dates = [_date_of(i.path) for i in infos]
    mask_dates = [_date_of(m.path) for m in masks]
    dated = (None not in data_dates and None not in mask_dates
             and len(set(data_dates)) == len(infos) and len(set(mask_dates)) == len(masks))
    if dated:
        by_date = dict(zip(mask_dates, masks, strict=True))
        for info, date in zip(infos, data_dates, strict=True):
            if date not in by_date:
                raise RasterError(
                    f"modality {name!r}: data file {str(info.path)!r} is dated {date} but no "
                    f"mask file is (mask.files dates: {sorted(by_date)[:6]}); give the mask "
                    "of every acquisition"
                )
        return [by_date[d] for d in data_dates]
    order = sorted(range(len(infos)), key=lambda i: Path(infos[i].path).name)
    by_name = sorted(masks, key=lambda m: Path(m.path).name)
    out: list[RasterInfo] = [masks[0]] * len(infos)
    for i, mask in zip(order, by_name, strict=True):
        out[i] = mask
    return out


def _check_same_extent(name: str, info: RasterInfo, mask: RasterInfo, grid: Grid) -> None:
    """A data file and its mask cover the same ground (within a pixel of either)."""
    a, b = footprint(info, grid.crs).bounds, footprint(mask, grid.crs).bounds
    if not a or not b:
        raise AlignmentError(f"modality {name!r}: {str(info.path)!r} or its mask file "
                             f"{str(mask.path)!r} has no footprint on the reference grid")
    # a pixel of either, in reference units
    tol = 1.01 * max((a[2] - a[0]) / info.width, (b[2] - b[0]) / mask.width, grid.transform.a)
    if max(abs(x - y) for x, y in zip(a, b, strict=True)) > tol:
        raise RasterError(
            f"modality {name!r}: mask file {str(mask.path)!r} covers {_fmt_bounds(b)} but its "
            f"data file {str(info.path)!r} covers {_fmt_bounds(a)} (in {grid.crs_string()}); "
            "each mask must cover its own acquisition (paired by the date in the names, else "
            "by name order): check mask.files"
        )


def _band_slices(modality: ModalityConfig, infos: list[RasterInfo], extra: int = 0
                 ) -> list[slice]:
    """Output band slice per file; raise RasterError if band counts do not match 'bands'.

    ``extra``: bands of each file that are not data (a quality band named by ``mask.band``).
    """
    n = len(modality.bands)
    names = ", ".join(modality.bands)
    flag = " plus the mask band" if extra else ""
    if modality.combine != "stack":
        for info in infos:
            if info.count != n + extra:
                raise RasterError(
                    f"modality {modality.name!r}: raster file {str(info.path)!r} has "
                    f"{info.count} band(s) but 'bands' lists {n} ({names}){flag}; with combine: "
                    f"{modality.combine} every file must hold exactly these bands: fix 'bands' "
                    "or 'files'"
                )
        return [slice(0, n)] * len(infos)
    counts = [info.count - extra for info in infos]
    total = sum(counts)
    if total != n:
        listed = ", ".join(f"{i.path} has {i.count}" for i in infos[:8])
        more = f" and {len(infos) - 8} more files" if len(infos) > 8 else ""
        raise RasterError(
            f"modality {modality.name!r}: combine: stack concatenates the files' bands, which "
            f"gives {total} band(s){' besides the mask bands' if extra else ''} ({listed}{more}) "
            f"but 'bands' lists {n} ({names}); list one name per band of the files, in file order"
        )
    starts = np.cumsum([0, *counts])
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

