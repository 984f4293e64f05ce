"""``geofuse suggest MAP -n N``: where to label next (active learning on a whole map).

A model maps best where it was shown examples; the pixels it is least sure of are where new
labels teach it most, provided they are spread out and not all on one confused field (Tuia et
al. 2011: uncertainty plus diversity). From a class map and its uncertainty raster (both
written by ``geofuse predict``):

1. **Candidates.** ``min_distance`` defaults to a quarter of the spacing of ``n`` points on a
   square lattice over the mapped area (at least ten pixels), so suggestions spread over the
   whole map. The map is cut into square blocks of ``min_distance`` (at least one pixel;
   larger when the map has more than :data:`MAX_BLOCKS` blocks). One pass over strips keeps,
   for every block and mapped class, the pixel of highest uncertainty (an *uncertain*
   candidate), one pixel drawn at random (a *random* candidate), and how many pixels of the
   class the block holds. Memory is bounded by the number of blocks, not pixels.
2. **Allocation.** Each mapped class gets ``min_per_class`` suggestions, the rest in proportion
   to its uncertainty mass (the sum of the band over its pixels: big, confused classes get
   more); :func:`~geofuse.mapping.sample_design.allocate` does the arithmetic.
3. **Selection.** A share ``1 - explore`` of each class's quota goes to its most uncertain
   candidates, the rest to random candidates (blocks drawn in proportion to the class's pixels
   in them, so the pick is close to uniform over the class): labels only on decision
   boundaries bias a training set. Candidates are taken greedily (uncertain ones in falling
   uncertainty, random ones in random order) when at least ``min_distance`` from every
   suggestion taken so far, and at least ``label_distance`` (default ten pixels) from the
   existing labels (``labels``: points or polygons; inside a polygon counts as near).

Outputs (in ``out_dir``, default the map's folder): ``label_suggestions.gpkg`` (points at pixel
centres: ``id``, ``map_class``, ``map_class_name``, the band value, ``pick`` uncertain/random
and an empty ``class`` for the person who labels them; append the labelled points to the
study's label points and run extract again), ``label_suggestions.json`` (settings, allocation,
shortfalls) and ``label_suggestions.png`` (the uncertainty map with the suggestions).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio.windows import Window

from geofuse.errors import ConfigError, DataNotFoundError, LabelError, RasterError, SamplingError
from geofuse.io_utils import atomic_path, atomic_write_json
from geofuse.mapping.assess_io import STRIP_PIXELS, ClassMap, open_class_map
from geofuse.mapping.sample_design import allocate

STEM = "label_suggestions"
#: At most about this many candidate blocks (the block side grows on larger maps).
MAX_BLOCKS = 1_000_000
DEFAULT_MIN_DISTANCE_PX = 10


@dataclass(frozen=True)
class SuggestOptions:
    """How many suggestions and how to spread them.

    Attributes:
        n: suggestions in all.
        min_distance: least distance between suggestions, and from existing labels, in map
            units; ``None``: :func:`default_distance`.
        explore: share of each class's suggestions drawn at random instead of by uncertainty.
        min_per_class: suggestions every mapped class gets at least.
        band: uncertainty band by name (``entropy``, ``one_minus_max_probability``,
            ``member_std``, ``vote_disagreement``).
        seed: random seed.
        label_distance: least distance from existing labels, in map units; ``None``:
            :data:`DEFAULT_MIN_DISTANCE_PX` pixels.
    """

    n: int
    min_distance: float | None = None
    explore: float = 0.2
    min_per_class: int = 2
    band: str = "entropy"
    seed: int = 0
    label_distance: float | None = None


@dataclass(frozen=True)
class Suggestions:
    """What :func:`suggest_labels` wrote."""

    gpkg_path: Path
    json_path: Path
    png_path: Path
    record: dict[str, Any]


@dataclass
class _Candidates:
    """Per class: flat block index, uncertain and random pixel (row, col, value) and the
    class's pixels in the block."""

    block: list[np.ndarray]
    best: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    rand: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    count: list[np.ndarray]
    mass: np.ndarray


