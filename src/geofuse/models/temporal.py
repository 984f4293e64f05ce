"""A patch classifier of a time series: crop types and other classes told apart by how they
change over a season, from one stack that holds every date as a modality.

:class:`TemporalCNN` (``temporal_cnn``): the modalities named in ``time_series`` (in date
order, each the same bands, e.g. ``s2_may``, ``s2_jul``, ``s2_sep``) are the dates, each with
its index companion (``s2_may_idx``: its NDVI); every other input modality (elevation, soil) is
static and joins each date's bands. One small CNN encodes
every date (weights shared over the dates), an LSTM reads the sequence of date features and
its last state goes through the SimpleCNN head. In an ablation that leaves some dates out,
the dates present are read in order; the same network takes any number of dates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from geofuse.data.indices import index_modality
from geofuse.errors import ConfigError
from geofuse.models.encoders import (
    SmallCNNEncoder,
    mlp_head,
    resolve_modalities,
    split_modalities,
)


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[_\-.@\s]+", name.lower()) if t]


def _canonical(band: str, modality: str) -> tuple[str, ...]:
    """A band's name without the tokens of its modality's name (``s2_may_B4`` -> ``b4``)."""
    drop = set(_tokens(modality))
    return tuple(t for t in _tokens(band) if t not in drop)


def date_layout(modalities: dict[str, int], time_series: list[str] | None,
                band_names: Sequence[str] | None = None
                ) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """The dates of ``time_series`` present in the run (in date order), each date's modalities
    (the date and its index companion ``<date>_idx``) and the static modalities.

    Raises:
        ConfigError: no series, a repeated date, no date in the run, or dates whose bands
            differ in number or name (``band_names``, in channel order, tells).
    """
    if not time_series:
        raise ConfigError(
            "temporal_cnn needs train.model.time_series: the modalities that are the dates of "
            f"the series, in date order (this run has {list(modalities)})")
    if len(set(time_series)) < len(time_series):
        raise ConfigError(f"temporal_cnn: train.model.time_series {time_series} repeats a date; "
                          "name each date once")
    dates = [m for m in time_series if m in modalities]
    if not dates:
        raise ConfigError(
            f"temporal_cnn: none of train.model.time_series {time_series} is an input of this "
            f"run ({list(modalities)}); add the dates to train.modalities (or the ablation's "
            "sensor subset)")
    groups = {d: [m for m in (d, index_modality(d)) if m in modalities] for d in dates}
    grouped = {m for g in groups.values() for m in g}
    static = [m for m in modalities if m not in grouped]
    counts = {d: sum(modalities[m] for m in g) for d, g in groups.items()}
    if len(set(counts.values())) > 1:
        raise ConfigError(
            f"temporal_cnn: the dates of train.model.time_series hold different numbers of "
            f"bands {counts}; give every date the same bands (train.bands, indices)")
    if band_names is not None:
        _check_same_bands(modalities, groups, band_names)
    return dates, groups, static


def _check_same_bands(modalities: dict[str, int], groups: dict[str, list[str]],
                      band_names: Sequence[str]) -> None:
    """Every date must hold the same bands in the same order (names without the date's)."""
    names, start = {}, 0
    for m, n in modalities.items():
        names[m] = list(band_names[start:start + n])
        start += n
    per_date = {d: [_canonical(b, m) for m in g for b in names[m]] for d, g in groups.items()}
    first, *rest = per_date
    for d in rest:
        if per_date[d] != per_date[first]:
            bands = {k: [b for m in groups[k] for b in names[m]] for k in (first, d)}
            raise ConfigError(
                f"temporal_cnn: dates {first!r} and {d!r} hold different bands {bands}; give "
                "every date the same bands in the same order (train.bands)")


class TemporalCNN(nn.Module):
    """Shared per-date CNN encoder, an LSTM over the dates and a dense head.

    Args:
        in_channels: total bands of the stack.
        num_classes: number of classes.
        patch_size: patch side in pixels.
        modalities: modality name -> channel count, in channel order.
        time_series: the date modalities, in date order.
        lstm_hidden_dim: units of the LSTM.
        hidden: units of the head.
        dropout: dropout before the output layer.
        band_names: input bands in channel order (every date must hold the same ones).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        modalities: dict[str, int] | None = None,
        time_series: list[str] | None = None,
        lstm_hidden_dim: int = 256,
        hidden: int = 128,
        dropout: float = 0.5,
        band_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"temporal_cnn needs >= 1 output, got num_classes={num_classes}")
        self.modalities = resolve_modalities("temporal_cnn", in_channels, modalities)
        self.dates, self.groups, self.static = date_layout(self.modalities, time_series,
                                                           band_names)
        first = self.groups[self.dates[0]]
        per_date = sum(self.modalities[m] for m in (*first, *self.static))
        self.encoder = SmallCNNEncoder(per_date, patch_size)
        self.lstm = nn.LSTM(self.encoder.feature_dim, lstm_hidden_dim, batch_first=True)
        self.head = mlp_head(lstm_hidden_dim, num_classes, hidden, dropout)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, P, P) -> (B, T, per-date bands, P, P): each date with the static bands."""
        parts = split_modalities(x, self.modalities)
        static = [parts[m] for m in self.static]
        return torch.stack([torch.cat([*(parts[m] for m in self.groups[d]), *static], dim=1)
                            for d in self.dates], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.sequence(x)
        b, t = seq.shape[:2]
        features = self.encoder(seq.flatten(0, 1)).view(b, t, -1)
        _, (state, _) = self.lstm(features)
        return self.head(state[-1])
