"""Synthetic multi-temporal land-take tiles: Sentinel-2-like annual series with change masks.

Modelled on the land-take experiment (53 tiles of 64 x 64 px, 9 bands, 2018-2024 with two
quarterly observations a year composited to annual steps, binary masks, stratified by change
level). Each tile is a landscape of parcels (crop fields, grassland, forest) plus built-up land
that already exists in the first year; blobs of vegetation or soil turn into a construction site
in a random year and into built-up surface after it. The mask marks those converted pixels
(``land_take``); everything else, including the pre-existing built-up land, is ``no_change``.

What a single date cannot tell: old and new built-up land are drawn from one distribution
(same spectra, the same share of gardens), so the last image alone cannot separate them while
the first and the last together can. Confusers on top: crop fields lie fallow (bare soil) in
random years, including the last; a construction site in the last year looks like a fallow
field; cloud edges that the cloud mask misses are brightened (haze); clouds (NaN) remove up to
most of an observation, so composites need the cleanest-quarter rule of
:func:`~geofuse.data.temporal.composite_quarters`. Crops and grass follow the season (Q2 less
green than Q3) and vary from year to year; every observation has its own gain and noise.

Change levels are spread as in the experiment: about 30 % of the tiles low (< 5 % land take),
55 % moderate (5-30 %), 15 % high (>= 30 %); ``y`` holds each tile's level (from its mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from scipy import ndimage

from geofuse._config_base import ModalityConfig
from geofuse.config import StudyConfig
from geofuse.config_dataset import DatasetConfig
from geofuse.data.patchset import PatchSet, temporal_band_names
from geofuse.data.temporal import (
    CHANGE_LEVEL_NAMES,
    Strategy,
    change_levels,
    cleanest_choice,
    composite_quarters,
    missing_share,
)
from geofuse.errors import BandError, ConfigError

MODALITY = "s2"
BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12")
MASK_NAMES = ["no_change", "land_take"]
CRS = "EPSG:32633"
PIXEL_M = 10.0
ORIGIN = (500000.0, 5100000.0)  # upper-left corner of the fake tile grid (UTM 33N metres)
LEVEL_SHARES = (0.30, 0.55, 0.15)  # low, moderate, high: 15 / 27 / 8 of 50 tiles
#: Observation quarters per number of observations a year.
PERIODS: dict[int, list[str]] = {1: ["Q3"], 2: ["Q2", "Q3"], 4: ["Q1", "Q2", "Q3", "Q4"]}
_SEASON = {1: (1.0,), 2: (0.85, 1.0), 4: (0.4, 0.85, 1.0, 0.6)}  # crop greenness per quarter
#: Endmember surface reflectance in BANDS order.
_SPECTRA = np.array([
    [0.035, 0.060, 0.040, 0.100, 0.240, 0.290, 0.320, 0.190, 0.090],  # green vegetation
    [0.090, 0.120, 0.150, 0.180, 0.210, 0.230, 0.250, 0.310, 0.250],  # bare soil
    [0.025, 0.045, 0.030, 0.070, 0.200, 0.250, 0.280, 0.140, 0.060],  # forest
    [0.100, 0.110, 0.120, 0.140, 0.160, 0.170, 0.180, 0.220, 0.190],  # built-up
    [0.130, 0.150, 0.170, 0.200, 0.220, 0.230, 0.240, 0.300, 0.270],  # construction site
], dtype=np.float32)
VEG, SOIL, FOREST, BUILT, SITE = range(5)
CROP, GRASS, WOOD = range(3)


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Standardised Gaussian-filtered noise; a 3-D shape is smoothed over its last two axes."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    sig = (0.0, sigma, sigma) if len(shape) == 3 else sigma
    field = ndimage.gaussian_filter(noise, sig, mode="wrap", truncate=2.5)
    axes = (-2, -1)
    return (field - field.mean(axis=axes, keepdims=True)) / (
        field.std(axis=axes, keepdims=True) + 1e-9)


def _top(score: np.ndarray, eligible: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` eligible pixels of highest score."""
    flat = np.where(eligible, score, -np.inf).ravel()
    out = np.zeros(flat.size, dtype=bool)
    if count > 0:
        out[np.argsort(flat)[::-1][:count]] = True
    return out.reshape(score.shape) & eligible


