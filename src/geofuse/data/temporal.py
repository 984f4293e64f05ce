"""Time series helpers: dates, sub-annual periods, annual composites and change levels.

A multi-temporal study reads observations at irregular dates (clouds remove many of them),
bins them into sub-annual periods (quarters, half-years, months), and composites the periods
into the time steps a model sees:

- :func:`parse_date` reads ISO dates and the period labels written here (``2018``,
  ``2018-H1``, ``2018-Q3``, ``2018-07``, ``2018-07-11``, ``2018-07-11T10:00:08``);
  :func:`date_in_name` finds one in a file name (``S2_20180615.tif``).
- :func:`group_by_period` bins per-date arrays (T, C, H, W) into a (years, periods, C, H, W)
  grid (a mean per bin; NaN where a bin has no valid observation).
- :func:`composite_quarters` turns that grid into steps: ``annual`` (one mean per year, or the
  cleanest period alone when another is mostly missing), ``bitemporal`` (the first and last
  year) or ``all`` (every period its own step).
- :func:`merge_same_day` merges acquisitions of one day (orbit overlaps) into one date.
- :func:`change_levels` bins segmentation masks into low / moderate / high change for
  stratified splits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

import numpy as np

from geofuse.data.patchset import MASK_IGNORE
from geofuse.errors import RasterError

Strategy = Literal["annual", "bitemporal", "all"]
STRATEGIES: tuple[str, ...] = ("annual", "bitemporal", "all")
CHANGE_LEVEL_NAMES = ["low", "moderate", "high"]
#: Period label per number of periods a year (``""``: the year itself).
PERIOD_LABELS: dict[int, list[str]] = {
    1: [""], 2: ["H1", "H2"], 4: ["Q1", "Q2", "Q3", "Q4"],
    12: [f"{m:02d}" for m in range(1, 13)],
}
_PERIOD = re.compile(r"^(\d{4})(?:-(H[12]|Q[1-4]))?$")


def parse_date(value: object, source: str = "dates") -> date:
    """A date from an ISO date/datetime string or a period label (its first day).

    Args:
        value: ``2018-07-11``, ``2018-07-11T10:00:08(Z)``, ``2018-07``, ``2018-Q3``,
            ``2018-H1``, ``2018``, or a ``date``/``datetime``/``numpy.datetime64``.
        source: where the value comes from (a file or key), for the message.

    Raises:
        RasterError: the value is not a date; the message names ``source`` and the value.
    """
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, np.datetime64):
        value = str(value.astype("datetime64[s]"))
    text = str(value).strip()
    match = _PERIOD.match(text)
    if match:
        year, part = int(match.group(1)), match.group(2)
        month = 1 if not part else (int(part[1]) - 1) * (6 if part[0] == "H" else 3) + 1
        return date(year, month, 1)
    try:
        if re.fullmatch(r"\d{4}-\d{2}", text):
            return datetime.strptime(text, "%Y-%m").date()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        raise RasterError(
            f"{source}: {text!r} is not a date; write ISO 8601 dates such as 2018-07-11 or "
            "2018-07-11T10:00:08 (or period labels 2018, 2018-Q3, 2018-07)"
        ) from None


#: A date in a file name: the first ``2018-06-15``, ``20180615``, ``2018_06_15``, ``2018-Q2``,
#: ``2018_H1`` or ``2018-06`` not inside a longer run of digits (years 1900-2099).
DATE_IN_NAME = re.compile(
    r"(?<!\d)(?P<date>(?:19|20)\d\d(?P<sep>[-_]?)(?:0[1-9]|1[0-2])(?P=sep)(?:0[1-9]|[12]\d|3[01])"
    r"|(?:19|20)\d\d[-_](?:Q[1-4]|H[12]|0[1-9]|1[0-2]))(?!\d)"
)


def date_in_name(name: str, pattern: re.Pattern[str] | None = None) -> str | None:
    """The date text in a file name, in the spelling :func:`parse_date` reads, or None.

    Args:
        name: a file name or stem, e.g. ``S2_20180615.tif``.
        pattern: searched in ``name`` (default :data:`DATE_IN_NAME`); its group ``date``, else
            its group 1, else the whole match is the date. ``YYYYMMDD`` becomes
            ``YYYY-MM-DD`` and ``_`` becomes ``-`` (``2018_Q2`` -> ``2018-Q2``).
    """
    found = (pattern or DATE_IN_NAME).search(name)
    if found is None:
        return None
    text = found.groupdict().get("date") or (found.group(1) if found.re.groups else None)
    text = (text or found.group(0)).replace("_", "-")
    return f"{text[:4]}-{text[4:6]}-{text[6:]}" if re.fullmatch(r"\d{8}", text) else text

def _mean_nan(values: np.ndarray, axis: int) -> np.ndarray:
    """NaN-ignoring mean along ``axis`` (NaN where every value is NaN), without warnings."""
    ok = ~np.isnan(values)
    total = np.where(ok, values, np.float32(0)).sum(axis=axis)
    count = ok.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    return np.where(count > 0, out, np.nan).astype(np.float32)


def _masked(values: np.ndarray, valid: np.ndarray | None, lead: int) -> np.ndarray:
    """``values`` as float32 with NaN where ``valid`` is False (``valid`` lacks the band axis,
    which follows the ``lead`` leading axes, or has it)."""
    out = np.array(values, dtype=np.float32, copy=True)
    if valid is None:
        return out
    v = np.asarray(valid, dtype=bool)
    if v.ndim == out.ndim - 1:
        v = np.expand_dims(v, lead)
    out[~np.broadcast_to(v, out.shape)] = np.nan
    return out


def missing_share(values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Share of missing pixels (any band NaN or invalid) of each (year, period) image.

    Args:
        values: (years, periods, C, H, W).
        valid: optional bool (years, periods, H, W) or the shape of ``values``.

    Returns:
        float (years, periods) in [0, 1].
    """
    data = _masked(values, valid, 2)
    return np.isnan(data).any(axis=2).mean(axis=(-2, -1))


