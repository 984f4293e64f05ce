"""``geofuse assess MAP --sample-design N``: a stratified random validation sample of points.

Design (Olofsson et al. 2014, section 5.1):

1. **Sample size.** Cochran's formula for a target standard error of overall accuracy
   (``--target-se``, default 0.01) with an expected user's accuracy per class
   (``--expected-ua``) gives the recommended total ``n = (sum_i W_i S_i / S(O))^2``,
   ``S_i = sqrt(U_i (1 - U_i))`` (their eq. 13). ``N`` = 0 uses that recommendation.
2. **Allocation.** Every mapped class first gets ``--min-per-class`` points (all its pixels if
   it has fewer), the rest of ``N`` is spread in proportion to the mapped area ``W_i``; a class
   whose proportional share falls below the minimum keeps the minimum and the others share
   what is left, repeated until stable; largest remainders make the counts sum to ``N``.
3. **Selection.** Within each class, points are drawn uniformly without replacement among its
   pixels (pixel centres; seeded): for each class the ranks of the chosen pixels among the
   class's pixels in row-major order are drawn first, then one pass over strips of the map
   picks those pixels, so memory stays bounded whatever the map size.

The GeoPackage (layer ``validation_sample``, the map's CRS) has the fields ``id``,
``map_class``, ``map_class_name``, ``stratum_weight`` (``W_i``) and an empty ``reference``
for a person to fill with class names; rows are shuffled so that the map classes do not come
in blocks. ``geofuse assess MAP --polygons validation_sample.gpkg --class-field reference``
then assesses the map from the filled sample.
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
from shapely import points

from geofuse.errors import ConfigError, SamplingError
from geofuse.io_utils import atomic_path, atomic_write_json
from geofuse.mapping.assess_io import ClassMap, open_class_map, strip_windows
from geofuse.mapping.assess_stats import cochran_sample_size

LAYER = "validation_sample"
GPKG_NAME, JSON_NAME = f"{LAYER}.gpkg", f"{LAYER}.json"


@dataclass(frozen=True)
class SampleDesign:
    """What :func:`design_sample` wrote and decided.

    Attributes:
        gpkg_path: the GeoPackage of points.
        json_path: the design (allocation, recommended size, expected standard errors).
        n: points drawn.
        recommended_n: Cochran's sample size for the target standard error.
        allocation: points per class name.
        expected_overall_se: standard error of overall accuracy expected from the allocation.
    """

    gpkg_path: Path
    json_path: Path
    n: int
    recommended_n: int
    allocation: dict[str, int]
    expected_overall_se: float | None


def _min_need(min_per_class: int, available: np.ndarray) -> np.ndarray:
    return np.minimum(min_per_class, available)


def allocate(n_total: int, weights: np.ndarray, min_per_class: int, available: np.ndarray
             ) -> np.ndarray:
    """Points per class: a minimum per class, the rest proportional to ``weights``.

    Args:
        n_total: total sample size ``N``.
        weights: mapped area (or share) per class.
        min_per_class: the minimum of every class with mapped pixels.
        available: pixels per class (no class gets more).

    Returns:
        int64 counts per class summing to ``min(N, available.sum())``.

    Raises:
        SamplingError: ``N`` is below the sum of the minimums.
    """
    w = np.asarray(weights, dtype=float)
    avail = np.asarray(available, dtype=np.int64)
    need = int(_min_need(min_per_class, avail).sum())
    if n_total < need:
        raise SamplingError(
            f"--sample-design {n_total} is below the minimum of {min_per_class} points per "
            f"class over {int((avail > 0).sum())} mapped classes ({need} points); raise N or "
            "lower --min-per-class")
    n_total = min(n_total, int(avail.sum()))
    alloc = np.zeros(len(w), dtype=float)
    fixed = avail <= 0
    while not fixed.all():
        free = ~fixed
        share = (n_total - alloc[fixed].sum()) * w[free] / max(w[free].sum(), 1e-300)
        target = alloc.copy()
        target[free] = share
        low = free & (target < _min_need(min_per_class, avail))
        high = free & (target > avail)
        if not (low | high).any():
            alloc = target
            break
        alloc[low] = _min_need(min_per_class, avail)[low]
        alloc[high] = avail[high]
        fixed |= low | high
    out = np.floor(alloc + 1e-9).astype(np.int64)
    short = n_total - int(out.sum())
    if short > 0:
        room = np.where(out < avail, alloc - out, -np.inf)
        out[np.argsort(-room, kind="stable")[:short]] += 1
    return out


def draw_pixels(cmap: ClassMap, allocation: np.ndarray, seed: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and classes of pixels drawn uniformly within each class (strip by strip).

    Args:
        cmap: the class map (its per-class counts are the populations).
        allocation: points per class.
        seed: random seed.
    """
    rng = np.random.default_rng(seed)
    k = cmap.n_classes
    ranks = [np.sort(rng.choice(int(cmap.counts[i]), size=int(allocation[i]), replace=False))
             for i in range(k)]
    seen = np.zeros(k, dtype=np.int64)
    rows, cols, cls = [], [], []
    with rasterio.open(cmap.path) as src:
        for win in strip_windows(cmap.grid):
            block = src.read(1, window=win)
            valid = block[block != cmap.nodata].astype(np.int64)
            in_strip = np.bincount(valid, minlength=k)[:k]
            for i in np.flatnonzero(in_strip):
                lo, hi = np.searchsorted(ranks[i], [seen[i], seen[i] + in_strip[i]])
                if hi > lo:
                    flat = np.flatnonzero(block == i)[ranks[i][lo:hi] - seen[i]]
                    rows.append(flat // cmap.grid.width + int(win.row_off))
                    cols.append(flat % cmap.grid.width)
                    cls.append(np.full(hi - lo, i, dtype=np.int64))
            seen += in_strip
    if not rows:
        return (np.zeros(0, dtype=np.int64),) * 3  # type: ignore[return-value]
    rr, cc, kk = np.concatenate(rows), np.concatenate(cols), np.concatenate(cls)
    order = np.lexsort((cc, rr, kk))  # by class, then row-major: the same for any strip size
    return rr[order], cc[order], kk[order]


def expected_errors(weights: np.ndarray, allocation: np.ndarray, expected_ua: float
                    ) -> tuple[float | None, list[float | None]]:
    """Standard errors of overall and user's accuracies expected from an allocation."""
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    var_u = np.array([expected_ua * (1 - expected_ua) / (n - 1) if n > 1 else math.nan
                      for n in allocation])
    users = [float(math.sqrt(v)) if math.isfinite(v) else None for v in var_u]
    overall = float(np.sum(np.where(w > 0, w**2 * var_u, 0.0)))
    return (math.sqrt(overall) if math.isfinite(overall) else None), users


def _write_points(path: Path, cmap: ClassMap, rows: np.ndarray, cols: np.ndarray,
                  cls: np.ndarray, weights: np.ndarray, seed: int) -> None:
    order = np.random.default_rng([seed, 1]).permutation(len(rows))
    rows, cols, cls = rows[order], cols[order], cls[order]
    xs, ys = cmap.grid.transform * (cols + 0.5, rows + 0.5)
    frame = gpd.GeoDataFrame({
        "id": np.arange(1, len(rows) + 1, dtype=np.int64),
        "map_class": cls.astype(np.int64),
        "map_class_name": [cmap.class_names[i] for i in cls],
        "stratum_weight": weights[cls],
        "reference": pd.Series([None] * len(rows), dtype=object),
    }, geometry=points(np.asarray(xs), np.asarray(ys)), crs=cmap.grid.crs)
    with atomic_path(path, suffix=".gpkg") as tmp:
        tmp.unlink()  # GDAL writes a new GeoPackage, not into an empty file
        frame.to_file(tmp, driver="GPKG", layer=LAYER, engine="pyogrio")


def _check_options(n: int, target_se: float, min_per_class: int, expected_ua: float) -> None:
    if n < 0 or min_per_class < 1 or not 0 < target_se < 1 or not 0 < expected_ua < 1:
        raise ConfigError(
            f"sample design options out of range: N={n} (>= 0; 0 = Cochran's size), "
            f"--min-per-class {min_per_class} (>= 1), --target-se {target_se} (0..1), "
            f"--expected-ua {expected_ua} (0..1); fix the option")


def design_sample(
    map_path: str | Path,
    n: int,
    *,
    out_dir: str | Path | None = None,
    target_se: float = 0.01,
    min_per_class: int = 50,
    expected_ua: float = 0.85,
    seed: int = 0,
    classes: list[str] | None = None,
) -> SampleDesign:
    """Draw a stratified random validation sample from a class map and write it.

    Args:
        map_path: the class map.
        n: total points; 0 = Cochran's size for ``target_se`` (at least the minimums).
        out_dir: folder for ``validation_sample.gpkg`` and ``.json``; default: the map's.
        target_se: target standard error of overall accuracy.
        min_per_class: minimum points per mapped class.
        expected_ua: user's accuracy expected of every class (for Cochran's formula).
        seed: random seed (the same seed gives the same points).
        classes: class names for a map that carries none.

    Raises:
        DataNotFoundError, RasterError: unusable map. SamplingError: ``n`` below the minimums.
        ConfigError: options out of range.
    """
    _check_options(n, target_se, min_per_class, expected_ua)
    cmap = open_class_map(map_path, classes)
    weights = cmap.counts / cmap.counts.sum()
    recommended = cochran_sample_size(weights, expected_ua, target_se)
    floor_n = int(_min_need(min_per_class, cmap.counts).sum())
    total = n if n > 0 else max(recommended, floor_n)
    alloc = allocate(total, weights, min_per_class, cmap.counts)
    if n and n < recommended:
        warnings.warn(f"--sample-design {n} is below the {recommended} points that Cochran's "
                      f"formula asks for a standard error of {target_se} in overall accuracy "
                      f"(expected user's accuracy {expected_ua}); expect wider intervals",
                      UserWarning, stacklevel=2)
    rows, cols, cls = draw_pixels(cmap, alloc, seed)
    out = Path(out_dir) if out_dir is not None else cmap.path.parent
    gpkg = out / GPKG_NAME
    _write_points(gpkg, cmap, rows, cols, cls, weights, seed)
    se_o, se_u = expected_errors(weights, alloc, expected_ua)
    info: dict[str, Any] = {
        "map": str(cmap.path), "crs": cmap.grid.crs_string(), "n": int(alloc.sum()),
        "recommended_n": recommended, "target_se": target_se, "expected_ua": expected_ua,
        "min_per_class": min_per_class, "seed": seed, "expected_overall_se": se_o,
        "per_class": [{"index": i, "name": name, "mapped_pixels": int(cmap.counts[i]),
                       "stratum_weight": float(weights[i]), "n": int(alloc[i]),
                       "expected_users_se": se_u[i]}
                      for i, name in enumerate(cmap.class_names)],
        "next": f"fill 'reference' in {gpkg.name}, then: geofuse assess {cmap.path} "
                f"--polygons {gpkg} --class-field reference",
    }
    json_path = out / JSON_NAME
    atomic_write_json(json_path, info)
    return SampleDesign(gpkg_path=gpkg, json_path=json_path, n=int(alloc.sum()),
                        recommended_n=recommended,
                        allocation={nm: int(a) for nm, a in zip(cmap.class_names, alloc,
                                                                strict=True)},
                        expected_overall_se=se_o)
