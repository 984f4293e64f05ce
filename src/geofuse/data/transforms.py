"""Sample transforms: each takes a sample dict and returns one.

Spatial augmentations apply the same flip/rotation to every raster in the sample (``image``,
per-modality tensors, ``mask``); scalar entries such as ``label`` and ``index`` pass through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from geofuse.data.normalize import BandStats, normalize

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


def _is_raster(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim >= 2


def flip_rotate(sample: Sample, k: int, flip: bool) -> Sample:
    """Rotate every raster by ``k`` x 90 degrees (counter-clockwise), then optionally flip it
    left-right. The last two dimensions are treated as (row, column)."""
    out = dict(sample)
    for key, value in sample.items():
        if _is_raster(value):
            value = torch.rot90(value, k, dims=(-2, -1))
            out[key] = torch.flip(value, dims=(-1,)) if flip else value
    return out


class RandomFlipRotate:
    """Random element of the dihedral group: one of 4 rotations times optional flip.

    The 8 outcomes cover horizontal and vertical flips and transposes. Randomness comes from
    torch's global generator, so ``lightning.seed_everything`` makes it reproducible.
    """

    def __call__(self, sample: Sample) -> Sample:
        k = int(torch.randint(0, 4, (1,)).item())
        flip = bool(torch.randint(0, 2, (1,)).item())
        return flip_rotate(sample, k, flip)


class RandomBandJitter:
    """Per-band radiometric jitter of a standardised ``image``: ``x * gain + offset`` with
    ``gain ~ N(1, std)`` and ``offset ~ N(0, std)`` drawn per band and sample.

    Sensors differ in calibration, season and atmosphere from place to place; jittering each
    band's gain and offset teaches a model not to rely on exact radiometry. Applied after
    :class:`Normalize`, so ``std`` is in units of the band's training standard deviation.
    """

    def __init__(self, std: float, key: str = "image") -> None:
        self.std = std
        self.key = key

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        image = sample[self.key]
        shape = (image.shape[0],) + (1,) * (image.ndim - 1)
        gain = 1 + self.std * torch.randn(shape, dtype=image.dtype)
        offset = self.std * torch.randn(shape, dtype=image.dtype)
        out[self.key] = image * gain + offset
        return out


class PerPatchStandardize:
    """Standardise every band of ``image`` by its own mean and std over the patch (a constant
    band becomes 0): removes brightness and contrast differences between places and dates."""

    def __init__(self, key: str = "image", eps: float = 1e-6) -> None:
        self.key = key
        self.eps = eps

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        out[self.key] = standardize_patches(sample[self.key], self.eps)
        return out


def standardize_patches(image: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each band of each patch (the last two dimensions) to mean 0, std 1 over its pixels;
    works on one patch (C, H, W) and on a batch (B, C, H, W)."""
    mean = image.mean(dim=(-2, -1), keepdim=True)
    std = image.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (image - mean) / std.clamp(min=eps)


class Normalize:
    """Standardise the ``image`` with training statistics (NaN -> 0, the band mean)."""

    def __init__(self, stats: BandStats, key: str = "image") -> None:
        self.stats = stats
        self.key = key

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        image = sample[self.key]
        array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        out[self.key] = torch.from_numpy(normalize(array, self.stats))
        return out


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: list[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for transform in self.transforms:
            sample = transform(sample)
        return sample
