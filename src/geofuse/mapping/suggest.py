"""``geofuse suggest MAP -n N``: where to label next (active learning on a whole map).

A model maps best where it was shown examples; the places it is least sure of are where new
labels teach it most, provided they are spread out and not all on one confused field (Tuia et
al. 2011: uncertainty plus diversity). From a class map and its uncertainty raster (both
written by ``geofuse predict``):

1. **Candidates.** A pixel is scored by the mean uncertainty of its ``window`` x ``window``
   neighbourhood (by default the map model's patch side) and is a candidate only when that
   neighbourhood is mapped as one class (class edges, where a patch mixes classes and every
   model is unsure, are left out) and it lies
   more than ``label_distance`` from the existing labels. The map is cut into blocks of
   ``min_distance`` (per axis; larger when the map would have more than :data:`MAX_BLOCKS`);
   for every block and class one pass over strips keeps the best-scored candidate, one drawn
   uniformly at random and the number of candidates (ties broken at random). Memory is
   bounded by the strips and the blocks, not by the map.
2. **Allocation.** Each class with candidates gets ``min_per_class`` places, the rest in
   proportion to its uncertainty mass (the sum of the band over its mapped pixels: big,
   confused classes get more; the class's pixels when the band is zero everywhere);
   :func:`~geofuse.mapping.sample_design.allocate` does the arithmetic.
3. **Selection.** ``round(n x explore)`` places go to random candidates (blocks drawn in
   proportion to the class's candidates in them, so the pick is close to uniform over the
   class): labels only where the model doubts bias a training set. The others go to the
   best-scored candidates. Candidates are taken greedily (best ones in falling score, random
   ones in random order) when at least ``min_distance`` (map units) from every place taken so
   far; quota a class cannot fill goes to the other classes, and a shortfall against ``n`` is
   warned with its cause.

A value map (``values.tif`` of a regression run) is one stratum, scored by default by the
spread of its fold models (``member_std``); its places carry the mapped value (``map_value``)
and an empty ``value`` column to measure instead of ``class``.

Outputs (in ``out_dir``, default the map's folder), staged and renamed together:
``label_suggestions.gpkg`` (points at pixel centres: ``id``, ``map_class``,
``map_class_name``, the band's value at the pixel, ``score`` (the neighbourhood's mean),
``pick`` uncertain/random and an empty ``class`` for the person who labels them; append the
labelled points to the study's label points and run extract again),
``label_suggestions.json`` (settings, allocation, shortfalls) and ``label_suggestions.png``
(the uncertainty map with the places).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from rasterio.features import geometry_mask
from rasterio.windows import Window

from geofuse.errors import ConfigError, RasterError, SamplingError
from geofuse.io_utils import atomic_write_json, staged_together
from geofuse.mapping.assess_io import (
    ClassMap,
    find_uncertainty,
    open_class_map,
    read_vector,
    strip_windows,
)
from geofuse.mapping.assess_values import is_value_map
from geofuse.mapping.sample_design import allocate

STEM = "label_suggestions"
#: At most about this many candidate blocks (their side grows on larger maps).
MAX_BLOCKS = 1_000_000
#: Pixels read at once (plus the neighbourhood's halo rows).
STRIP_PIXELS = 1 << 20
DEFAULT_MIN_DISTANCE_PX = 10
DEFAULT_WINDOW = 5
MAX_WINDOW = 65


@dataclass(frozen=True)
class SuggestOptions:
    """How many places and how to spread them.

    Attributes:
        n: places in all.
        min_distance: least distance between places, in map units; ``None``:
            :func:`default_distance`.
        explore: share of the places drawn at random instead of by uncertainty.
        min_per_class: places every class with candidates gets at least.
        band: uncertainty band by name (``entropy``, ``one_minus_max_probability``,
            ``member_std``, ``vote_disagreement``); ``None``: ``entropy`` for a class map,
            ``member_std`` (the spread of the ensemble) for a value map.
        seed: random seed.
        label_distance: least distance from existing labels, in map units; ``None``: the
            window (so a new place's patch does not overlap a labelled point's).
        window: side (pixels) of the neighbourhood whose mean uncertainty scores a pixel and
            which must be mapped as one class (1: the pixel alone, class edges allowed);
            ``None``: :func:`default_window`.
        prefix: start of the places' ids (default ``s<UTC time>_``: unique per run, so the
            places of several rounds can join one label file).
    """

    n: int
    min_distance: float | None = None
    explore: float = 0.2
    min_per_class: int = 2
    band: str | None = None
    seed: int = 0
    label_distance: float | None = None
    window: int | None = None
    prefix: str | None = None


@dataclass(frozen=True)
class Suggestions:
    """What :func:`suggest_labels` wrote."""

    gpkg_path: Path
    json_path: Path
    png_path: Path
    record: dict[str, Any]


@dataclass
class _Candidates:
    """One entry per (block, class) with candidates: its class, the best-scored and the random
    candidate (row, col, score, band value at the pixel) and its number of candidates; and per
    class the uncertainty mass and the mapped pixels with a finite band value."""

    cls: np.ndarray
    best: dict[str, np.ndarray]
    rand: dict[str, np.ndarray]
    count: np.ndarray
    mass: np.ndarray
    mapped: np.ndarray  #: mapped pixels of each class with a finite band value


@dataclass
class _ValueMap:
    """A value map (``values.tif`` of a regression run) seen as one stratum: its mapped
    pixels are class 0 (``class_names``: what the values measure)."""

    path: Path
    grid: Any
    class_names: list[str]
    counts: np.ndarray
    pixel_area_m2: float
    value_nodata: float | None
    nodata: int = 255

    @property
    def n_classes(self) -> int:
        return 1

    def valid(self, data: np.ndarray) -> np.ndarray:
        ok = np.isfinite(data)
        if self.value_nodata is not None and not math.isnan(self.value_nodata):
            ok &= data != self.value_nodata
        return ok


def _open_value_map(path: Path) -> _ValueMap:
    """A float map's header and mapped pixels (one pass over strips)."""
    from geofuse.raster.io import Grid

    with rasterio.open(path) as src:
        grid = Grid(src.crs, src.transform, src.width, src.height)
        vm = _ValueMap(path, grid, [src.tags().get("value_name", "value")], np.zeros(1, np.int64),
                       abs(src.transform.a * src.transform.e - src.transform.b * src.transform.d),
                       src.nodata)
        for win in strip_windows(grid):
            vm.counts[0] += int(vm.valid(src.read(1, window=win)).sum())
    if not vm.counts[0]:
        raise RasterError(f"value map {str(path)!r} has no mapped pixel (every pixel is nodata "
                          "or NaN); check the map")
    return vm


