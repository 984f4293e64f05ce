"""Segmentation baselines for time series: early fusion, Siamese difference, single date.

All three are segmentation_models_pytorch U-Nets (encoder -> U-Net decoder -> 3x3 head) built
with ``encoder_weights=None``; encoder weights come only from a local ``pretrained_path`` (a
timm/torchvision ResNet state dict fits smp's ``resnet*`` encoders, a timm state dict fits
``tu-<timm name>`` encoders). Input: (B, T*C, H, W) stacked time-major (channel ``t*C + c``).
Output: (B, 1, H, W) logits for 2 classes (one binary logit: softmax([0, z]) = sigmoid(z)),
(B, K, H, W) for K > 2. Inputs are padded to a multiple of the encoder stride (32) and the
output cropped back, so any tile size works.

- ``unet_early`` (:class:`EarlyFusionUNet`): one U-Net on all T*C channels (time as bands).
- ``siamese_unet`` (:class:`SiameseUNet`): the first and the last date only, one shared encoder
  applied to both, skip features |f_last - f_first| (FC-Siam-diff, Daudt et al. 2018) or
  [f_first, f_last, f_last - f_first] (``skip_fusion: concat``), one U-Net decoder.
- ``unet_single`` (:class:`SingleDateUNet`): a U-Net on the last date only, the single-date
  baseline (same network as ``unet_early`` for T = 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, cast

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.base.initialization import initialize_decoder
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from geofuse.errors import ConfigError
from geofuse.models._seg_common import (
    build_with_weights,
    check_decoder_channels,
    check_seg_args,
    pad_to_multiple,
    resolve_adaptation,
    seg_out_channels,
    step_band_names,
)
from geofuse.models.adapt import resolve_pretrained_bands
from geofuse.models.lstm_unet import DEFAULT_DECODER_CHANNELS

SkipFusion = Literal["absdiff", "concat"]
SKIP_FUSIONS: tuple[str, ...] = ("absdiff", "concat")
_DEPTH = 5


class _SmpUNet(nn.Module):
    """An smp U-Net split into ``encode`` and ``decode`` (channel dropout on the deepest
    encoder features).

    Args:
        label: model name for messages.
        channels: input channels of the encoder (C, or T*C for early fusion).
        time_steps: dates stacked in ``channels`` (for the input adaptation).
        skip_factor: the decoder's skips have this many times the encoder's channels
            (the Siamese ``concat`` fusion); 1 keeps smp's decoder.
        (others): see :class:`EarlyFusionUNet`.
    """

    def __init__(
        self, label: str, encoder: str, channels: int, time_steps: int, num_classes: int,
        decoder_channels: Sequence[int] | None, pretrained_path: str | Path | None,
        adaptation: str, step_names: Sequence[str] | None, rgb_bands: Sequence[str] | None,
        dropout: float, skip_factor: int = 1, pretrained_bands: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        widths = tuple(check_decoder_channels(label, decoder_channels, _DEPTH))
        if not 0 <= dropout < 1:
            raise ConfigError(f"{label}: dropout must be in [0, 1), got {dropout}; fix "
                              "train.model.dropout")
        out = seg_out_channels(num_classes)

        def make(chans: int) -> nn.Module:
            try:
                return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=chans,
                                classes=out, decoder_channels=widths)
            except (KeyError, ValueError, RuntimeError) as err:
                raise ConfigError(
                    f"{label}: unknown encoder {encoder!r} ({err}); use an smp encoder such as "
                    "resnet18, resnet34, resnet50 or tu-<timm name>; fix train.model.encoder"
                ) from None

        net, self.adapter = build_with_weights(make, lambda m: m.encoder, encoder, channels,
                                               time_steps, pretrained_path, adaptation,
                                               step_names, rgb_bands,
                                               resolve_pretrained_bands(pretrained_bands))
        self.unet = unet = cast(smp.Unet, net)
        if skip_factor > 1:
            unet.decoder = UnetDecoder(
                encoder_channels=[c * skip_factor for c in unet.encoder.out_channels],
                decoder_channels=widths, n_blocks=_DEPTH,
                add_center_block=encoder.startswith("vgg"),
            )
            initialize_decoder(unet.decoder)
        self.stride = int(unet.encoder.output_stride)
        self.dropout = nn.Dropout2d(dropout)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """smp encoder features of (B, channels, H, W), the input itself first."""
        return list(self.unet.encoder(self.adapter(x)))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits from (fused) encoder features, the input itself first."""
        features = [*features[:-1], self.dropout(features[-1])]
        return self.unet.segmentation_head(self.unet.decoder(features))


