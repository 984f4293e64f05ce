"""A patch classifier of a time series: crop types and other classes told apart by how they
change over a season, from one stack that holds every date as a modality.

:class:`TemporalCNN` (``temporal_cnn``): the modalities named in ``time_series`` (in date
order, each the same bands, e.g. ``s2_may``, ``s2_jul``, ``s2_sep``) are the dates; every other
input modality (elevation, soil) is static and joins each date's bands. One small CNN encodes
every date (weights shared over the dates), an LSTM reads the sequence of date features and
its last state goes through the SimpleCNN head. In an ablation that leaves some dates out,
the dates present are read in order; the same network takes any number of dates.
"""

from __future__ import annotations

import torch
from torch import nn

from geofuse.errors import ConfigError
from geofuse.models.encoders import (
    SmallCNNEncoder,
    mlp_head,
    resolve_modalities,
    split_modalities,
)


def _dates(modalities: dict[str, int], time_series: list[str] | None) -> list[str]:
    """The date modalities of the run, in date order; each the same number of bands."""
    if not time_series:
        raise ConfigError(
            "temporal_cnn needs train.model.time_series: the modalities that are the dates of "
            f"the series, in date order (this run has {list(modalities)})")
    dates = [m for m in time_series if m in modalities]
    if not dates:
        raise ConfigError(
            f"temporal_cnn: none of train.model.time_series {time_series} is an input of this "
            f"run ({list(modalities)}); add the dates to train.modalities (or the ablation's "
            "sensor subset)")
    counts = {m: modalities[m] for m in dates}
    if len(set(counts.values())) > 1:
        raise ConfigError(
            f"temporal_cnn: the dates of train.model.time_series hold different numbers of "
            f"bands {counts}; give every date the same bands")
    return dates


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
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        modalities: dict[str, int] | None = None,
        time_series: list[str] | None = None,
        lstm_hidden_dim: int = 64,
        hidden: int = 128,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"temporal_cnn needs >= 1 output, got num_classes={num_classes}")
        self.modalities = resolve_modalities("temporal_cnn", in_channels, modalities)
        self.dates = _dates(self.modalities, time_series)
        self.static = [m for m in self.modalities if m not in self.dates]
        per_date = self.modalities[self.dates[0]] + sum(self.modalities[m] for m in self.static)
        self.encoder = SmallCNNEncoder(per_date, patch_size)
        self.lstm = nn.LSTM(self.encoder.feature_dim, lstm_hidden_dim, batch_first=True)
        self.head = mlp_head(lstm_hidden_dim, num_classes, hidden, dropout)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, P, P) -> (B, T, per-date bands, P, P): each date with the static bands."""
        parts = split_modalities(x, self.modalities)
        static = [parts[m] for m in self.static]
        return torch.stack([torch.cat([parts[d], *static], dim=1) for d in self.dates], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.sequence(x)
        b, t = seq.shape[:2]
        features = self.encoder(seq.flatten(0, 1)).view(b, t, -1)
        _, (state, _) = self.lstm(features)
        return self.head(state[-1])