def _read_classes(cmap: ClassMap | _ValueMap, src: Any, win: Window) -> np.ndarray:
    """Class codes of a strip: the class map's, or 0 where a value map is mapped (else 255)."""
    data = src.read(1, window=win)
    if isinstance(cmap, _ValueMap):
        return np.where(cmap.valid(data), 0, cmap.nodata).astype(np.uint8)
    return data


def _map_values(cmap: _ValueMap, picks: list[dict[str, Any]]) -> list[float]:
    """The mapped value under every place."""
    with rasterio.open(cmap.path) as src:
        return [float(src.read(1, window=Window(p["col"], p["row"], 1, 1))[0, 0]) for p in picks]


def _check_options(opts: SuggestOptions) -> None:
    bad = []
    if opts.n < 1:
        bad.append(f"-n {opts.n} (at least 1)")
    if not 0 <= opts.explore <= 1:
        bad.append(f"--explore {opts.explore} (0..1)")
    if opts.min_per_class < 0:
        bad.append(f"--min-per-class {opts.min_per_class} (0 or more)")
    if opts.window is not None and opts.window < 1:
        bad.append(f"--window {opts.window} (a side in pixels, at least 1)")
    for name, value in (("--min-distance", opts.min_distance),
                        ("--label-distance", opts.label_distance)):
        if value is not None and not (value >= 0 and math.isfinite(value)):
            bad.append(f"{name} {value} (a distance in map units, >= 0)")
    if bad:
        raise ConfigError(f"suggest options out of range: {', '.join(bad)}; fix the option")