def _setup(
    label: str, in_channels: int, num_classes: int, time_steps: int,
    band_names: Sequence[str] | None, pretrained_path: str | Path | None,
    input_adaptation: str | None, rgb_bands: Sequence[str] | None,
) -> tuple[int, list[str] | None, str]:
    """Bands per date, band names of one date and the resolved input adaptation."""
    bands = check_seg_args(label, in_channels, num_classes, time_steps)
    names = step_band_names(label, band_names, in_channels, time_steps)
    method = resolve_adaptation(input_adaptation, pretrained_path is not None, names, rgb_bands)
    return bands, names, method


class EarlyFusionUNet(nn.Module):
    """Early fusion: one smp U-Net on the T*C stacked channels (``unet_early``).

    With pretrained RGB weights the first convolution gets the per-date adapted kernel
    repeated for every date and divided by T.

    Args:
        in_channels: input channels, T dates x C bands stacked time-major.
        num_classes: mask classes; 2 gives one binary logit, K > 2 gives K logits.
        patch_size: tile height/width (any; padded to a multiple of 32, cropped back).
        time_steps: number of dates T.
        band_names: input band names, time-major (``B04@2018`` ...), for ``band_aware``.
        encoder: smp encoder name (resnet18, resnet34, resnet50, tu-<timm name>, ...).
        pretrained_path: local encoder state dict (RGB, or exactly the input channels).
        input_adaptation: ``cycle``, ``band_aware``, ``reduce``; ``None``/``auto``:
            ``band_aware`` with weights and known R, G, B bands, else ``cycle``.
        rgb_bands: names of the red, green and blue bands.
        decoder_channels: the 5 decoder widths, coarse to fine (``None``: 256 .. 16).
        dropout: channel dropout (``Dropout2d``) on the deepest encoder features.

    Raises:
        ConfigError: an invalid option; DataNotFoundError: a missing weights file.
    """

    def __init__(
        self, in_channels: int, num_classes: int, patch_size: int, time_steps: int = 1,
        band_names: Sequence[str] | None = None, encoder: str = "resnet18",
        pretrained_path: str | Path | None = None, input_adaptation: str | None = None,
        rgb_bands: Sequence[str] | None = None,
        pretrained_bands: str | Sequence[str] | None = None,
        decoder_channels: Sequence[int] | None = DEFAULT_DECODER_CHANNELS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _, names, self.input_adaptation = _setup(
            "unet_early", in_channels, num_classes, time_steps, band_names, pretrained_path,
            input_adaptation, rgb_bands)
        self.time_steps, self.out_channels = time_steps, seg_out_channels(num_classes)
        self.net = _SmpUNet("unet_early", encoder, in_channels, time_steps, num_classes,
                            decoder_channels, pretrained_path, self.input_adaptation, names,
                            rgb_bands, dropout, pretrained_bands=pretrained_bands)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1 or K, H, W) of a series (B, T*C, H, W)."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.net.stride)
        return self.net.decode(self.net.encode(x))[..., :h, :w]


