"""CutMix on a training batch (Yun et al. 2019)."""

from __future__ import annotations

import math

import torch


def cutmix_images(
    image: torch.Tensor, perm: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, float]:
    """Paste a random box of ``image[perm]`` into every image of the batch (B, C, H, W).

    The box covers a share ``1 - lam`` of the patch, ``lam ~ Beta(alpha, alpha)``, centred
    uniformly and clipped at the border; every band (so every modality of the stack) gets the
    same box. Returns the mixed batch and the weight of the original images: the share of the
    patch they still cover after clipping.
    """
    height, width = image.shape[-2:]
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    cut = math.sqrt(1.0 - lam)
    rows, cols = round(height * cut), round(width * cut)
    centre_row = int(torch.randint(0, height, (1,)))
    centre_col = int(torch.randint(0, width, (1,)))
    top, bottom = max(centre_row - rows // 2, 0), min(centre_row + rows - rows // 2, height)
    left, right = max(centre_col - cols // 2, 0), min(centre_col + cols - cols // 2, width)
    mixed = image.clone()
    mixed[..., top:bottom, left:right] = image[perm][..., top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    return mixed, kept
