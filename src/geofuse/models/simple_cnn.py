"""SimpleCNN: the small from-scratch baseline of the Week 3/4 land-cover reports.

Two conv blocks (32 and 64 filters, BatchNorm, ReLU, 2x2 max-pool), then a 128-unit dense layer
with dropout 0.5. On 8x8 patches of 6 bands it has about 54K parameters, the model that kept
learning where frozen ResNet50 transfer learning collapsed to a single class.
"""

from __future__ import annotations

import torch
from torch import nn

from geofuse.errors import ConfigError

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
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        hidden: int = 128,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if patch_size < MIN_PATCH_SIZE:
            raise ConfigError(
                f"simple_cnn needs patches of at least {MIN_PATCH_SIZE}x{MIN_PATCH_SIZE} pixels "
                f"(two 2x2 poolings), got patch_size={patch_size}; raise extract.patch_size"
            )
        if in_channels < 1 or num_classes < 2:
            raise ConfigError(
                f"simple_cnn needs >= 1 band and >= 2 classes, got in_channels={in_channels}, "
                f"num_classes={num_classes}; check train.bands and the label classes"
            )
        side = patch_size // 2 // 2
        self.features = nn.Sequential(_conv_block(in_channels, 32), _conv_block(32, 64))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch (B, C, P, P) to class logits (B, num_classes)."""
        return self.head(self.features(x))
