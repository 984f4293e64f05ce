"""LSTM-UNet: a shared CNN encoder per date, a ConvLSTM over time at the bottleneck, a U-Net
decoder (the multi-temporal land-take model).

Input: a time series stacked time-major in the channels, (B, T*C, H, W) with channel
``t*C + c``. Output: logits at the input resolution, (B, 1, H, W) for 2 classes (one binary
logit: softmax([0, z]) = sigmoid(z)) and (B, K, H, W) for K > 2 classes.

::

    x (B, T*C, H, W) -> pad to a multiple of 32 -> (B*T, C, H, W)
      -> timm encoder (features_only, shared by all dates): 5 scales, 1/2 .. 1/32
      -> scales 1/2 .. 1/16: max over time            -> skip connections
      -> scale 1/32: (B, T, C5, h, w) -> ConvLSTM      -> last hidden state of the last layer
                                                          -> channel dropout
      -> U-Net decoder (bilinear 2x upsampling + skip concat + 2 conv-BN-ReLU per stage,
         5 stages to full resolution) -> 1x1 conv -> crop to (H, W)

The decoder upsamples bilinearly rather than with transposed convolutions (the experiment's
choice): no checkerboard artefacts and no extra weights on a small dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn

from geofuse.errors import ConfigError
from geofuse.models._seg_common import (
    DecoderStage,
    build_with_weights,
    check_decoder_channels,
    check_reductions,
    check_seg_args,
    pad_to_multiple,
    resolve_adaptation,
    seg_out_channels,
    step_band_names,
)
from geofuse.models.adapt import resolve_pretrained_bands

DEFAULT_DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 16)


class ConvLSTMCell(nn.Module):
    """One ConvLSTM cell (Shi et al. 2015): LSTM gates computed by a convolution.

    Args:
        in_channels: channels of the input feature map.
        hidden_channels: channels of the hidden and cell states.
        kernel_size: odd kernel size of the gate convolution.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size,
                               padding=kernel_size // 2)
        with torch.no_grad():  # forget-gate bias 1: remember by default (Jozefowicz et al.)
            self.gates.bias[hidden_channels:2 * hidden_channels].fill_(1.0)  # type: ignore[index]

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: input (B, in, h, w), state (h, c) -> new state (h, c), each (B, hid, h, w)."""
        hidden, cell = state
        i, f, o, g = self.gates(torch.cat([x, hidden], dim=1)).chunk(4, dim=1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(cell), cell


class ConvLSTM(nn.Module):
    """Stacked ConvLSTM cells over a sequence; returns the last hidden state of the last layer.

    Args:
        in_channels: channels of each input map.
        hidden_channels: channels of every layer's states.
        num_layers: stacked layers (layer l > 0 reads layer l-1's hidden states).
        kernel_size: odd kernel size of the gate convolutions.
    """

    def __init__(
        self, in_channels: int, hidden_channels: int, num_layers: int = 2, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.cells = nn.ModuleList(
            ConvLSTMCell(in_channels if i == 0 else hidden_channels, hidden_channels, kernel_size)
            for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sequence (B, T, C, h, w) -> last hidden state (B, hidden, h, w) of the last layer."""
        b, t, _, h, w = x.shape
        seq = list(x.unbind(dim=1))
        for cell in self.cells:
            zeros = x.new_zeros(b, cell.hidden_channels, h, w)  # type: ignore[arg-type]
            state = (zeros, zeros)
            outs = []
            for step in range(t):
                state = cell(seq[step], state)
                outs.append(state[0])
            seq = outs
        return seq[-1]


class LSTMUNet(nn.Module):
    """Shared timm encoder per date, ConvLSTM at the bottleneck, U-Net decoder.

    Args:
        in_channels: input channels, T dates x C bands stacked time-major.
        num_classes: mask classes; 2 gives one binary logit, K > 2 gives K logits.
        patch_size: tile height/width (any size; inputs are padded to a multiple of the
            encoder's stride, 32 for ResNets, and the output cropped back).
        time_steps: number of dates T (``in_channels`` must be a multiple of it).
        band_names: input band names, time-major (``B04@2018`` ...), for ``band_aware``.
        encoder: timm model with ``features_only`` support and a 2..32 pyramid: resnet18,
            resnet34, resnet50, efficientnet_b0, ...
        pretrained_path: local state dict of the timm RGB network (or of one for exactly C
            bands); the classifier is ignored. ``None``: timm's initialisation, no download.
        input_adaptation: ``cycle``, ``band_aware`` or ``reduce`` (see :mod:`.adapt`);
            ``None``/``auto``: ``band_aware`` when weights are given and B4, B3, B2 (or
            ``rgb_bands``) are among the bands, else ``cycle``.
        rgb_bands: names of the red, green and blue bands (``B04`` and ``B4`` both match).
        pretrained_bands: the weight file's bands in order, or a preset name (see
            :data:`~geofuse.models.adapt.PRETRAINED_BAND_SETS`): each date's bands are matched
            to them by name.
        lstm_hidden_dim: channels of the ConvLSTM states.
        lstm_layers: stacked ConvLSTM layers.
        lstm_kernel_size: odd kernel size of the ConvLSTM gates.
        decoder_channels: widths of the decoder stages, coarse to fine (one per 2x step);
            ``None``: the default (256, 128, 64, 32, 16).
        dropout: channel dropout (``Dropout2d``) on the ConvLSTM output.

    Raises:
        ConfigError: an invalid option; DataNotFoundError: a missing weights file.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        time_steps: int = 1,
        band_names: Sequence[str] | None = None,
        encoder: str = "resnet18",
        pretrained_path: str | Path | None = None,
        input_adaptation: str | None = None,
        rgb_bands: Sequence[str] | None = None,
        pretrained_bands: str | Sequence[str] | None = None,
        lstm_hidden_dim: int = 256,
        lstm_layers: int = 2,
        lstm_kernel_size: int = 3,
        decoder_channels: Sequence[int] | None = DEFAULT_DECODER_CHANNELS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        bands = check_seg_args("lstm_unet", in_channels, num_classes, time_steps)
        _check_options(lstm_hidden_dim, lstm_layers, lstm_kernel_size, dropout)
        self.time_steps, self.bands = time_steps, bands
        self.out_channels = seg_out_channels(num_classes)
        names = step_band_names("lstm_unet", band_names, in_channels, time_steps)
        self.input_adaptation = resolve_adaptation(
            input_adaptation, pretrained_path is not None, names, rgb_bands)
        self.encoder, self.adapter = build_with_weights(
            lambda chans: _timm_features(encoder, chans), lambda m: m, encoder, bands, 1,
            pretrained_path, self.input_adaptation, names, rgb_bands,
            resolve_pretrained_bands(pretrained_bands))
        info = self.encoder.feature_info  # type: ignore[union-attr]
        reductions, channels = list(info.reduction()), list(info.channels())
        stages = check_reductions(encoder, reductions)
        widths = check_decoder_channels("lstm_unet", decoder_channels, stages)
        self.stride = reductions[-1]
        self.temporal = ConvLSTM(channels[-1], lstm_hidden_dim, lstm_layers, lstm_kernel_size)
        skip_by_reduction = dict(zip(reductions[:-1], channels[:-1], strict=True))
        self.skip_reductions = [self.stride >> (i + 1) for i in range(stages)]
        ins = [lstm_hidden_dim, *widths[:-1]]
        self.decoder = nn.ModuleList(
            DecoderStage(c_in, skip_by_reduction.get(r, 0), c_out)
            for c_in, r, c_out in zip(ins, self.skip_reductions, widths, strict=True)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(widths[-1], self.out_channels, kernel_size=1)
        self._reductions = reductions
        _init_decoder(self.decoder)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Encoder features of a padded series (B, T*C, H, W): the skip connections (every
        scale but the last, max over time, finest first) and the bottleneck (B, T, C5, h, w)."""
        b, t = x.shape[0], self.time_steps
        feats = self.encoder(self.adapter(x.reshape(b * t, self.bands, *x.shape[-2:])))
        *skips, last = [f.reshape(b, t, *f.shape[1:]) for f in feats]
        return [f.amax(dim=1) for f in skips], last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1 or K, H, W) of a series (B, T*C, H, W)."""
        h, w = x.shape[-2:]
        skips, last = self.encode(pad_to_multiple(x, self.stride))
        pooled = dict(zip(self._reductions[:-1], skips, strict=True))
        out = self.dropout(self.temporal(last))
        for stage, r in zip(self.decoder, self.skip_reductions, strict=True):
            out = stage(out, pooled.get(r))
        return self.head(out)[..., :h, :w]


def _timm_features(name: str, in_chans: int) -> nn.Module:
    """timm ``features_only`` network for ``in_chans`` bands, randomly initialised."""
    try:
        return timm.create_model(name, pretrained=False, features_only=True, in_chans=in_chans)
    except RuntimeError as err:
        raise ConfigError(
            f"unknown or unsupported encoder {name!r} ({err}); use a timm CNN with "
            "features_only support, e.g. resnet18, resnet50, efficientnet_b0; fix "
            "train.model.encoder"
        ) from None


def _init_decoder(decoder: nn.Module) -> None:
    """He initialisation of the decoder convolutions (as smp does for its decoders)."""
    for module in decoder.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_uniform_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _check_options(hidden: int, layers: int, kernel: int, dropout: float) -> None:
    if hidden < 1 or layers < 1 or kernel < 1 or kernel % 2 == 0 or not 0 <= dropout < 1:
        raise ConfigError(
            f"lstm_unet: need lstm_hidden_dim >= 1, lstm_layers >= 1, an odd "
            f"lstm_kernel_size and 0 <= dropout < 1, got {hidden}, {layers}, {kernel}, "
            f"{dropout}; fix train.model"
        )