def _check_options(opts: SuggestOptions) -> None:
    bad = []
    if opts.n < 1:
        bad.append(f"-n {opts.n} (at least 1)")
    if not 0 <= opts.explore <= 1:
        bad.append(f"--explore {opts.explore} (0..1)")
    if opts.min_per_class < 0:
        bad.append(f"--min-per-class {opts.min_per_class} (0 or more)")
    for name, value in (("--min-distance", opts.min_distance),
                        ("--label-distance", opts.label_distance)):
        if value is not None and not (value >= 0 and math.isfinite(value)):
            bad.append(f"{name} {value} (a distance in map units, >= 0)")
    if bad:
        raise ConfigError(f"suggest options out of range: {', '.join(bad)}; fix the option")


def _uncertainty_band(cmap: ClassMap, path: Path | None, band: str) -> tuple[Path, int]:
    """The uncertainty raster (given, or beside the map) and the 1-based index of ``band``."""
    src_path = path if path is not None else cmap.path.parent / "uncertainty.tif"
    if not src_path.is_file():
        raise DataNotFoundError(
            f"uncertainty raster {str(src_path)!r} does not exist; give the uncertainty.tif "
            "that 'geofuse predict' wrote with the map (--uncertainty PATH)")
    with rasterio.open(src_path) as src:
        same = (src.width, src.height, src.crs, src.transform) == (
            cmap.grid.width, cmap.grid.height, cmap.grid.crs, cmap.grid.transform)
        names = [d or f"band_{i + 1}" for i, d in enumerate(src.descriptions)]
    if not same:
        raise RasterError(
            f"uncertainty raster {str(src_path)!r} is not on the grid of the map "
            f"{str(cmap.path)!r} ({cmap.grid.width}x{cmap.grid.height} px); give the "
            "uncertainty.tif written with this map")
    if band not in names:
        raise ConfigError(f"uncertainty raster {str(src_path)!r} has no band {band!r}; its "
                          f"bands are {names}; choose one with --band")
    return src_path, names.index(band) + 1


def default_distance(mapped_pixels: int, pixel: float, n: int) -> float:
    """A quarter of the spacing of ``n`` points on a square lattice over the mapped area, and
    at least :data:`DEFAULT_MIN_DISTANCE_PX` pixels: suggestions spread over the whole map,
    with room for every class's quota."""
    return max(DEFAULT_MIN_DISTANCE_PX * pixel, 0.25 * pixel * math.sqrt(mapped_pixels / n))


