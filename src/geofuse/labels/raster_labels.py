"""Patch centres from a label raster (one class code per pixel), class-balanced and spaced.

The label raster (any CRS and resolution) is read onto the fused stack's grid with nearest
resampling, window by window. Candidate centres are labelled pixels whose whole patch lies in
the stack; each class keeps a seeded random pool of at most :data:`POOL_FACTOR` x cap
candidates (memory stays bounded whatever the raster size), then a greedy round-robin over the
classes picks up to ``cap`` centres per class at least ``min_distance`` pixels apart.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.warp import transform_bounds

from geofuse.data.stack_reader import centre_limits
from geofuse.errors import DataNotFoundError, RasterError, SamplingError
from geofuse.raster.io import Grid, RasterInfo, read_info, read_warped

DEFAULT_PER_CLASS = 200
POOL_FACTOR = 20
READ_BLOCK = 1024


@dataclass
class RasterCentres:
    """Sampled centres: stack rows/cols, class index, class names and their codes."""

    rows: np.ndarray
    cols: np.ndarray
    y: np.ndarray
    class_names: list[str]
    codes: list[int]
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class RasterSampling:
    """Sampling options of the raster path (from the ``extract`` and ``labels`` sections)."""

    patch_size: int
    per_class: int
    min_distance: float
    unlabelled: int
    seed: int
    class_codes: dict[str, int] | None = None


def open_label_raster(path: Path, grid: Grid, key: str = "labels.raster") -> RasterInfo:
    """Header of the label raster (config key ``key``); raise one-line errors when it cannot
    serve the stack."""
    if not Path(path).exists():
        raise DataNotFoundError(
            f"label raster {str(path)!r} does not exist; fix {key} in the config"
        )
    try:
        info = read_info(path)
    except RasterError as err:  # no CRS, unreadable
        raise RasterError(f"{key}: {err}") from None
    if info.count < 1:
        raise RasterError(f"label raster {str(path)!r} has no band; give a 1-band GeoTIFF")
    left, bottom, right, top = transform_bounds(info.crs, grid.crs, *info.bounds, densify_pts=21)
    g = grid.bounds
    if left >= g[2] or right <= g[0] or bottom >= g[3] or top <= g[1]:
        raise RasterError(
            f"label raster {str(path)!r} does not overlap the fused stack: it covers "
            f"({left:.2f}, {bottom:.2f}, {right:.2f}, {top:.2f}), the stack "
            f"({g[0]:.2f}, {g[1]:.2f}, {g[2]:.2f}, {g[3]:.2f}) in {grid.crs_string()}; "
            f"check {key} and its CRS"
        )
    return info


def _keep_smallest(pool: dict[int, tuple[np.ndarray, ...]], code: int, keys: np.ndarray,
                   rows: np.ndarray, cols: np.ndarray, size: int) -> None:
    """Merge candidates into the pool of ``code``, keeping the ``size`` smallest keys."""
    if code in pool:
        k0, r0, c0 = pool[code]
        keys, rows, cols = (np.concatenate([k0, keys]), np.concatenate([r0, rows]),
                            np.concatenate([c0, cols]))
    if len(keys) > size:
        part = np.argpartition(keys, size - 1)[:size]
        keys, rows, cols = keys[part], rows[part], cols[part]
    pool[code] = (keys, rows, cols)


def candidate_pools(
    info: RasterInfo, grid: Grid, opts: RasterSampling
) -> tuple[dict[int, tuple[np.ndarray, ...]], dict[int, int]]:
    """Per code: (random keys, rows, cols) of a bounded candidate pool; and labelled pixels.

    Only centres whose ``patch_size`` window lies inside the grid are candidates.
    """
    rlo, rhi = centre_limits(grid.height, opts.patch_size)
    clo, chi = centre_limits(grid.width, opts.patch_size)
    size = POOL_FACTOR * opts.per_class
    pool: dict[int, tuple[np.ndarray, ...]] = {}
    found: dict[int, int] = {}
    for i, win in enumerate(grid.windows(READ_BLOCK)):
        codes = read_warped(info, grid, win, "nearest", info.nodata)[0]
        valid = ~np.isnan(codes)
        rr, cc = np.nonzero(valid)
        vals = codes[rr, cc].astype(np.int64)
        rr, cc = rr + int(win.row_off), cc + int(win.col_off)
        lab = vals != opts.unlabelled
        for code, n in zip(*np.unique(vals[lab], return_counts=True), strict=True):
            found[int(code)] = found.get(int(code), 0) + int(n)
        ok = lab & (rr >= rlo) & (rr <= rhi) & (cc >= clo) & (cc <= chi)
        rr, cc, vals = rr[ok], cc[ok], vals[ok]
        keys = np.random.default_rng([opts.seed % 2**63, i]).random(len(vals))
        for code in np.unique(vals).tolist():
            sel = vals == code
            _keep_smallest(pool, int(code), keys[sel], rr[sel], cc[sel], size)
    return pool, found


def _classes(path: Path, found: dict[int, int], opts: RasterSampling) -> dict[str, int]:
    """Class name -> code in class-index order; warns for configured codes not in the raster."""
    if opts.class_codes is None:
        return {f"class_{c}": c for c in sorted(found)}
    absent = {n: c for n, c in opts.class_codes.items() if c not in found}
    if absent:
        warnings.warn(
            f"label raster {str(path)!r}: labels.class_codes {absent} not found over the "
            f"stack (codes present: {sorted(found)}); these classes are left out",
            UserWarning, stacklevel=3,
        )
    return {n: c for n, c in opts.class_codes.items() if c in found}


def balanced_spaced(rows: list[np.ndarray], cols: list[np.ndarray], cap: int,
                    min_distance: float) -> list[np.ndarray]:
    """Per class, indices of up to ``cap`` candidates (taken in order) picked round-robin over
    the classes, each at least ``min_distance`` pixels from every earlier pick of any class."""
    cell = max(math.ceil(min_distance), 1)
    d2 = min_distance * min_distance
    buckets: dict[tuple[int, int], list[tuple[int, int]]] = {}
    picked: list[list[int]] = [[] for _ in rows]
    longest = max((len(r) for r in rows), default=0)
    for j in range(longest):
        for k, (rk, ck) in enumerate(zip(rows, cols, strict=True)):
            if j >= len(rk) or len(picked[k]) >= cap:
                continue
            r, c = int(rk[j]), int(ck[j])
            kr, kc = r // cell, c // cell
            near = (p for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                    for p in buckets.get((kr + dr, kc + dc), ()))
            if d2 > 0 and any((r - pr) ** 2 + (c - pc) ** 2 < d2 for pr, pc in near):
                continue
            buckets.setdefault((kr, kc), []).append((r, c))
            picked[k].append(j)
        if all(len(p) >= cap or len(p) >= len(r) for p, r in zip(picked, rows, strict=True)):
            break
    return [np.asarray(p, dtype=np.int64) for p in picked]


def sample_raster_centres(path: Path, grid: Grid, opts: RasterSampling) -> RasterCentres:
    """Class-balanced, spaced patch centres on ``grid`` from the label raster at ``path``.

    Raises:
        DataNotFoundError: the label raster is missing.
        RasterError: it has no CRS or does not overlap the grid.
        SamplingError: no labelled pixel (of a configured class) has room for a whole patch.
    """
    info = open_label_raster(path, grid)
    pool, found = candidate_pools(info, grid, opts)
    classes = _classes(path, found, opts)
    usable = {n: c for n, c in classes.items() if c in pool}
    if not usable:
        what = "no labelled pixel" if not found else "no labelled pixel with room for a patch"
        raise SamplingError(
            f"label raster {str(path)!r}: {what} over the stack (unlabelled code "
            f"{opts.unlabelled}, codes found {sorted(found)}, patch_size {opts.patch_size}); "
            "check labels.unlabelled, labels.class_codes and that the labels cover the stack"
        )
    rows, cols = [], []
    for code in usable.values():
        keys, rr, cc = pool[code]
        order = np.argsort(keys, kind="stable")
        rows.append(rr[order])
        cols.append(cc[order])
    picks = balanced_spaced(rows, cols, opts.per_class, opts.min_distance)
    out_r = np.concatenate([r[p] for r, p in zip(rows, picks, strict=True)])
    out_c = np.concatenate([c[p] for c, p in zip(cols, picks, strict=True)])
    y = np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(picks)])
    counts = {n: len(p) for n, p in zip(usable, picks, strict=True)}
    short = {n: k for n, k in counts.items() if k < opts.per_class}
    if short:
        warnings.warn(
            f"label raster {str(path)!r}: fewer than extract.per_class={opts.per_class} "
            f"spaced centres for class(es) {short}; lower extract.min_distance for more",
            UserWarning, stacklevel=2,
        )
    report = {"source": "raster", "class_codes": dict(usable),
              "labelled_pixels": {str(c): n for c, n in sorted(found.items())},
              "per_class_counts": counts, "unlabelled": opts.unlabelled}
    return RasterCentres(rows=out_r, cols=out_c, y=y, class_names=list(usable),
                         codes=list(usable.values()), report=report)


def block_groups(rows: np.ndarray, cols: np.ndarray, block_size: int) -> np.ndarray:
    """Group name ``block:{bx}_{by}`` of each centre's spatial block of ``block_size`` px."""
    bx, by = np.asarray(cols) // block_size, np.asarray(rows) // block_size
    return np.array([f"block:{x}_{y}" for x, y in zip(bx.tolist(), by.tolist(), strict=True)],
                    dtype=str)
