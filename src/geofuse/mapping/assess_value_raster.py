"""``geofuse assess VALUES --labels RASTER``: a regression map against a reference raster.

The reference (a LiDAR canopy height model, a census grid, ...) is averaged onto the map's grid
(GDAL's ``average`` resampling, its nodata left out) and compared pixel by pixel, strip by
strip, so memory stays bounded whatever the size: RMSE, MAE, bias, R2 and Pearson r from
running sums over every pixel where both are valid; Spearman r and the plot from a seeded
uniform sample of at most :data:`SAMPLE` pixel pairs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.warp import transform_bounds
from scipy import stats

from geofuse.errors import AlignmentError, LabelError
from geofuse.mapping.assess import AssessmentOutputs
from geofuse.mapping.assess_io import strip_windows
from geofuse.mapping.assess_values import _open_values, write_value_assessment
from geofuse.raster.io import Grid, read_info, read_warped

SAMPLE = 50_000  #: pixel pairs kept for Spearman r and the plot


class _Sums:
    """Running sums of true (reference) and predicted (map) values."""

    def __init__(self) -> None:
        self.n = 0
        self.t = self.tt = self.p = self.pp = self.tp = self.abs_err = 0.0

    def add(self, t: np.ndarray, p: np.ndarray) -> None:
        t, p = t.astype(np.float64), p.astype(np.float64)
        self.n += t.size
        self.t += t.sum()
        self.tt += (t * t).sum()
        self.p += p.sum()
        self.pp += (p * p).sum()
        self.tp += (t * p).sum()
        self.abs_err += np.abs(p - t).sum()

    def metrics(self, sample_t: np.ndarray, sample_p: np.ndarray) -> dict[str, Any]:
        n = self.n
        mean_t, mean_p = self.t / n, self.p / n
        var_t, var_p = max(self.tt / n - mean_t ** 2, 0.0), max(self.pp / n - mean_p ** 2, 0.0)
        sse = self.pp - 2 * self.tp + self.tt
        cov = self.tp / n - mean_t * mean_p
        constant = var_t == 0 or var_p == 0
        spearman = (float(stats.spearmanr(sample_t, sample_p)[0])
                    if len(sample_t) > 2 and np.ptp(sample_t) > 0 and np.ptp(sample_p) > 0
                    else math.nan)
        return {"regression": True, "n": n, "rmse": math.sqrt(max(sse, 0.0) / n),
                "mae": self.abs_err / n, "bias": mean_p - mean_t,
                "r2": 1 - sse / (var_t * n) if var_t > 0 else 0.0,
                "pearson_r": math.nan if constant else cov / math.sqrt(var_t * var_p),
                "spearman_r": spearman, "mean_true": mean_t, "std_true": math.sqrt(var_t),
                "std_pred": math.sqrt(var_p), "r2_log1p": math.nan}


def assess_value_raster(map_path: str | Path, reference: str | Path,
                        out_dir: str | Path | None = None, seed: int = 0) -> AssessmentOutputs:
    """Compare a value map with a reference raster of the same quantity.

    Raises:
        DataNotFoundError: the map or the raster is missing.
        RasterError: the map holds classes, or a file has no CRS.
        AlignmentError: the raster does not overlap the map.
        LabelError: no pixel where both are valid.
    """
    map_path, reference = Path(map_path), Path(reference)
    info = _open_values(map_path)
    grid = Grid(info["crs"], info["transform"], info["width"], info["height"])
    ref = read_info(reference)
    left, bottom, right, top = transform_bounds(ref.crs, grid.crs, *ref.bounds, densify_pts=21)
    g_left, g_bottom, g_right, g_top = grid.bounds
    if right <= g_left or left >= g_right or top <= g_bottom or bottom >= g_top:
        raise AlignmentError(f"reference raster {str(reference)!r} does not overlap the map "
                             f"{str(map_path)!r}; check that both cover the same area and that "
                             "the raster's CRS is right")
    sums, rng = _Sums(), np.random.default_rng(seed)
    keep = min(1.0, SAMPLE / max(grid.width * grid.height, 1))
    sample_t, sample_p = [], []
    with rasterio.open(map_path) as src:
        for win in strip_windows(grid):
            mapped = src.read(1, window=win)
            truth = read_warped(ref, grid, win, "average", ref.nodata)[0]
            ok = np.isfinite(mapped) & np.isfinite(truth)
            t, p = truth[ok], mapped[ok]
            sums.add(t, p)
            pick = rng.random(t.size) < keep
            sample_t.append(t[pick])
            sample_p.append(p[pick])
    if sums.n == 0:
        raise LabelError(f"no pixel where both {str(map_path)!r} and the reference raster "
                         f"{str(reference)!r} hold a value; check their nodata and extent")
    st, sp = np.concatenate(sample_t), np.concatenate(sample_p)
    result = {"kind": "values", "map": str(map_path), "reference": str(reference),
              "reference_kind": "raster", "value_field": reference.stem,
              "value_name": info["value_name"], "metrics": sums.metrics(st, sp),
              "features": [], "sample": {"reference": st.tolist()[:2000],
                                         "mapped": sp.tolist()[:2000]},
              "skipped_off_map": [], "dropped_without_number": []}
    out = Path(out_dir) if out_dir is not None else map_path.parent
    return write_value_assessment(result, out)
