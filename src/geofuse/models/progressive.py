"""Progressive fusion: an SE encoder-decoder with back-projection (Liubovich; Li et al. 2022).

Layout for ``channels=(32, 64, 128)`` on an 8x8 patch (sides 8 -> 8 -> 4 -> 2; 32x32 gives
32 -> 32 -> 16 -> 8; stride-2 3x3 convolutions with padding 1 also handle odd sides)::

    per modality m:  x_m -> [SE-res stage 0] -> [SE-res stage 1] -> [SE-res stage 2]
                               |     ^              |     ^              |
    fusion layer s:  f_s = SE(conv1x1(concat_m h_m)) + backproj_s(d_s of the previous pass)
                               |  (f_s is added back into every stream: fused context
                               |   flows into the next stage of each modality)
    decoder:         d_2 = f_2;  d_s = SE-res(concat(upsample(d_{s+1}), f_s))   (SE after up)
    head:            [avgpool(d_0), avgpool(f_2)] -> dense -> classes

Every encoder stage fuses the modalities, and after a first encoder-decoder pass the decoder
maps are back-projected (1x1 conv - BN - ReLU fusion layers) into the encoder's fusion layers,
``refinement_passes`` times, with the same weights each pass; the last decoder output is
classified. ``refinement_passes=0`` is the plain SE encoder-decoder with per-stage fusion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geofuse.errors import ConfigError
from geofuse.models.encoders import (
    SEBlock,
    check_patch_size,
    mlp_head,
    resolve_modalities,
    split_modalities,
)


class SEResBlock(nn.Module):
    """Residual block: conv3x3(stride) - BN - ReLU - conv3x3 - BN - SE, plus a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            SEBlock(out_channels, reduction),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output ``relu(F(x) + shortcut(x))``."""
        return F.relu(self.body(x) + self.shortcut(x))


def _pointwise(in_channels: int, out_channels: int) -> nn.Sequential:
    """Fusion layer: conv1x1 - BN - ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ProgressiveFusion(nn.Module):
    """SE encoder-decoder fusing modalities at every stage, refined by back-projection.

    Args:
        in_channels: total bands of the stack.
        num_classes: number of classes.
        patch_size: patch side in pixels (at least 4).
        modalities: modality name -> channel count, in channel order (default: one modality).
        se_reduction: Squeeze-and-Excitation reduction ratio (16 as in Hu et al.; the paper
            also tried 8).
        refinement_passes: decoder-to-encoder back-projection passes after the first pass.
        hidden: units of the dense layer of the head.
        dropout: dropout before the output layer.
        channels: feature channels of the encoder stages (stage 0 keeps the patch size,
            each later stage halves it).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        modalities: dict[str, int] | None = None,
        se_reduction: int = 16,
        refinement_passes: int = 1,
        hidden: int = 128,
        dropout: float = 0.5,
        channels: tuple[int, ...] = (32, 64, 128),
    ) -> None:
        super().__init__()
        check_patch_size("progressive_fusion", patch_size)
        if num_classes < 1 or se_reduction < 1 or refinement_passes < 0 or len(channels) < 2:
            raise ConfigError(
                f"progressive_fusion needs num_classes >= 1, se_reduction >= 1, "
                f"refinement_passes >= 0 and >= 2 stages; got num_classes={num_classes}, "
                f"se_reduction={se_reduction}, refinement_passes={refinement_passes}, "
                f"channels={channels}; fix train.model"
            )
        self.modalities = resolve_modalities("progressive_fusion", in_channels, modalities)
        self.refinement_passes = refinement_passes
        strides = [1] + [2] * (len(channels) - 1)
        self.streams = nn.ModuleDict()
        for m, bands in self.modalities.items():
            ins = [bands, *channels[:-1]]
            self.streams[m] = nn.ModuleList(
                SEResBlock(i, o, s, se_reduction)
                for i, o, s in zip(ins, channels, strides, strict=True)
            )
        n_mod = len(self.modalities)
        self.fuse = nn.ModuleList(
            nn.Sequential(_pointwise(n_mod * c, c), SEBlock(c, se_reduction)) for c in channels
        )
        self.decode = nn.ModuleList(
            SEResBlock(channels[s + 1] + channels[s], channels[s], 1, se_reduction)
            for s in range(len(channels) - 1)
        )
        self.backproject = nn.ModuleList(_pointwise(c, c) for c in channels[:-1])
        self.head = mlp_head(channels[0] + channels[-1], num_classes, hidden, dropout)

    def _encode(
        self, parts: dict[str, torch.Tensor], back: list[torch.Tensor] | None
    ) -> list[torch.Tensor]:
        """Fused feature maps ``f_s`` of every stage (back-projected decoder maps added)."""
        streams = dict(parts)
        fused: list[torch.Tensor] = []
        for s, fuse in enumerate(self.fuse):
            streams = {m: self.streams[m][s](h) for m, h in streams.items()}
            f = fuse(torch.cat(list(streams.values()), dim=1))
            if back is not None and s < len(back):
                f = f + self.backproject[s](back[s])
            streams = {m: h + f for m, h in streams.items()}
            fused.append(f)
        return fused

    def _decode(self, fused: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decoder maps ``d_s`` for every stage below the bottleneck, finest first."""
        d = fused[-1]
        out: list[torch.Tensor] = []
        for s in range(len(fused) - 2, -1, -1):
            up = F.interpolate(d, size=fused[s].shape[-2:], mode="nearest")
            d = self.decode[s](torch.cat([up, fused[s]], dim=1))
            out.append(d)
        return out[::-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) of stacked patches (B, C, P, P)."""
        parts = split_modalities(x, self.modalities)
        fused = self._encode(parts, None)
        decoded = self._decode(fused)
        for _ in range(self.refinement_passes):
            fused = self._encode(parts, decoded)
            decoded = self._decode(fused)
        pooled = [decoded[0].mean(dim=(-2, -1)), fused[-1].mean(dim=(-2, -1))]
        return self.head(torch.cat(pooled, dim=1))
