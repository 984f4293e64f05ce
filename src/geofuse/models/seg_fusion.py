"""Late fusion for segmentation: one encoder per modality, one U-Net decoder (``unet_late``).

Early fusion of sensors for masks needs no class of its own: ``unet_early`` on the stacked
bands of every modality *is* early fusion. :class:`LateFusionUNet` gives each modality (e.g.
Sentinel-2, Sentinel-1, DEM) its own smp encoder, so that bands of different physics are not
mixed by the first convolution; at every scale the modalities' features are concatenated (the
skip connections of a multi-stream U-Net) and one decoder predicts the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from geofuse.errors import ConfigError
from geofuse.models._seg_common import (
    check_seg_args,
    pad_to_multiple,
    resolve_adaptation,
    seg_out_channels,
    step_band_names,
)
from geofuse.models.encoders import resolve_modalities, split_modalities
from geofuse.models.lstm_unet import DEFAULT_DECODER_CHANNELS
from geofuse.models.seg_baselines import _SmpUNet


class LateFusionUNet(nn.Module):
    """One smp encoder per modality, features concatenated per scale, one U-Net decoder.

    Args:
        in_channels: bands of all modalities, stacked in ``modalities`` order (one date).
        num_classes: mask classes; 2 gives one binary logit, K > 2 gives K logits.
        patch_size: tile side (any; padded to a multiple of the encoder stride, cropped back).
        modalities: modality name -> channel count, in channel order (default one modality).
        band_names: input band names (for ``band_aware`` adaptation per modality).
        time_steps: must be 1 (time series: ``lstm_unet`` or ``unet_early``).
        encoder: smp encoder of every modality (resnet18, resnet34, tu-<timm name>, ...).
        pretrained_path: local encoder state dict, loaded into every modality's encoder
            (RGB weights adapted to each modality's bands).
        input_adaptation: ``cycle``, ``band_aware``, ``reduce`` or ``None`` (auto, per modality).
        rgb_bands: names of the red, green and blue bands.
        pretrained_bands: the weight file's bands in order (or a preset name), matched by name
            to each modality's bands; a modality with none of them starts its first layer
            from scratch.
        decoder_channels: the 5 decoder widths, coarse to fine.
        dropout: channel dropout on the deepest fused features.

    Raises:
        ConfigError: an invalid option, a time series, or modalities that do not add up.
    """

    def __init__(
        self, in_channels: int, num_classes: int, patch_size: int,
        modalities: dict[str, int] | None = None, band_names: Sequence[str] | None = None,
        time_steps: int = 1, encoder: str = "resnet18",
        pretrained_path: str | Path | None = None, input_adaptation: str | None = None,
        rgb_bands: Sequence[str] | None = None,
        pretrained_bands: str | Sequence[str] | None = None,
        decoder_channels: Sequence[int] | None = DEFAULT_DECODER_CHANNELS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_seg_args("unet_late", in_channels, num_classes, time_steps)
        if time_steps != 1:
            raise ConfigError(
                f"unet_late fuses the modalities of one date, got time_steps={time_steps}; use "
                "lstm_unet or unet_early for a time series"
            )
        self.modalities = resolve_modalities("unet_late", in_channels, modalities)
        names = step_band_names("unet_late", band_names, in_channels, 1)
        self.time_steps, self.out_channels = 1, seg_out_channels(num_classes)
        streams, start = {}, 0
        for i, (mod, count) in enumerate(self.modalities.items()):
            own = None if names is None else names[start:start + count]
            start += count
            method = resolve_adaptation(input_adaptation, pretrained_path is not None, own,
                                        rgb_bands)
            streams[mod] = _SmpUNet(
                f"unet_late ({mod})", encoder, count, 1, num_classes, decoder_channels,
                pretrained_path, method, own, rgb_bands, dropout,
                skip_factor=len(self.modalities) if i == 0 else 1,
                pretrained_bands=pretrained_bands)
        self.streams = nn.ModuleDict(streams)
        for net in list(self.streams.values())[1:]:  # one decoder: the first stream's
            net.unet.decoder = nn.Identity()
            net.unet.segmentation_head = nn.Identity()

    @property
    def decoder_stream(self) -> _SmpUNet:
        """The first modality's stream: its decoder decodes the fused features."""
        return next(iter(self.streams.values()))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1 or K, H, W) of the stacked modalities (B, C, H, W)."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.decoder_stream.stride)
        parts = split_modalities(x, self.modalities)
        features = [self.streams[m].encode(part) for m, part in parts.items()]
        fused = [torch.cat(level, dim=1) for level in zip(*features, strict=True)]
        return self.decoder_stream.decode(fused)[..., :h, :w]
