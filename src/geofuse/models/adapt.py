"""Input adaptation: feed C-band imagery to a network whose first convolution expects R, G, B.

Three explicit strategies (``train.model.input_adaptation``):

- ``cycle``: timm's :func:`~timm.models.adapt_input_conv`; the R, G, B kernels are repeated over
  the C input channels and scaled by 3/C (a single band gets their sum). Band meaning is ignored.
- ``band_aware``: the kernels of the bands that really are red, green and blue get the pretrained
  R, G, B kernels unchanged; every other band gets a small random start (``RANDOM_SCALE`` times
  the pretrained kernels' standard deviation). On an image whose other bands are zero the
  network responds exactly as the RGB network does.
- ``reduce``: a learned 1x1 convolution C -> 3 in front of the unchanged RGB network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from timm.models import adapt_input_conv
from torch import nn

from geofuse.errors import ConfigError
from geofuse.sensors import SENSORS

InputAdaptation = Literal["cycle", "band_aware", "reduce"]
ADAPTATIONS: tuple[str, ...] = ("cycle", "band_aware", "reduce")
RANDOM_SCALE = 0.1
DEFAULT_RGB: tuple[str, str, str] = SENSORS["sentinel2"].rgb or ("B4", "B3", "B2")


def check_adaptation(name: str) -> None:
    """Raise ConfigError unless ``name`` is a known input adaptation."""
    if name not in ADAPTATIONS:
        raise ConfigError(
            f"unknown input_adaptation {name!r}; choose one of {', '.join(ADAPTATIONS)} "
            "in train.model.input_adaptation"
        )


def rgb_indices(band_names: Sequence[str], rgb_bands: Sequence[str] | None = None) -> list[int]:
    """Positions of the red, green and blue bands in ``band_names``.

    Args:
        band_names: the model's input bands, in channel order.
        rgb_bands: names of the red, green and blue bands; default ``B4, B3, B2`` (Sentinel-2,
            Landsat 8), also matched with a modality prefix such as ``s2_B4``.

    Raises:
        ConfigError: not exactly three names, or a name missing from ``band_names``.
    """
    wanted = list(rgb_bands) if rgb_bands is not None else list(DEFAULT_RGB)
    if len(wanted) != 3:
        raise ConfigError(
            f"rgb_bands must name exactly 3 bands (red, green, blue), got {wanted}; "
            "fix train.model.rgb_bands"
        )
    out: list[int] = []
    for name in wanted:
        hits = [i for i, b in enumerate(band_names) if b == name]
        if not hits and rgb_bands is None:
            hits = [i for i, b in enumerate(band_names) if b.endswith(f"_{name}")]
        if len(hits) != 1:
            raise ConfigError(
                f"band_aware input adaptation: band {name!r} not found (once) in the input "
                f"bands {list(band_names)}; set train.model.rgb_bands to the names of your red, "
                "green and blue bands, or use input_adaptation: cycle"
            )
        out.append(hits[0])
    if len(set(out)) != 3:
        raise ConfigError(f"rgb_bands {wanted} must name 3 different bands; fix "
                          "train.model.rgb_bands")
    return out


def cycle_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv weight (O, 3, k, k) -> (O, C, k, k) by timm's cycling rule (scaled by 3/C)."""
    return adapt_input_conv(in_channels, weight.detach().clone())


def band_aware_weight(
    weight: torch.Tensor,
    band_names: Sequence[str],
    rgb_bands: Sequence[str] | None = None,
    scale: float = RANDOM_SCALE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """First-conv weight (O, 3, k, k) -> (O, C, k, k) with the RGB kernels on the RGB bands.

    Args:
        weight: pretrained weight whose input channels are R, G, B in that order.
        band_names: the C input bands, in channel order.
        rgb_bands: names of the red, green and blue bands (see :func:`rgb_indices`).
        scale: standard deviation of the other bands' random kernels, relative to ``weight``.
        generator: random generator for the other bands (default: torch's global one).
    """
    if weight.shape[1] != 3:
        raise ConfigError(
            f"band_aware needs a pretrained first convolution with 3 (R, G, B) input channels, "
            f"the weights have {weight.shape[1]}; use input_adaptation: cycle"
        )
    idx = rgb_indices(band_names, rgb_bands)
    out_c, _, kh, kw = weight.shape
    std = float(weight.detach().float().std()) * scale
    new = torch.randn((out_c, len(band_names), kh, kw), generator=generator) * std
    new = new.to(weight.dtype)
    for src, dst in enumerate(idx):
        new[:, dst] = weight.detach()[:, src]
    return new


def replace_conv_input(model: nn.Module, path: str, weight: torch.Tensor) -> nn.Conv2d:
    """Swap the Conv2d at dotted ``path`` in ``model`` for one with ``weight``'s input channels.

    Stride, padding, dilation, bias (copied) and groups (must be 1) are kept.
    """
    old = model.get_submodule(path)
    if not isinstance(old, nn.Conv2d) or old.groups != 1:
        raise TypeError(f"{path} is not a plain Conv2d (got {type(old).__name__})")
    new = nn.Conv2d(
        weight.shape[1], old.out_channels, old.kernel_size, stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding, dilation=old.dilation, bias=old.bias is not None,  # type: ignore[arg-type]
        padding_mode=old.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)
    return new


def adapt_first_conv(
    model: nn.Module,
    path: str,
    in_channels: int,
    method: InputAdaptation,
    band_names: Sequence[str] | None = None,
    rgb_bands: Sequence[str] | None = None,
) -> None:
    """Adapt the first convolution at ``path`` of ``model`` to ``in_channels`` bands, in place.

    Only ``cycle`` and ``band_aware`` change the convolution; ``reduce`` is a separate module
    (:func:`reduce_adapter`).

    Raises:
        ConfigError: unknown method, or ``band_aware`` without usable band names.
    """
    check_adaptation(method)
    weight = model.get_submodule(path).weight
    if method == "reduce":
        raise ValueError("reduce keeps the first convolution; use reduce_adapter()")
    if method == "band_aware":
        if band_names is None or len(band_names) != in_channels:
            raise ConfigError(
                f"band_aware input adaptation needs the names of the {in_channels} input bands, "
                f"got {band_names}; build the model through 'geofuse train' or pass band_names"
            )
        new = band_aware_weight(weight, band_names, rgb_bands)
    else:
        if weight.shape[1] == in_channels:
            return
        new = cycle_weight(weight, in_channels)
    replace_conv_input(model, path, new)


def reduce_adapter(in_channels: int, out_channels: int = 3) -> nn.Conv2d:
    """Learned 1x1 convolution mapping C bands onto the ``out_channels`` the network expects."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)
