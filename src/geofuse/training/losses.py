"""Loss functions on logits: cross-entropy, focal, one-vs-rest BCE, soft Dice and BCE + Dice.

Every loss takes logits ``(B, K)`` with integer targets ``(B,)`` (patch classification) or
logits ``(B, K, H, W)`` with targets ``(B, H, W)`` (segmentation masks) and returns a scalar.
Mask pixels equal to :data:`~geofuse.data.patchset.MASK_IGNORE` (255) are unlabelled: every
loss is then the mean over the labelled pixels only, and a batch without a labelled pixel
gives a zero loss that is still attached to the logits (zero gradient). A binary segmentation
model's single logit ``z`` enters as the two channels ``[0, z]`` (softmax == sigmoid).
Multi-label sets (float multi-hot targets ``(B, K)``) use the sigmoid losses: ``bce`` and
the sigmoid ``focal`` loss (:class:`MultiLabelFocalLoss`); ``auto`` picks cross-entropy for
single-label and BCE for multi-label data.
Class weights weight each class's term; ``"balanced"`` weights are ``n / (K * count)`` of the
training split (scikit-learn's convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geofuse.config import LossConfig
from geofuse.config_train import MULTILABEL_LOSSES
from geofuse.errors import ConfigError
from geofuse.training._mask_loss import (
    is_mask,
    mask_inputs,
    masked_cross_entropy,
    masked_mean,
    masked_probabilities,
    safe_divide,
)


def one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float one-hot of integer targets, classes on dim 1.

    ``(B,)`` becomes ``(B, K)``; a mask ``(B, H, W)`` becomes ``(B, K, H, W)``. Floating
    targets with the class dimension already (multi-hot label sets) are returned as they are.
    """
    if target.is_floating_point() and target.ndim >= 2 and target.shape[1] == num_classes:
        return target
    return F.one_hot(target.long(), num_classes).movedim(-1, 1).float()


def binary_focal_alpha(alpha: float) -> list[float]:
    """Class weights ``[1 - alpha, alpha]`` that make :class:`FocalLoss` on two channels the
    alpha-balanced binary (sigmoid) focal loss of Lin et al. with this ``alpha``.

    With logits ``[0, z]`` the softmax is the sigmoid of ``z``, and class 1 (the positive or
    change class) gets ``alpha``: ``alpha=0.25`` is ``train.loss.class_weights: [0.75, 0.25]``
    (``torchvision.ops.sigmoid_focal_loss(z, y, alpha=0.25, gamma=2, reduction="mean")``).
    """
    return [1.0 - alpha, alpha]