def cleanest_choice(missing: np.ndarray, max_missing: float = 0.5,
                    min_clean: float = 0.2) -> np.ndarray:
    """Per year, the period used alone (its index) or -1 (average the periods).

    A year's periods are averaged, except when one has more than ``max_missing`` of its pixels
    missing and another fewer than ``min_clean``: then the cleanest period alone is used (the
    land-take experiment's rule for two quarters a year; with more periods, the cleanest one
    still stands alone).

    Args:
        missing: (years, periods) shares from :func:`missing_share`.
        max_missing: share above which a period counts as mostly missing.
        min_clean: share below which a period counts as clean.

    Raises:
        ValueError: ``min_clean`` above ``max_missing`` or outside [0, 1].
    """
    if not 0 <= min_clean <= max_missing <= 1:
        raise ValueError(f"need 0 <= min_clean <= max_missing <= 1; got min_clean={min_clean}, "
                         f"max_missing={max_missing}")
    m = np.asarray(missing, dtype=np.float64)
    use_one = (m.max(axis=1) > max_missing) & (m.min(axis=1) < min_clean)
    return np.where(use_one, m.argmin(axis=1), -1)


def composite_quarters(
    values: np.ndarray, valid: np.ndarray | None = None, strategy: Strategy = "annual",
    max_missing: float = 0.5, min_clean: float = 0.2,
    years: Sequence[str] | None = None, periods: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Sub-annual observations (years, periods, C, H, W) -> time steps (steps, C, H, W).

    Args:
        values: float array; NaN marks missing pixels (clouds, no data).
        valid: optional bool mask, (years, periods, H, W) or the shape of ``values``;
            invalid pixels are set to NaN first (apply cloud masks here).
        strategy: ``annual``: one step per year, the pixel-wise NaN-mean of its periods, or the
            cleanest period alone (see :func:`cleanest_choice`); ``bitemporal``: the annual
            composites of the first and the last year; ``all``: every period its own step,
            year by year.
        max_missing: see :func:`cleanest_choice`.
        min_clean: see :func:`cleanest_choice`.
        years: labels of the years (default ``"0"``, ``"1"``, ...).
        periods: labels of the periods (default ``Q1``, ``Q2``, ...); ``all`` labels its steps
            ``<year>-<period>`` (the year alone for an empty period label).

    Returns:
        The float32 steps (NaN where no period had a value) and one label per step.

    Raises:
        ValueError: ``values`` is not 5-D, labels do not match it, an unknown strategy, or
            ``bitemporal`` with fewer than two years.
    """
    data = _masked(values, valid, 2)
    if data.ndim != 5:
        raise ValueError(f"values must be (years, periods, C, H, W); got {data.shape}")
    n_years, n_periods = data.shape[:2]
    year_labels = [str(y) for y in (years if years is not None else range(n_years))]
    period_labels = [str(p) for p in (periods if periods is not None
                                      else [f"Q{q + 1}" for q in range(n_periods)])]
    if len(year_labels) != n_years or len(period_labels) != n_periods:
        raise ValueError(f"{len(year_labels)} year and {len(period_labels)} period labels for "
                         f"values of shape {data.shape}")
    if strategy == "all":
        labels = [f"{y}-{p}" if p else y for y in year_labels for p in period_labels]
        return data.reshape(n_years * n_periods, *data.shape[2:]), labels
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    choice = cleanest_choice(missing_share(data), max_missing, min_clean)
    annual = _mean_nan(data, axis=1)
    for y in np.flatnonzero(choice >= 0):
        annual[y] = data[y, choice[y]]
    if strategy == "annual":
        return annual, year_labels
    if n_years < 2:
        raise ValueError(f"bitemporal needs at least two years; got {n_years}")
    return annual[[0, -1]], [year_labels[0], year_labels[-1]]


@dataclass
class PeriodStack:
    """Observations binned into sub-annual periods (see :func:`group_by_period`).

    Attributes:
        values: float32 (years, periods, C, H, W), the mean of each bin's valid observations
            (NaN: none).
        years: year labels (``"2016"``, ...), consecutive.
        periods: period labels of :data:`PERIOD_LABELS`.
        counts: int (years, periods) observations (dates) that fell into each bin.
    """

    values: np.ndarray
    years: list[str]
    periods: list[str]
    counts: np.ndarray


def group_by_period(
    values: np.ndarray, dates: Sequence[object], periods_per_year: int = 4,
    valid: np.ndarray | None = None, year_range: tuple[int, int] | None = None,
    source: str = "dates",
) -> PeriodStack:
    """Bin per-date arrays (T, C, H, W) into (years, periods, C, H, W) period means.

    Args:
        values: float array, one image per date; NaN marks missing pixels.
        dates: one date per image (parsed by :func:`parse_date`).
        periods_per_year: 1 (years), 2 (half-years), 4 (quarters) or 12 (months).
        valid: optional bool (T, H, W) or (T, C, H, W) mask; invalid pixels become NaN.
        year_range: first and last year of the grid (default: those of ``dates``), so that
            several series share one grid; dates outside it are dropped.
        source: where the dates come from, for error messages.

    Raises:
        RasterError: a date cannot be parsed (naming ``source`` and the value).
        ValueError: ``periods_per_year`` not in :data:`PERIOD_LABELS`, or dates and images
            differ in number.
    """
    if periods_per_year not in PERIOD_LABELS:
        raise ValueError(f"periods_per_year must be one of {sorted(PERIOD_LABELS)}; got "
                         f"{periods_per_year}")
    data = _masked(values, valid, 1)
    if data.ndim != 4 or len(data) != len(dates):
        raise ValueError(f"{len(dates)} dates for values of shape {data.shape}; need (T, C, H, "
                         "W) with one date per image")
    parsed = [parse_date(d, source) for d in dates]
    first, last = year_range or (min(d.year for d in parsed), max(d.year for d in parsed))
    n_years = last - first + 1
    months = 12 // periods_per_year
    out = np.full((n_years, periods_per_year, *data.shape[1:]), np.nan, dtype=np.float32)
    counts = np.zeros((n_years, periods_per_year), dtype=np.int64)
    bins = np.array([(d.year - first) * periods_per_year + (d.month - 1) // months
                     for d in parsed])
    flat = out.reshape(n_years * periods_per_year, *data.shape[1:])
    for b in np.unique(bins):
        if 0 <= b < len(flat):
            sel = bins == b
            flat[b] = _mean_nan(data[sel], axis=0)
            counts.flat[b] = int(sel.sum())
    return PeriodStack(values=out, years=[str(y) for y in range(first, last + 1)],
                       periods=list(PERIOD_LABELS[periods_per_year]), counts=counts)


def merge_same_day(values: np.ndarray, dates: Sequence[object], valid: np.ndarray | None = None,
                   source: str = "dates") -> tuple[np.ndarray, list[str]]:
    """Merge images of the same day (NaN-mean) -> (days, C, H, W) and ISO day labels, sorted.

    Raises:
        RasterError: a date cannot be parsed.
    """
    data = _masked(values, valid, 1)
    days = [parse_date(d, source).isoformat() for d in dates]
    labels = sorted(set(days))
    index = np.array([labels.index(d) for d in days])
    out = np.stack([_mean_nan(data[index == k], axis=0) for k in range(len(labels))])
    return out, labels


def change_levels(masks: np.ndarray, thresholds: Sequence[float] = (0.05, 0.30)) -> np.ndarray:
    """Change level of each mask: 0 low, 1 moderate, 2 high (:data:`CHANGE_LEVEL_NAMES`).

    The level bins the share of changed pixels (value 1) among labelled pixels (value
    :data:`~geofuse.data.patchset.MASK_IGNORE` excluded): below ``thresholds[0]`` low, below
    ``thresholds[1]`` moderate, else high. A mask without labelled pixels is low.

    Args:
        masks: (N, H, W) integer masks.
        thresholds: two increasing shares in (0, 1).

    Raises:
        ValueError: thresholds not two increasing values in (0, 1).
    """
    t = [float(v) for v in thresholds]
    if len(t) != 2 or not 0 < t[0] < t[1] < 1:
        raise ValueError(f"thresholds must be two increasing shares in (0, 1); got {t}")
    return np.digitize(change_shares(masks), t).astype(np.int64)


def change_shares(masks: np.ndarray) -> np.ndarray:
    """Share of changed pixels (value 1) among the labelled pixels of each mask (N,)."""
    m = np.asarray(masks)
    labelled = (m != MASK_IGNORE).sum(axis=(-2, -1))
    changed = (m == 1).sum(axis=(-2, -1))
    return np.divide(changed, labelled, out=np.zeros(len(m)), where=labelled > 0)
