"""The stack a map is made from: its header, the checks against a run, and windowed reads.

A stack is any GeoTIFF whose bands are named (band descriptions, or the ``stack.json``
manifest ``geofuse prepare`` writes beside it). The run decides which bands are read and in
which order; a missing band, another CRS or another pixel size than the run was trained on is a
one-line error naming what differs. Windows are read with a halo and padded with NaN where they
leave the scene; the file's nodata value becomes NaN too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geofuse.errors import AlignmentError, BandError, RasterError
from geofuse.raster.io import Grid, crs_to_string, open_raster
from geofuse.raster.manifest import StackManifest, manifest_path

#: Rows read at once when the whole stack is scanned (scene statistics).
SCAN_ROWS = 256


@dataclass(frozen=True)
class StackInfo:
    """Header of a stack: path, grid, band names and nodata value."""

    path: Path
    grid: Grid
    bands: list[str]
    nodata: float | None

    def indexes(self, bands: list[str]) -> list[int]:
        """1-based band indexes of ``bands`` in the stack (all present: see
        :func:`check_stack`)."""
        where = {b: i + 1 for i, b in enumerate(self.bands)}
        return [where[b] for b in bands]


@dataclass(frozen=True)
class GridReference:
    """What the run was trained on: CRS and pixel size (either may be unknown)."""

    crs: str | None
    pixel_size: tuple[float, float] | None
    source: str  # where it was read, for messages


def read_stack_info(path: str | Path) -> StackInfo:
    """Header of a stack; band names from its descriptions, else from its manifest.

    Raises:
        DataNotFoundError: the file does not exist.
        RasterError: unreadable, no CRS, or unnamed bands without a manifest.
    """
    path = Path(path)
    with open_raster(path) as src:
        if src.crs is None:
            raise RasterError(f"stack {str(path)!r} has no CRS; write it with 'geofuse "
                              "prepare' or assign one (gdal_edit.py -a_srs EPSG:XXXX)")
        grid = Grid(src.crs, src.transform, src.width, src.height)
        names = list(src.descriptions)
        nodata = src.nodata
        count = src.count
    if not all(names):
        man = manifest_path(path)
        if not man.is_file():
            raise RasterError(
                f"stack {str(path)!r} has unnamed bands and no manifest {man.name!r}; map a "
                "stack written by 'geofuse prepare' (its bands carry their names)")
        names = StackManifest.load(man).bands
        if len(names) != count:
            raise RasterError(f"stack {str(path)!r} has {count} bands, its manifest "
                              f"{man.name!r} names {len(names)}; re-run 'geofuse prepare'")
    return StackInfo(path=path, grid=grid, bands=[str(n) for n in names], nodata=nodata)


def _pixel_size(grid: Grid) -> tuple[float, float]:
    t = grid.transform
    return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))


_FIXES = {
    "stack": {"band": "map a stack prepared with the run's modalities ('geofuse prepare -c' the "
                      "run's config.yaml)",
              "crs": "prepare the stack on the run's grid ('geofuse prepare' with the run's grid "
                     "section)",
              "pixel": "resample the stack to the run's resolution ('geofuse prepare' with "
                       "grid.resolution)"},
    "config": {"band": "add the modality holding them to the config's modalities, or map a "
                       "stack that has them (--stack)",
               "crs": "set the config's grid.crs (or its first modality) to the run's CRS",
               "pixel": "set the config's grid.resolution to the run's pixel size"},
}


def check_stack(stack: StackInfo, bands: list[str], reference: GridReference | None,
                what: str, kind: str = "stack") -> None:
    """Raise a one-line error when the scene ``stack`` (``kind``: a fused ``stack``, or the
    reference grid and bands of a study ``config``) cannot feed the model(s) of ``what``.

    Raises:
        BandError: a band the run was trained on is not in the scene.
        AlignmentError: another CRS, another pixel size, or a rotated grid.
    """
    fix = _FIXES[kind]
    name = f"{kind} {str(stack.path)!r}"
    missing = [b for b in bands if b not in stack.bands]
    if missing:
        raise BandError(
            f"{name} lacks band(s) {missing} that {what} was trained on (it has "
            f"{stack.bands}); {fix['band']}")
    t = stack.grid.transform
    if t.b != 0 or t.d != 0:
        raise AlignmentError(f"{name} has a rotated geotransform; reproject it north-up "
                             "('geofuse prepare' does)")
    if reference is None:
        return
    if reference.crs is not None:
        ref = CRS.from_user_input(reference.crs)
        if ref != stack.grid.crs:
            raise AlignmentError(
                f"{name} is in {crs_to_string(stack.grid.crs)}, {what} was trained on data "
                f"in {crs_to_string(ref)} ({reference.source}); {fix['crs']}")
    if reference.pixel_size is not None:
        have, want = _pixel_size(stack.grid), reference.pixel_size
        if not all(math.isclose(h, w, rel_tol=1e-6) for h, w in zip(have, want, strict=True)):
            raise AlignmentError(
                f"{name} has {have[0]:g} x {have[1]:g} pixels, {what} was trained on "
                f"{want[0]:g} x {want[1]:g} pixels ({reference.source}); {fix['pixel']}")


class StackSource:
    """Reads windows of some bands of a stack as float32 with NaN for nodata and outside."""

    def __init__(self, info: StackInfo, bands: list[str]) -> None:
        self.info = info
        self.bands = list(bands)
        self._indexes = info.indexes(self.bands)
        self._ctx = open_raster(info.path)
        self._src = self._ctx.__enter__()

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Bands (C, height, width) of the window at ``(row, col)``; the part outside the
        scene is NaN."""
        out = np.full((len(self._indexes), height, width), np.nan, dtype=np.float32)
        grid = self.info.grid
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, grid.height), min(col + width, grid.width)
        if r1 <= r0 or c1 <= c0:
            return out
        try:
            block = self._src.read(self._indexes, window=Window(c0, r0, c1 - c0, r1 - r0),
                                   out_dtype="float32")
        except RasterioError as err:
            reason = " ".join(str(err).split())
            raise RasterError(f"cannot read stack {str(self.info.path)!r} at rows {r0}-{r1} "
                              f"({reason}); the file is damaged: re-run 'geofuse prepare'"
                              ) from None
        nodata = self.info.nodata
        if nodata is not None and not math.isnan(nodata):
            block[block == np.float32(nodata)] = np.nan
        out[:, r0 - row:r1 - row, c0 - col:c1 - col] = block
        return out

    def close(self) -> None:
        self._ctx.__exit__(None, None, None)

    def __enter__(self) -> StackSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def band_moments(source: Any) -> dict[str, list[float]]:
    """Count, sum and sum of squares of the valid values of each band of ``source`` (a
    :class:`StackSource` or :class:`~geofuse.mapping.scene.SceneSource`) over the whole scene,
    read strip by strip (for ``train.normalization: test_area``: the mapped area's own
    statistics)."""
    bands, grid = list(source.bands), source.info.grid
    count = np.zeros(len(bands))
    total = np.zeros(len(bands))
    squares = np.zeros(len(bands))
    for row in range(0, grid.height, SCAN_ROWS):
        h = min(SCAN_ROWS, grid.height - row)
        block = source.read(row, 0, h, grid.width).reshape(len(bands), -1).astype(np.float64)
        valid = np.isfinite(block)
        values = np.where(valid, block, 0.0)
        count += valid.sum(axis=1)
        total += values.sum(axis=1)
        squares += (values ** 2).sum(axis=1)
    return {"bands": bands, "count": count.tolist(), "sum": total.tolist(),
            "sumsq": squares.tolist()}
