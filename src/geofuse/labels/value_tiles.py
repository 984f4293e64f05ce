"""Dense-regression tiles: a value per pixel cut from a raster of a continuous quantity.

The counterpart of :mod:`geofuse.labels.label_tiles` for ``labels.value_raster`` (canopy
height, impervious share, biomass): the stack is cut into non-overlapping tiles of
``patch_size`` px from its top-left corner; a tile is a candidate when at least
``min_labelled`` of its pixels hold a value. A seeded uniform sample of at most
:data:`~geofuse.labels.raster_labels.POOL_FACTOR` x cap x strata candidates is kept while the
raster is read chunk by chunk (memory stays bounded whatever the scene size); its tiles'
mean values give the quantile strata (``value_strata``) and up to ``per_class`` tiles are
kept per stratum. The chosen tiles' values are read in a second pass.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio import windows
from rasterio.enums import Resampling
from rasterio.merge import merge
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from geofuse.errors import DataNotFoundError, RasterError, SamplingError
from geofuse.labels.label_tiles import _as_tiles, _chunks, _tile_origins, chosen_tiles
from geofuse.labels.polygons import value_strata
from geofuse.labels.raster_labels import POOL_FACTOR, open_label_raster
from geofuse.raster.io import Grid, RasterInfo, read_warped

#: Reads the values (float32, NaN where unlabelled) of a window of the stack grid.
ValueReader = Callable[[Window], np.ndarray]


@dataclass(frozen=True)
class ValueTileSampling:
    """Tile options (from the ``extract`` and ``labels`` sections)."""

    patch_size: int
    per_stratum: int
    min_labelled: float
    strata: int
    seed: int


@dataclass
class ValueTiles:
    """Chosen tiles: top-left stack rows/cols; values (N, P, P) float32 (NaN = unlabelled);
    each tile's stratum and the strata names; what the sampling found."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    strata: np.ndarray
    strata_names: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


def value_raster_files(path: Path) -> list[Path]:
    """The file at ``path``, or the files a glob pattern (``tiles/*.tif``) matches, sorted.

    Raises:
        DataNotFoundError: nothing there.
    """
    if glob.has_magic(str(path)):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        if not files:
            raise DataNotFoundError(f"labels.value_raster {str(path)!r} matches no file; fix "
                                    "the pattern in the config")
        return files
    return [Path(path)]


def value_name_of(path: str) -> str:
    """What a value raster measures, from its name: the file's stem, or of a glob pattern
    the last folder before the pattern (``heights/*.tif`` -> ``heights``)."""
    parts = Path(path).parts
    plain = [p for p in parts if not glob.has_magic(p)]
    if len(plain) == len(parts):
        return Path(path).stem
    first = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    return parts[first - 1] if first else "value"


def value_raster_reader(path: Path, grid: Grid, resampling: str,
                        extra_nodata: float | None = None) -> ValueReader:
    """Values of the raster at ``path`` resampled (``resampling``) onto windows of ``grid``;
    nodata, ``extra_nodata`` (both masked before resampling), non-finite values and pixels no
    file covers read as NaN. A glob pattern's tiles are mosaicked first (per CRS, the first
    file with a value wins), then resampled, so no seam shows where tiles meet.

    Raises:
        DataNotFoundError: no file at ``path``, or a pattern that matches none.
        RasterError: a raster has no CRS or band; none overlaps the grid.
    """
    files = value_raster_files(path)
    infos = []
    for f in files:
        try:
            infos.append(open_label_raster(f, grid, key="labels.value_raster"))
        except RasterError as err:  # a tile beside the stack is fine, a broken one is not
            if len(files) == 1 or "does not overlap" not in str(err):
                raise
    if not infos:
        raise RasterError(f"labels.value_raster {str(path)!r}: none of its {len(files)} files "
                          "overlaps the fused stack; check the pattern and the files' CRS")
    if len(files) == 1:
        info = infos[0]
        nodata = info.nodata if extra_nodata is None else extra_nodata

        def read_file(win: Window) -> np.ndarray:
            values = read_warped(info, grid, win, resampling, nodata)[0].astype(np.float32)
            if info.nodata is not None and extra_nodata is not None:  # both, after the warp
                values[values == np.float32(info.nodata)] = np.nan
            values[~np.isfinite(values)] = np.nan
            return values

        return read_file
    by_crs: dict[str, list[RasterInfo]] = {}
    for info in infos:
        by_crs.setdefault(info.crs.to_string(), []).append(info)

    def read_mosaic(win: Window) -> np.ndarray:
        values = np.full((int(win.height), int(win.width)), np.nan, dtype=np.float32)
        for group in by_crs.values():
            part = _mosaic_window(group, grid, win, resampling, extra_nodata)
            if part is not None:
                fill = np.isnan(values) & np.isfinite(part)
                values[fill] = part[fill]
        return values

    return read_mosaic