def _targets(rng: np.random.Generator, n: int, thresholds: tuple[float, float]) -> np.ndarray:
    """Land-take share per tile: levels in :data:`LEVEL_SHARES` proportions, shuffled."""
    counts = np.floor(np.array(LEVEL_SHARES) * n).astype(int)
    for k in np.argsort(-(np.array(LEVEL_SHARES) * n - counts))[: n - counts.sum()]:
        counts[k] += 1
    levels = rng.permutation(np.repeat(np.arange(3), counts))
    lo, hi = thresholds
    bounds = [(0.0, 0.8 * lo), (1.4 * lo, 0.9 * hi), (1.1 * hi, min(0.6, 1.8 * hi))]
    return np.array([rng.uniform(*bounds[k]) for k in levels])


def _layout(rng: np.random.Generator, size: int, years: int, share: float) -> dict[str, Any]:
    """Parcels and their cover, pre-existing built-up land, land take and its year."""
    yy, xx = np.mgrid[:size, :size]
    seeds = rng.uniform(0, size, (max(4, size * size // 150), 2))
    dist = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    parcel = dist.argmin(axis=-1)
    cover = rng.choice(3, size=len(seeds), p=[0.5, 0.3, 0.2])
    urban_share = rng.uniform(0.05, 0.2) if share > 0.3 else rng.uniform(0.08, 0.3)
    urban = _top(_smooth(rng, (size, size), size / 10), np.ones((size, size), bool),
                 round(urban_share * size * size))
    near_urban = ndimage.gaussian_filter(urban.astype(float), size / 10)
    score = _smooth(rng, (size, size), size / 12) + 2.0 * near_urban / (near_urban.max() + 1e-9)
    take = _top(score, ~urban, round(share * size * size))
    blobs, n_blobs = ndimage.label(take)
    year_of = np.concatenate([[0], rng.integers(1, years, n_blobs)])
    return {"parcel": parcel, "cover": cover, "urban": urban, "change_year": year_of[blobs],
            "garden": rng.uniform(0.0, 0.35, (size, size)).astype(np.float32)}


def _fractions(rng: np.random.Generator, lay: dict[str, Any], years: int, periods: int
               ) -> np.ndarray:
    """Endmember fractions (years, periods, 5, H, W) of one tile."""
    parcel, cover = lay["parcel"], lay["cover"]
    n_parcels, size = len(cover), parcel.shape[0]
    season = np.array(_SEASON[periods], dtype=np.float32)
    vigour = rng.uniform(0.7, 1.05, (years, n_parcels)).astype(np.float32)
    vigour[rng.random((years, n_parcels)) < 0.2] = 0.08  # fallow or ploughed: bare soil
    grass = 0.7 * rng.uniform(0.9, 1.05, (years, 1)).astype(np.float32)
    green = np.where(cover == CROP, vigour, grass)  # (years, parcels)
    cycle = np.where(cover == CROP, season[:, None], 0.9 + 0.1 * season[:, None])
    green = green[:, None, :] * cycle  # (years, periods, parcels)
    g = np.clip(green[..., parcel], 0, 1)  # (years, periods, H, W)
    out = np.zeros((years, periods, 5, size, size), dtype=np.float32)
    wood = (cover == WOOD)[parcel]
    out[:, :, VEG] = np.where(wood, 0, g)
    out[:, :, SOIL] = np.where(wood, 0, 1 - g)
    out[:, :, FOREST] = wood
    step = np.arange(years)[:, None, None]
    k = lay["change_year"]
    built = lay["urban"][None] | ((k > 0) & (step > k))
    site = (k > 0) & (step == k)
    built_mix = np.zeros((1, periods, 5, size, size), dtype=np.float32)
    built_mix[0, :, VEG] = lay["garden"] * season[:, None, None]
    built_mix[0, :, SOIL] = lay["garden"] * (1 - season[:, None, None])
    built_mix[0, :, BUILT] = 1 - lay["garden"]
    site_mix = np.zeros(5, dtype=np.float32)
    site_mix[[SOIL, SITE]] = 0.25, 0.75
    out = np.where(built[:, None, None], built_mix, out)
    return np.where(site[:, None, None], site_mix[None, None, :, None, None], out)


def _observe(rng: np.random.Generator, frac: np.ndarray, spectra: np.ndarray,
             cloud_fraction: float) -> np.ndarray:
    """Reflectance (years, periods, C, H, W) with gain, texture, noise, clouds (NaN), haze."""
    years, periods, _, size, _ = frac.shape
    flat = frac.reshape(years * periods, frac.shape[2], -1)
    values = np.matmul(spectra.T[None], flat).reshape(years, periods, -1, size, size)
    values *= rng.uniform(0.93, 1.07, (size, size)).astype(np.float32)
    values *= (1 + 0.03 * rng.standard_normal((years, periods, 1, 1, 1))).astype(np.float32)
    values += np.float32(0.005) * rng.standard_normal(values.shape, dtype=np.float32)
    if cloud_fraction <= 0:
        return values
    n_obs = years * periods
    cover = np.minimum(0.9, rng.exponential(cloud_fraction, n_obs))
    field = _smooth(rng, (n_obs, size, size), size / 8).reshape(n_obs, -1)
    ordered = np.sort(field, axis=1)
    idx = np.clip(((1 - cover) * size * size).astype(int), 0, size * size - 1)
    cloud = (field > ordered[np.arange(n_obs), idx][:, None]).reshape(n_obs, size, size)
    spatial = np.zeros((3, 3, 3), dtype=bool)
    spatial[1] = ndimage.generate_binary_structure(2, 1)
    haze = ndimage.binary_dilation(cloud, spatial, iterations=2) & ~cloud
    values = values.reshape(n_obs, -1, size, size)
    values += 0.06 * haze[:, None].astype(np.float32)
    values[np.broadcast_to(cloud[:, None], values.shape)] = np.nan
    return values.reshape(years, periods, -1, size, size)


def _band_indices(bands: int | Sequence[str]) -> list[int]:
    if isinstance(bands, int):
        if not 1 <= bands <= len(BANDS):
            raise ValueError(f"bands = {bands}: choose 1 to {len(BANDS)} bands")
        return list(range(bands))
    unknown = [b for b in bands if b not in BANDS]
    if unknown or len(set(bands)) != len(bands) or not bands:
        raise BandError(f"land_take_synthetic bands {list(bands)}: each of {', '.join(BANDS)} "
                        "at most once; fix dataset.bands")
    return [BANDS.index(b) for b in bands]


def make_land_take(
    n_tiles: int = 50, years: int = 7, bands: int | Sequence[str] = 9, size: int = 64,
    seed: int = 0, cloud_fraction: float = 0.15, periods_per_year: int = 2,
    composite: Strategy = "annual", max_missing: float = 0.5, min_clean: float = 0.2,
    change_thresholds: tuple[float, float] = (0.05, 0.30), start_year: int = 2018,
) -> PatchSet:
    """Synthetic land-take tiles (see the module docstring), deterministic by ``seed``.

    Args:
        n_tiles: tiles (patches) to generate.
        years: years of the series (at least 2), labelled from ``start_year``.
        bands: the first ``bands`` of :data:`BANDS`, or band names.
        size: tile side in pixels (at least 8).
        seed: random seed; equal arguments give an identical PatchSet.
        cloud_fraction: mean share of an observation covered by clouds (NaN); each
            observation's share is exponential with this mean (capped at 0.9).
        periods_per_year: observations a year (1: Q3; 2: Q2 and Q3 as the experiment; 4).
        composite: how observations become steps (:func:`composite_quarters`): ``annual``
            (T = years), ``bitemporal`` (T = 2) or ``all`` (T = years x periods_per_year).
        max_missing: see :func:`~geofuse.data.temporal.cleanest_choice`.
        min_clean: see :func:`~geofuse.data.temporal.cleanest_choice`.
        change_thresholds: land-take shares separating low / moderate / high tiles.
        start_year: the first year.

    Returns:
        A segmentation PatchSet: ``x`` (N, T * C, size, size) reflectance, NaN where clouds
        left no value; ``masks`` no_change / land_take; ``y`` the change level
        (:data:`~geofuse.data.temporal.CHANGE_LEVEL_NAMES`); groups ``tile:<i>``; coords on a
        grid in EPSG:32633; ``timestamps`` the step labels (``2018`` ... or ``2018-Q2`` ...).

    Raises:
        ValueError: an argument out of range.
        BandError: an unknown band name.
    """
    if n_tiles < 1 or years < 2 or size < 8 or periods_per_year not in PERIODS:
        raise ValueError(f"need n_tiles >= 1, years >= 2, size >= 8, periods_per_year in "
                         f"{sorted(PERIODS)}; got {n_tiles}, {years}, {size}, {periods_per_year}")
    if not 0 <= cloud_fraction < 1:
        raise ValueError(f"cloud_fraction must be in [0, 1); got {cloud_fraction}")
    idx = _band_indices(bands)
    names = [BANDS[i] for i in idx]
    spectra = _SPECTRA[:, idx]
    rng = np.random.default_rng(seed)
    shares = _targets(rng, n_tiles, change_thresholds)
    year_labels = [str(start_year + y) for y in range(years)]
    xs, masks, cleanest = [], [], 0
    for share in shares:
        lay = _layout(rng, size, years, float(share))
        obs = _observe(rng, _fractions(rng, lay, years, periods_per_year), spectra,
                       cloud_fraction)
        if composite != "all":
            cleanest += int((cleanest_choice(missing_share(obs), max_missing, min_clean)
                             >= 0).sum())
        steps, labels = composite_quarters(obs, None, composite, max_missing, min_clean,
                                           year_labels, PERIODS[periods_per_year])
        xs.append(steps.reshape(-1, size, size))
        masks.append((lay["change_year"] > 0).astype(np.uint8))
    x, m = np.stack(xs), np.stack(masks)
    levels = change_levels(m, change_thresholds)
    band_names = temporal_band_names(names, labels)
    cols = int(np.ceil(np.sqrt(n_tiles)))
    spacing, half = 2 * size * PIXEL_M, size * PIXEL_M / 2
    tile = np.arange(n_tiles)
    coords = np.stack([ORIGIN[0] + (tile % cols) * spacing + half,
                       ORIGIN[1] - (tile // cols) * spacing - half], axis=1)
    provenance: dict[str, Any] = {
        "dataset": "land_take_synthetic", "seed": seed, "n_tiles": n_tiles, "years": years,
        "bands": names, "size": size, "pixel_size_m": PIXEL_M, "cloud_fraction": cloud_fraction,
        "periods_per_year": periods_per_year, "observed_quarters": PERIODS[periods_per_year],
        "composite": composite, "max_missing": max_missing, "min_clean": min_clean,
        "years_cleanest_quarter_alone": cleanest, "change_thresholds": list(change_thresholds),
        "level_counts": {n: int((levels == k).sum()) for k, n in enumerate(CHANGE_LEVEL_NAMES)},
    }
    return PatchSet(
        x=x, y=levels, band_names=band_names, modalities={MODALITY: band_names},
        class_names=list(CHANGE_LEVEL_NAMES), groups=np.array([f"tile:{i}" for i in tile]),
        coords=coords, nodata_fraction=np.isnan(x).mean(axis=(1, 2, 3)), crs=CRS,
        provenance=provenance, masks=m, mask_names=list(MASK_NAMES), timestamps=labels,
    )


def selected_bands(d: DatasetConfig) -> list[str]:
    """The ``s2`` bands after ``dataset.bands`` (default all nine).

    Raises:
        BandError: an unknown modality or band.
    """
    if not d.bands:
        return list(BANDS)
    if set(d.bands) != {MODALITY}:
        raise BandError(f"dataset.bands names modality {sorted(d.bands)}; land_take_synthetic "
                        f"has only {MODALITY!r}: write dataset.bands: {{{MODALITY}: [B02, B03, "
                        "B04, B08]}")
    wanted = list(d.bands[MODALITY])
    _band_indices(wanted)
    return wanted


def dataset_modalities(d: DatasetConfig) -> list[ModalityConfig]:
    """The one modality ``s2`` (per-step band names; see :data:`build.Modalities`)."""
    return [ModalityConfig(name=MODALITY, files=["synthetic:land_take"], bands=selected_bands(d),
                           sensor="sentinel2")]


def read_land_take(d: DatasetConfig, root: Path, cfg: StudyConfig, external: bool
                   ) -> PatchSet:
    """Generate the synthetic land-take set of ``d`` (see :data:`build.Reader`); tiles are
    ``extract.patch_size`` px, the seed is the study's ``seed``; ``root`` is unused.

    Raises:
        ConfigError: ``extract.patch_size`` below 8.
        BandError: an unknown name in ``dataset.bands``.
    """
    size = cfg.extract.patch_size
    if size < 8:
        raise ConfigError(f"extract.patch_size = {size}: land_take_synthetic tiles need at "
                          "least 8 px; set extract.patch_size to 64 (the experiment's tiles)")
    return make_land_take(
        n_tiles=d.n_tiles, years=d.years, bands=selected_bands(d), size=size, seed=cfg.seed,
        cloud_fraction=d.cloud_fraction, periods_per_year=d.periods_per_year or 2,
        composite=cast(Strategy, d.composite or "annual"), max_missing=d.max_missing,
        min_clean=d.min_clean, change_thresholds=(d.change_thresholds[0], d.change_thresholds[1]),
    )
