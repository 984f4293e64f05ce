"""Segmentation tiles: masks cut from a label raster or label polygons on a regular tile grid.

The stack is cut into non-overlapping tiles of ``patch_size`` px starting at its top-left
corner; a tile is a candidate when at least ``min_labelled`` of its pixels carry a class.
Each candidate's stratum is its dominant class; a seeded random pool of at most
:data:`~geofuse.labels.raster_labels.POOL_FACTOR` x cap candidates is kept per stratum (memory
stays bounded whatever the scene size) and up to ``per_class`` tiles per stratum are kept.
Labels are read chunk by chunk (label rasters warped onto the stack grid with nearest
resampling; polygons burnt in chunk by chunk), twice: once to choose the tiles, once to cut
their masks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from shapely import STRtree, box
from shapely.geometry.base import BaseGeometry

from geofuse.data.patchset import MASK_IGNORE
from geofuse.errors import SamplingError
from geofuse.labels.raster_labels import (
    POOL_FACTOR,
    READ_BLOCK,
    _keep_smallest,
    open_label_raster,
)
from geofuse.raster.io import Grid, read_warped

#: Reads the class codes (int64, ``unlabelled`` where no class) of a window of the stack grid.
CodeReader = Callable[[Window], np.ndarray]


@dataclass(frozen=True)
class TileSampling:
    """Tile options (from the ``extract`` and ``labels`` sections)."""

    patch_size: int
    per_class: int
    min_labelled: float
    unlabelled: int
    seed: int
    class_codes: dict[str, int] | None = None


@dataclass
class LabelTiles:
    """Chosen tiles: top-left stack rows/cols; masks (index into ``mask_names``, 255 =
    unlabelled); what the sampling found."""

    rows: np.ndarray
    cols: np.ndarray
    masks: np.ndarray
    mask_names: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


def raster_code_reader(path: Path, grid: Grid) -> CodeReader:
    """Codes of the label raster at ``path`` warped (nearest) onto windows of ``grid``;
    its nodata and pixels it does not cover read as ``-1`` (never a class code here)."""
    info = open_label_raster(path, grid)

    def read(win: Window) -> np.ndarray:
        codes = read_warped(info, grid, win, "nearest", info.nodata)[0]
        return np.where(np.isnan(codes), -1, codes).astype(np.int64)

    return read


def polygon_code_reader(geometries: list[BaseGeometry], y: np.ndarray, grid: Grid) -> CodeReader:
    """Class index + 1 of the polygon covering each pixel (0 = none; a later polygon wins
    where two overlap), burnt onto windows of ``grid``."""
    tree = STRtree(geometries)

    def read(win: Window) -> np.ndarray:
        transform = window_transform(win, grid.transform)
        h, w = int(win.height), int(win.width)
        left, top = transform.c, transform.f
        right, bottom = left + w * transform.a, top + h * transform.e
        hits = sorted(tree.query(box(min(left, right), min(top, bottom),
                                     max(left, right), max(top, bottom))).tolist())
        if not hits:
            return np.zeros((h, w), dtype=np.int64)
        shapes = [(geometries[i], int(y[i]) + 1) for i in hits]
        return rasterize(shapes, out_shape=(h, w), transform=transform, fill=0,
                         dtype="int32").astype(np.int64)

    return read


def _chunks(grid: Grid, tile: int) -> Iterator[Window]:
    """Windows of whole tiles (a multiple of ``tile`` px) covering the tile grid."""
    step = tile * max(1, READ_BLOCK // tile)
    height, width = (grid.height // tile) * tile, (grid.width // tile) * tile
    for row in range(0, height, step):
        for col in range(0, width, step):
            yield Window(col, row, min(step, width - col), min(step, height - row))


def _as_tiles(codes: np.ndarray, tile: int) -> np.ndarray:
    """(h, w) codes of a chunk -> (n_tiles, tile * tile), row-major over the chunk's tiles."""
    h, w = codes.shape
    return (codes.reshape(h // tile, tile, w // tile, tile).transpose(0, 2, 1, 3)
            .reshape(-1, tile * tile))


def _tile_origins(win: Window, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left rows and cols of the tiles of ``win``, in :func:`_as_tiles` order."""
    rows = np.arange(int(win.height) // tile) * tile + int(win.row_off)
    cols = np.arange(int(win.width) // tile) * tile + int(win.col_off)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return rr.ravel(), cc.ravel()


def _dominant(tiles: np.ndarray, labelled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per tile: labelled pixel count and most frequent labelled code (-1 when none)."""
    n = len(tiles)
    codes, inverse = np.unique(np.where(labelled, tiles, -1), return_inverse=True)
    counts = np.bincount(np.arange(n).repeat(tiles.shape[1]) * len(codes) + inverse.ravel(),
                         minlength=n * len(codes)).reshape(n, len(codes))
    if codes[0] == -1:
        counts[:, 0] = 0
    return counts.sum(axis=1), np.where(counts.max(axis=1) > 0, codes[counts.argmax(axis=1)], -1)


def _valid_codes(codes: np.ndarray, opts: TileSampling) -> np.ndarray:
    """Which pixels carry a class: not unlabelled, not nodata, a configured code if any."""
    ok = (codes != opts.unlabelled) & (codes >= 0)
    if opts.class_codes is not None:
        ok &= np.isin(codes, list(opts.class_codes.values()))
    return ok


def _candidate_pools(
    read: CodeReader, grid: Grid, opts: TileSampling
) -> tuple[dict[int, tuple[np.ndarray, ...]], dict[int, int], int]:
    """Per dominant code a bounded random pool (keys, rows, cols) of tiles with enough
    labelled pixels; labelled pixels per code; tiles on the grid."""
    tile, size = opts.patch_size, POOL_FACTOR * opts.per_class
    need = max(1, int(np.ceil(opts.min_labelled * tile * tile)))
    pool: dict[int, tuple[np.ndarray, ...]] = {}
    found: dict[int, int] = {}
    n_tiles = 0
    for i, win in enumerate(_chunks(grid, tile)):
        codes = read(win)
        ok = _valid_codes(codes, opts)
        for code, n in zip(*np.unique(codes[ok], return_counts=True), strict=True):
            found[int(code)] = found.get(int(code), 0) + int(n)
        count, dominant = _dominant(_as_tiles(codes, tile), _as_tiles(ok, tile))
        rows, cols = _tile_origins(win, tile)
        n_tiles += len(rows)
        keys = np.random.default_rng([opts.seed % 2**63, i]).random(len(rows))
        enough = count >= need
        for code in np.unique(dominant[enough]).tolist():
            sel = enough & (dominant == code)
            _keep_smallest(pool, int(code), keys[sel], rows[sel], cols[sel], size)
    return pool, found, n_tiles


def chosen_tiles(read: Callable[[Window], np.ndarray], grid: Grid, rows: np.ndarray,
                 cols: np.ndarray, tile: int) -> Iterator[tuple[int, np.ndarray]]:
    """(index into ``rows``/``cols``, flat pixels (tile * tile,)) of each chosen tile, read
    chunk by chunk; chunks without a chosen tile are not read."""
    wanted = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(rows, cols, strict=True))}
    for win in _chunks(grid, tile):
        r0, c0 = _tile_origins(win, tile)
        hit = [(j, wanted[(int(r), int(c))]) for j, (r, c) in enumerate(zip(r0, c0, strict=True))
               if (int(r), int(c)) in wanted]
        if not hit:
            continue
        pixels = _as_tiles(read(win), tile)
        for j, i in hit:
            yield i, pixels[j]


