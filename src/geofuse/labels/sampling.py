"""Sample patch centres inside label polygons, on pixel centres of the stack grid.

Each polygon is rasterised over its bounding window (``rasterio.features.rasterize``; a pixel is
a candidate when its centre falls inside the polygon) and limited to centres whose full
``patch_size`` window lies inside the raster (see :func:`geofuse.data.stack_reader.centre_limits`).
A polygon too small to contain any pixel centre falls back to the pixel that contains its
representative point (with a warning).

Candidates are visited in a seeded random order (one stream per polygon id, so adding a polygon
does not change the others); each one is optionally moved by ``jitter`` whole pixels per axis
(a move that would leave the polygon or the usable area is not taken) and accepted when it is at
least ``min_distance`` pixels from the centres already accepted in that polygon. Counts come
from ``per_polygon``, or ``per_class`` spread evenly over the class's polygons (a polygon with
too few candidates passes its share on to the others).
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine
from rasterio.features import rasterize
from shapely.geometry.base import BaseGeometry
from tqdm.auto import tqdm

from geofuse.data.stack_reader import centre_limits
from geofuse.errors import ConfigError
from geofuse.labels.polygons import LabelPolygons, format_ids


@dataclass
class SamplingParams:
    """How many centres to draw and how to space them (pixels)."""

    patch_size: int
    per_polygon: int | None = 10
    per_class: int | None = None
    jitter: float = 0.0
    min_distance: float = 0.0
    seed: int = 42


@dataclass
class CentreSample:
    """Sampled centres: pixel (rows, cols) and the index of the polygon each came from."""

    rows: np.ndarray
    cols: np.ndarray
    polygon: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class PolygonPixels:
    """Candidate mask of one polygon: ``mask[i, j]`` is pixel (row0 + i, col0 + j)."""

    mask: np.ndarray
    row0: int
    col0: int
    fallback: bool = False


def _pixel_window(
    geom: BaseGeometry, transform: Affine, height: int, width: int
) -> tuple[int, int, int, int] | None:
    """Inclusive (r0, r1, c0, c1) pixel window of ``geom``'s bounds, clipped to the raster."""
    minx, miny, maxx, maxy = geom.bounds
    cs, rs = ~transform @ (np.array([minx, maxx, minx, maxx]), np.array([miny, miny, maxy, maxy]))
    r0, r1 = max(math.floor(rs.min()), 0), min(math.ceil(rs.max()), height - 1)
    c0, c1 = max(math.floor(cs.min()), 0), min(math.ceil(cs.max()), width - 1)
    return None if r1 < r0 or c1 < c0 else (r0, r1, c0, c1)


def polygon_pixels(
    geom: BaseGeometry, transform: Affine, height: int, width: int, patch_size: int
) -> PolygonPixels | None:
    """Candidate centre pixels of ``geom``; None when no usable centre exists.

    A polygon whose rasterisation is empty (no pixel centre inside) uses the pixel containing
    its representative point and is marked ``fallback``.
    """
    win = _pixel_window(geom, transform, height, width)
    if win is None:
        return None
    r0, r1, c0, c1 = win
    shape = (r1 - r0 + 1, c1 - c0 + 1)
    mask = rasterize(
        [(geom, 1)], out_shape=shape, transform=transform @ Affine.translation(c0, r0),
        fill=0, dtype="uint8",
    ).astype(bool)
    fallback = not mask.any()
    if fallback:
        pt = geom.representative_point()
        col, row = ~transform @ (pt.x, pt.y)
        r0, c0 = math.floor(row), math.floor(col)
        mask = np.ones((1, 1), dtype=bool)
    rlo, rhi = centre_limits(height, patch_size)
    clo, chi = centre_limits(width, patch_size)
    rows = np.arange(r0, r0 + mask.shape[0])
    cols = np.arange(c0, c0 + mask.shape[1])
    mask &= ((rows >= rlo) & (rows <= rhi))[:, None] & ((cols >= clo) & (cols <= chi))[None, :]
    return PolygonPixels(mask, r0, c0, fallback) if mask.any() else None


