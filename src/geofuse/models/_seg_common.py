"""Plumbing shared by the segmentation models (:mod:`.lstm_unet`, :mod:`.seg_baselines`).

Time series arrive stacked time-major in the channels, (B, T*C, H, W) with channel ``t*C + c``,
and band names such as ``B04@2018``. This module checks ``time_steps``, finds the C band names
of one date (``@date`` stripped, ``B04`` read as ``B4``), picks the input adaptation, loads a
local encoder state dict (never downloading), adapts the encoder's first convolution from 3
(R, G, B) to the input bands, pads inputs to the encoder's output stride and provides the
U-Net decoder stage used by :class:`~geofuse.models.lstm_unet.LSTMUNet`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from geofuse.errors import ConfigError
from geofuse.models.adapt import (
    band_aware_weight,
    check_adaptation,
    cycle_weight,
    matched_weight,
    reduce_adapter,
    replace_conv_input,
    rgb_indices,
)
from geofuse.models.backbones import load_state_dict_file, state_mismatch
from geofuse.models.encoders import conv_bn_relu

AUTO = "auto"


def seg_out_channels(num_classes: int) -> int:
    """Output channels of a segmentation head: one binary logit for 2 classes, else K (1: a
    value per pixel, dense regression)."""
    return 1 if num_classes == 2 else num_classes


def check_seg_args(model: str, in_channels: int, num_classes: int, time_steps: int) -> int:
    """Validate the supplied arguments of a segmentation model; return the bands per date C.

    Raises:
        ConfigError: ``time_steps`` < 1, ``in_channels`` not a multiple of it, or no output
            (``num_classes`` 1 is one value per pixel, a dense regression).
    """
    if time_steps < 1 or in_channels < 1 or in_channels % time_steps:
        raise ConfigError(
            f"{model}: in_channels={in_channels} is not time_steps={time_steps} dates of equal "
            "band count; the input must be T dates x C bands stacked time-major (channel t*C+c) "
            "with time_steps = T; check the temporal bands and train.bands"
        )
    if num_classes < 1:
        raise ConfigError(f"{model}: needs >= 2 mask classes or 1 output (a value per pixel), "
                          f"got num_classes={num_classes}; check the mask classes of the dataset")
    return in_channels // time_steps


def canonical_band(name: str) -> str:
    """Band name of one date: ``B04@2018`` -> ``B4``, ``s2_B08@2019-06`` -> ``s2_B8``."""
    return re.sub(r"(?<=B)0(?=\d$)", "", name.split("@", 1)[0])


def step_band_names(
    model: str, band_names: Sequence[str] | None, in_channels: int, time_steps: int,
) -> list[str] | None:
    """The C band names of one date (canonical, see :func:`canonical_band`), or ``None``.

    Raises:
        ConfigError: the names do not match ``in_channels``, or dated names (``band@date``)
            are not stacked time-major with the same bands on every date.
    """
    if band_names is None:
        return None
    names = list(band_names)
    if len(names) != in_channels:
        raise ConfigError(f"{model}: got {len(names)} band names for in_channels={in_channels}; "
                          "pass one name per input channel")
    per_step = in_channels // time_steps
    steps = [[canonical_band(n) for n in names[t * per_step:(t + 1) * per_step]]
             for t in range(time_steps)]
    if all("@" in n for n in names) and any(s != steps[0] for s in steps):
        raise ConfigError(
            f"{model}: the bands {names} are not stacked time-major (date by date, the same "
            f"{per_step} bands each); stack the time series as (T, C) -> T*C channels"
        )
    return steps[0]


def resolve_adaptation(
    adaptation: str | None, pretrained: bool, step_names: Sequence[str] | None,
    rgb_bands: Sequence[str] | None,
) -> str:
    """The input adaptation to use: ``adaptation`` itself, or for ``None``/``auto``
    ``band_aware`` when weights are given and the red, green and blue bands are found,
    else ``cycle``.

    Raises:
        ConfigError: an unknown adaptation name.
    """
    if adaptation not in (None, AUTO):
        check_adaptation(str(adaptation))
        return str(adaptation)
    if pretrained and step_names is not None:
        try:
            rgb_indices(step_names, canonical_rgb(rgb_bands))
        except ConfigError:
            return "cycle"
        return "band_aware"
    return "cycle"


def canonical_rgb(rgb_bands: Sequence[str] | None) -> list[str] | None:
    """``rgb_bands`` in the canonical form of :func:`canonical_band` (``None`` kept)."""
    return None if rgb_bands is None else [canonical_band(b) for b in rgb_bands]


def first_conv_path(module: nn.Module) -> str:
    """Dotted path of the first ``nn.Conv2d`` of ``module`` (the stem convolution)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            return name
    raise TypeError(f"{type(module).__name__} has no Conv2d")


