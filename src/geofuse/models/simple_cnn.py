"""SimpleCNN: the small from-scratch baseline of the Week 3/4 land-cover reports.

Two conv blocks (32 and 64 filters, BatchNorm, ReLU, 2x2 max-pool), then a 128-unit dense layer
with dropout 0.5. On 8x8 patches of 6 bands it has about 54K parameters, the model that kept
learning where frozen ResNet50 transfer learning collapsed to a single class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from geofuse.errors import ConfigError
from geofuse.models.pixel_net import feature_statistics

MIN_PATCH_SIZE = 4


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv3x3 (same padding) - BatchNorm - ReLU - MaxPool2."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    """Two-block CNN classifier for small multi-band patches.

    Args:
        in_channels: number of input bands (any count).
        num_classes: number of output classes.
        patch_size: patch height/width in pixels (at least 4); sets the flatten size.
        hidden: units of the dense layer.
        dropout: dropout probability before the output layer.
        pool: ``flatten`` the last feature map (the reports' model), ``avg``: global
            average pooling, 64 features whatever the patch size, or ``stats``: the mean,
            maximum and standard deviation of each feature map (192 features; texture).
        band_stats: concatenate every input band's mean, std, min and max over the patch
            (:func:`band_statistics`) to the features before the dense layer.
        pretrained_path: local weight file whose ``features.*`` tensors (the encoder) are
            loaded, e.g. written by ``geofuse pretrain``; the dense head starts fresh.
        band_names: the input bands in channel order; checked against the bands a
            ``geofuse pretrain`` file was made for.

    Raises:
        ConfigError: an invalid option, or weights that do not fit the encoder;
            DataNotFoundError: a missing weights file.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        hidden: int = 128,
        dropout: float = 0.5,
        pool: str = "flatten",
        band_stats: bool = False,
        pretrained_path: str | Path | None = None,
        band_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if patch_size < MIN_PATCH_SIZE:
            raise ConfigError(
                f"simple_cnn needs patches of at least {MIN_PATCH_SIZE}x{MIN_PATCH_SIZE} pixels "
                f"(two 2x2 poolings), got patch_size={patch_size}; raise extract.patch_size"
            )
        if in_channels < 1 or num_classes < 1:
            raise ConfigError(
                f"simple_cnn needs >= 1 band and >= 1 output, got in_channels={in_channels}, "
                f"num_classes={num_classes}; check train.bands and the label classes"
            )
        if pool not in ("flatten", "avg", "stats"):
            raise ConfigError(f"simple_cnn: pool={pool!r} is not one of 'flatten', 'avg', "
                              "'stats'; fix train.model.pool")
        side = patch_size // 2 // 2
        self.features = nn.Sequential(_conv_block(in_channels, 32), _conv_block(32, 64))
        if pretrained_path is not None:
            load_encoder(self.features, pretrained_path, band_names)
        self.pool = {"avg": nn.AdaptiveAvgPool2d(1), "stats": FeatureStatistics()}.get(
            pool, nn.Identity())
        self.band_stats = band_stats
        n_features = {"avg": 64, "stats": 3 * 64}.get(pool, 64 * side * side)
        n_features += 4 * in_channels if band_stats else 0
        self.head = nn.Sequential(  # Flatten kept: the state-dict keys of earlier runs
            nn.Flatten(),
            nn.Linear(n_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch (B, C, P, P) to class logits (B, num_classes)."""
        features = self.pool(self.features(x))
        if self.band_stats:
            features = torch.cat([features.flatten(1), band_statistics(x)], dim=1)
        return self.head(features)


class FeatureStatistics(nn.Module):
    """Global mean, max and std pooling of feature maps (no weights)."""

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """(B, F, H, W) -> (B, 3F)."""
        return feature_statistics(f)


def band_statistics(x: torch.Tensor) -> torch.Tensor:
    """Per-band mean, std, min and max over the patch: (B, C, H, W) -> (B, 4C)."""
    flat = x.flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False),
                      flat.amin(dim=2), flat.amax(dim=2)], dim=1)


def load_encoder(
    features: nn.Module, path: str | Path, band_names: Sequence[str] | None = None
) -> None:
    """Load the ``features.*`` tensors of the weight file ``path`` into ``features``.

    Raises:
        DataNotFoundError: the file does not exist.
        ConfigError: no encoder weights, another band count or band list, another architecture.
    """
    from geofuse.models.backbones import load_state_dict_file, read_file_metadata, state_mismatch

    state = {k.split(".", 1)[1]: v for k, v in load_state_dict_file(path).items()
             if k.startswith("features.")}
    where = f"pretrained weights {str(path)!r}"
    if not state:
        raise ConfigError(f"{where} hold no simple_cnn encoder (features.*) tensors; write them "
                          "with 'geofuse pretrain -c CONFIG' for train.model.name simple_cnn")
    own = features.state_dict()
    first = "0.0.weight"
    if first in state and state[first].ndim == 4 and state[first].shape[1] != own[first].shape[1]:
        raise ConfigError(
            f"{where} were made for {state[first].shape[1]} input bands (features.{first} "
            f"{tuple(state[first].shape)}), this model has {own[first].shape[1]} (expected "
            f"{tuple(own[first].shape)}); select the same train.bands / train.modalities as "
            "when pretraining, or pretrain again with 'geofuse pretrain -c CONFIG'"
        )
    _check_bands(where, read_file_metadata(path).get("band_names"), band_names)
    parts = state_mismatch(own, state, prefix="features.", shown=3,
                           shape_label="shape (file vs model)")
    if parts:
        raise ConfigError(f"{where} do not fit the simple_cnn encoder: {'; '.join(parts)}; use "
                          "a file written by 'geofuse pretrain' for simple_cnn")
    features.load_state_dict(state, strict=False)


def _check_bands(where: str, saved: object, bands: Sequence[str] | None) -> None:
    """ConfigError when the file records other band names than the model's input bands."""
    if not isinstance(saved, list) or bands is None or list(saved) == list(bands):
        return
    raise ConfigError(
        f"{where} were made for bands {saved}, this model's inputs are {list(bands)}; select "
        "the same bands in the same order (train.bands), or pretrain again with "
        "'geofuse pretrain -c CONFIG'"
    )
