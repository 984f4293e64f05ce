"""Reading and writing GeoTIFFs: the one place that opens raster files with rasterio.

Everything else in geofuse talks to rasters through :class:`RasterInfo`, :class:`Grid`,
:func:`read_warped` (a window of a source resampled onto a grid) and :class:`StackWriter`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.dtypes import in_dtype_range
from rasterio.enums import Resampling
from rasterio.errors import CRSError, RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geofuse.errors import ConfigError, DataNotFoundError, RasterError, write_failure
from geofuse.io_utils import atomic_path

# Error threshold of GDAL's approximate transformer, in source pixels. GDAL's default (0.125)
# makes results depend on the window layout; a tiny value gives the exact transform, so the
# stack is bit-identical whatever the block size.
_WARP_TOLERANCE = 1e-9
COG_BLOCKSIZE = 512


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: CRS, affine transform and size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def window_transform(self, window: Window) -> Affine:
        """Affine transform of a window of this grid."""
        return window_transform(window, self.transform)

    def window_bounds(self, window: Window) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of a window."""
        sub = Grid(self.crs, self.window_transform(window), int(window.width), int(window.height))
        return sub.bounds

    def windows(self, block: int) -> Iterator[Window]:
        """Yield row-major windows of at most ``block`` x ``block`` pixels covering the grid."""
        for row in range(0, self.height, block):
            for col in range(0, self.width, block):
                yield Window(col, row, min(block, self.width - col), min(block, self.height - row))

    def n_windows(self, block: int) -> int:
        return math.ceil(self.height / block) * math.ceil(self.width / block)

    def crs_string(self) -> str:
        """'EPSG:xxxx' when the CRS has an EPSG code, else its WKT."""
        return crs_to_string(self.crs)


@dataclass(frozen=True)
class RasterInfo:
    """Header of a raster file: grid, band count, data type and nodata."""

    path: Path
    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None

    @property
    def grid(self) -> Grid:
        return Grid(self.crs, self.transform, self.width, self.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.grid.bounds

    @property
    def is_north_up(self) -> bool:
        return self.transform.b == 0 and self.transform.d == 0 and self.transform.e < 0


def crs_to_string(crs: CRS) -> str:
    """'EPSG:xxxx' when the CRS has an EPSG code, else its WKT."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


def parse_crs(value: str, where: str) -> CRS:
    """Parse a user CRS string; raise ConfigError naming ``where`` if it is invalid."""
    try:
        return CRS.from_user_input(value)
    except CRSError:
        raise ConfigError(
            f"{where} = {value!r} is not a CRS rasterio understands; use e.g. 'EPSG:32634'"
        ) from None


@contextlib.contextmanager
def open_raster(path: Path, bands: Sequence[int] | None = None
                ) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster for reading (only its 1-based ``bands``, as a GDAL ``vrt://`` view, when
    given); raise DataNotFoundError/RasterError naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(
            f"raster file {str(path)!r} does not exist; fix the path in the config's 'files'"
        )
    try:
        src = rasterio.open(path if bands is None else
                            f"vrt://{path.resolve()}?bands={','.join(str(b) for b in bands)}")
    except RasterioIOError as err:
        reason = " ".join(str(err).split())
        raise RasterError(
            f"raster file {str(path)!r} cannot be read ({reason}); check that it is a complete "
            "GeoTIFF (re-download or re-export it)"
        ) from None
    with src:
        yield src


def read_info(path: Path) -> RasterInfo:
    """Read a raster's header; a raster without CRS raises RasterError with the fix."""
    with open_raster(path) as src:
        if src.crs is None:
            raise RasterError(
                f"raster file {str(path)!r} has no CRS; assign one, e.g. 'gdal_edit.py -a_srs "
                f"EPSG:32634 {path}' or 'rio edit-info --crs EPSG:32634 {path}'"
            )
        return RasterInfo(
            path=Path(path), crs=src.crs, transform=src.transform, width=src.width,
            height=src.height, count=src.count, dtype=src.dtypes[0], nodata=src.nodata,
        )


def check_nodata(info: RasterInfo, nodata: float | None, modality: str) -> None:
    """Raise ConfigError if a configured nodata value cannot occur in the file's data type."""
    if nodata is None or (isinstance(nodata, float) and math.isnan(nodata)):
        return
    if not in_dtype_range(nodata, info.dtype):
        raise ConfigError(
            f"modality {modality!r}: nodata = {nodata!r} is outside the range of {info.dtype} "
            f"in {str(info.path)!r}; set 'nodata' to a value the file can hold (or leave it out)"
        )


def read_warped(
    info: RasterInfo,
    grid: Grid,
    window: Window,
    resampling: str,
    src_nodata: float | None,
    indexes: Sequence[int] | None = None,
    dtype: str = "float32",
) -> np.ndarray:
    """Resample the bands of ``info`` (all, or the 1-based ``indexes``) onto ``window`` of
    ``grid`` with GDAL's warper.

    Returns ``(bands, height, width)`` raw values of ``dtype`` (float32; float64 keeps 32-bit
    flags exact); source nodata and pixels that the source does not cover are NaN. Only the
    part of the source under the window is read. A subset of bands is warped on its own (a
    GDAL ``vrt://`` view), because the warper calls a pixel nodata only when every band of its
    source is nodata, and a quality band beside the data never is.
    """
    subset = indexes is not None and list(indexes) != list(range(1, info.count + 1))
    path = Path(info.path)
    try:
        with open_raster(path, indexes if subset else None) as src, WarpedVRT(
            src, crs=grid.crs, transform=grid.transform, width=grid.width,
            height=grid.height, resampling=Resampling[resampling], src_nodata=src_nodata,
            nodata=np.nan, dtype=dtype, tolerance=_WARP_TOLERANCE,
        ) as vrt:
            return vrt.read(window=window, out_dtype=dtype)
    except RasterioError as err:
        reason = " ".join(str(err).split())
        raise RasterError(
            f"raster file {str(path)!r} could not be read or warped ({reason}); "
            "check that the file is complete (re-download or re-export it)"
        ) from None


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: CRS | str | None,
    transform: Affine,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
) -> Path:
    """Write a ``(bands, h, w)`` or ``(h, w)`` array as a GeoTIFF, atomically.

    Raises:
        DiskFullError, WriteAccessError, ExternalLibraryError: the write failed (one line
            naming ``path``; an existing file is left as it was).
    """
    data = data[None] if data.ndim == 2 else data
    try:
        with atomic_path(path) as tmp, rasterio.open(
            tmp, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
            count=data.shape[0], dtype=data.dtype, crs=crs, transform=transform, nodata=nodata,
        ) as dst:
            dst.write(data)
            if descriptions is not None:
                dst.descriptions = tuple(descriptions)
    except (RasterioError, CPLE_BaseError) as err:
        raise write_failure(err, path) from None
    return Path(path)


