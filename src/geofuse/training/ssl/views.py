"""Random views of a batch of standardised patches for contrastive learning."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from geofuse.data.transforms import flip_rotate


class SimCLRViews:
    """One random view per patch of a batch (B, C, P, P) of standardised patches.

    In order: a random resized crop (area share ~ U(``crop_scale``, 1), aspect ratio ~
    log-U(3/4, 4/3)) resized back to P x P, a random element of the dihedral group (the
    flips and 90-degree rotations of :mod:`geofuse.data.transforms`), per-band gain
    ~ N(1, ``jitter``) and offset ~ N(0, ``jitter``), and gaussian noise of std ``noise``.
    Each patch draws its own parameters from ``generator``, so a seeded generator gives the
    same views.

    Args:
        crop_scale: smallest crop area as a share of the patch; 1 turns cropping off.
        jitter: std of the per-band gain and offset, in band standard deviations; 0 = off.
        noise: std of the added gaussian noise; 0 = off.
        generator: source of randomness (default: torch's global one).
    """

    def __init__(self, crop_scale: float = 0.5, jitter: float = 0.2, noise: float = 0.05,
                 generator: torch.Generator | None = None) -> None:
        self.crop_scale = crop_scale
        self.jitter = jitter
        self.noise = noise
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A random view of every patch of ``x`` (B, C, P, P), same shape."""
        if self.crop_scale < 1:
            x = self._resized_crop(x)
        x = self._flip_rotate(x)
        b, c = x.shape[:2]
        if self.jitter > 0:
            gain = 1 + self.jitter * self._randn(b, c, 1, 1, like=x)
            x = x * gain + self.jitter * self._randn(b, c, 1, 1, like=x)
        if self.noise > 0:
            x = x + self.noise * self._randn(*x.shape, like=x)
        return x

    def _rand(self, *shape: int, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator).to(like.device, like.dtype)

    def _randn(self, *shape: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator).to(like.device, like.dtype)

    def _resized_crop(self, x: torch.Tensor) -> torch.Tensor:
        """Crop a random box of each patch and resize it back (bilinear, affine sampling)."""
        b = x.shape[0]
        area = self.crop_scale + (1 - self.crop_scale) * self._rand(b, like=x)
        log_ratio = math.log(3 / 4) + math.log(16 / 9) * self._rand(b, like=x)
        ratio = torch.exp(log_ratio)
        width = torch.sqrt(area * ratio).clamp(max=1.0)  # share of the side, in (0, 1]
        height = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (1 - width) * (2 * self._rand(b, like=x) - 1)  # centre in [-1, 1] coordinates
        cy = (1 - height) * (2 * self._rand(b, like=x) - 1)
        theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = width, cx
        theta[:, 1, 1], theta[:, 1, 2] = height, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)

    def _flip_rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Each patch rotated by k x 90 degrees, then flipped or not (8 outcomes)."""
        b = x.shape[0]
        k = torch.randint(0, 4, (b,), generator=self.generator)
        flip = torch.randint(0, 2, (b,), generator=self.generator)
        out = x.clone()
        for code in range(8):
            idx = torch.nonzero(k * 2 + flip == code).flatten().to(x.device)
            if len(idx):
                out[idx] = flip_rotate({"image": x[idx]}, code // 2, bool(code % 2))["image"]
        return out
