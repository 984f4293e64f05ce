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


class RandomResizedCrop:
    """Crop a random window of every raster and resize it back to the patch size.

    The window covers a share of the patch area drawn from ``[min_scale, 1]`` with an aspect
    ratio in ``[3/4, 4/3]`` (Szegedy et al. 2015), at the same place in every raster of the
    sample, so modalities and a ``mask`` stay aligned. Images are resized bilinearly, integer
    rasters (masks) by nearest neighbour. A model sees each place at other scales and
    positions, which small training sets lack.
    """

    def __init__(self, min_scale: float) -> None:
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.min_scale = min_scale

    def window(self, height: int, width: int) -> tuple[int, int, int, int]:
        """A random (row, col, rows, cols) window of a height x width patch."""
        area = height * width * float(torch.empty(1).uniform_(self.min_scale, 1.0))
        log_ratio = float(torch.empty(1).uniform_(np.log(3 / 4), np.log(4 / 3)))
        ratio = float(np.exp(log_ratio))
        rows = round(float(np.sqrt(area / ratio)))
        cols = round(float(np.sqrt(area * ratio)))
        rows, cols = min(max(rows, 1), height), min(max(cols, 1), width)
        row = int(torch.randint(0, height - rows + 1, (1,)))
        col = int(torch.randint(0, width - cols + 1, (1,)))
        return row, col, rows, cols

    def __call__(self, sample: Sample) -> Sample:
        rasters = [v for v in sample.values() if _is_raster(v)]
        if not rasters:
            return sample
        height, width = rasters[0].shape[-2:]
        row, col, rows, cols = self.window(height, width)
        out = dict(sample)
        for key, value in sample.items():
            if _is_raster(value):
                out[key] = resize_window(value, (row, col, rows, cols), (height, width))
        return out


def resize_window(
    value: torch.Tensor, window: tuple[int, int, int, int], size: tuple[int, int]
) -> torch.Tensor:
    """The (row, col, rows, cols) window of a raster (..., H, W) resized to ``size``:
    bilinear for floating point, nearest neighbour for integer rasters such as masks."""
    row, col, rows, cols = window
    crop = value[..., row:row + rows, col:col + cols]
    lead = crop.shape[:-2]
    flat = crop.reshape(1, -1, rows, cols)
    if value.is_floating_point():
        resized = torch.nn.functional.interpolate(flat, size=size, mode="bilinear",
                                                  align_corners=False)
    else:
        resized = torch.nn.functional.interpolate(flat.float(), size=size,
                                                  mode="nearest-exact").to(value.dtype)
    return resized.reshape(*lead, *size)


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
