"""Mask plumbing of the losses: which targets are masks, and means over labelled pixels only.

A segmentation target is an integer mask ``(B, H, W)`` beside logits ``(B, K, H, W)``; its
pixels equal to :data:`~geofuse.data.patchset.MASK_IGNORE` (255) are unlabelled and contribute
nothing. Every helper here works without a host synchronisation (no ``.item()``, no ``if
tensor.any()``): a batch without a labelled pixel gives a zero loss that is still a function
of the logits (its gradient is zero), so the training step needs no special case.
"""

from __future__ import annotations

import torch

from geofuse.data.patchset import MASK_IGNORE


def is_mask(logits: torch.Tensor, target: torch.Tensor) -> bool:
    """True for integer targets with spatial dimensions (logits ``(B, K, H, W)``).

    Classification targets ``(B,)`` and multi-hot float label sets ``(B, K)`` are not masks.
    """
    return logits.ndim > 2 and not target.is_floating_point()


def split_mask(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask's class indices with unlabelled pixels set to class 0, and the labelled pixels.

    Returns:
        ``(safe, valid)``: int64 ``(B, H, W)`` indices safe to gather or one-hot, and the bool
        ``(B, H, W)`` mask of labelled pixels.
    """
    target = target.long()
    valid = target != MASK_IGNORE
    return torch.where(valid, target, torch.zeros_like(target)), valid


def mask_inputs(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits with unlabelled pixels set to 0, safe class indices and the labelled pixels.

    Zeroing the logits of unlabelled pixels keeps whatever the model put there (huge values,
    inf, NaN) out of the loss: a NaN computed there would reach the gradient through the
    masking ``where`` as ``0 * NaN``. Their gradient is exactly 0.

    Returns:
        ``(logits, safe, valid)`` as :func:`split_mask` plus the cleaned logits.
    """
    safe, valid = split_mask(target)
    clean = torch.where(valid.unsqueeze(1), logits, torch.zeros_like(logits))
    return clean, safe, valid


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den > 0``, else ``num`` (which is then 0: nothing was summed)."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def masked_mean(loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of an element-wise loss over the labelled pixels.

    Args:
        loss: ``(B, H, W)`` per pixel, or ``(B, K, H, W)`` per class and pixel (the mean then
            runs over classes too, as ``loss.mean()`` does).
        valid: bool ``(B, H, W)`` labelled pixels.

    Returns:
        A 0-dim tensor; 0 (still attached to ``loss``) when no pixel is labelled.
    """
    if loss.ndim == valid.ndim + 1:
        valid = valid.unsqueeze(1)
        per_pixel = loss.shape[1]
    else:
        per_pixel = 1
    total = torch.where(valid, loss, torch.zeros_like(loss)).sum()
    count = valid.sum().to(loss.dtype) * per_pixel
    return safe_divide(total, count)


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
    label_smoothing: float,
) -> torch.Tensor:
    """``F.cross_entropy(..., ignore_index=255)`` (weighted mean over labelled pixels), but 0
    instead of NaN when no pixel is labelled."""
    logits, safe, valid = mask_inputs(logits, target)
    per_pixel = torch.nn.functional.cross_entropy(
        logits, target.long(), weight=weight, ignore_index=MASK_IGNORE, reduction="none",
        label_smoothing=label_smoothing,
    )
    if weight is None:
        den = valid.sum().to(per_pixel.dtype)
    else:
        den = torch.where(valid, weight[safe], torch.zeros_like(per_pixel)).sum()
    return safe_divide(per_pixel.sum(), den)


def masked_probabilities(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and one-hot truth ``(B, K, H, W)``, both zeroed on unlabelled
    pixels (for Dice)."""
    logits, safe, valid = mask_inputs(logits, target)
    probs = torch.softmax(logits, dim=1)
    keep = valid.unsqueeze(1)
    y = torch.nn.functional.one_hot(safe, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    zero = torch.zeros_like(probs)
    return torch.where(keep, probs, zero), torch.where(keep, y, zero)
