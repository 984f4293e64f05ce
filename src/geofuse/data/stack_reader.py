"""Fast patch reader for the fused stack: geofuse's training-data path.

Memory design: a stack whose float32 size fits within ``max_memory_bytes`` is read once, block
row by block row, into one in-memory array in *pixel-interleaved* (H, W, C) order. Patches are
then gathered with fancy indexing into a zero-copy ``sliding_window_view`` of that array, in
chunks of patches that are transposed to contiguous (N, C, P, P) while still in cache; because
each patch row is one contiguous run of ``P * C`` floats, random access is cache friendly
(several times faster than per-patch Python slicing).
A larger stack is never loaded whole: patches are grouped by the ``block_size`` tile their
window starts in, and only each tile's bounding window (tile plus a ``P - 1`` halo) is read, so
memory stays below one block of ``(block_size + P - 1)**2 * C`` floats plus the output.

Centre convention: a patch of size ``P`` centred on pixel (row, col) covers rows
``row - P // 2`` to ``row - P // 2 + P - 1`` (same for columns). For odd ``P`` the centre pixel
is the middle one; for even ``P`` it is the pixel just below and right of the window's
geometric centre. Patches are never resized: they are exactly ``P`` x ``P`` pixels.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
from affine import Affine
from numpy.lib.stride_tricks import sliding_window_view
from rasterio.windows import Window
from tqdm.auto import tqdm

from geofuse.errors import DataNotFoundError, RasterError

DEFAULT_MAX_MEMORY = 2 * 1024**3
GATHER_CHUNK = 1024  # patches gathered per step; keeps the transpose in cache


def window_start(centre: np.ndarray | int, patch_size: int) -> np.ndarray | int:
    """First row (or column) of the window of ``patch_size`` pixels centred on ``centre``."""
    return centre - patch_size // 2


def centre_limits(size: int, patch_size: int) -> tuple[int, int]:
    """Inclusive (low, high) centre indices whose full window fits in ``size`` pixels.

    ``low > high`` means the raster is smaller than one patch.
    """
    return patch_size // 2, size - patch_size + patch_size // 2


def _gather(
    hwc: np.ndarray, r0: np.ndarray, c0: np.ndarray, patch_size: int, out: np.ndarray
) -> None:
    """Copy the windows starting at (r0, c0) of an (H, W, C) array into ``out`` (N, C, P, P).

    Fancy indexing a ``sliding_window_view`` yields the (N, C, P, P) patches in (N, P, P, C)
    memory order; assigning chunk by chunk transposes them while they are still in cache.
    """
    view = sliding_window_view(hwc, (patch_size, patch_size), axis=(0, 1))
    for s in range(0, len(r0), GATHER_CHUNK):
        out[s:s + GATHER_CHUNK] = view[r0[s:s + GATHER_CHUNK], c0[s:s + GATHER_CHUNK]]


class StackPatchReader:
    """Gathers (N, C, P, P) float32 patches from a fused stack (NaN marks nodata).

    Args:
        stack_path: fused GeoTIFF written by ``geofuse prepare``.
        max_memory_bytes: stacks up to this float32 size are held in memory; larger ones are
            read window by window.
        block_size: tile size (pixels) of the windowed mode and of the in-memory load.
    """

    def __init__(
        self,
        stack_path: str | Path,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY,
        block_size: int = 1024,
    ) -> None:
        path = Path(stack_path)
        if not path.is_file():
            raise DataNotFoundError(
                f"fused stack {str(path)!r} does not exist; run 'geofuse prepare -c CONFIG'"
            )
        try:
            self._ds: rasterio.DatasetReader | None = rasterio.open(path)
        except rasterio.errors.RasterioIOError as err:
            raise RasterError(
                f"cannot read fused stack {str(path)!r} ({err}); re-run 'geofuse prepare'"
            ) from None
        self.path: Path | None = path
        ds = self._ds
        self.band_names = [d or f"band_{i + 1}" for i, d in enumerate(ds.descriptions)]
        self.height, self.width, self.count = ds.height, ds.width, ds.count
        self.transform: Affine = ds.transform
        self.crs = ds.crs.to_string() if ds.crs else ""
        self.block_size = block_size
        self.in_memory = self.height * self.width * self.count * 4 <= max_memory_bytes
        self._nodata = ds.nodata
        self._array: np.ndarray | None = None

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        band_names: list[str] | None = None,
        transform: Affine | None = None,
        crs: str = "",
    ) -> StackPatchReader:
        """A reader over an in-memory (C, H, W) array, e.g. for benchmarks and tests."""
        arr = np.asarray(array, dtype=np.float32)
        if arr.ndim != 3:
            raise ValueError(f"array must be (C, H, W); got shape {arr.shape}")
        self = cls.__new__(cls)
        self.path, self._ds, self._nodata = None, None, None
        self.count, self.height, self.width = arr.shape
        self.band_names = band_names or [f"band_{i + 1}" for i in range(self.count)]
        self.transform = transform or Affine.identity()
        self.crs, self.block_size, self.in_memory = crs, 1024, True
        self._array = np.ascontiguousarray(np.moveaxis(arr, 0, -1))
        return self

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the underlying dataset and drop the in-memory array."""
        if self._ds is not None:
            self._ds.close()
            self._ds = None
        self._array = None

    def __enter__(self) -> StackPatchReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def _read_window(self, window: Window) -> np.ndarray:
        """Read all bands of ``window`` as float32 (h, w, C) with nodata turned into NaN."""
        if self._ds is None:
            raise RuntimeError("StackPatchReader is closed")
        try:
            block = self._ds.read(window=window, out_dtype=np.float32)
        except rasterio.errors.RasterioError as err:
            cause = " ".join(str(err.__cause__ or err).split())
            raise RasterError(
                f"cannot read fused stack {str(self.path)!r} at rows {window.row_off}-"
                f"{window.row_off + window.height} ({cause}); the file is damaged or "
                "incomplete: re-run 'geofuse prepare'"
            ) from None
        if self._nodata is not None and not math.isnan(self._nodata):
            block[block == np.float32(self._nodata)] = np.nan
        return np.moveaxis(block, 0, -1)

    def load(self, progress: bool = False) -> np.ndarray:
        """Read the whole stack into memory as (H, W, C) float32 (once) and return it."""
        if self._array is None:
            out = np.empty((self.height, self.width, self.count), dtype=np.float32)
            starts = range(0, self.height, self.block_size)
            for r0 in tqdm(starts, desc="reading stack", unit="block", disable=not progress):
                h = min(self.block_size, self.height - r0)
                out[r0:r0 + h] = self._read_window(Window(0, r0, self.width, h))
            self._array = out
        return self._array

    def _check_centres(self, rows: np.ndarray, cols: np.ndarray, patch_size: int) -> None:
        if rows.shape != cols.shape or rows.ndim != 1:
            raise ValueError(f"rows and cols must be 1-D of equal length; got {rows.shape}, "
                             f"{cols.shape}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1; got {patch_size}")
        rlo, rhi = centre_limits(self.height, patch_size)
        clo, chi = centre_limits(self.width, patch_size)
        bad = (rows < rlo) | (rows > rhi) | (cols < clo) | (cols > chi)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{int(bad.sum())} patch centre(s) too close to the border, e.g. row "
                f"{rows[i]}, col {cols[i]}; for patch_size {patch_size} centres must lie in rows "
                f"{rlo}..{rhi} and cols {clo}..{chi}"
            )

    def read_patches(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        patch_size: int,
        progress: bool = False,
    ) -> np.ndarray:
        """Gather patches centred on (rows, cols) as float32 (N, C, P, P), never resized.

        Raises:
            ValueError: if a window would extend past the raster (see :func:`centre_limits`).
        """
        rows = np.asarray(rows, dtype=np.int64).ravel()
        cols = np.asarray(cols, dtype=np.int64).ravel()
        self._check_centres(rows, cols, patch_size)
        r0, c0 = window_start(rows, patch_size), window_start(cols, patch_size)
        if self.in_memory:
            out = np.empty((len(r0), self.count, patch_size, patch_size), dtype=np.float32)
            _gather(self.load(progress), r0, c0, patch_size, out)
            return out
        return self._read_windowed(r0, c0, patch_size, progress)

    def _read_windowed(
        self, r0: np.ndarray, c0: np.ndarray, patch_size: int, progress: bool
    ) -> np.ndarray:
        """Read only the bounding window of each tile that holds patch windows."""
        out = np.empty((len(r0), self.count, patch_size, patch_size), dtype=np.float32)
        bs = self.block_size
        tile = (r0 // bs) * ((self.width // bs) + 1) + (c0 // bs)
        order = np.argsort(tile, kind="stable")
        bounds = np.flatnonzero(np.diff(tile[order])) + 1
        groups = np.split(order, bounds)
        for idx in tqdm(groups, desc="reading patches", unit="tile", disable=not progress):
            if len(idx) == 0:
                continue
            wr, wc = int(r0[idx].min()), int(c0[idx].min())
            h = int(r0[idx].max()) - wr + patch_size
            w = int(c0[idx].max()) - wc + patch_size
            block = self._read_window(Window(wc, wr, w, h))
            part = np.empty((len(idx), self.count, patch_size, patch_size), dtype=np.float32)
            _gather(block, r0[idx] - wr, c0[idx] - wc, patch_size, part)
            out[idx] = part
        return out

    # -- random sampling (benchmarks, smoke tests) ----------------------------------------------
    def random_centres(
        self, n: int, patch_size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` uniformly random centres (rows, cols) whose full window lies in the raster."""
        rlo, rhi = centre_limits(self.height, patch_size)
        clo, chi = centre_limits(self.width, patch_size)
        if rlo > rhi or clo > chi:
            raise ValueError(
                f"raster of {self.height}x{self.width} pixels is smaller than one "
                f"{patch_size}x{patch_size} patch"
            )
        return rng.integers(rlo, rhi + 1, n), rng.integers(clo, chi + 1, n)

    def sample_random(self, n: int, patch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` random patches (N, C, P, P); the benchmark's unit of work."""
        rows, cols = self.random_centres(n, patch_size, rng)
        return self.read_patches(rows, cols, patch_size)

    def pixel_centre_coords(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Map (x, y) of the centres of pixels (rows, cols) as float64 (N, 2)."""
        xs, ys = self.transform @ (np.asarray(cols) + 0.5, np.asarray(rows) + 0.5)
        return np.column_stack([np.asarray(xs, dtype=np.float64), np.asarray(ys, np.float64)])