def _mosaic_window(infos: list[RasterInfo], grid: Grid, win: Window, resampling: str,
                   extra_nodata: float | None) -> np.ndarray | None:
    """Tiles of one CRS mosaicked over ``win`` (plus a margin of two source pixels) and
    resampled onto it; None when no tile lies under the window."""
    crs = infos[0].crs
    left, bottom, right, top = transform_bounds(
        grid.crs, crs, *windows.bounds(win, grid.transform), densify_pts=21)
    # the box on the first tile's pixel grid, so the mosaic keeps the source pixels as they are
    t = infos[0].transform
    xres, yres = abs(t.a), abs(t.e)
    x0, y0 = t.c, t.f
    box = (x0 + (np.floor((left - x0) / xres) - 2) * xres,
           y0 + (np.floor((bottom - y0) / yres) - 2) * yres,
           x0 + (np.ceil((right - x0) / xres) + 2) * xres,
           y0 + (np.ceil((top - y0) / yres) + 2) * yres)
    under = [i for i in infos
             if not (i.bounds[0] >= box[2] or i.bounds[2] <= box[0] or i.bounds[1] >= box[3]
                     or i.bounds[3] <= box[1])]
    if not under:
        return None
    with ExitStack() as stack:
        sources = [stack.enter_context(rasterio.open(i.path)) for i in under]
        mosaic, transform = merge(sources, bounds=box, indexes=[1], dtype="float32",
                                  nodata=np.nan)
    data = mosaic[0]
    data[~np.isfinite(data)] = np.nan
    if extra_nodata is not None:
        data[data == np.float32(extra_nodata)] = np.nan
    out = np.full((int(win.height), int(win.width)), np.nan, dtype=np.float32)
    reproject(data, out, src_transform=transform, src_crs=crs, src_nodata=np.nan,
              dst_transform=windows.transform(win, grid.transform), dst_crs=grid.crs,
              dst_nodata=np.nan, resampling=Resampling[resampling])
    return out


def _merge_sample(sample: dict[str, np.ndarray], add: dict[str, np.ndarray], size: int) -> None:
    """Keep the ``size`` candidates with the smallest random keys (a uniform sample)."""
    merged = {k: np.concatenate([sample[k], add[k]]) if k in sample else add[k] for k in add}
    if len(merged["key"]) > size:
        keep = np.argpartition(merged["key"], size - 1)[:size]
        merged = {k: v[keep] for k, v in merged.items()}
    sample.update(merged)


