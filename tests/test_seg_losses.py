"""Losses on segmentation masks: unlabelled pixels (255) ignored, empty batches, binary focal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from geofuse.config import LossConfig
from geofuse.data.patchset import MASK_IGNORE
from geofuse.training.losses import (
    BCEDiceLoss,
    BinaryCrossEntropyLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    MultiLabelFocalLoss,
    binary_focal_alpha,
    build_loss,
)

WEIGHTS = [1.0, 2.0, 0.5]
LOSSES = {
    "cross_entropy": lambda: CrossEntropyLoss(WEIGHTS, label_smoothing=0.1),
    "focal": lambda: FocalLoss(WEIGHTS, gamma=2.0),
    "bce": lambda: BinaryCrossEntropyLoss(WEIGHTS, pos_weight=2.0, beta=0.7),
    "multilabel_focal": lambda: MultiLabelFocalLoss(WEIGHTS, gamma=1.5),
    "dice": lambda: DiceLoss(WEIGHTS, smooth=1.0),
    "dice_unsmoothed": lambda: DiceLoss(smooth=0.0),
    "bce_dice": lambda: BCEDiceLoss(alpha=0.3, beta=0.6, weight=WEIGHTS),
}


def _masked_batch(seed: int = 0, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 6, 5, generator=gen, dtype=torch.float64)
    mask = torch.randint(0, k, (2, 6, 5), generator=gen)
    mask[torch.rand(2, 6, 5, generator=gen) < 0.3] = MASK_IGNORE
    return logits, mask


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_mask_loss_is_the_loss_of_the_labelled_pixels_alone(name: str) -> None:
    loss_fn = LOSSES[name]().double()
    logits, mask = _masked_batch()
    valid = mask != MASK_IGNORE
    pixels = logits.movedim(1, -1)[valid]  # (n, K) as a classification batch
    torch.testing.assert_close(loss_fn(logits, mask), loss_fn(pixels, mask[valid]))
    # whatever the logits of unlabelled pixels, the loss and its gradient ignore them
    junk = 50 * torch.randn_like(logits)
    junk[0, :, 0, 0], junk[1, 0, 1, 1], junk[1, 1, 1, 1] = float("nan"), float("inf"), -1e308
    mask[0, 0, 0] = mask[1, 1, 1] = MASK_IGNORE
    valid = mask != MASK_IGNORE
    pixels = logits.movedim(1, -1)[valid]
    noisy = torch.where(valid.unsqueeze(1), logits, junk)
    noisy.requires_grad_(True)
    loss = loss_fn(noisy, mask)
    torch.testing.assert_close(loss, loss_fn(pixels, mask[valid]))
    loss.backward()
    assert noisy.grad is not None
    assert torch.all(noisy.grad.movedim(1, -1)[~valid] == 0)
    assert noisy.grad.movedim(1, -1)[valid].abs().sum() > 0


def test_mask_cross_entropy_equals_torch_ignore_index() -> None:
    logits, mask = _masked_batch(seed=3)
    for weight in (None, torch.tensor(WEIGHTS, dtype=torch.float64)):
        for smoothing in (0.0, 0.2):
            got = CrossEntropyLoss(weight, label_smoothing=smoothing).double()(logits, mask)
            want = F.cross_entropy(logits, mask, weight=weight, ignore_index=MASK_IGNORE,
                                   label_smoothing=smoothing)
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_batch_without_labelled_pixel_gives_attached_zero(name: str) -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    mask = torch.full((2, 4, 4), MASK_IGNORE, dtype=torch.long)
    loss = LOSSES[name]()(logits, mask)
    assert loss.ndim == 0 and loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_uint8_masks_are_accepted() -> None:
    logits, mask = _masked_batch(seed=4)
    for name in ("focal", "dice", "bce"):
        loss_fn = LOSSES[name]().double()
        torch.testing.assert_close(loss_fn(logits, mask.to(torch.uint8)), loss_fn(logits, mask))


def test_two_channel_focal_is_binary_sigmoid_focal_with_alpha() -> None:
    assert binary_focal_alpha(0.25) == [0.75, 0.25]
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 2, 8, 8, generator=gen, dtype=torch.float64) * 3
    mask = torch.randint(0, 2, (3, 8, 8), generator=gen)
    z = logits[:, 1] - logits[:, 0]
    want = sigmoid_focal_loss(z, mask.double(), alpha=0.25, gamma=2.0, reduction="mean")
    loss_fn = build_loss(LossConfig(name="focal", class_weights=binary_focal_alpha(0.25),
                                    gamma=2.0), 2).double()
    torch.testing.assert_close(loss_fn(logits, mask), want)
    # a binary model's single logit z enters as [0, z]
    single = torch.stack([torch.zeros_like(z), z], dim=1)
    torch.testing.assert_close(loss_fn(single, mask), want)
    # unlabelled pixels: the mean of torchvision's per-pixel losses over the labelled ones
    mask[:, :3] = MASK_IGNORE
    valid = mask != MASK_IGNORE
    per_pixel = sigmoid_focal_loss(z, (mask == 1).double(), alpha=0.25, gamma=2.0,
                                   reduction="none")
    torch.testing.assert_close(loss_fn(logits, mask), per_pixel[valid].mean())
