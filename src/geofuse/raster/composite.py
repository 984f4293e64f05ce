"""Per-pixel composites of several acquisitions of one sensor (``combine: median`` etc.).

Each file of a composite modality is one acquisition with the modality's bands; masked or
nodata pixels are NaN. A pixel's *clear observations* are the acquisitions where all its bands
are valid. ``median``, ``mean`` and ``max`` work band by band over the valid values;
``greenest`` keeps every band of the acquisition with the highest NDVI (Earth Engine's
``qualityMosaic('NDVI')``), so the composite's spectrum comes from one date.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from geofuse.data.indices import find_band

COMPOSITES = ("median", "mean", "max", "greenest")


def clear_observations(obs: np.ndarray) -> np.ndarray:
    """Number of acquisitions with every band valid, per pixel: ``(D, B, h, w)`` -> ``(h, w)``."""
    return np.isfinite(obs).all(axis=1).sum(axis=0)


def composite(obs: np.ndarray, method: str, bands: Sequence[str], sensor: str | None = None
              ) -> np.ndarray:
    """Composite of ``obs`` ``(D, B, h, w)`` (physical values, NaN = invalid) -> ``(B, h, w)``."""
    if obs.shape[0] == 0:
        return np.full(obs.shape[1:], np.nan, "float32")
    if method == "greenest":
        return _greenest(obs, bands, sensor)
    if method == "median":
        return nanmedian_first_axis(obs)
    reducer = {"mean": np.nanmean, "max": np.nanmax}[method]
    with warnings.catch_warnings():  # pixels without any valid value stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return reducer(obs, axis=0).astype("float32")


def nanmedian_first_axis(obs: np.ndarray) -> np.ndarray:
    """``np.nanmedian(obs, axis=0)`` by one sort (NaN sorts last) and the middle of each
    pixel's valid values: several times faster than numpy's, which goes through masked
    arrays for short axes; NaN where a pixel has no valid value."""
    ordered = np.sort(obs, axis=0)
    n = np.isfinite(obs).sum(axis=0)
    low = np.take_along_axis(ordered, np.maximum((n - 1) // 2, 0)[None], axis=0)[0]
    high = np.take_along_axis(ordered, (n // 2)[None], axis=0)[0]
    with np.errstate(invalid="ignore"):
        out = ((low + high) / 2).astype("float32")
    out[n == 0] = np.nan
    return out


def greenest_bands(bands: Sequence[str], sensor: str | None = None) -> tuple[int, int] | None:
    """Indices of the red and near-infrared bands, or ``None`` when either is missing."""
    red, nir = find_band(bands, "red", sensor), find_band(bands, "nir", sensor)
    if red is None or nir is None:
        return None
    return list(bands).index(red), list(bands).index(nir)


def _greenest(obs: np.ndarray, bands: Sequence[str], sensor: str | None) -> np.ndarray:
    pair = greenest_bands(bands, sensor)
    if pair is None:
        raise ValueError(f"greenest needs red and near-infrared bands; got {list(bands)}")
    red, nir = obs[:, pair[0]], obs[:, pair[1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = (nir - red) / (nir + red)
    # a dark pixel with a slightly negative reflectance (L2A's offset) gives |NDVI| > 1
    plausible = (nir + red > 0) & (np.abs(ndvi) <= 1)
    clear = np.isfinite(obs).all(axis=1) & np.isfinite(ndvi) & plausible
    best = np.argmax(np.where(clear, ndvi, -np.inf), axis=0)
    out = np.take_along_axis(obs, best[None, None], axis=0)[0]
    out[:, ~clear.any(axis=0)] = np.nan
    return out.astype("float32")