def _cut_masks(read: CodeReader, grid: Grid, rows: np.ndarray, cols: np.ndarray,
               classes: dict[str, int], opts: TileSampling) -> np.ndarray:
    """Masks (class index, :data:`MASK_IGNORE` elsewhere) of the chosen tiles."""
    tile = opts.patch_size
    lookup = {code: k for k, code in enumerate(classes.values())}
    masks = np.full((len(rows), tile, tile), MASK_IGNORE, dtype=np.uint8)
    for i, codes in chosen_tiles(read, grid, rows, cols, tile):
        flat = np.full(tile * tile, MASK_IGNORE, dtype=np.uint8)
        for code, k in lookup.items():
            flat[codes == code] = k
        masks[i] = flat.reshape(tile, tile)
    return masks


def _present_classes(found: dict[int, int], opts: TileSampling, source: str) -> dict[str, int]:
    """Class name -> code of the classes with labelled pixels over the stack (warns for the
    configured classes without any)."""
    if opts.class_codes is None:
        return {f"class_{c}": c for c in sorted(found)}
    absent = [n for n, c in opts.class_codes.items() if c not in found]
    if absent:
        warnings.warn(f"labels {source!r}: no labelled pixel of class(es) {absent} over the "
                      "stack; these classes are left out", UserWarning, stacklevel=3)
    return {n: c for n, c in opts.class_codes.items() if c in found}


