"""Input adaptation: feed C-band imagery to a network whose first convolution expects R, G, B.

Three explicit strategies (``train.model.input_adaptation``):

- ``cycle``: timm's :func:`~timm.models.adapt_input_conv`; the R, G, B kernels are repeated over
  the C input channels and scaled by 3/C (a single band gets their sum). Band meaning is ignored.
- ``band_aware``: the kernels of the bands that really are red, green and blue get the pretrained
  R, G, B kernels unchanged; every other band gets a small random start (``RANDOM_SCALE`` times
  the pretrained kernels' standard deviation). On an image whose other bands are zero the
  network responds exactly as the RGB network does.
- ``reduce``: a learned 1x1 convolution C -> 3 in front of the unchanged RGB network.

Multispectral weights (SSL4EO-S12's 13 Sentinel-2 bands, a ``geofuse pretrain`` file, weights
for R, G, B in another order) are matched by band name (``train.model.pretrained_bands``): each
input band named in the file's band list gets that band's kernel unchanged, every other input
band a small random start, and the file's bands the input lacks are dropped. On an image whose
unmatched bands are zero the network responds as the pretrained network does to the same image
with its missing bands zero. Names match without a modality prefix (``s2_B4`` is ``B4``), a date
(``B4@2020-06``), case or zero padding (``B04`` is ``B4``).
"""

from __future__ import annotations

import re
import warnings
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


#: Band lists of published multispectral weights, by name (``pretrained_bands: sentinel2_l1c``).
PRETRAINED_BAND_SETS: dict[str, tuple[str, ...]] = {
    # SSL4EO-S12 / TorchGeo ``*_sentinel2_all_*`` weights: all 13 Level-1C bands
    "sentinel2_l1c": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11",
                      "B12"),
    # the same without the cirrus band B10, which Level-2A products drop
    "sentinel2_l2a": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12"),
}


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


def band_key(name: str) -> str:
    """A band name for matching: no date, upper case, no zero padding (``b04@2020`` is ``B4``)."""
    return re.sub(r"(?<=B)0(?=\dA?$)", "", name.split("@", 1)[0].upper())


def _name_forms(name: str) -> list[str]:
    """``s2_idx_NDVI`` -> keys of ``s2_idx_NDVI``, ``idx_NDVI``, ``NDVI`` (longest first)."""
    parts = name.split("@", 1)[0].split("_")
    return [band_key("_".join(parts[i:])) for i in range(len(parts))]


def resolve_pretrained_bands(value: str | Sequence[str] | None) -> list[str] | None:
    """``train.model.pretrained_bands`` as a band list: a preset name is expanded.

    Raises:
        ConfigError: an unknown preset name, or a list with a band twice.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value not in PRETRAINED_BAND_SETS:
            raise ConfigError(
                f"unknown pretrained_bands preset {value!r}; use one of "
                f"{', '.join(PRETRAINED_BAND_SETS)} or list the weight file's bands in order "
                "in train.model.pretrained_bands"
            )
        return list(PRETRAINED_BAND_SETS[value])
    bands = list(value)
    keys = [band_key(b) for b in bands]
    twice = sorted({b for b, k in zip(bands, keys, strict=True) if keys.count(k) > 1})
    if twice or not bands:
        raise ConfigError(
            f"pretrained_bands {bands} must name each band of the weight file once (repeated: "
            f"{twice}); fix train.model.pretrained_bands"
        )
    return bands


def match_bands(band_names: Sequence[str], source_bands: Sequence[str]) -> list[int | None]:
    """For each input band, the position of the same band in ``source_bands`` (or ``None``).

    An input band matches a source band by its exact name (a date included), else by its
    name or the part after a modality prefix, without the date (``s2_B04@2020`` matches
    ``B4``); the longest match wins. The dates of one band may share a source band.

    Raises:
        ConfigError: two different input bands match the same source band (``s2_B4`` and
            ``l8_B4`` against ``B4``): the source band must be named with its prefix.
    """
    exact = {b.upper(): i for i, b in enumerate(source_bands)}
    keys: dict[str, int] = {}
    for i, b in enumerate(source_bands):
        keys.setdefault(band_key(b), i)
    out: list[int | None] = []
    for name in band_names:
        hit = exact.get(name.upper())
        out.append(hit if hit is not None else
                   next((keys[k] for k in _name_forms(name) if k in keys), None))
    for src in {i for i in out if i is not None}:
        users = [b for b, i in zip(band_names, out, strict=True) if i == src]
        if len({u.split("@", 1)[0].upper() for u in users}) > 1:
            raise ConfigError(
                f"input bands {users} all match the weight file's band "
                f"{source_bands[src]!r}; name it with its modality prefix (e.g. "
                f"{users[0]!r}) in train.model.pretrained_bands"
            )
    return out


def matched_weight(
    weight: torch.Tensor,
    band_names: Sequence[str],
    source_bands: Sequence[str],
    scale: float = RANDOM_SCALE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """First-layer weight (O, S, *k) for the S ``source_bands`` -> (O, C, *k) for the C input
    bands: matched bands keep their kernels (divided by the number of dates of a band that
    several dates share, so a series of equal dates responds like one date), the others get a
    random start of standard deviation ``scale`` x that of ``weight``. No band matching is
    warned (the first layer
    then starts from scratch; a DEM-only cell of an ablation with Sentinel-2 weights).

    Raises:
        ConfigError: ``source_bands`` does not have S names.
    """
    if len(source_bands) != weight.shape[1]:
        raise ConfigError(
            f"pretrained_bands names {len(source_bands)} bands {list(source_bands)} but the "
            f"weight file's first layer takes {weight.shape[1]}; list every band of the file, "
            "in its order, in train.model.pretrained_bands"
        )
    idx = match_bands(band_names, source_bands)
    if all(i is None for i in idx):
        warnings.warn(
            f"none of the input bands {list(band_names)} is among the weight file's bands "
            f"{list(source_bands)}: the first layer starts from scratch; check "
            "train.model.pretrained_bands", stacklevel=2,
        )
    src = weight.detach()
    std = float(src.float().std()) * scale
    new = torch.randn((src.shape[0], len(band_names), *src.shape[2:]), generator=generator) * std
    new = new.to(src.dtype)
    for dst, i in enumerate(idx):
        if i is not None:
            new[:, dst] = src[:, i] / idx.count(i)
    return new


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
            f"the weights have {weight.shape[1]}; name them in train.model.pretrained_bands"
        )
    rgb = [band_names[i] for i in rgb_indices(band_names, rgb_bands)]
    return matched_weight(weight, band_names, rgb, scale, generator)


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