class SingleDateUNet(nn.Module):
    """Single-date baseline: an smp U-Net on the LAST date's C bands (``unet_single``).

    Args: as :class:`EarlyFusionUNet`; the other dates are ignored.
    """

    def __init__(
        self, in_channels: int, num_classes: int, patch_size: int, time_steps: int = 1,
        band_names: Sequence[str] | None = None, encoder: str = "resnet18",
        pretrained_path: str | Path | None = None, input_adaptation: str | None = None,
        rgb_bands: Sequence[str] | None = None,
        pretrained_bands: str | Sequence[str] | None = None,
        decoder_channels: Sequence[int] | None = DEFAULT_DECODER_CHANNELS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.bands, names, self.input_adaptation = _setup(
            "unet_single", in_channels, num_classes, time_steps, band_names, pretrained_path,
            input_adaptation, rgb_bands)
        self.time_steps, self.out_channels = time_steps, seg_out_channels(num_classes)
        self.net = _SmpUNet("unet_single", encoder, self.bands, 1, num_classes,
                            decoder_channels, pretrained_path, self.input_adaptation, names,
                            rgb_bands, dropout, pretrained_bands=pretrained_bands)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1 or K, H, W) from the last date of a series (B, T*C, H, W)."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x[:, -self.bands:], self.net.stride)
        return self.net.decode(self.net.encode(x))[..., :h, :w]


class SiameseUNet(nn.Module):
    """Bi-temporal Siamese difference U-Net on the FIRST and LAST dates (``siamese_unet``).

    One encoder (shared weights) encodes both dates; at every scale the skip feature is
    ``|f_last - f_first|`` (``absdiff``, FC-Siam-diff: symmetric, blind to the direction of
    change) or ``[f_first, f_last, f_last - f_first]`` (``concat``: 3x the skip channels, keeps
    the direction, e.g. vegetation -> built-up vs the reverse). Dates in between are ignored.

    Args:
        skip_fusion: ``absdiff`` or ``concat``.
        (others): as :class:`EarlyFusionUNet`; ``time_steps`` must be >= 2.

    Raises:
        ConfigError: an invalid option or fewer than 2 dates.
    """

    def __init__(
        self, in_channels: int, num_classes: int, patch_size: int, time_steps: int = 2,
        band_names: Sequence[str] | None = None, encoder: str = "resnet18",
        pretrained_path: str | Path | None = None, input_adaptation: str | None = None,
        rgb_bands: Sequence[str] | None = None,
        pretrained_bands: str | Sequence[str] | None = None,
        decoder_channels: Sequence[int] | None = DEFAULT_DECODER_CHANNELS,
        dropout: float = 0.0,
        skip_fusion: SkipFusion = "absdiff",
    ) -> None:
        super().__init__()
        if skip_fusion not in SKIP_FUSIONS:
            raise ConfigError(f"siamese_unet: unknown skip_fusion {skip_fusion!r}; choose one "
                              f"of {', '.join(SKIP_FUSIONS)} in train.model.skip_fusion")
        if time_steps < 2:
            raise ConfigError(
                f"siamese_unet compares the first and the last date and needs time_steps >= 2, "
                f"got {time_steps}; use a time series or the model unet_single"
            )
        self.bands, names, self.input_adaptation = _setup(
            "siamese_unet", in_channels, num_classes, time_steps, band_names, pretrained_path,
            input_adaptation, rgb_bands)
        self.time_steps, self.out_channels = time_steps, seg_out_channels(num_classes)
        self.skip_fusion = skip_fusion
        self.net = _SmpUNet("siamese_unet", encoder, self.bands, 1, num_classes,
                            decoder_channels, pretrained_path, self.input_adaptation, names,
                            rgb_bands, dropout, skip_factor=3 if skip_fusion == "concat" else 1,
                            pretrained_bands=pretrained_bands)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1 or K, H, W) from the first and last dates of (B, T*C, H, W)."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.net.stride)
        first, last = x[:, :self.bands], x[:, -self.bands:]
        both = self.net.encode(torch.cat([first, last], dim=0))  # one encoder pass, shared BN
        fused = [self._fuse(*f.chunk(2, dim=0)) for f in both]
        return self.net.decode(fused)[..., :h, :w]

    def _fuse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Skip feature of one scale from the first (``a``) and last (``b``) date."""
        if self.skip_fusion == "absdiff":
            return (b - a).abs()
        return torch.cat([a, b, b - a], dim=1)