def default_window(map_path: Path) -> int:
    """The patch side of the model that made the map (``patch_size`` in the ``predict.json``
    beside it; made odd, at most :data:`MAX_WINDOW`), so that a place is where a whole training
    patch would lie in one mapped class; :data:`DEFAULT_WINDOW` without that record."""
    record = map_path.parent / "predict.json"
    try:
        size = int(json.loads(record.read_text()).get("patch_size") or 0)
    except (OSError, ValueError, TypeError):
        size = 0
    if size < 1:
        return DEFAULT_WINDOW
    return min(size | 1, MAX_WINDOW)


def default_distance(mapped_pixels: int, pixel_area: float, pixel: float, n: int) -> float:
    """A quarter of the spacing of ``n`` points on a square lattice over the mapped area, and
    at least :data:`DEFAULT_MIN_DISTANCE_PX` pixels (``pixel``: the larger pixel side):
    places spread over the whole map, with room for every class's quota."""
    return max(DEFAULT_MIN_DISTANCE_PX * pixel, 0.25 * math.sqrt(mapped_pixels * pixel_area / n))


def block_sides(height: int, width: int, rows_px: float, cols_px: float) -> tuple[int, int]:
    """Rows and columns of the candidate blocks (``min_distance`` in pixels along each axis),
    grown together until the map has at most :data:`MAX_BLOCKS` blocks."""
    sr, sc = max(1, math.ceil(rows_px)), max(1, math.ceil(cols_px))
    while math.ceil(height / sr) * math.ceil(width / sc) > MAX_BLOCKS:
        sr, sc = sr + max(1, sr // 4), sc + max(1, sc // 4)
    return sr, sc


def _window_scores(cls: np.ndarray, unc: np.ndarray, valid: np.ndarray, window: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mean uncertainty over the ``window`` x ``window`` neighbourhood of each pixel, and
    whether that neighbourhood is mapped, inside the map and of one class (an interior pixel,
    not a class edge)."""
    if window <= 1:
        return unc, valid
    from scipy import ndimage

    share = ndimage.uniform_filter(valid.astype(np.float64), window, mode="constant", cval=0.0)
    total = ndimage.uniform_filter(np.where(valid, unc, 0.0), window, mode="constant",
                                   cval=0.0)
    same = ndimage.minimum_filter(cls, window, mode="nearest") == \
        ndimage.maximum_filter(cls, window, mode="nearest")
    interior = valid & same & (share > 1 - 1e-9)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(interior, total / np.maximum(share, 1e-12), np.nan), interior


class _LabelMask:
    """Pixels within ``distance`` of the existing labels (touching a label buffered by it)."""

    def __init__(self, labels: list[Any], distance: float) -> None:
        self.geoms = (shapely.buffer(np.asarray(labels, dtype=object), distance)
                      if labels and distance > 0 else np.asarray(labels, dtype=object))
        self.tree = shapely.STRtree(self.geoms) if len(self.geoms) else None

    def near(self, transform: Any, row0: int, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        if self.tree is None:
            return out
        strip = transform @ Affine.translation(0, row0)
        xs, ys = strip @ (np.array([0, shape[1]]), np.array([0, shape[0]]))
        hits = self.tree.query(shapely.box(min(xs), min(ys), max(xs), max(ys)))
        if len(hits):
            out = geometry_mask(list(self.geoms[hits]), out_shape=shape, transform=strip,
                                all_touched=True, invert=True)
        return out


def _first_per_key(key: np.ndarray, *sort_by: np.ndarray) -> np.ndarray:
    """Index of the first entry of each key after sorting by ``sort_by`` (first = primary)
    within the key."""
    order = np.lexsort((*reversed(sort_by), key))
    sk = key[order]
    return order[np.r_[True, sk[1:] != sk[:-1]]] if len(sk) else order


def _candidates(cmap: ClassMap, unc_path: Path, band: int, sides: tuple[int, int],
                opts: SuggestOptions, labels: _LabelMask) -> _Candidates:
    """One pass over strips (see the module docstring, step 1)."""
    k, width, height = cmap.n_classes, cmap.grid.width, cmap.grid.height
    sr, sc = sides
    nbx = math.ceil(width / sc)
    halo = opts.window // 2
    rng = np.random.default_rng([opts.seed, 7])
    parts: list[dict[str, np.ndarray]] = []
    mass, mapped = np.zeros(k), np.zeros(k, dtype=np.int64)
    rows_per_strip = max(1, STRIP_PIXELS // max(width, 1))
    with rasterio.open(cmap.path) as cls_src, rasterio.open(unc_path) as unc_src:
        for row0 in range(0, height, rows_per_strip):
            n_rows = min(rows_per_strip, height - row0)
            top, bottom = max(row0 - halo, 0), min(row0 + n_rows + halo, height)
            win = Window(0, top, width, bottom - top)
            cls = _read_classes(cmap, cls_src, win)
            unc = unc_src.read(band, window=win, masked=True).filled(np.nan).astype(np.float64)
            valid = (cls != cmap.nodata) & np.isfinite(unc) & (cls < k)
            score, interior = _window_scores(cls, unc, valid, opts.window)
            inner = slice(row0 - top, row0 - top + n_rows)
            cls, unc, valid = cls[inner], unc[inner], valid[inner]
            score, interior = score[inner], interior[inner]
            c_valid = cls[valid].astype(np.int64)
            mass += np.bincount(c_valid, weights=unc[valid], minlength=k)[:k]
            mapped += np.bincount(c_valid, minlength=k)[:k]
            pool = interior & ~labels.near(cmap.grid.transform, row0, cls.shape)
            rr, cc = np.nonzero(pool)
            if not len(rr):
                continue
            rr = rr + row0
            c = cls[rr - row0, cc].astype(np.int64)
            key = ((rr // sr) * nbx + cc // sc) * k + c
            s, v = score[rr - row0, cc], unc[rr - row0, cc]
            u_best, u_rand = rng.random(len(rr)), rng.random(len(rr))
            b = _first_per_key(key, -s, u_best)
            r = _first_per_key(key, u_rand)
            keys, counts = np.unique(key, return_counts=True)
            parts.append({"key_b": key[b], "row_b": rr[b], "col_b": cc[b], "score_b": s[b],
                          "value_b": v[b], "tie_b": u_best[b],
                          "key_r": key[r], "row_r": rr[r], "col_r": cc[r], "score_r": s[r],
                          "value_r": v[r], "u_r": u_rand[r], "keys": keys, "counts": counts})
    return _merge(parts, k, mass, mapped)


def _merge(parts: list[dict[str, np.ndarray]], k: int, mass: np.ndarray, mapped: np.ndarray
           ) -> _Candidates:
    """The strips' per-key candidates merged (a block can span strips): the best score, the
    smallest random key, the summed counts."""
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        none = {"row": empty, "col": empty, "score": np.zeros(0), "value": np.zeros(0)}
        return _Candidates(empty, none, dict(none), empty, mass, mapped)
    cat = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    b = _first_per_key(cat["key_b"], -cat["score_b"], cat["tie_b"])
    r = _first_per_key(cat["key_r"], cat["u_r"])
    keys, inverse = np.unique(cat["keys"], return_inverse=True)
    counts = np.bincount(inverse, weights=cat["counts"]).astype(np.int64)
    # b, r and keys all come out in key order, one entry per key
    return _Candidates(
        cls=keys % k,
        best={f: cat[f"{f}_b"][b] for f in ("row", "col", "score", "value")},
        rand={f: cat[f"{f}_r"][r] for f in ("row", "col", "score", "value")},
        count=counts, mass=mass, mapped=mapped)


def _label_geometries(path: Path, crs: Any) -> list[Any]:
    """Existing label points or polygons, in the map's CRS."""
    frame = read_vector(path, "label file", "the study's label points or polygons (--labels)")
    geoms = frame.to_crs(crs).geometry
    return [g for g in geoms if g is not None and not g.is_empty]


class _Spacing:
    """Places taken, on a hash grid in map units; a pixel is free when no place lies closer
    than ``distance`` (never the same pixel twice)."""

    def __init__(self, distance: float, xres: float, yres: float) -> None:
        self.d = max(distance, 0.5 * min(xres, yres))
        self.xres, self.yres = xres, yres
        self.grid: dict[tuple[int, int], list[tuple[float, float]]] = {}

    def take(self, row: int, col: int) -> bool:
        """Take pixel (row, col) when it is free."""
        x, y = (col + 0.5) * self.xres, (row + 0.5) * self.yres
        kx, ky = int(x // self.d), int(y // self.d)
        d2 = self.d * self.d
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for px, py in self.grid.get((kx + dx, ky + dy), ()):
                    if (x - px) ** 2 + (y - py) ** 2 < d2:
                        return False
        self.grid.setdefault((kx, ky), []).append((x, y))
        return True


def _greedy(order: np.ndarray, cand: dict[str, np.ndarray], classes: np.ndarray,
            quota: np.ndarray | None, limit: int, spacing: _Spacing, used: np.ndarray
            ) -> list[int]:
    """Candidates taken in ``order`` while their class has quota left (any class without a
    quota), at most ``limit``, keeping the spacing; ``quota`` and ``used`` are updated."""
    taken: list[int] = []
    rows, cols = cand["row"], cand["col"]
    for i in order.tolist():
        if len(taken) >= limit:
            break
        c = int(classes[i])
        if used[i] or (quota is not None and quota[c] <= 0):
            continue
        if spacing.take(int(rows[i]), int(cols[i])):
            used[i] = True
            taken.append(i)
            if quota is not None:
                quota[c] -= 1
    return taken


def _split(total: np.ndarray, share: float) -> np.ndarray:
    """Integer parts of ``total * share`` per class summing to ``sum(total) * share`` rounded
    (floors, then the largest remainders)."""
    want = np.asarray(total, dtype=float) * share
    out = np.floor(want + 1e-9).astype(np.int64)
    extra = math.floor(float(np.sum(total)) * share + 0.5) - int(out.sum())
    if extra > 0:
        out[np.argsort(-(want - out), kind="stable")[:extra]] += 1
    return np.minimum(out, total)


def _select(cand: _Candidates, alloc: np.ndarray, opts: SuggestOptions, spacing: _Spacing
            ) -> list[dict[str, Any]]:
    """The places (see the module docstring, step 3)."""
    rng = np.random.default_rng([opts.seed, 11])
    picks: list[dict[str, Any]] = []
    n = len(cand.cls)
    used_b, used_r = np.zeros(n, bool), np.zeros(n, bool)
    best_order = np.lexsort((rng.random(n), -cand.best["score"]))  # ties at random
    weights = cand.count / np.maximum(np.bincount(cand.cls, weights=cand.count,
                                                  minlength=len(alloc))[cand.cls], 1)
    keys = np.log(rng.random(n)) / np.maximum(weights, 1e-300)
    rand_order = np.argsort(-keys, kind="stable")  # weighted order (Efraimidis-Spirakis)
    random_quota = _split(alloc, opts.explore)
    quota = alloc - random_quota

    def add(idx: list[int], source: dict[str, np.ndarray], pick: str) -> None:
        picks.extend({"row": int(source["row"][i]), "col": int(source["col"][i]),
                      "map_class": int(cand.cls[i]), "score": float(source["score"][i]),
                      "value": float(source["value"][i]), "pick": pick} for i in idx)

    add(_greedy(best_order, cand.best, cand.cls, quota, n, spacing, used_b), cand.best,
        "uncertain")
    quota += random_quota  # the random share, and what the uncertain picks left
    add(_greedy(rand_order, cand.rand, cand.cls, quota, n, spacing, used_r), cand.rand,
        "random")
    left = int(alloc.sum()) - len(picks)  # quota no candidate of its class could fill
    if left > 0:
        add(_greedy(best_order, cand.best, cand.cls, None, left, spacing, used_b), cand.best,
            "uncertain")
        left = int(alloc.sum()) - len(picks)
        add(_greedy(rand_order, cand.rand, cand.cls, None, left, spacing, used_r), cand.rand,
            "random")
    return picks


def _allocation(cand: _Candidates, opts: SuggestOptions) -> np.ndarray:
    available = np.bincount(cand.cls, minlength=len(cand.mass)).astype(np.int64)
    need = int(np.minimum(opts.min_per_class, available).sum())
    if opts.n < need:
        raise SamplingError(
            f"-n {opts.n} is below the minimum of {opts.min_per_class} places per class over "
            f"{int((available > 0).sum())} classes with candidates ({need}); raise -n or "
            "lower --min-per-class")
    weights = cand.mass if cand.mass[available > 0].sum() > 0 else cand.mapped.astype(float)
    return allocate(opts.n, weights, opts.min_per_class, available)


def _warn_shortfall(cmap: ClassMap, cand: _Candidates, picks: list[dict[str, Any]],
                    opts: SuggestOptions, distance: float, labelled: bool) -> dict[str, Any]:
    """Warn (and return, for the record) when fewer places than ``n`` were found, and about
    mapped classes that got none."""
    out: dict[str, Any] = {}
    got = np.bincount([p["map_class"] for p in picks], minlength=cmap.n_classes)
    where = "interior pixels" + (" away from the labels" if labelled else "")
    no_candidates = [cmap.class_names[c] for c in range(cmap.n_classes)
                     if cmap.counts[c] > 0 and not (cand.cls == c).any()]
    if no_candidates:
        out["classes_without_candidates"] = no_candidates
        warnings.warn(f"mapped class(es) {', '.join(map(repr, no_candidates))} get no place: "
                      f"they have no {where} with a finite {opts.band!r} (--window "
                      f"{opts.window})", UserWarning, stacklevel=3)
    if len(picks) < opts.n:
        cause = (f"the map has only {len(cand.cls)} candidate blocks ({where}, in blocks of "
                 "--min-distance)" if len(cand.cls) < opts.n else
                 f"the other candidates lie closer than --min-distance {distance:g} to a place")
        out["shortfall"] = {"requested": opts.n, "found": len(picks), "cause": cause}
        warnings.warn(f"{len(picks)} places of the {opts.n} asked for: {cause}; lower "
                      "--min-distance or -n", UserWarning, stacklevel=3)
    out["per_class_found"] = {cmap.class_names[c]: int(got[c]) for c in range(cmap.n_classes)}
    return out


def _write_gpkg(path: Path, cmap: ClassMap | _ValueMap, picks: list[dict[str, Any]],
                band: str, prefix: str) -> None:
    rows = np.array([p["row"] for p in picks], dtype=np.int64)
    cols = np.array([p["col"] for p in picks], dtype=np.int64)
    xs, ys = cmap.grid.transform @ (cols + 0.5, rows + 0.5)
    frame = gpd.GeoDataFrame({
        "id": [f"{prefix}{i + 1:04d}" for i in range(len(picks))],
        "map_class": np.array([p["map_class"] for p in picks], dtype=np.int64),
        "map_class_name": [cmap.class_names[p["map_class"]] for p in picks],
        band: np.array([p["value"] for p in picks], dtype=np.float64),
        "score": np.array([p["score"] for p in picks], dtype=np.float64),
        "pick": [p["pick"] for p in picks],
    }, geometry=shapely.points(np.asarray(xs), np.asarray(ys)), crs=cmap.grid.crs)
    if isinstance(cmap, _ValueMap):  # measure the value there
        frame["map_value"] = _map_values(cmap, picks)
        frame["value"] = pd.Series([None] * len(picks), dtype=object)
    else:  # label the class there
        frame["class"] = pd.Series([None] * len(picks), dtype=object)
    frame.to_file(path, driver="GPKG", layer=STEM, engine="pyogrio")


def _write_png(path: Path, unc_path: Path, band: int, band_name: str,
               picks: list[dict[str, Any]], cmap: ClassMap) -> None:
    """The uncertainty band (at most 1000 px a side) with the places over it."""
    from matplotlib.figure import Figure

    scale = max(1.0, max(cmap.grid.width, cmap.grid.height) / 1000)
    shape = (max(1, round(cmap.grid.height / scale)), max(1, round(cmap.grid.width / scale)))
    with rasterio.open(unc_path) as src:
        image = src.read(band, out_shape=shape, masked=True).filled(np.nan)
    fig = Figure(figsize=(7, 7 * shape[0] / shape[1] + 0.6))
    ax = fig.add_subplot()
    shown = ax.imshow(image, cmap="magma", interpolation="nearest",
                      extent=(0, cmap.grid.width, cmap.grid.height, 0))
    fig.colorbar(shown, ax=ax, fraction=0.04, label=band_name)
    for pick, marker, colour in (("uncertain", "o", "#00e5ff"), ("random", "s", "#7CFC00")):
        sel = [p for p in picks if p["pick"] == pick]
        if sel:
            ax.scatter([p["col"] + 0.5 for p in sel], [p["row"] + 0.5 for p in sel], s=18,
                       marker=marker, facecolors="none", edgecolors=colour, linewidths=1.2,
                       label=f"{pick} ({len(sel)})")
    ax.set_axis_off()
    ax.set_title(f"Where to label next: {len(picks)} places")
    if picks:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.8)
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")


def suggest_labels(
    map_path: str | Path, opts: SuggestOptions, *, out_dir: str | Path | None = None,
    uncertainty: str | Path | None = None, labels: str | Path | None = None,
    classes: list[str] | None = None, origin: str = "geofuse suggest",
) -> Suggestions:
    """Suggest ``opts.n`` places to label next from a class map and its uncertainty (see the
    module docstring); write the GeoPackage, the JSON record and the PNG together.

    Args:
        map_path: the class map (``classes.tif`` of ``geofuse predict``).
        opts: how many and how spread.
        out_dir: output folder (default: the map's folder).
        uncertainty: the uncertainty raster (default: ``uncertainty.tif`` beside the map).
        labels: existing label points or polygons; no place within ``opts.label_distance``.
        classes: class names when the map carries none.
        origin: what asked for the places (``origin`` in the JSON record).

    Raises:
        ConfigError: options out of range, a band the raster lacks.
        DataNotFoundError: the map, the uncertainty raster or the label file is missing.
        RasterError: the uncertainty raster is on another grid; an unreadable map.
        SamplingError: ``n`` below the per-class minimum, or no candidate at all.
    """
    _check_options(opts)
    values = is_value_map(map_path)
    cmap = _open_value_map(Path(map_path)) if values else open_class_map(map_path, classes)
    if opts.window is None:
        opts = replace(opts, window=default_window(cmap.path))
    if opts.band is None:
        opts = replace(opts, band="member_std" if values else "entropy")
    unc_path, band = find_uncertainty(cmap.path, cmap.grid, uncertainty, opts.band,
                                      required=True)  # type: ignore[misc]
    t = cmap.grid.transform
    xres, yres = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
    distance = opts.min_distance if opts.min_distance is not None else default_distance(
        int(cmap.counts.sum()), cmap.pixel_area_m2 if cmap.pixel_area_m2 else xres * yres,
        max(xres, yres), opts.n)
    label_distance = (opts.label_distance if opts.label_distance is not None
                      else opts.window * max(xres, yres))
    existing = _label_geometries(Path(labels), cmap.grid.crs) if labels else []
    sides = block_sides(cmap.grid.height, cmap.grid.width, distance / yres, distance / xres)
    cand = _candidates(cmap, unc_path, band, sides, opts, _LabelMask(existing, label_distance))
    if not len(cand.cls):
        near = f" farther than --label-distance {label_distance:g} from {labels}" if labels \
            else ""
        raise SamplingError(
            f"no place to suggest in {str(cmap.path)!r}: no mapped pixel with a finite "
            f"{opts.band!r} inside a {opts.window}x{opts.window} px patch of one class{near}; "
            "lower --window or --label-distance, or check the map and its uncertainty")
    alloc = _allocation(cand, opts)
    picks = _select(cand, alloc, opts, _Spacing(distance, xres, yres))
    found = _warn_shortfall(cmap, cand, picks, opts, distance, bool(labels))
    prefix = opts.prefix if opts.prefix is not None else \
        f"s{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}_"
    record = {"origin": origin, **_record(cmap, opts, unc_path, (distance, label_distance),
                                          sides, labels, cand, alloc, picks, found)}
    out = Path(out_dir) if out_dir is not None else cmap.path.parent
    out.mkdir(parents=True, exist_ok=True)
    targets = {k: out / f"{STEM}.{k}" for k in ("gpkg", "png", "json")}
    with staged_together(targets) as staged:  # all three, or none of them
        _write_gpkg(staged["gpkg"], cmap, picks, opts.band, prefix)
        _write_png(staged["png"], unc_path, band, opts.band, picks, cmap)
        atomic_write_json(staged["json"], record)
    return Suggestions(gpkg_path=targets["gpkg"], json_path=targets["json"],
                       png_path=targets["png"], record=record)


def _record(cmap: ClassMap, opts: SuggestOptions, unc_path: Path,
            distances: tuple[float, float], sides: tuple[int, int],
            labels: str | Path | None, cand: _Candidates, alloc: np.ndarray,
            picks: list[dict[str, Any]], found: dict[str, Any]) -> dict[str, Any]:
    per_class = []
    for c, name in enumerate(cmap.class_names):
        mine = [p for p in picks if p["map_class"] == c]
        per_class.append({
            "class": name, "mapped_pixels": int(cmap.counts[c]),
            "uncertainty_mass": float(cand.mass[c]),
            "candidate_blocks": int((cand.cls == c).sum()), "allocated": int(alloc[c]),
            "uncertain": sum(p["pick"] == "uncertain" for p in mine),
            "random": sum(p["pick"] == "random" for p in mine),
            "mean_score": float(np.mean([p["score"] for p in mine])) if mine else None})
    return {
        "map": str(cmap.path), "uncertainty": str(unc_path), "band": opts.band,
        "labels": str(labels) if labels else None, "n_requested": opts.n, "n": len(picks),
        "min_distance": distances[0], "label_distance": distances[1],
        "block_px": list(sides), "window": opts.window, "explore": opts.explore,
        "min_per_class": opts.min_per_class, "seed": opts.seed,
        "crs": cmap.grid.crs_string(), "classes": per_class, **found,
    }


def summary(record: dict[str, Any]) -> str:
    """One line: how many places, how picked, per class."""
    uncertain = sum(c["uncertain"] for c in record["classes"])
    per_class = ", ".join(f"{c['class']} {c['uncertain'] + c['random']}"
                          for c in record["classes"] if c["uncertain"] + c["random"])
    return (f"{record['n']} places ({uncertain} most uncertain, {record['n'] - uncertain} "
            f"random), at least {record['min_distance']:g} apart: {per_class}")
