"""Synthetic land-take tiles: contract, determinism, level spread, and temporal information."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from geofuse.data.datasets.land_take import BANDS, CRS, MASK_NAMES, make_land_take
from geofuse.data.patchset import PatchSet, temporal_band_names
from geofuse.data.temporal import CHANGE_LEVEL_NAMES, change_levels
from geofuse.errors import BandError

YEARS = [str(y) for y in range(2018, 2025)]


@pytest.fixture(scope="module")
def tiles() -> PatchSet:
    return make_land_take(n_tiles=50, seed=0)


def test_contract(tiles: PatchSet) -> None:
    assert tiles.x.shape == (50, 7 * 9, 64, 64) and tiles.x.dtype == np.float32
    assert tiles.timestamps == YEARS and tiles.time_steps == 7
    assert tiles.band_names == temporal_band_names(list(BANDS), YEARS)
    assert tiles.band_names[:2] == ["B02@2018", "B03@2018"] and tiles.step_bands == list(BANDS)
    assert tiles.modalities == {"s2": tiles.band_names}
    assert tiles.masks is not None and tiles.masks.dtype == np.uint8
    assert tiles.masks.shape == (50, 64, 64) and set(np.unique(tiles.masks)) == {0, 1}
    assert tiles.mask_names == MASK_NAMES == ["no_change", "land_take"]
    assert tiles.class_names == CHANGE_LEVEL_NAMES and tiles.y.dtype == np.int64
    assert np.array_equal(tiles.y, change_levels(tiles.masks))
    assert tiles.groups.tolist() == [f"tile:{i}" for i in range(50)]
    assert tiles.crs == CRS and len({tuple(c) for c in tiles.coords}) == 50
    assert np.all((tiles.coords[:, 0] > 166000) & (tiles.coords[:, 0] < 834000))  # UTM easting
    nan = np.isnan(tiles.x)
    assert 0 < nan.mean() < 0.1 and np.allclose(tiles.nodata_fraction, nan.mean(axis=(1, 2, 3)))
    valid = tiles.x[~nan]
    assert valid.min() > 0 and valid.max() < 0.8  # surface reflectance
    prov = tiles.provenance
    assert prov["dataset"] == "land_take_synthetic" and prov["composite"] == "annual"
    assert prov["observed_quarters"] == ["Q2", "Q3"]
    assert prov["years_cleanest_quarter_alone"] > 0  # the compositing rule was exercised


def test_change_levels_spread_like_the_experiment(tiles: PatchSet) -> None:
    counts = np.bincount(tiles.y, minlength=3)
    assert 12 <= counts[0] <= 18 and 22 <= counts[1] <= 30 and 5 <= counts[2] <= 10
    assert tiles.class_counts() == dict(zip(CHANGE_LEVEL_NAMES, counts.tolist(), strict=True))


def test_deterministic_by_seed() -> None:
    a = make_land_take(n_tiles=4, size=16, seed=7)
    b = make_land_take(n_tiles=4, size=16, seed=7)
    c = make_land_take(n_tiles=4, size=16, seed=8)
    assert np.array_equal(a.x, b.x, equal_nan=True) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.x, c.x, equal_nan=True)


def test_options_bitemporal_all_bands_clouds() -> None:
    bi = make_land_take(n_tiles=3, size=16, composite="bitemporal")
    assert bi.timestamps == ["2018", "2024"] and bi.x.shape == (3, 18, 16, 16)
    every = make_land_take(n_tiles=3, size=16, composite="all", years=3)
    assert every.timestamps == ["2018-Q2", "2018-Q3", "2019-Q2", "2019-Q3", "2020-Q2",
                                "2020-Q3"]
    assert every.x.shape == (3, 6 * 9, 16, 16)
    clear = make_land_take(n_tiles=3, size=16, bands=["B04", "B08"], cloud_fraction=0.0)
    assert clear.step_bands == ["B04", "B08"] and not np.isnan(clear.x).any()
    assert make_land_take(n_tiles=2, size=16, bands=3).step_bands == ["B02", "B03", "B04"]
    with pytest.raises(BandError, match="B99"):
        make_land_take(n_tiles=1, size=16, bands=["B99"])


def _pixels(p: PatchSet, steps: list[int], tiles: np.ndarray) -> np.ndarray:
    """Per-pixel features (pixels, len(steps) * C) of the given tiles and steps."""
    c = len(p.step_bands)
    x = p.x[tiles].reshape(len(tiles), p.time_steps, c, *p.x.shape[-2:])[:, steps]
    return x.reshape(len(tiles), len(steps) * c, -1).transpose(0, 2, 1).reshape(-1, len(steps) * c)


def _iou(p: PatchSet, steps: list[int]) -> float:
    """Test IoU of land take of a per-pixel logistic regression on the given steps."""
    assert p.masks is not None
    train, test = np.arange(0, len(p), 2), np.arange(1, len(p), 2)
    feats, target = _pixels(p, steps, train), p.masks[train].ravel()
    mean, std = np.nanmean(feats, axis=0), np.nanstd(feats, axis=0)
    pick = np.random.default_rng(0).choice(len(feats), 20000, replace=False)
    model = LogisticRegression(max_iter=500).fit(
        np.nan_to_num((feats[pick] - mean) / std), target[pick])
    pred = model.predict(np.nan_to_num((_pixels(p, steps, test) - mean) / std)).astype(bool)
    truth = p.masks[test].ravel().astype(bool)
    return float((pred & truth).sum() / (pred | truth).sum())


def test_series_carries_information_a_single_date_lacks(tiles: PatchSet) -> None:
    """Built-up land of the first year looks like new built-up land in the last year: the
    last date alone cannot tell land take from old built-up land, first + last can."""
    last = _iou(tiles, [6])
    first_last = _iou(tiles, [0, 6])
    assert first_last > 0.75, first_last
    assert last < 0.45, last
    assert first_last - last > 0.35