class StackWriter:
    """Windowed writer of a tiled float32 GeoTIFF with NaN nodata and band descriptions."""

    def __init__(self, path: Path, grid: Grid, band_names: Sequence[str], tile: int) -> None:
        self.path = Path(path)
        self.grid = grid
        self._ds = rasterio.open(
            self.path, "w", driver="GTiff", width=grid.width, height=grid.height,
            count=len(band_names), dtype="float32", crs=grid.crs, transform=grid.transform,
            nodata=np.nan, tiled=True, blockxsize=tile, blockysize=tile, compress="deflate",
            zlevel=1, bigtiff="IF_SAFER",
        )
        self._ds.descriptions = tuple(band_names)

    def write(self, window: Window, data: np.ndarray) -> None:
        """Write ``(bands, h, w)`` values into ``window``."""
        self._ds.write(data.astype("float32", copy=False), window=window)

    def close(self) -> None:
        self._ds.close()

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gdal_env(cache_mb: int) -> rasterio.Env:
    """GDAL settings for a prepare run: a block cache capped at ``cache_mb`` megabytes."""
    return rasterio.Env(GDAL_CACHEMAX=cache_mb * 1024 * 1024)


def write_cog(src: Path, dst: Path, overview_resampling: str = "average") -> None:
    """Copy a GeoTIFF to ``dst`` as a DEFLATE-compressed Cloud-Optimized GeoTIFF."""
    rasterio.shutil.copy(
        src, dst, driver="COG", compress="DEFLATE", predictor="YES", blocksize=COG_BLOCKSIZE,
        overview_resampling=overview_resampling, bigtiff="IF_SAFER",
    )


@dataclass(frozen=True)
class StackHeader:
    """What :func:`read_stack_header` reports about a written stack."""

    grid: Grid
    count: int
    dtype: str
    descriptions: tuple[str | None, ...]
    layout: str | None


def read_stack_header(path: Path) -> StackHeader:
    """Read grid, band count, descriptions and layout of a written stack."""
    with open_raster(path) as src:
        return StackHeader(
            grid=Grid(src.crs, src.transform, src.width, src.height), count=src.count,
            dtype=src.dtypes[0], descriptions=tuple(src.descriptions),
            layout=src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
        )
