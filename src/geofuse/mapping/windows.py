"""The window grid of a scene map: output windows, stride cells, patch halos, blending weights.

Two layouts, one per kind of model:

- **Patch classifiers** (a class per patch) map the centres of a stride grid anchored at the
  scene origin: stride cell ``(i, j)`` covers rows ``i*s .. i*s+s-1`` and columns ``j*s ..
  j*s+s-1``; its patch is centred on the cell's middle pixel ``(i*s + s//2, j*s + s//2)`` with
  extract's centre convention (the patch covers rows ``centre - P//2 .. centre - P//2 + P - 1``,
  :func:`geofuse.data.stack_reader.window_start`), and the cell's class fills the cell. Output
  windows are whole numbers of cells (the tile size rounded up to a multiple of the stride and
  of 16), so a cell never straddles two windows; a window is read with a halo of ``P//2``
  pixels before and ``P - P//2 - 1`` after the centres it holds.
- **Dense models** (a class per pixel) run on square model tiles of ``T`` pixels laid on a
  global grid with a hop of ``T/2`` (tile starts ``-T/2, 0, T/2, T, ...`` on both axes), so
  every pixel lies in exactly 2 x 2 tiles. Each tile's probabilities are weighted by a
  separable raised-cosine window ``sin^2(pi (i + 0.5) / T)``, whose shifts by ``T/2`` sum to
  one: seams fade smoothly and the map does not depend on where output windows fall. An output
  window (a multiple of the hop, aligned on it) computes the tiles that touch it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Output window side of dense models: the hop times this many at least (bounds the share of
#: tiles computed twice, once for each neighbouring window, to ((n + 1) / n)^2).
DENSE_WINDOW_HOPS = 4
#: Output windows of dense models are at least this many pixels wide.
DENSE_WINDOW_MIN = 512


@dataclass(frozen=True)
class MapWindow:
    """One output window of the scene: its index in the grid and pixel extent."""

    index: int
    row: int
    col: int
    height: int
    width: int

    def to_dict(self) -> dict[str, int]:
        """Plain-data form (sent to worker processes)."""
        return {"index": self.index, "row": self.row, "col": self.col,
                "height": self.height, "width": self.width}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> MapWindow:
        return cls(int(data["index"]), int(data["row"]), int(data["col"]),
                   int(data["height"]), int(data["width"]))


def scene_windows(height: int, width: int, size: int) -> list[MapWindow]:
    """Row-major windows of at most ``size`` x ``size`` pixels covering a scene."""
    out = []
    for row in range(0, height, size):
        for col in range(0, width, size):
            out.append(MapWindow(len(out), row, col, min(size, height - row),
                                 min(size, width - col)))
    return out


def patch_window_size(tile_size: int, stride: int) -> int:
    """Output window side of a patch classifier: ``tile_size`` rounded up to whole cells and
    to whole 16 px GeoTIFF blocks (a multiple of ``lcm(stride, 16)``)."""
    unit = math.lcm(stride, 16)
    return math.ceil(max(tile_size, 1) / unit) * unit


def dense_tile_size(tile_size: int) -> int:
    """Model tile side of a dense model: ``tile_size`` rounded up to a multiple of 16."""
    return max(16, math.ceil(tile_size / 16) * 16)


def dense_window_size(tile: int) -> int:
    """Output window side of a dense model: an even number of hops ``tile / 2`` (so a
    multiple of 16), at least :data:`DENSE_WINDOW_HOPS` hops and :data:`DENSE_WINDOW_MIN`
    pixels."""
    hop = tile // 2
    hops = max(DENSE_WINDOW_HOPS, math.ceil(DENSE_WINDOW_MIN / hop))
    return hop * (hops + hops % 2)


def block_size(window: int, largest: int = 1024) -> int:
    """GeoTIFF block side of the partial products: the largest multiple of 16 that divides
    the window side (a multiple of 16) and is at most ``largest``, so that every window
    writes whole blocks and no block is written twice; 256 when that would be under 128 px
    (tiny blocks cost more than the occasional block written twice)."""
    units = window // 16
    best = 16 * max(d for d in range(1, min(units, largest // 16) + 1) if units % d == 0)
    return best if best >= min(128, window) else 256


def cell_centres(start: int, length: int, stride: int) -> np.ndarray:
    """Centre rows (or columns) of the stride cells in ``start .. start + length - 1``.

    ``start`` is a multiple of ``stride``; the centre of the cell starting at ``c`` is
    ``c + stride // 2`` (it may lie past the scene for a last, partial cell: that cell's patch
    leaves the scene and it becomes nodata).
    """
    return np.arange(start, start + length, stride, dtype=np.int64) + stride // 2


def patch_halo(patch_size: int) -> tuple[int, int]:
    """Pixels a patch reaches before and after its centre: ``(P // 2, P - P // 2 - 1)``."""
    return patch_size // 2, patch_size - patch_size // 2 - 1


def box_share(mask: np.ndarray, size: int) -> np.ndarray:
    """Share of true pixels of every ``size`` x ``size`` box of a 2-D mask, by the box's
    top-left corner: shape ``(H - size + 1, W - size + 1)`` (an integral image, no loop)."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=integral[1:, 1:])
    total = (integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size]
             + integral[:-size, :-size])
    return total / float(size * size)


def expand_cells(values: np.ndarray, stride: int, height: int, width: int) -> np.ndarray:
    """Per-cell values (..., n_rows, n_cols) repeated over their ``stride`` x ``stride`` cells
    and cropped to ``height`` x ``width`` pixels."""
    if stride == 1:
        return values[..., :height, :width]
    out = np.repeat(np.repeat(values, stride, axis=-2), stride, axis=-1)
    return out[..., :height, :width]


def blend_weights(tile: int) -> np.ndarray:
    """Separable raised-cosine weights (tile, tile), float32: ``sin^2(pi (i + 0.5) / tile)``
    per axis; shifted by ``tile / 2`` they sum to one on both axes."""
    w = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    return np.outer(w, w).astype(np.float32)


def dense_tile_starts(start: int, stop: int, tile: int) -> np.ndarray:
    """Starts of the global model tiles (hop ``tile / 2``) that touch ``start .. stop - 1``;
    ``start`` is a multiple of the hop."""
    hop = tile // 2
    return np.arange(start - hop, stop, hop, dtype=np.int64)