def _candidates(read: ValueReader, grid: Grid, opts: ValueTileSampling
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A seeded uniform sample of the tiles with enough labelled pixels (rows, cols, mean
    value, key) and what the scan found (tiles, labelled pixels, value range)."""
    tile = opts.patch_size
    need = max(1, int(np.ceil(opts.min_labelled * tile * tile)))
    size = POOL_FACTOR * opts.per_stratum * opts.strata
    sample: dict[str, np.ndarray] = {}
    found = {"tiles_on_grid": 0, "candidate_tiles": 0, "labelled_pixels": 0,
             "min": np.inf, "max": -np.inf}
    for i, win in enumerate(_chunks(grid, tile)):
        values = _as_tiles(read(win), tile)
        ok = np.isfinite(values)
        count = ok.sum(axis=1)
        rows, cols = _tile_origins(win, tile)
        found["tiles_on_grid"] += len(rows)
        found["labelled_pixels"] += int(count.sum())
        if ok.any():
            found["min"] = min(found["min"], float(values[ok].min()))
            found["max"] = max(found["max"], float(values[ok].max()))
        enough = count >= need
        found["candidate_tiles"] += int(enough.sum())
        if not enough.any():
            continue
        means = np.where(ok, values, 0.0).sum(axis=1)[enough] / count[enough]
        keys = np.random.default_rng([opts.seed % 2**63, i]).random(len(rows))[enough]
        _merge_sample(sample, {"row": rows[enough], "col": cols[enough], "mean": means,
                               "key": keys}, size)
    return sample, found


def _cut_values(read: ValueReader, grid: Grid, rows: np.ndarray, cols: np.ndarray,
                tile: int) -> np.ndarray:
    """Values (N, P, P) of the chosen tiles."""
    out = np.full((len(rows), tile, tile), np.nan, dtype=np.float32)
    for i, values in chosen_tiles(read, grid, rows, cols, tile):
        out[i] = values.reshape(tile, tile)
    return out


def sample_value_tiles(read: ValueReader, grid: Grid, opts: ValueTileSampling,
                       source: str) -> ValueTiles:
    """Tiles with per-pixel values on ``grid`` from the values that ``read`` returns.

    Raises:
        SamplingError: no tile has enough labelled pixels; every labelled pixel holds the
            same value (nothing to regress).
    """
    sample, found = _candidates(read, grid, opts)
    if not sample:
        raise SamplingError(
            f"labels {source!r}: no {opts.patch_size} x {opts.patch_size} px tile of the stack "
            f"has {opts.min_labelled:.0%} of its pixels with a value ({found['tiles_on_grid']} "
            f"tiles, {found['labelled_pixels']} pixels with a value); lower "
            "extract.min_labelled or extract.patch_size, check labels.value_nodata, or check "
            "that the raster covers the stack"
        )
    if found["max"] <= found["min"]:
        raise SamplingError(
            f"labels {source!r}: every pixel with a value holds {found['min']:g} over the "
            "stack; a dense regression needs values that vary (check labels.value_nodata and "
            "that this is the raster of the quantity to learn)"
        )
    strata, names = value_strata(sample["mean"], opts.strata)
    chosen = []
    for k in range(len(names)):
        idx = np.flatnonzero(strata == k)
        chosen.append(idx[np.argsort(sample["key"][idx], kind="stable")[: opts.per_stratum]])
    keep = np.concatenate(chosen)
    rows, cols = sample["row"][keep], sample["col"][keep]
    values = _cut_values(read, grid, rows, cols, opts.patch_size)
    report = {"source": "tiles", "tiles_on_grid": found["tiles_on_grid"],
              "candidate_tiles": found["candidate_tiles"],
              "labelled_pixels": found["labelled_pixels"],
              "value_range": [found["min"], found["max"]],
              "tiles_per_stratum": {n: int((strata[keep] == k).sum())
                                    for k, n in enumerate(names)},
              "min_labelled": opts.min_labelled}
    return ValueTiles(rows=rows, cols=cols, values=values, strata=strata[keep],
                      strata_names=names, report=report)


def span_strata(strata: np.ndarray, groups: np.ndarray, means: np.ndarray, min_groups: int
                ) -> tuple[np.ndarray, list[str], int]:
    """Strata that each span at least ``min_groups`` groups: a value range of fewer groups
    is merged into its neighbouring range (the one with fewer tiles), repeatedly.

    Args:
        strata: value-range index of each tile (ranges in increasing order).
        groups: spatial group of each tile.
        means: each tile's mean value (names the merged ranges).
        min_groups: groups a stratum must span (the splits, or the folds of a study).

    Returns:
        The stratum of each tile (renumbered), the ranges' names (``lo-hi`` of the tiles'
        mean values) and how many ranges were merged away.
    """
    y = np.asarray(strata, dtype=np.int64).copy()
    y = np.unique(y, return_inverse=True)[1].reshape(-1)
    n, merged = int(y.max()) + 1 if len(y) else 0, 0
    while n > 1:
        spans = [len(set(groups[y == k].tolist())) for k in range(n)]
        k = int(np.argmin(spans))
        if spans[k] >= min_groups:
            break
        upper = k == 0 or (k < n - 1 and (y == k + 1).sum() < (y == k - 1).sum())
        into = k + 1 if upper else k - 1
        lo, hi = min(k, into), max(k, into)
        y[y == hi] = lo
        y[y > hi] -= 1
        n, merged = n - 1, merged + 1
    m = np.asarray(means, dtype=np.float64)
    names = [f"{m[y == i].min():.4g}-{m[y == i].max():.4g}" for i in range(n)]
    return y, names, merged