def sample_label_tiles(read: CodeReader, grid: Grid, opts: TileSampling,
                       source: str) -> LabelTiles:
    """Tiles with masks on ``grid`` from the class codes that ``read`` returns.

    Args:
        read: class codes of a window of the grid (see :func:`raster_code_reader`).
        grid: the fused stack's grid.
        opts: tile size, cap per dominant class, minimum labelled share, codes.
        source: the label file, for messages.

    Raises:
        SamplingError: no tile has enough labelled pixels of a configured class.
    """
    pool, found, n_tiles = _candidate_pools(read, grid, opts)
    classes = _present_classes(found, opts, source)
    if len(classes) == 1:
        raise SamplingError(
            f"labels {source!r}: one class over the stack ({classes}); segmentation needs two "
            "or more: make the background a class (e.g. labels.unlabelled: 255 and name code 0 "
            "in labels.class_codes) or label more classes"
        )
    usable = {n: c for n, c in classes.items() if c in pool}
    if not usable:
        raise SamplingError(
            f"labels {source!r}: no {opts.patch_size} x {opts.patch_size} px tile of the stack "
            f"has {opts.min_labelled:.0%} labelled pixels ({n_tiles} tiles; codes found "
            f"{sorted(found)}, unlabelled code {opts.unlabelled}); lower "
            "extract.min_labelled or extract.patch_size, or check that the labels cover the stack"
        )
    rows, cols = [], []
    for code in usable.values():
        keys, rr, cc = pool[code]
        order = np.argsort(keys, kind="stable")[: opts.per_class]
        rows.append(rr[order])
        cols.append(cc[order])
    out_r, out_c = np.concatenate(rows), np.concatenate(cols)
    masks = _cut_masks(read, grid, out_r, out_c, classes, opts)
    report = {"source": "tiles", "class_codes": dict(classes), "tiles_on_grid": n_tiles,
              "labelled_pixels": {str(c): n for c, n in sorted(found.items())},
              "tiles_per_dominant_class": {n: len(r) for n, r in zip(usable, rows, strict=True)},
              "min_labelled": opts.min_labelled, "unlabelled": opts.unlabelled}
    return LabelTiles(rows=out_r, cols=out_c, masks=masks, mask_names=list(classes),
                      report=report)


def tile_strata(
    class_pixels: np.ndarray, groups: np.ndarray, min_groups: int
) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Each tile's stratum for grouped, stratified splits and folds.

    A tile's stratum is its most frequent mask class among the classes that are the stratum
    of tiles in at least ``min_groups`` groups (a class dominant in fewer groups could not
    reach every split or fold); rarer dominant classes are passed over, repeatedly, so
    their tiles join the next most frequent class of their mask. Their pixels stay in the masks.

    Args:
        class_pixels: (N, K) labelled pixels per mask class of each tile.
        groups: group of each tile.
        min_groups: groups a stratum must span (the splits, or the folds of a study).

    Returns:
        Stratum (mask class index) per tile, -1 for a tile left without one; which tiles
        keep one; the classes passed over -> the groups they were dominant in.
    """
    counts = np.asarray(class_pixels, dtype=np.int64).copy()
    passed: dict[int, int] = {}
    while True:
        y = np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), -1)
        spans = {int(k): len(set(groups[y == k].tolist())) for k in np.unique(y[y >= 0])}
        rare = [k for k, n in spans.items() if n < min_groups]
        if not rare:
            return y, y >= 0, passed
        for k in rare:
            passed.setdefault(k, spans[k])
            counts[:, k] = 0


def compact_mask_classes(masks: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Masks and class names restricted to the classes with pixels in ``masks`` (a class
    without a pixel would be a class no model can learn), indices renumbered in order.

    Raises:
        SamplingError: fewer than two classes have pixels.
    """
    present = [k for k in range(len(names)) if (masks == k).any()]
    if len(present) < 2:
        raise SamplingError(
            f"the kept tiles hold pixels of {len(present)} class(es) "
            f"({[names[k] for k in present]}); segmentation needs two or more: lower "
            "extract.min_labelled or label more classes"
        )
    lookup = np.full(256, MASK_IGNORE, dtype=np.uint8)
    lookup[present] = np.arange(len(present))
    return lookup[masks], [names[k] for k in present]