def weights_target(encoder: nn.Module) -> nn.Module:
    """The module whose state dict a timm state dict fits: an smp ``tu-`` encoder's timm
    network (``.model``), else the encoder itself."""
    inner = getattr(encoder, "model", None)
    return inner if isinstance(inner, nn.Module) else encoder


def file_in_channels(path: str | Path, conv_key: str) -> int:
    """Input channels of the first convolution ``conv_key`` in the weight file (3 if absent)."""
    weight = load_state_dict_file(path).get(f"{conv_key}.weight")
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else 3


def load_encoder_weights(encoder: nn.Module, path: str | Path, label: str) -> None:
    """Load a local state dict into ``encoder``; layers it lacks (a classifier) are ignored.

    Raises:
        DataNotFoundError: no such file; ConfigError: the weights do not fit the encoder.
    """
    target = weights_target(encoder)
    own = target.state_dict()
    state = {k: v for k, v in load_state_dict_file(path).items() if k in own}
    parts = state_mismatch(own, state)
    if parts:
        raise ConfigError(
            f"pretrained weights {str(path)!r} do not fit encoder {label}: {'; '.join(parts)}; "
            f"use a state dict saved from timm.create_model({label!r})"
        )
    target.load_state_dict(state, strict=False)


def adapt_encoder_input(
    encoder: nn.Module, bands: int, time_steps: int, method: str,
    step_names: Sequence[str] | None, rgb_bands: Sequence[str] | None,
    source_bands: Sequence[str] | None = None,
) -> None:
    """Replace the encoder's first convolution (3-band R, G, B, or the ``source_bands`` of a
    multispectral file) by one for ``time_steps`` x ``bands`` channels, in place.

    The C-band kernel is built per date (``cycle``: timm's rule; ``band_aware``: RGB kernels on
    the real R, G, B bands; with ``source_bands`` each band's kernel by name, see
    :mod:`.adapt`) and, for T > 1 dates in the channels, repeated for every date and divided by
    T, so a series of T identical dates responds like one date.

    Raises:
        ConfigError: ``band_aware`` without band names or without the R, G, B bands.
    """
    target = weights_target(encoder)
    path = first_conv_path(target)
    weight = target.get_submodule(path).weight
    if source_bands is not None or method == "band_aware":
        if step_names is None:
            raise ConfigError("band_aware input adaptation needs the input band names; build "
                              "the model through 'geofuse train' or pass band_names")
        new = (matched_weight(weight, step_names, source_bands) if source_bands is not None
               else band_aware_weight(weight, step_names, canonical_rgb(rgb_bands)))
    else:
        new = cycle_weight(weight, bands)
    if time_steps > 1:
        new = torch.cat([new] * time_steps, dim=1) / time_steps
    replace_conv_input(target, path, new)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (bottom/right) the last two dims of ``x`` up to a multiple of ``multiple``:
    reflection where the padding is smaller than the image, replication otherwise."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def check_reductions(label: str, reductions: Sequence[int]) -> int:
    """Number of 2x decoder stages for an encoder with these feature reductions.

    Raises:
        ConfigError: reductions that are not increasing powers of two (not a CNN pyramid).
    """
    ok = all(r > 0 and r & (r - 1) == 0 for r in reductions) and list(reductions) == sorted(
        set(reductions))
    if not ok or reductions[-1] < 2:
        raise ConfigError(f"encoder {label} has feature reductions {list(reductions)}; the U-Net "
                          "decoder needs a CNN pyramid (2, 4, ..., 32); pick e.g. resnet18")
    return int(math.log2(reductions[-1]))


