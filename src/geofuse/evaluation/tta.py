"""Test-time augmentation: class probabilities averaged over the eight flips and rotations.

Land-cover patches have no preferred orientation, so a model's prediction should not depend on
one; averaging the probabilities of the 8 elements of the dihedral group (4 rotations, each
with and without a left-right flip) removes that dependence and usually steadies predictions on
unseen ground (``train.tta``). It costs 8 forward passes per patch at evaluation time only.
"""

from __future__ import annotations

import torch

#: (quarter turns, left-right flip) of the 8 dihedral transforms; the first is the identity.
DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))


def dihedral(image: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """``image`` (..., H, W) rotated by ``k`` quarter turns, then flipped left-right."""
    out = torch.rot90(image, k, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if flip else out


def probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Softmax of class logits, or per-class sigmoids of a multi-label model."""
    return logits.sigmoid() if multilabel else logits.softmax(dim=1)


def tta_probabilities(model: torch.nn.Module, image: torch.Tensor,
                      tab: torch.Tensor | None = None, multilabel: bool = False
                      ) -> torch.Tensor:
    """Mean class probabilities (B, K) of ``model(image, tab)`` over the 8 transforms."""
    total = None
    for k, flip in DIHEDRAL:
        p = probabilities(model(dihedral(image, k, flip), tab), multilabel)
        total = p if total is None else total + p
    assert total is not None
    return total / len(DIHEDRAL)