def block_side(height: int, width: int, min_distance_px: float) -> int:
    """Side of the candidate blocks: ``min_distance`` in pixels, grown until the map has at
    most :data:`MAX_BLOCKS` blocks."""
    side = max(1, math.ceil(min_distance_px))
    while math.ceil(height / side) * math.ceil(width / side) > MAX_BLOCKS:
        side += max(1, side // 4)
    return side


def _blocks(a: np.ndarray, side: int, fill: Any) -> np.ndarray:
    """(rows, W) -> (block rows, block cols, side * side), padded with ``fill``."""
    h, w = a.shape
    hb, wb = math.ceil(h / side), math.ceil(w / side)
    padded = np.full((hb * side, wb * side), fill, dtype=a.dtype)
    padded[:h, :w] = a
    return padded.reshape(hb, side, wb, side).transpose(0, 2, 1, 3).reshape(hb, wb, side * side)


def _pick(values: np.ndarray, side: int, row0: int, width: int, nbx: int, brow0: int
          ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per block of a strip: the flat block index and (row, col, value) of the largest value
    (``-inf`` = not a candidate), for blocks holding a candidate."""
    blocks = _blocks(values, side, -np.inf)
    arg = blocks.argmax(axis=2)
    top = np.take_along_axis(blocks, arg[..., None], axis=2)[..., 0]
    by, bx = np.nonzero(np.isfinite(top))
    inner = arg[by, bx]
    rows = row0 + by * side + inner // side
    cols = bx * side + inner % side
    return (brow0 + by) * nbx + bx, (rows, cols, top[by, bx])


def _candidates(cmap: ClassMap, unc_path: Path, band: int, side: int, seed: int
                ) -> _Candidates:
    """One pass over strips of whole block rows (see the module docstring, step 1)."""
    k, width, height = cmap.n_classes, cmap.grid.width, cmap.grid.height
    nbx = math.ceil(width / side)
    rng = np.random.default_rng([seed, 7])
    parts: dict[str, list[list[Any]]] = {key: [[] for _ in range(k)]
                                         for key in ("block", "best", "rand", "count")}
    mass = np.zeros(k)
    strip = side * max(1, STRIP_PIXELS // max(width * side, 1))
    with rasterio.open(cmap.path) as cls_src, rasterio.open(unc_path) as unc_src:
        for row0 in range(0, height, strip):
            win = Window(0, row0, width, min(strip, height - row0))
            cls = cls_src.read(1, window=win)
            unc = unc_src.read(band, window=win, masked=True).filled(np.nan).astype(np.float64)
            valid = (cls != cmap.nodata) & np.isfinite(unc) & (cls < k)
            for c in np.unique(cls[valid]).tolist():
                of_class = valid & (cls == c)
                mass[c] += float(unc[of_class].sum())
                block, best = _pick(np.where(of_class, unc, -np.inf), side, row0, width, nbx,
                                    row0 // side)
                _, rand = _pick(np.where(of_class, rng.random(cls.shape), -np.inf), side,
                                row0, width, nbx, row0 // side)
                counts = _blocks(of_class, side, False).sum(axis=2)
                parts["block"][c].append(block)
                parts["best"][c].append(best)
                parts["rand"][c].append((rand[0], rand[1], unc[rand[0] - row0, rand[1]]))
                parts["count"][c].append(counts.reshape(-1)[block - (row0 // side) * nbx])
    return _Candidates(
        block=[_cat(p) for p in parts["block"]],
        best=[_cat3(p) for p in parts["best"]], rand=[_cat3(p) for p in parts["rand"]],
        count=[_cat(p) for p in parts["count"]], mass=mass)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _cat3(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def _label_geometries(path: Path, crs: Any) -> list[Any]:
    """Existing label points or polygons, in the map's CRS."""
    if not path.is_file():
        raise DataNotFoundError(f"label file {str(path)!r} does not exist; give the study's "
                                "label points or polygons (--labels FILE)")
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as err:  # pyogrio raises several types for unreadable files
        raise LabelError(f"cannot read label file {str(path)!r} "
                         f"({' '.join(str(err).split())}); give a GeoJSON, GeoPackage or "
                         "Shapefile") from None
    if frame.crs is None:
        raise LabelError(f"label file {str(path)!r} has no CRS; write it with one")
    geoms = frame.to_crs(crs).geometry
    return [g for g in geoms if g is not None and not g.is_empty]


class _Spacing:
    """Accepted points on a hash grid of ``distance`` pixels; a pixel is free when no accepted
    point lies closer than ``distance`` (at least one pixel: never the same pixel twice)."""

    def __init__(self, distance_px: float, labels: list[Any], transform: Any,
                 distance_map: float) -> None:
        self.d = max(float(distance_px), 1.0)
        self.grid: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self.tree = shapely.STRtree(labels) if labels else None
        self.transform, self.distance_map = transform, distance_map

    def near_labels(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Whether each pixel centre lies within the distance of (or in) an existing label."""
        near = np.zeros(len(rows), dtype=bool)
        if self.tree is None or not len(rows):
            return near
        xs, ys = self.transform @ (cols + 0.5, rows + 0.5)
        pts = shapely.points(np.asarray(xs), np.asarray(ys))
        hit = (self.tree.query(pts, predicate="dwithin", distance=self.distance_map)
               if self.distance_map > 0 else self.tree.query(pts, predicate="intersects"))
        near[np.unique(hit[0])] = True
        return near

    def take(self, r: int, c: int) -> bool:
        """Accept pixel (r, c) when it is free."""
        kr, kc = int(r // self.d), int(c // self.d)
        d2 = self.d * self.d
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                for pr, pc in self.grid.get((kr + dr, kc + dc), ()):
                    if (r - pr) ** 2 + (c - pc) ** 2 < d2:
                        return False
        self.grid.setdefault((kr, kc), []).append((r, c))
        return True


def _greedy(order: np.ndarray, rows: np.ndarray, cols: np.ndarray, classes: np.ndarray,
            quota: np.ndarray, spacing: _Spacing) -> list[int]:
    """Indices of candidates taken in ``order`` while their class has quota left and they
    keep the spacing; ``quota`` is decremented."""
    taken: list[int] = []
    for i in order.tolist():
        c = int(classes[i])
        if quota[c] > 0 and spacing.take(int(rows[i]), int(cols[i])):
            quota[c] -= 1
            taken.append(i)
        if not quota.any():
            break
    return taken


def _pool(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], spacing: _Spacing
          ) -> tuple[np.ndarray, ...]:
    """All classes' candidates (rows, cols, values, classes, index within the class), those
    near existing labels left out."""
    rows, cols, vals = (np.concatenate([p[i] for p in parts]) for i in range(3))
    classes = np.concatenate([np.full(len(p[0]), c) for c, p in enumerate(parts)])
    within = np.concatenate([np.arange(len(p[0])) for p in parts])
    ok = ~spacing.near_labels(rows, cols)
    return rows[ok], cols[ok], vals[ok], classes[ok], within[ok]


def _select(cand: _Candidates, alloc: np.ndarray, explore: float, spacing: _Spacing,
            seed: int) -> tuple[list[dict[str, Any]], dict[int, list[int]]]:
    """The suggestions (see the module docstring, step 3) and the classes that fell short
    (class -> [quota, taken])."""
    rng = np.random.default_rng([seed, 11])
    out: list[dict[str, Any]] = []
    quota = np.rint(alloc * (1 - explore)).astype(np.int64)
    rows, cols, vals, classes, _ = _pool(cand.best, spacing)
    order = np.argsort(-vals, kind="stable")  # most uncertain first, all classes together
    for i in _greedy(order, rows, cols, classes, quota, spacing):
        out.append({"row": int(rows[i]), "col": int(cols[i]), "map_class": int(classes[i]),
                    "value": float(vals[i]), "pick": "uncertain"})
    quota += alloc - np.rint(alloc * (1 - explore)).astype(np.int64)  # the random share
    rows, cols, vals, classes, within = _pool(cand.rand, spacing)
    counts = np.concatenate(cand.count).astype(float) if cand.count else np.zeros(0)
    weights = counts[_flat_index(cand.count, classes, within)] if len(rows) else counts[:0]
    # blocks in proportion to the class's pixels in them, each class on its own scale
    totals = np.bincount(classes, weights=weights, minlength=len(alloc))
    u = rng.random(len(rows))
    keys = np.log(u) / np.maximum(weights / np.maximum(totals[classes], 1e-300), 1e-300)
    order = np.argsort(-keys, kind="stable")  # weighted random order (Efraimidis-Spirakis)
    for i in _greedy(order, rows, cols, classes, quota, spacing):
        out.append({"row": int(rows[i]), "col": int(cols[i]), "map_class": int(classes[i]),
                    "value": float(vals[i]), "pick": "random"})
    got = np.bincount([s["map_class"] for s in out], minlength=len(alloc))
    short = {c: [int(alloc[c]), int(got[c])] for c in range(len(alloc)) if got[c] < alloc[c]}
    return out, short


def _flat_index(parts: list[np.ndarray], classes: np.ndarray, within: np.ndarray) -> np.ndarray:
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    return offsets[classes] + within


def _write_gpkg(path: Path, cmap: ClassMap, picks: list[dict[str, Any]], band: str) -> None:
    rows = np.array([p["row"] for p in picks], dtype=np.int64)
    cols = np.array([p["col"] for p in picks], dtype=np.int64)
    xs, ys = cmap.grid.transform @ (cols + 0.5, rows + 0.5)
    frame = gpd.GeoDataFrame({
        "id": [f"s{i + 1:04d}" for i in range(len(picks))],
        "map_class": np.array([p["map_class"] for p in picks], dtype=np.int64),
        "map_class_name": [cmap.class_names[p["map_class"]] for p in picks],
        band: np.array([p["value"] for p in picks], dtype=np.float64),
        "pick": [p["pick"] for p in picks],
        "class": pd.Series([None] * len(picks), dtype=object),
    }, geometry=shapely.points(np.asarray(xs), np.asarray(ys)), crs=cmap.grid.crs)
    with atomic_path(path, suffix=".gpkg") as tmp:
        tmp.unlink()  # GDAL writes a new GeoPackage, not into an empty file
        frame.to_file(tmp, driver="GPKG", layer=STEM, engine="pyogrio")


def _write_png(path: Path, unc_path: Path, band: int, band_name: str,
               picks: list[dict[str, Any]], cmap: ClassMap) -> None:
    """The uncertainty band (at most 1000 px a side) with the suggestions over it."""
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
    ax.set_title(f"Where to label next: {len(picks)} suggestions")
    if picks:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def suggest_labels(
    map_path: str | Path, opts: SuggestOptions, *, out_dir: str | Path | None = None,
    uncertainty: str | Path | None = None, labels: str | Path | None = None,
    classes: list[str] | None = None,
) -> Suggestions:
    """Suggest ``opts.n`` places to label next from a class map and its uncertainty (see the
    module docstring); write the GeoPackage, the JSON record and the PNG.

    Args:
        map_path: the class map (``classes.tif`` of ``geofuse predict``).
        opts: how many and how spread.
        out_dir: output folder (default: the map's folder).
        uncertainty: the uncertainty raster (default: ``uncertainty.tif`` beside the map).
        labels: existing label points or polygons; no suggestion within ``min_distance``.
        classes: class names when the map carries none.

    Raises:
        ConfigError: options out of range, a band the raster lacks.
        DataNotFoundError: the map, the uncertainty raster or the label file is missing.
        RasterError: the uncertainty raster is on another grid; an unreadable map.
        SamplingError: ``n`` below the per-class minimum, or no candidate left.
    """
    _check_options(opts)
    cmap = open_class_map(map_path, classes)
    unc_path, band = _uncertainty_band(cmap, Path(uncertainty) if uncertainty else None,
                                       opts.band)
    pixel = math.sqrt(abs(cmap.grid.transform.a * cmap.grid.transform.e
                          - cmap.grid.transform.b * cmap.grid.transform.d))
    distance = opts.min_distance if opts.min_distance is not None \
        else default_distance(int(cmap.counts.sum()), pixel, opts.n)
    side = block_side(cmap.grid.height, cmap.grid.width, distance / pixel)
    existing = _label_geometries(Path(labels), cmap.grid.crs) if labels else []
    cand = _candidates(cmap, unc_path, band, side, opts.seed)
    available = np.array([len(b) for b in cand.block], dtype=np.int64)
    need = int(np.minimum(opts.min_per_class, available).sum())
    if opts.n < need:
        raise SamplingError(
            f"-n {opts.n} is below the minimum of {opts.min_per_class} suggestions per class "
            f"over {int((available > 0).sum())} mapped classes ({need}); raise -n or lower "
            "--min-per-class")
    if not available.any():
        raise SamplingError(f"class map {str(cmap.path)!r} has no mapped pixel with a finite "
                            f"{opts.band!r} in {str(unc_path)!r}; check the two rasters")
    alloc = allocate(opts.n, cand.mass, opts.min_per_class, available)
    label_distance = (opts.label_distance if opts.label_distance is not None
                      else DEFAULT_MIN_DISTANCE_PX * pixel)
    spacing = _Spacing(distance / pixel, existing, cmap.grid.transform, label_distance)
    picks, short = _select(cand, alloc, opts.explore, spacing, opts.seed)
    if not picks:
        raise SamplingError(f"no place to suggest: every candidate of {str(cmap.path)!r} lies "
                            f"within --label-distance {label_distance:g} of the labels in "
                            f"{labels}; lower --label-distance")
    if short:
        names = ", ".join(f"{cmap.class_names[c]!r} {got} of {want}"
                          for c, (want, got) in short.items())
        warnings.warn(f"fewer suggestions than allocated for class(es) {names}: their pixels "
                      f"are too few or too close together for --min-distance {distance:g}",
                      UserWarning, stacklevel=2)
    out = Path(out_dir) if out_dir is not None else cmap.path.parent
    out.mkdir(parents=True, exist_ok=True)
    record = _record(cmap, opts, unc_path, (distance, label_distance), side, labels, cand,
                     alloc, picks, short)
    gpkg, json_path, png = (out / f"{STEM}.gpkg", out / f"{STEM}.json", out / f"{STEM}.png")
    _write_gpkg(gpkg, cmap, picks, opts.band)
    _write_png(png, unc_path, band, opts.band, picks, cmap)
    atomic_write_json(json_path, record)
    return Suggestions(gpkg_path=gpkg, json_path=json_path, png_path=png, record=record)


def _record(cmap: ClassMap, opts: SuggestOptions, unc_path: Path,
            distances: tuple[float, float], side: int, labels: str | Path | None,
            cand: _Candidates, alloc: np.ndarray, picks: list[dict[str, Any]],
            short: dict[int, list[int]]) -> dict[str, Any]:
    per_class = []
    for c, name in enumerate(cmap.class_names):
        mine = [p for p in picks if p["map_class"] == c]
        per_class.append({
            "class": name, "mapped_pixels": int(cmap.counts[c]),
            "uncertainty_mass": float(cand.mass[c]), "allocated": int(alloc[c]),
            "uncertain": sum(p["pick"] == "uncertain" for p in mine),
            "random": sum(p["pick"] == "random" for p in mine),
            "mean_value": float(np.mean([p["value"] for p in mine])) if mine else None})
    return {
        "map": str(cmap.path), "uncertainty": str(unc_path), "band": opts.band,
        "labels": str(labels) if labels else None, "n_requested": opts.n, "n": len(picks),
        "min_distance": distances[0], "label_distance": distances[1], "block_side_px": side,
        "explore": opts.explore, "min_per_class": opts.min_per_class, "seed": opts.seed,
        "crs": cmap.grid.crs_string(),
        "classes": per_class,
        "short": {cmap.class_names[c]: {"allocated": a, "taken": g}
                  for c, (a, g) in short.items()},
    }


def summary(record: dict[str, Any]) -> str:
    """One line: how many suggestions, how picked, per class."""
    uncertain = sum(c["uncertain"] for c in record["classes"])
    per_class = ", ".join(f"{c['class']} {c['uncertain'] + c['random']}"
                          for c in record["classes"] if c["uncertain"] + c["random"])
    return (f"{record['n']} suggestions ({uncertain} most uncertain, "
            f"{record['n'] - uncertain} random), at least {record['min_distance']:g} apart: "
            f"{per_class}")