def check_decoder_channels(
    label: str, channels: Sequence[int] | None, stages: int
) -> list[int]:
    """``channels`` as a list, one positive width per decoder stage (``None``: the default
    256, 128, 64, 32, 16 when there are 5 stages, else halving from 256 and at least 16).

    Raises:
        ConfigError: wrong length or a width < 1.
    """
    if channels is None:
        channels = [max(16, 256 >> i) for i in range(stages)]
    out = [int(c) for c in channels]
    if len(out) != stages or min(out) < 1:
        raise ConfigError(f"{label}: decoder_channels must list {stages} positive widths (one "
                          f"per 2x upsampling stage), got {list(channels)}; fix "
                          "train.model.decoder_channels, e.g. [256, 128, 64, 32, 16]")
    return out


class DecoderStage(nn.Module):
    """Bilinear 2x upsampling (to the skip's size), concatenation of the skip, 2 conv-BN-ReLU.

    Args:
        in_channels: channels of the coarser input.
        skip_channels: channels of the skip connection (0: none).
        out_channels: channels of the output.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(in_channels + skip_channels, out_channels),
                                   conv_bn_relu(out_channels, out_channels))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """(B, in, h, w) [+ skip (B, s, 2h, 2w)] -> (B, out, 2h, 2w)."""
        size = skip.shape[-2:] if skip is not None else (2 * x.shape[-2], 2 * x.shape[-1])
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


def build_with_weights(
    make: Callable[[int], nn.Module], encoder_of: Callable[[nn.Module], nn.Module], label: str,
    channels: int, time_steps: int, pretrained_path: str | Path | None, adaptation: str,
    step_names: Sequence[str] | None, rgb_bands: Sequence[str] | None,
    source_bands: Sequence[str] | None = None,
) -> tuple[nn.Module, nn.Module]:
    """Build a network for ``channels`` input channels and its input adapter.

    Args:
        make: builds the network for a given number of input channels (never downloading).
        encoder_of: the network's encoder (the part the weight file fits).
        label: encoder name for messages.
        channels: input channels the network sees: C (one date) or T*C (dates stacked).
        time_steps: dates stacked in ``channels`` (1 for a per-date encoder).
        pretrained_path: local state dict of the encoder, for 3 (R, G, B) bands or for exactly
            ``channels`` bands (loaded as is); ``None``: timm/smp initialisation.
        adaptation: ``cycle``, ``band_aware`` or ``reduce`` (a learned 1x1 conv to 3 bands in
            front of the unchanged RGB network; the adapter returned).
        step_names: canonical band names of one date (for ``band_aware``).
        rgb_bands: names of the red, green and blue bands.
        source_bands: the weight file's bands in order (``train.model.pretrained_bands``):
            matched to ``step_names`` by name whatever the file's band count.

    Returns:
        The network and the adapter module to apply before it (``nn.Identity`` but for reduce).

    Raises:
        ConfigError: weights that fit neither 3 nor ``channels`` bands, or not the encoder.
    """
    if adaptation == "reduce":
        if source_bands is not None:
            raise ConfigError(f"{label}: input_adaptation reduce feeds a 3-band (RGB) network; "
                              "remove it to match train.model.pretrained_bands by name")
        model = make(3)
        if pretrained_path is not None:
            load_encoder_weights(encoder_of(model), pretrained_path, label)
        return model, reduce_adapter(channels)
    if pretrained_path is None:
        return make(channels), nn.Identity()
    model = make(3)
    conv = first_conv_path(weights_target(encoder_of(model)))
    src = file_in_channels(pretrained_path, conv)
    if source_bands is not None:
        model = model if src == 3 else make(src)
        load_encoder_weights(encoder_of(model), pretrained_path, label)
        adapt_encoder_input(encoder_of(model), channels // time_steps, time_steps, adaptation,
                            step_names, rgb_bands, source_bands)
        return model, nn.Identity()
    if src == channels != 3:
        model = make(channels)
        load_encoder_weights(encoder_of(model), pretrained_path, label)
        return model, nn.Identity()
    if src != 3:
        raise ConfigError(
            f"pretrained weights {str(pretrained_path)!r} have a first convolution for {src} "
            f"bands; name them in order in train.model.pretrained_bands (e.g. sentinel2_l1c) "
            f"so {label} matches them to the input bands by name"
        )
    load_encoder_weights(encoder_of(model), pretrained_path, label)
    adapt_encoder_input(encoder_of(model), channels // time_steps, time_steps, adaptation,
                        step_names, rgb_bands)
    return model, nn.Identity()