def _jittered(
    pix: PolygonPixels, rr: np.ndarray, cc: np.ndarray, jitter: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Move candidates by up to ``jitter`` whole pixels; keep moves that stay candidates."""
    dr, dc = np.rint(rng.uniform(-jitter, jitter, (2, len(rr)))).astype(np.int64)
    jr, jc = rr + dr, cc + dc
    h, w = pix.mask.shape
    ok = (jr >= 0) & (jr < h) & (jc >= 0) & (jc < w)
    ok[ok] = pix.mask[jr[ok], jc[ok]]
    return np.where(ok, jr, rr), np.where(ok, jc, cc)


def _greedy_spaced(rr: np.ndarray, cc: np.ndarray, n_max: int, min_distance: float) -> list[int]:
    """Indices of the first candidates (in order) at least ``min_distance`` from earlier picks."""
    cell = max(math.ceil(min_distance), 1)
    d2 = min_distance * min_distance
    buckets: dict[tuple[int, int], list[tuple[int, int]]] = {}
    picked: list[int] = []
    for i, (r, c) in enumerate(zip(rr.tolist(), cc.tolist(), strict=True)):
        kr, kc = r // cell, c // cell
        near = (
            p for dr in (-1, 0, 1) for dc in (-1, 0, 1) for p in buckets.get((kr + dr, kc + dc), ())
        )
        if any((r - pr) ** 2 + (c - pc) ** 2 < d2 for pr, pc in near):
            continue
        buckets.setdefault((kr, kc), []).append((r, c))
        picked.append(i)
        if len(picked) >= n_max:
            break
    return picked


def spaced_sequence(
    pix: PolygonPixels, n_max: int, min_distance: float, jitter: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n_max`` distinct, spaced centres (absolute rows, cols) in a seeded random order.

    The result for a smaller ``n_max`` is a prefix of the result for a larger one.
    """
    rr, cc = np.nonzero(pix.mask)
    order = rng.permutation(len(rr))
    rr, cc = rr[order].astype(np.int64), cc[order].astype(np.int64)
    if jitter > 0:
        rr, cc = _jittered(pix, rr, cc, jitter, rng)
    if min_distance <= 1:  # distinct pixel centres are >= 1 pixel apart
        _, first = np.unique(rr * pix.mask.shape[1] + cc, return_index=True)
        sel = np.sort(first)[:n_max]
    else:
        sel = np.asarray(_greedy_spaced(rr, cc, n_max, min_distance), dtype=np.int64)
    return rr[sel] + pix.row0, cc[sel] + pix.col0


def spread_counts(total: int, capacity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` as evenly as possible over bins with the given capacities."""
    counts = np.zeros(len(capacity), dtype=np.int64)
    remaining = total
    while remaining > 0:
        open_ = np.flatnonzero(capacity - counts > 0)
        if len(open_) == 0:
            break
        share = remaining // len(open_)
        if share == 0:
            counts[rng.choice(open_, remaining, replace=False)] += 1
            break
        add = np.minimum(share, (capacity - counts)[open_])
        counts[open_] += add
        remaining -= int(add.sum())
    return counts


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**63, *keys])


def _polygon_sequences(
    polygons: LabelPolygons, transform: Affine, height: int, width: int,
    params: SamplingParams, n_max: int, progress: bool,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str], list[str]]:
    """Spaced centre sequence of every polygon, plus fallback and unusable polygon ids."""
    seqs, fallback, unusable = [], [], []
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    items = zip(polygons.ids, polygons.geometries, strict=True)
    for fid, geom in tqdm(items, total=len(polygons), desc="sampling polygons", unit="polygon",
                          disable=not progress):
        pix = polygon_pixels(geom, transform, height, width, params.patch_size)
        if pix is None:
            unusable.append(fid)
            seqs.append(empty)
            continue
        if pix.fallback:
            fallback.append(fid)
        rng = _rng(params.seed, zlib.crc32(fid.encode()))
        seqs.append(spaced_sequence(pix, n_max, params.min_distance, params.jitter, rng))
    return seqs, fallback, unusable


def _allocate(
    polygons: LabelPolygons, capacity: np.ndarray, params: SamplingParams, fallback: list[str]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Centres to take from each polygon, and the shortfalls against the request."""
    if params.per_class is None:
        per_polygon = int(params.per_polygon or 0)
        counts = np.minimum(capacity, per_polygon)
        short = [fid for fid, k in zip(polygons.ids, counts, strict=True)
                 if 0 < k < per_polygon and fid not in fallback]
        return counts, {"short_polygons": short}
    counts = np.zeros(len(capacity), dtype=np.int64)
    short_classes: dict[str, list[int]] = {}
    for k, name in enumerate(polygons.class_names):
        idx = np.flatnonzero(polygons.y == k)
        counts[idx] = spread_counts(params.per_class, capacity[idx], _rng(params.seed, k))
        got = int(counts[idx].sum())
        if got < params.per_class:
            short_classes[name] = [got, params.per_class]
    return counts, {"short_classes": short_classes}


def _warn_sampling(report: dict[str, Any], params: SamplingParams) -> None:
    if report["fallback_polygons"]:
        ids = report["fallback_polygons"]
        warnings.warn(f"{len(ids)} polygon(s) contain no pixel centre; used the pixel holding "
                      f"their representative point, ids: {format_ids(ids)}", stacklevel=3)
    if report["unusable_polygons"]:
        ids = report["unusable_polygons"]
        warnings.warn(f"{len(ids)} polygon(s) have no centre whose {params.patch_size}x"
                      f"{params.patch_size} patch fits inside the raster (too near the border), "
                      f"ids: {format_ids(ids)}", stacklevel=3)
    if report.get("short_polygons"):
        ids = report["short_polygons"]
        warnings.warn(f"{len(ids)} polygon(s) gave fewer than per_polygon={params.per_polygon} "
                      f"centres (few pixel centres inside, or min_distance="
                      f"{params.min_distance}), ids: {format_ids(ids)}", stacklevel=3)
    for name, (got, want) in report.get("short_classes", {}).items():
        warnings.warn(f"class {name!r}: only {got} of per_class={want} centres fit in its "
                      "polygons; lower min_distance or add polygons", stacklevel=3)


def sample_centres(
    polygons: LabelPolygons,
    transform: Affine,
    height: int,
    width: int,
    params: SamplingParams,
    progress: bool = False,
) -> CentreSample:
    """Sample patch centres inside ``polygons`` on the grid (``transform``, height, width).

    ``per_class`` wins over ``per_polygon`` when both are set.

    Raises:
        ConfigError: neither ``per_polygon`` nor ``per_class`` is set.
    """
    if params.per_polygon is None and params.per_class is None:
        raise ConfigError("extract: set extract.per_polygon or extract.per_class (both are null)")
    n_max = params.per_class if params.per_class is not None else params.per_polygon
    seqs, fallback, unusable = _polygon_sequences(
        polygons, transform, height, width, params, int(n_max), progress
    )
    capacity = np.array([len(r) for r, _ in seqs], dtype=np.int64)
    counts, short = _allocate(polygons, capacity, params, fallback)
    rows = [r[:k] for (r, _), k in zip(seqs, counts, strict=True)]
    cols = [c[:k] for (_, c), k in zip(seqs, counts, strict=True)]
    poly = [np.full(k, i, dtype=np.int64) for i, k in enumerate(counts)]
    report: dict[str, Any] = {
        "mode": "per_class" if params.per_class is not None else "per_polygon",
        "n_centres": int(counts.sum()),
        "fallback_polygons": fallback,
        "unusable_polygons": unusable,
        **short,
    }
    _warn_sampling(report, params)
    return CentreSample(rows=_cat(rows), cols=_cat(cols), polygon=_cat(poly), report=report)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
