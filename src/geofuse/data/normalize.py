"""Per-band and per-attribute normalisation from training statistics only.

Statistics are computed over the training split (NaN-aware), stored in the run directory
(``normalization.json`` for the bands, ``tabular_normalization.json`` for tabular attributes),
and reused unchanged for validation, test and prediction. After normalisation, NaN pixels and
missing attribute values become 0, i.e. the training mean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

import numpy as np

from geofuse.errors import BandError, RunDirError
from geofuse.io_utils import atomic_write_json

MIN_STD = 1e-6


class _MeanStd:
    """Named mean/std per channel or column, saved as JSON ``{<names>: [...], "mean", "std"}``.

    Subclasses are frozen dataclasses with the fields ``<names>``, ``mean`` and ``std``.
    """

    _NAMES: ClassVar[str]  # field holding the names
    _DTYPE: ClassVar[type]  # dtype of mean and std
    _FILE: ClassVar[str]  # what the file is, for the missing-file message
    _UNIT: ClassVar[str]  # what one entry is, for the length message

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", np.asarray(self.mean, dtype=self._DTYPE))
        object.__setattr__(self, "std", np.asarray(self.std, dtype=self._DTYPE))
        if not len(getattr(self, self._NAMES)) == len(self.mean) == len(self.std):
            raise ValueError(f"{self._NAMES}, mean and std must have one entry per {self._UNIT}")

    @property
    def names(self) -> list[str]:
        """The band or column names, one per entry."""
        return list(getattr(self, self._NAMES))

    def to_dict(self) -> dict[str, object]:
        """JSON-able form: ``{<names>: [...], "mean": [...], "std": [...]}``."""
        return {self._NAMES: list(getattr(self, self._NAMES)), "mean": self.mean.tolist(),
                "std": self.std.tolist()}

    def save(self, path: str | Path) -> Path:
        """Write the statistics to ``path`` as JSON, atomically."""
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read statistics written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise RunDirError(
                f"{cls._FILE} {str(path)!r} is missing; re-run 'geofuse train' for this run"
            )
        data = json.loads(path.read_text())
        return cls(**{cls._NAMES: list(data[cls._NAMES])}, mean=data["mean"], std=data["std"])


@dataclass(frozen=True)
class BandStats(_MeanStd):
    """Mean and standard deviation of each band, in channel order.

    Attributes:
        bands: band names, one per channel.
        mean: per-band mean over valid (non-NaN) training pixels.
        std: per-band standard deviation; constant bands get 1.0.
    """

    bands: list[str]
    mean: np.ndarray
    std: np.ndarray

    _NAMES: ClassVar[str] = "bands"
    _DTYPE: ClassVar[type] = np.float32
    _FILE: ClassVar[str] = "normalisation file"
    _UNIT: ClassVar[str] = "channel"


def compute_band_stats(x: np.ndarray, bands: list[str], time_steps: int = 1) -> BandStats:
    """NaN-aware per-band mean/std of ``x`` (N, C, P, P); pass training patches only.

    With ``time_steps`` T > 1 the channels are a time series stacked time-major (T x C'):
    each band's statistics are pooled over all its dates and repeated for every date, so a
    band keeps one scale through time and a change between dates survives standardisation.

    Raises:
        BandError: a band has no valid pixel in ``x``.
    """
    if time_steps > 1:
        per_step = len(bands) // time_steps
        steps = np.asarray(x).reshape(len(x), time_steps, per_step, *np.shape(x)[2:])
        pooled = compute_band_stats(steps.reshape(-1, per_step, *np.shape(x)[2:]),
                                    list(bands[:per_step]))
        return BandStats(bands=list(bands), mean=np.tile(pooled.mean, time_steps),
                         std=np.tile(pooled.std, time_steps))
    flat = np.moveaxis(np.asarray(x, dtype=np.float64), 1, 0).reshape(len(bands), -1)
    valid = np.isfinite(flat).sum(axis=1)
    empty = [b for b, n in zip(bands, valid, strict=True) if n == 0]
    if empty:
        raise BandError(
            f"band(s) {empty} have no valid pixel in the training split; "
            "drop them with train.bands in the config"
        )
    flat = np.where(np.isfinite(flat), flat, np.nan)
    mean = np.nanmean(flat, axis=1)
    std = np.nanstd(flat, axis=1)
    std = np.where(std < MIN_STD, 1.0, std)
    return BandStats(bands=list(bands), mean=mean, std=std)


def normalize(x: np.ndarray, stats: BandStats) -> np.ndarray:
    """Standardise ``x`` (..., C, H, W) band-wise; NaN/inf become 0 (the band mean)."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-3] != len(stats.bands):
        raise ValueError(f"{x.shape[-3]} channels but statistics for {len(stats.bands)} bands")
    out = (x - stats.mean[:, None, None]) / stats.std[:, None, None]
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


@dataclass(frozen=True)
class TabularStats(_MeanStd):
    """Mean and standard deviation of each tabular attribute (column) of the training split.

    Kept in float64, as computed, so that saving and loading them changes no normalised value.

    Attributes:
        columns: attribute names, one per column (``PatchSet.tabular_names``).
        mean: per-column mean over finite training values; 0 when none is finite.
        std: per-column standard deviation; constant or all-missing columns get 1.0.
    """

    columns: list[str]
    mean: np.ndarray
    std: np.ndarray

    _NAMES: ClassVar[str] = "columns"
    _DTYPE: ClassVar[type] = np.float64
    _FILE: ClassVar[str] = "tabular normalisation file"
    _UNIT: ClassVar[str] = "tabular column"


def compute_tabular_stats(tabular: np.ndarray, columns: list[str]) -> TabularStats:
    """NaN-aware per-column mean/std of ``tabular`` (N, F); pass training rows only.

    Non-finite values are missing; a column without any finite value gets mean 0 and std 1.
    """
    train = np.asarray(tabular, dtype=np.float64)
    finite = np.isfinite(train)
    count = finite.sum(axis=0)
    mean = np.where(count > 0, np.where(finite, train, 0).sum(axis=0) / np.maximum(count, 1), 0)
    var = np.where(finite, (train - mean) ** 2, 0).sum(axis=0) / np.maximum(count, 1)
    std = np.where(np.sqrt(var) > MIN_STD, np.sqrt(var), 1.0)
    return TabularStats(columns=list(columns), mean=mean, std=std)


def normalize_tabular(tabular: np.ndarray, stats: TabularStats) -> np.ndarray:
    """Standardise ``tabular`` (N, F) column-wise as float32; missing values become 0."""
    tabular = np.asarray(tabular)
    if tabular.shape[-1] != len(stats.columns):
        raise ValueError(f"{tabular.shape[-1]} tabular columns but statistics for "
                         f"{len(stats.columns)}")
    out = (tabular - stats.mean) / stats.std
    return np.where(np.isfinite(out), out, 0.0).astype(np.float32)
