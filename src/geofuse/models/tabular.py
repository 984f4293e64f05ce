"""Image + tabular fusion: patches with a vector of attributes per patch (``batch["tab"]``).

:class:`TabularFusion` (``tabular_fusion``) combines the stacked bands with ``num_tabular``
attributes in one of three ways (``mode``):

- ``early``: the attributes are broadcast as constant extra channels onto the image, which a
  small CNN then reads as ordinary bands.
- ``late``: image encoder features are concatenated with the features of an MLP branch.
- ``progressive``: the MLP features modulate every image stage by FiLM
  (``h * (1 + gamma) + beta``), and join the image features before the head.

Models that need the attributes set ``uses_tabular = True`` and take ``forward(image, tab)``;
:class:`~geofuse.training.task.ClassificationTask` then passes ``batch["tab"]``.
"""

from __future__ import annotations

import torch
from torch import nn

from geofuse.errors import ConfigError
from geofuse.models.encoders import (
    SEBlock,
    SmallCNNEncoder,
    check_patch_size,
    conv_bn_relu,
    mlp_head,
)

MODES = ("early", "late", "progressive")


class TabularMLP(nn.Module):
    """Two dense layers with ReLU: (B, F) attributes -> (B, ``feature_dim``) features."""

    def __init__(self, num_tabular: int, feature_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(num_tabular, feature_dim),
            nn.ReLU(inplace=True),
            nn.Linear(feature_dim, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.feature_dim = feature_dim

    def forward(self, tab: torch.Tensor) -> torch.Tensor:
        """Features (B, feature_dim)."""
        return self.body(tab)


class FiLMStage(nn.Module):
    """Conv3x3 - BN - ReLU - SE stage whose output is scaled and shifted by tabular features."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(conv_bn_relu(in_channels, out_channels), SEBlock(out_channels))
        self.film = nn.Linear(cond_dim, 2 * out_channels)
        nn.init.zeros_(self.film.weight)  # start as the plain image stage
        nn.init.zeros_(self.film.bias)
        self.pool: nn.Module = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Modulated, optionally pooled feature map."""
        gamma, beta = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        return self.pool(self.conv(x) * (1 + gamma) + beta)


class TabularFusion(nn.Module):
    """Classify patches from their bands and a vector of tabular attributes.

    With ``num_tabular=0`` (no attributes in the data) the model is its image branch alone and
    takes ``forward(image)``; training refuses that case with a clear error.

    Args:
        in_channels: bands of the stack.
        num_classes: number of classes.
        patch_size: patch side in pixels (at least 4).
        num_tabular: attributes per patch (the PatchSet's ``tabular`` columns).
        mode: ``early``, ``late`` or ``progressive`` (see the module docstring).
        hidden: units of the head's dense layer.
        dropout: dropout before the output layer.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        num_tabular: int = 0,
        mode: str = "late",
        hidden: int = 128,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_patch_size("tabular_fusion", patch_size)
        if mode not in MODES:
            raise ConfigError(
                f"tabular_fusion: mode={mode!r} is not supported; use one of {', '.join(MODES)}"
            )
        if num_classes < 1 or num_tabular < 0:
            raise ConfigError(
                f"tabular_fusion needs >= 1 output and >= 0 attributes, got "
                f"num_classes={num_classes}, num_tabular={num_tabular}; check the PatchSet"
            )
        self.mode = mode
        self.num_tabular = num_tabular
        self.uses_tabular = num_tabular > 0
        self.mlp = TabularMLP(num_tabular) if self.uses_tabular and mode != "early" else None
        tab_dim = self.mlp.feature_dim if self.mlp is not None else 0
        if mode == "progressive":
            cond = max(tab_dim, 1)
            self.stages = nn.ModuleList([
                FiLMStage(in_channels, 32, cond, pool=True),
                FiLMStage(32, 64, cond, pool=True),
            ])
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
            image_dim = 64 * 4
        else:
            extra = num_tabular if mode == "early" else 0
            self.image = SmallCNNEncoder(in_channels + extra, patch_size)
            image_dim = self.image.feature_dim
        self.head = mlp_head(image_dim + tab_dim, num_classes, hidden, dropout)

    def forward(self, image: torch.Tensor, tab: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, num_classes) of patches (B, C, P, P) and attributes (B, F).

        Raises:
            ValueError: the model was built with attributes but ``tab`` is missing or of the
                wrong width.
        """
        if self.uses_tabular and (tab is None or tab.shape[-1] != self.num_tabular):
            got = None if tab is None else tuple(tab.shape)
            raise ValueError(
                f"tabular_fusion expects tab of shape (B, {self.num_tabular}), got {got}; "
                "pass batch['tab'] from a PatchSet with tabular attributes"
            )
        if tab is None or not self.uses_tabular:
            tab = image.new_zeros(len(image), 0)
        if self.mode == "early":
            size = image.shape[-2:]
            planes = tab[:, :, None, None].expand(-1, -1, *size)
            return self.head(self.image(torch.cat([image, planes], dim=1)))
        feats = self.mlp(tab) if self.mlp is not None else tab
        if self.mode == "late":
            return self.head(torch.cat([self.image(image), feats], dim=1))
        cond = feats if self.mlp is not None else image.new_zeros(len(image), 1)
        h = image
        for stage in self.stages:
            h = stage(h, cond)
        return self.head(torch.cat([self.pool(h), feats], dim=1))
