"""NT-Xent, the normalised temperature-scaled cross-entropy loss of SimCLR."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent loss of two batches of projections, row ``i`` of each from the same patch.

    The 2B projections are L2-normalised; for each one, its partner view is the positive and
    the other 2B - 2 projections are the negatives of a softmax over cosine similarities
    divided by ``temperature``. The loss is the mean cross-entropy over all 2B anchors.

    Args:
        z1: projections of the first views, (B, D), B >= 2.
        z2: projections of the second views, (B, D).
        temperature: softmax temperature (SimCLR: 0.1-0.5).

    Returns:
        The scalar loss.
    """
    if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
        raise ValueError(f"nt_xent_loss needs two (B, D) batches with B >= 2, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, partner)