def _class_shape(weight: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a (K,) weight to broadcast over (B, K, ...) of ``ndim`` dims."""
    return weight.view(1, -1, *([1] * (ndim - 2)))


class _WeightedLoss(nn.Module):
    """Base holding optional per-class weights as a non-persistent buffer."""

    weight: torch.Tensor | None

    def __init__(self, weight: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        w = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        self.register_buffer("weight", w, persistent=False)


class CrossEntropyLoss(_WeightedLoss):
    """Softmax cross-entropy with optional class weights and label smoothing.

    Args:
        weight: per-class weights (K,).
        label_smoothing: share of the target mass spread uniformly over the classes.
    """

    def __init__(
        self, weight: Sequence[float] | torch.Tensor | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__(weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if is_mask(logits, target):
            return masked_cross_entropy(logits, target, self.weight, self.label_smoothing)
        return F.cross_entropy(logits, target, weight=self.weight,
                               label_smoothing=self.label_smoothing)


class FocalLoss(_WeightedLoss):
    """Multiclass focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, averaged over samples.

    With ``gamma=0`` and no ``alpha`` it equals the (unweighted-mean) cross-entropy. On two
    channels with ``alpha = [1 - a, a]`` (:func:`binary_focal_alpha`) it is the binary sigmoid
    focal loss with alpha ``a`` on the logit difference; masks average over labelled pixels.

    Args:
        alpha: per-class weights alpha_t (K,); None weights every class 1.
        gamma: focusing exponent; larger values down-weight well-classified samples.
    """

    def __init__(
        self, alpha: Sequence[float] | torch.Tensor | None = None, gamma: float = 2.0
    ) -> None:
        super().__init__(alpha)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if is_mask(logits, target):
            logits, safe, valid = mask_inputs(logits, target)
            return masked_mean(self._per_sample(logits, safe), valid)
        return self._per_sample(logits, target).mean()

    def _per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)
        loss = -focal_factor(log_p, self.gamma) * log_p
        if self.weight is not None:
            loss = loss * self.weight[target.long()]
        return loss


class BinaryCrossEntropyLoss(_WeightedLoss):
    """One-vs-rest sigmoid BCE on one-hot targets, modified by ``beta`` as in the paper.

    ``-[beta * y log p + (1 - beta) (1 - y) log(1 - p)]`` per class and element, times
    ``pos_weight`` on the positive term; ``beta=None`` is the ordinary (unit) BCE.

    Args:
        weight: per-class weights (K,).
        pos_weight: extra weight of the positive term (counters the 1:K-1 imbalance).
        beta: positive/negative balance of the paper's modified BCE, in (0, 1).
    """

    def __init__(
        self, weight: Sequence[float] | torch.Tensor | None = None, pos_weight: float = 1.0,
        beta: float | None = None,
    ) -> None:
        super().__init__(weight)
        self.pos_weight = pos_weight
        self.beta = beta

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if is_mask(logits, target):
            logits, safe, valid = mask_inputs(logits, target)
            return masked_mean(self._elementwise(logits, safe), valid)
        return self._elementwise(logits, target).mean()

    def _elementwise(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y = one_hot(target, logits.shape[1])
        pos, neg = (1.0, 1.0) if self.beta is None else (self.beta, 1.0 - self.beta)
        loss = -(pos * self.pos_weight * y * F.logsigmoid(logits)
                 + neg * (1 - y) * F.logsigmoid(-logits))
        if self.weight is not None:
            loss = loss * _class_shape(self.weight, loss.ndim)
        return loss


#: Smallest (1 - p_t) raised to gamma: keeps the gradient finite for 0 < gamma < 1 when a
#: prediction saturates (p_t = 1, where d/dx x^gamma is infinite).
_FOCAL_FLOOR = 1e-12


def focal_factor(log_p: torch.Tensor, gamma: float) -> torch.Tensor:
    """``(1 - p)^gamma`` from ``log p``, computed as ``-expm1(log p)`` (exact near p = 1) and
    floored so that fractional exponents keep finite gradients."""
    return (-torch.expm1(log_p)).clamp(min=_FOCAL_FLOOR) ** gamma


class MultiLabelFocalLoss(_WeightedLoss):
    """Sigmoid focal loss for multi-label targets (Lin et al. 2017), averaged over elements.

    ``-(1 - p_t)^gamma log p_t`` per class, with ``p_t`` the probability given to the true
    state (present or absent) of that class; ``gamma=0`` is the unit BCE.

    Args:
        weight: per-class weights (K,).
        gamma: focusing exponent.
    """

    def __init__(
        self, weight: Sequence[float] | torch.Tensor | None = None, gamma: float = 2.0
    ) -> None:
        super().__init__(weight)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if is_mask(logits, target):
            logits, safe, valid = mask_inputs(logits, target)
            return masked_mean(self._elementwise(logits, safe), valid)
        return self._elementwise(logits, target).mean()

    def _elementwise(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y = one_hot(target, logits.shape[1])
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        loss = focal_factor(-bce, self.gamma) * bce
        if self.weight is not None:
            loss = loss * _class_shape(self.weight, loss.ndim)
        return loss


class DiceLoss(_WeightedLoss):
    """Soft multiclass Dice loss on softmax probabilities.

    Per class ``1 - (2 sum(p y) + s) / (sum(p) + sum(y) + s)`` over the batch (and pixels),
    then the (weighted) mean over classes. A perfect prediction gives 0. Masks count their
    labelled pixels only; a class with nothing to sum (no labelled pixel, ``s=0``) scores 0.

    Args:
        weight: per-class weights (K,).
        smooth: the ``s`` added to numerator and denominator.
    """

    def __init__(
        self, weight: Sequence[float] | torch.Tensor | None = None, smooth: float = 1.0
    ) -> None:
        super().__init__(weight)
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dims = [0, *range(2, logits.ndim)]
        if is_mask(logits, target):
            p, y = masked_probabilities(logits, target)
            den = p.sum(dims) + y.sum(dims) + self.smooth
            ratio = safe_divide(2 * (p * y).sum(dims) + self.smooth, den)
            dice = torch.where(den > 0, 1 - ratio, torch.zeros_like(ratio))
        else:
            p = F.softmax(logits, dim=1)
            y = one_hot(target, logits.shape[1])
            inter = (p * y).sum(dims)
            dice = 1 - (2 * inter + self.smooth) / (p.sum(dims) + y.sum(dims) + self.smooth)
        if self.weight is None:
            return dice.mean()
        return (dice * self.weight).sum() / self.weight.sum()


class BCEDiceLoss(nn.Module):
    """The paper's combined loss ``alpha * wBCE(beta) + (1 - alpha) * Dice``.

    Args:
        alpha: weight of the BCE term, in [0, 1].
        beta: positive/negative balance of the modified BCE.
        weight: per-class weights for both terms.
        pos_weight: extra weight of the BCE positive term.
        smooth: Dice smoothing.
    """

    def __init__(
        self, alpha: float = 0.5, beta: float = 0.5,
        weight: Sequence[float] | torch.Tensor | None = None, pos_weight: float = 1.0,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.bce = BinaryCrossEntropyLoss(weight, pos_weight=pos_weight, beta=beta)
        self.dice = DiceLoss(weight, smooth=smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.alpha * self.bce(logits, target)
                + (1 - self.alpha) * self.dice(logits, target))


def resolve_class_weights(
    cfg: LossConfig, num_classes: int, class_counts: Sequence[int] | None = None
) -> list[float] | None:
    """Per-class weights of ``cfg.class_weights``: None, the explicit list, or balanced.

    Raises:
        ConfigError: wrong list length, or ``balanced`` without usable training counts.
    """
    weights = cfg.class_weights
    if weights is None:
        return None
    if weights == "balanced":
        if class_counts is None or len(class_counts) != num_classes or min(class_counts) <= 0:
            raise ConfigError(
                f"train.loss.class_weights='balanced' needs a training count > 0 for each of "
                f"the {num_classes} classes, got {class_counts}; give explicit weights instead"
            )
        n = float(sum(class_counts))
        return [n / (num_classes * c) for c in class_counts]
    if len(weights) != num_classes:
        raise ConfigError(
            f"train.loss.class_weights has {len(weights)} values {list(weights)} for "
            f"{num_classes} classes; give one weight per class (in label order) or 'balanced'"
        )
    return [float(w) for w in weights]


def build_loss(
    cfg: LossConfig, num_classes: int, class_counts: Sequence[int] | None = None,
    multilabel: bool = False,
) -> nn.Module:
    """The loss module named by ``cfg.name`` (``train.loss``).

    Args:
        cfg: loss settings.
        num_classes: number of classes K.
        class_counts: training-split count per class (for ``class_weights: balanced``; of a
            multi-label set, the patches holding each class).
        multilabel: targets are multi-hot label sets (sigmoid losses only).

    Raises:
        ConfigError: a softmax loss for multi-label targets, or bad class weights.
    """
    weight = resolve_class_weights(cfg, num_classes, class_counts)
    name = cfg.name if cfg.name != "auto" else ("bce" if multilabel else "cross_entropy")
    if multilabel:
        if name not in MULTILABEL_LOSSES:
            raise ConfigError(
                f"train.loss.name = {cfg.name!r} treats classes as exclusive, but the patches "
                "carry multi-label targets; use 'bce' or 'focal' (or 'auto')"
            )
        if name == "focal":
            return MultiLabelFocalLoss(weight, gamma=cfg.gamma)
        return BinaryCrossEntropyLoss(weight, pos_weight=cfg.pos_weight)
    if name == "cross_entropy":
        return CrossEntropyLoss(weight, label_smoothing=cfg.label_smoothing)
    if name == "focal":
        return FocalLoss(weight, gamma=cfg.gamma)
    if name == "bce":
        return BinaryCrossEntropyLoss(weight, pos_weight=cfg.pos_weight)
    if name == "dice":
        return DiceLoss(weight, smooth=cfg.smooth)
    if name == "bce_dice":
        return BCEDiceLoss(alpha=cfg.alpha, beta=cfg.beta, weight=weight,
                           pos_weight=cfg.pos_weight, smooth=cfg.smooth)
    raise ConfigError(f"train.loss.name = {cfg.name!r} is a regression loss, but the patches "
                      "carry classes; use auto, cross_entropy, focal, bce, dice or bce_dice")
