"""geofuse.data.temporal: dates, period grids, annual composites and change levels."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from geofuse.data.patchset import MASK_IGNORE
from geofuse.data.temporal import (
    CHANGE_LEVEL_NAMES,
    change_levels,
    cleanest_choice,
    composite_quarters,
    group_by_period,
    merge_same_day,
    missing_share,
    parse_date,
)
from geofuse.errors import GeofuseError, RasterError


def _quarters(years: int = 2, quarters: int = 2, size: int = 10) -> np.ndarray:
    """(years, quarters, 1, size, size) with value 10 * year + quarter + 1 everywhere."""
    v = np.zeros((years, quarters, 1, size, size), dtype=np.float32)
    for y in range(years):
        for q in range(quarters):
            v[y, q] = 10 * y + q + 1
    return v


def _cloud(v: np.ndarray, year: int, quarter: int, share: float) -> None:
    """Set the first ``share`` of the rows of one image to NaN."""
    rows = round(share * v.shape[-2])
    v[year, quarter, :, :rows] = np.nan


def test_annual_is_the_pixelwise_mean_of_the_quarters() -> None:
    v = _quarters()
    _cloud(v, 0, 0, 0.3)  # 30 % missing: below max_missing, averaged with NaN ignored
    out, labels = composite_quarters(v, years=["2018", "2019"])
    assert out.shape == (2, 1, 10, 10) and out.dtype == np.float32
    assert labels == ["2018", "2019"]
    assert np.allclose(out[1], 11.5)  # (11 + 12) / 2
    assert np.allclose(out[0, 0, :3], 2.0)  # only quarter 2 seen there
    assert np.allclose(out[0, 0, 3:], 1.5)


def test_cleanest_quarter_alone_when_one_is_mostly_missing_and_another_clean() -> None:
    v = _quarters()
    _cloud(v, 0, 0, 0.6)  # > 0.5 missing
    _cloud(v, 0, 1, 0.1)  # < 0.2 missing: the cleanest, used alone
    out, _ = composite_quarters(v)
    assert np.isnan(out[0, 0, 0]).all()  # quarter 2's gap is not filled from quarter 1
    assert np.allclose(out[0, 0, 1:], 2.0)  # quarter 1's clear pixels are not averaged in
    assert np.allclose(out[1], 11.5)  # other years: the mean
    assert cleanest_choice(missing_share(v)).tolist() == [1, -1]


def test_thresholds_are_configurable_and_both_conditions_needed() -> None:
    v = _quarters()
    _cloud(v, 0, 0, 0.6)
    _cloud(v, 0, 1, 0.3)  # not clean enough (>= 0.2): average
    out, _ = composite_quarters(v)
    assert np.isnan(out[0, 0, :3]).all() and np.allclose(out[0, 0, 3:6], 2.0)
    assert np.allclose(out[0, 0, 6:], 1.5)
    out, _ = composite_quarters(v, min_clean=0.4)  # now quarter 2 counts as clean: alone
    assert np.allclose(out[0, 0, 3:], 2.0) and np.isnan(out[0, 0, :3]).all()
    out, _ = composite_quarters(v, max_missing=0.7, min_clean=0.4)  # 60 % is not "mostly"
    assert np.allclose(out[0, 0, 6:], 1.5)
    with pytest.raises(ValueError, match="min_clean"):
        composite_quarters(v, max_missing=0.1, min_clean=0.2)


def test_valid_mask_is_applied_before_compositing() -> None:
    v = _quarters(years=1)
    valid = np.ones((1, 2, 10, 10), dtype=bool)
    valid[0, 0, :7] = False  # 70 % of quarter 1 cloudy, quarter 2 clear
    out, _ = composite_quarters(v, valid)
    assert np.allclose(out, 2.0)
    assert not np.isnan(v).any()  # the input is not modified


def test_bitemporal_and_all() -> None:
    v = _quarters(years=3)
    annual, _ = composite_quarters(v, years=["2018", "2019", "2020"])
    bi, labels = composite_quarters(v, strategy="bitemporal", years=["2018", "2019", "2020"])
    assert labels == ["2018", "2020"] and np.array_equal(bi, annual[[0, 2]])
    steps, labels = composite_quarters(v, strategy="all", years=["2018", "2019", "2020"],
                                       periods=["Q2", "Q3"])
    assert steps.shape == (6, 1, 10, 10)
    assert labels == ["2018-Q2", "2018-Q3", "2019-Q2", "2019-Q3", "2020-Q2", "2020-Q3"]
    assert [float(s[0, 0, 0]) for s in steps] == [1, 2, 11, 12, 21, 22]
    with pytest.raises(ValueError, match="two years"):
        composite_quarters(v[:1], strategy="bitemporal")
    with pytest.raises(ValueError, match="unknown strategy"):
        composite_quarters(v, strategy="monthly")  # type: ignore[arg-type]


def test_change_levels_bins_the_share_of_positive_labelled_pixels() -> None:
    masks = np.zeros((5, 10, 10), dtype=np.uint8)
    masks[1].flat[:5] = 1  # 5 %: moderate (the lower bound is inclusive)
    masks[2].flat[:30] = 1  # 30 %: high
    masks[3].flat[:29] = 1  # 29 %: moderate
    masks[4].flat[:4] = 1  # 4 of 50 labelled pixels = 8 %: moderate
    masks[4].flat[50:] = MASK_IGNORE
    assert change_levels(masks).tolist() == [0, 1, 2, 1, 1]
    assert change_levels(masks, thresholds=(0.1, 0.5)).tolist() == [0, 0, 1, 1, 0]
    assert change_levels(np.full((1, 4, 4), MASK_IGNORE, np.uint8)).tolist() == [0]
    assert CHANGE_LEVEL_NAMES == ["low", "moderate", "high"]
    with pytest.raises(ValueError, match="increasing"):
        change_levels(masks, thresholds=(0.3, 0.05))


def test_parse_date_formats_and_one_line_error() -> None:
    assert parse_date("2015-07-11T10:00:08") == date(2015, 7, 11)
    assert parse_date("2015-07-11T10:00:08Z") == date(2015, 7, 11)
    assert parse_date("2015-07-11") == date(2015, 7, 11)
    assert parse_date("2018") == date(2018, 1, 1)
    assert parse_date("2018-Q3") == date(2018, 7, 1)
    assert parse_date("2018-H2") == date(2018, 7, 1)
    assert parse_date("2018-11") == date(2018, 11, 1)
    assert parse_date(np.datetime64("2016-02-29T12:00")) == date(2016, 2, 29)
    with pytest.raises(RasterError) as info:
        parse_date("2015-13-45", source="x/timestamps.json")
    msg = info.value.one_line()
    assert isinstance(info.value, GeofuseError) and "x/timestamps.json" in msg
    assert "'2015-13-45'" in msg and "ISO 8601" in msg and "\n" not in str(info.value)


def test_group_by_period_bins_dates_into_quarters() -> None:
    dates = ["2016-02-01", "2016-03-01", "2016-08-01", "2017-11-30T10:00:00"]
    values = np.stack([np.full((1, 2, 2), v, np.float32) for v in (1.0, 3.0, 5.0, 7.0)])
    valid = np.ones((4, 2, 2), dtype=bool)
    valid[1, 0, 0] = False  # cloudy: the Q1 mean there is the first date alone
    stack = group_by_period(values, dates, 4, valid)
    assert stack.values.shape == (2, 4, 1, 2, 2)
    assert stack.years == ["2016", "2017"] and stack.periods == ["Q1", "Q2", "Q3", "Q4"]
    assert stack.counts.tolist() == [[2, 0, 1, 0], [0, 0, 0, 1]]
    assert stack.values[0, 0, 0, 0, 0] == 1.0 and stack.values[0, 0, 0, 1, 1] == 2.0
    assert np.isnan(stack.values[0, 1]).all() and stack.values[1, 3, 0, 0, 0] == 7.0
    steps, labels = composite_quarters(stack.values, strategy="all", years=stack.years,
                                       periods=stack.periods)
    assert labels[:3] == ["2016-Q1", "2016-Q2", "2016-Q3"] and len(steps) == 8
    months = group_by_period(values, dates, 12, year_range=(2015, 2016))
    assert months.years == ["2015", "2016"] and months.counts.sum() == 3  # 2017 dropped
    assert months.periods[6] == "07"
    with pytest.raises(RasterError, match="'someday'"):
        group_by_period(values, ["2016-01-01", "someday", "2016-05-05", "2016-06-06"],
                        source="patch/timestamps.json")


def test_merge_same_day() -> None:
    values = np.stack([np.full((1, 2, 2), v, np.float32) for v in (1.0, 3.0, 5.0)])
    values[0, 0, 0, 0] = np.nan
    out, days = merge_same_day(values, ["2015-12-08T10:11:25", "2015-12-08T10:04:09",
                                        "2015-12-01"])
    assert days == ["2015-12-01", "2015-12-08"]
    assert out[0, 0, 0, 0] == 5.0 and out[1, 0, 0, 0] == 3.0 and out[1, 0, 1, 1] == 2.0
