"""Label polygons of the synthetic scene, with the defects real label files have.

Polygons are irregular, star-shaped rings placed well inside a region of their class (so each
yields many patch centres and MODIS pixels are not mixed at their edges). Three features are
deliberately broken, as in real digitised labels: one null geometry, one self-intersecting
(bow-tie) polygon and one polygon outside the imagery.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.warp import transform as warp_transform
from scipy import ndimage

from geofuse.data._synthetic_world import CLASSES, RES, UTM, WGS84, Grid

RADIUS = (160.0, 300.0)  # radius range of a polygon (m)
MIN_RADIUS = 110.0
BUFFER = 100.0  # clearance from the class region's edge (m)
GAP = 80.0  # clearance between polygons (m)
STEP = 2  # placement works on a 20 m lattice
MAX_TRIES = 20_000


@dataclass(frozen=True)
class Placed:
    """A label polygon in scene (UTM) coordinates."""

    cls: int
    x: float
    y: float
    radius: float
    ring: list[tuple[float, float]]


def class_quotas(n_regular: int) -> list[int]:
    """Split ``n_regular`` polygons evenly over the classes (earlier classes get the rest)."""
    base, extra = divmod(n_regular, len(CLASSES))
    return [base + (k < extra) for k in range(len(CLASSES))]


def place_polygons(
    rng: np.random.Generator, class_map: np.ndarray, grid: Grid, quotas: list[int]
) -> list[Placed]:
    """Place ``quotas[k]`` non-overlapping polygons inside regions of class ``k``.

    A class whose regions are too small for its quota hands the shortfall to the classes that
    still have room, so the total is met whenever the scene can hold it.
    """
    coarse = class_map[STEP // 2 :: STEP, STEP // 2 :: STEP]
    dists = [_edge_distance(coarse == k) for k in range(len(quotas))]
    queues = [iter(rng.permutation(np.flatnonzero(d >= MIN_RADIUS + BUFFER))[:MAX_TRIES])
              for d in dists]
    placed: list[Placed] = []
    shortfall = 0
    for cls, quota in enumerate(quotas):
        got = _fill(rng, cls, quota, queues[cls], dists[cls], grid, placed)
        shortfall += quota - got
    for cls in np.argsort([-np.sum(d > 0) for d in dists]):
        if shortfall == 0:
            break
        shortfall -= _fill(rng, int(cls), shortfall, queues[cls], dists[cls], grid, placed)
    return placed


def _edge_distance(inside: np.ndarray) -> np.ndarray:
    """Distance (m) from each lattice cell to the nearest cell outside (the edge counts)."""
    dist = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
    return dist * RES * STEP - RES * STEP


def _fill(
    rng: np.random.Generator, cls: int, n: int, queue: Iterator[int], dist: np.ndarray,
    grid: Grid, placed: list[Placed],
) -> int:
    """Place up to ``n`` polygons of ``cls`` from candidate cells in ``queue``; return the count."""
    got = 0
    while got < n:
        idx = next(queue, None)
        if idx is None:
            break
        poly = _try_place(rng, cls, int(idx), dist, grid, placed)
        if poly is not None:
            placed.append(poly)
            got += 1
    return got


def _try_place(
    rng: np.random.Generator, cls: int, idx: int, dist: np.ndarray, grid: Grid,
    placed: list[Placed],
) -> Placed | None:
    radius = min(rng.uniform(*RADIUS), float(dist.flat[idx]) - BUFFER)
    row, col = divmod(int(idx), dist.shape[1])
    x, y = grid.transform @ ((col + 0.5) * STEP, (row + 0.5) * STEP)
    if radius < MIN_RADIUS:
        return None
    for p in placed:
        if np.hypot(p.x - x, p.y - y) < p.radius + radius + GAP:
            return None
    return Placed(cls, x, y, radius, _star_ring(rng, x, y, radius))


def _star_ring(
    rng: np.random.Generator, x: float, y: float, radius: float
) -> list[tuple[float, float]]:
    """A simple (non-self-intersecting) irregular ring within ``radius`` of the centre."""
    n = int(rng.integers(7, 12))
    theta = 2 * np.pi * (np.arange(n) + rng.uniform(-0.3, 0.3, n)) / n + rng.uniform(0, 2 * np.pi)
    r = radius * rng.uniform(0.7, 1.0, n)
    pts = [(x + float(a * np.cos(t)), y + float(a * np.sin(t)))
           for a, t in zip(r, theta, strict=True)]
    return [*pts, pts[0]]


def _bow_tie(p: Placed) -> list[tuple[float, float]]:
    """A self-intersecting ring (edges cross at the centre) within the polygon's radius."""
    a = 0.65 * p.radius
    return [(p.x - a, p.y + a), (p.x + a, p.y - a), (p.x + a, p.y + a), (p.x - a, p.y - a),
            (p.x - a, p.y + a)]


def _lonlat(ring: list[tuple[float, float]]) -> list[list[float]]:
    xs, ys = zip(*ring, strict=True)
    lons, lats = warp_transform(UTM, WGS84, list(xs), list(ys))
    return [[round(lo, 7), round(la, 7)] for lo, la in zip(lons, lats, strict=True)]


def label_features(
    rng: np.random.Generator, placed: list[Placed], imagery: Grid
) -> list[dict[str, Any]]:
    """GeoJSON features (EPSG:4326) of the placed polygons plus the three defective ones.

    The last placed Parcels polygon (or the last one of any class) becomes the bow-tie; a null
    geometry (Agriculture) and a polygon east of ``imagery`` (Forest) are added.
    """
    bow = max((i for i, p in enumerate(placed) if CLASSES[p.cls] == "Parcels"),
              default=len(placed) - 1)
    rows: list[tuple[str, dict[str, Any] | None]] = []
    for i, p in enumerate(placed):
        ring = _bow_tie(p) if i == bow else p.ring
        rows.append((CLASSES[p.cls], {"type": "Polygon", "coordinates": [_lonlat(ring)]}))
    rows.append(("Agriculture", None))
    _, bottom, right, top = imagery.bounds
    far = _star_ring(rng, right + 5000.0, (bottom + top) / 2, 250.0)
    rows.append(("Forest", {"type": "Polygon", "coordinates": [_lonlat(far)]}))
    tiebreak = rng.random(len(rows))
    order = sorted(range(len(rows)), key=lambda i: (rows[i][0], tiebreak[i]))
    return [
        {"type": "Feature", "properties": {"id": k + 1, "class": rows[i][0]},
         "geometry": rows[i][1]}
        for k, i in enumerate(order)
    ]
