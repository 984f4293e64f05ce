"""Loss functions: values against torch references and hand computations, masks, config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geofuse.config import LossConfig, TrainConfig
from geofuse.errors import ConfigError
from geofuse.training.losses import (
    BCEDiceLoss,
    BinaryCrossEntropyLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    build_loss,
    resolve_class_weights,
)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(16, 4, generator=gen), torch.randint(0, 4, (16,), generator=gen)


def test_cross_entropy_matches_torch_with_weights_and_smoothing(batch) -> None:
    logits, target = batch
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    got = CrossEntropyLoss(w, label_smoothing=0.1)(logits, target)
    ref = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)(logits, target)
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(got, F.cross_entropy(logits, target))


def test_focal_with_gamma_zero_is_cross_entropy_and_gamma_down_weights(batch) -> None:
    logits, target = batch
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target),
                               F.cross_entropy(logits, target))
    assert FocalLoss(gamma=2.0)(logits, target) < F.cross_entropy(logits, target)
    # hand value: one sample, p_t = 0.5 (two equal logits), gamma 2, alpha 0.25 for class 1
    one = FocalLoss([1.0, 0.25], gamma=2.0)(torch.zeros(1, 2), torch.tensor([1]))
    assert one.item() == pytest.approx(0.25 * 0.5**2 * math.log(2))


def test_bce_is_one_vs_rest_on_one_hot_targets(batch) -> None:
    logits, target = batch
    ref = F.binary_cross_entropy_with_logits(logits, F.one_hot(target, 4).float())
    torch.testing.assert_close(BinaryCrossEntropyLoss()(logits, target), ref)
    pos = torch.full((4,), 3.0)
    ref_pw = F.binary_cross_entropy_with_logits(logits, F.one_hot(target, 4).float(),
                                                pos_weight=pos)
    torch.testing.assert_close(BinaryCrossEntropyLoss(pos_weight=3.0)(logits, target), ref_pw)


def test_modified_bce_weights_positive_and_negative_terms() -> None:
    logits, target = torch.zeros(1, 2), torch.tensor([0])  # p = 0.5 everywhere
    # beta*log2 for the positive entry, (1-beta)*log2 for the negative, mean over 2 entries
    got = BinaryCrossEntropyLoss(beta=0.8)(logits, target)
    assert got.item() == pytest.approx((0.8 + 0.2) * math.log(2) / 2)
    skewed = torch.tensor([[0.0, 2.0]])
    assert (BinaryCrossEntropyLoss(beta=0.9)(skewed, target)
            != BinaryCrossEntropyLoss(beta=0.1)(skewed, target))


def test_dice_of_perfect_prediction_is_zero_and_hand_value() -> None:
    target = torch.tensor([0, 1, 2, 1])
    perfect = F.one_hot(target, 3).float() * 50
    assert DiceLoss()(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # uniform logits: p = 1/3 everywhere; class c: (2*n_c/3 + 1) / (4/3 + n_c + 1)
    counts = [1, 2, 1]
    expected = sum(1 - (2 * n / 3 + 1) / (4 / 3 + n + 1) for n in counts) / 3
    assert DiceLoss()(torch.zeros(4, 3), target).item() == pytest.approx(expected)


def test_combined_is_the_weighted_sum(batch) -> None:
    logits, target = batch
    got = BCEDiceLoss(alpha=0.3, beta=0.7)(logits, target)
    ref = (0.3 * BinaryCrossEntropyLoss(beta=0.7)(logits, target)
           + 0.7 * DiceLoss()(logits, target))
    torch.testing.assert_close(got, ref)
    assert BCEDiceLoss(alpha=1.0, beta=0.7)(logits, target) == pytest.approx(
        BinaryCrossEntropyLoss(beta=0.7)(logits, target).item())


@pytest.mark.parametrize("name", ["cross_entropy", "focal", "bce", "dice", "bce_dice"])
def test_every_loss_accepts_segmentation_masks_and_backpropagates(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, 5, generator=gen, requires_grad=True)
    mask = torch.randint(0, 3, (2, 5, 5), generator=gen)
    loss = build_loss(LossConfig(name=name, class_weights=[1.0, 2.0, 1.0]), 3)(logits, mask)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    if name == "cross_entropy":
        ref = F.cross_entropy(logits, mask, weight=torch.tensor([1.0, 2.0, 1.0]))
        torch.testing.assert_close(loss, ref)


def test_balanced_weights_from_counts_and_bad_weights() -> None:
    cfg = LossConfig(class_weights="balanced")
    assert resolve_class_weights(cfg, 2, [30, 10]) == [40 / 60, 40 / 20]
    assert resolve_class_weights(LossConfig(), 2, [30, 10]) is None
    with pytest.raises(ConfigError, match=r"3 values \[1.0, 2.0, 3.0\] for 2 classes"):
        build_loss(LossConfig(class_weights=[1, 2, 3]), 2)
    with pytest.raises(ConfigError, match="balanced"):
        build_loss(cfg, 2, [5, 0])


def test_loss_config_lives_under_train_and_rejects_unknown_names() -> None:
    assert TrainConfig().loss.name == "auto"
    assert isinstance(build_loss(TrainConfig().loss, 3), CrossEntropyLoss)
    with pytest.raises(ValueError, match="focal"):
        TrainConfig.model_validate({"loss": {"name": "hinge"}})


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_losses_keep_finite_gradients_when_a_prediction_saturates(gamma: float) -> None:
    from geofuse.training.losses import MultiLabelFocalLoss

    logits = torch.tensor([[60.0, -40.0, 0.3], [0.2, -0.1, 0.5]], requires_grad=True)
    FocalLoss(gamma=gamma)(logits, torch.tensor([0, 2])).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[1].abs().sum() > 0  # the unsaturated sample still learns
    multi = torch.tensor([[40.0, -40.0, 0.3]], requires_grad=True)
    MultiLabelFocalLoss(gamma=gamma)(multi, torch.tensor([[1.0, 0.0, 1.0]])).backward()
    assert multi.grad is not None and torch.isfinite(multi.grad).all()
    assert multi.grad[0, 2] < 0
