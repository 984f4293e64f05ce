"""Per-epoch accumulation of a stage's losses and predictions, with almost no work per step.

:class:`~geofuse.training.task.ClassificationTask` used to call ``self.log`` for the loss and
the torchmetrics collection at every step. Each of those three calls cost Lightning ~0.4 ms (it
moves its result state to the value's device), together a third of a SimpleCNN step on CPU. A
step now only keeps references to its loss, predictions and targets; the epoch values are
computed once, and during ``fit`` handed to the callbacks, the progress bar and the loggers
directly (:func:`publish_epoch_values`) instead of through ``self.log``.
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from geofuse.data.patchset import MASK_IGNORE


class EpochAccumulator:
    """Losses, batch sizes, predicted and true classes of one stage since the last reset.

    :meth:`loss` reproduces bit for bit what Lightning computes for a value logged with
    ``self.log(name, loss, on_step=False, on_epoch=True, batch_size=len(batch))``: the running
    sum ``total + value * batch_size``, started at 0 in the default dtype (float32; float64
    losses promote it), divided by the int64 sample count. The sum is only deferred to the
    epoch's end, where it runs on the host in numpy scalars of the same dtypes (IEEE-754
    multiplication and addition round alike in torch and numpy), after one transfer instead of
    two device operations per step.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the epoch so far."""
        self.losses: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.preds: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    @property
    def empty(self) -> bool:
        """True when no step was added since the last reset."""
        return not self.sizes

    def update(self, loss: torch.Tensor, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: its mean loss (a scalar), predicted and true class indices.

        Segmentation batches add predicted and true masks ``(B, H, W)``; the batch size (the
        loss's weight in the epoch mean) is then the number of tiles ``B``, as Lightning's.
        """
        self.losses.append(loss.detach())
        self.sizes.append(len(target))
        self.preds.append(preds.detach())
        self.targets.append(target.detach())

    def loss(self) -> torch.Tensor:
        """Sample-weighted mean of the batch losses (0-dim tensor on the host).

        Raises:
            RuntimeError: no batch was added since the last reset.
        """
        if self.empty:
            raise RuntimeError("no batch was added since the last reset")
        values = torch.stack(self.losses)
        if values.dtype not in (torch.float32, torch.float64):  # as Lightning: half -> default
            values = values.to(torch.get_default_dtype())
        default = torch.zeros((), dtype=torch.get_default_dtype()).numpy().dtype
        total = np.zeros((), dtype=default)[()]
        for value, size in zip(values.cpu().numpy(), self.sizes, strict=True):
            total = total + value * value.dtype.type(size)
        count = torch.tensor(sum(self.sizes), dtype=torch.int64)
        return torch.from_numpy(np.asarray(total)) / count

    def predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All predicted and true class indices added since the last reset.

        Masks of batches whose tile sizes differ are flattened to pixels ``(N,)`` (the
        segmentation scores count pixels, so the layout does not matter).
        """
        if len({tuple(t.shape[1:]) for t in self.targets}) > 1:
            return (torch.cat([p.reshape(-1) for p in self.preds]),
                    torch.cat([t.reshape(-1) for t in self.targets]))
        return torch.cat(self.preds), torch.cat(self.targets)


def multilabel_epoch_scores(preds: torch.Tensor, target: torch.Tensor
                            ) -> dict[str, torch.Tensor]:
    """``accuracy`` (subset accuracy: the whole label set right) and ``f1_macro`` (over the
    classes present in the truth or the predictions) of multi-hot predictions and targets,
    as :func:`~geofuse.evaluation.multilabel_metrics.multilabel_metrics` computes them."""
    pred, true = preds.bool(), target.bool()
    tp = (pred & true).sum(dim=0).double()
    predicted, support = pred.sum(dim=0).double(), true.sum(dim=0).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), 0.0)
    present = (support + predicted) > 0
    f1_macro = f1[present].mean() if present.any() else torch.zeros((), dtype=f1.dtype)
    return {"accuracy": (pred == true).all(dim=1).float().mean(),
            "f1_macro": f1_macro.float()}


def segmentation_epoch_scores(preds: torch.Tensor, target: torch.Tensor, num_classes: int
                              ) -> dict[str, torch.Tensor]:
    """Pixel scores of predicted and true class masks, unlabelled pixels (255) left out.

    The values equal those of :func:`~geofuse.evaluation.seg_metrics.segmentation_metrics` on
    the same pixels: ``iou`` and ``f1`` of the change class (index 1) pooled over pixels for
    two classes, mean IoU and macro F1 over the classes present in truth or prediction for
    more; ``accuracy`` is the pixel accuracy and ``f1_macro`` the macro F1 (for consumers that
    select on it). Undefined ratios are 0.

    Args:
        preds: predicted class indices, any shape (``(B, H, W)``).
        target: true class indices of the same shape, 255 where unlabelled.
        num_classes: number of classes K.

    Returns:
        float32 0-dim tensors ``iou``, ``f1``, ``accuracy`` and ``f1_macro``.
    """
    true = target.reshape(-1).long()
    valid = true != MASK_IGNORE
    pred = preds.reshape(-1).long()[valid]
    cm = torch.bincount(true[valid] * num_classes + pred, minlength=num_classes ** 2)
    cm = cm.reshape(num_classes, num_classes).double()
    tp, support, predicted = cm.diagonal(), cm.sum(dim=1), cm.sum(dim=0)

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp(min=1e-300), 0.0)

    iou = ratio(tp, support + predicted - tp)
    f1 = ratio(2 * tp, support + predicted)
    present = (support + predicted) > 0
    zero = torch.zeros((), dtype=torch.float64, device=cm.device)
    f1_macro = f1[present].mean() if present.any() else zero
    if num_classes == 2:
        iou_score, f1_score = iou[1], f1[1]
    else:
        iou_score = iou[present].mean() if present.any() else zero
        f1_score = f1_macro
    return {"iou": iou_score.float(), "f1": f1_score.float(),
            "accuracy": ratio(tp.sum(), cm.sum()).float(), "f1_macro": f1_macro.float()}


def epoch_scores(preds: torch.Tensor, target: torch.Tensor, num_classes: int,
                 multilabel: bool = False, segmentation: bool = False
                 ) -> dict[str, torch.Tensor]:
    """``accuracy`` (overall) and ``f1_macro`` of a stage's epoch, as torchmetrics computes them.

    The values equal those of ``MulticlassAccuracy(num_classes, average="micro")`` and
    ``MulticlassF1Score(num_classes, average="macro")`` updated batch by batch (the same counts,
    reduced by the same functions), at a fraction of the cost of the stateful metric objects.
    Inputs are not validated again: the loss of every step already required valid targets, and
    the predictions are arg-maxes over ``num_classes`` logits. Multi-label predictions
    (B, K) go to :func:`multilabel_epoch_scores`, masks (``segmentation``) to
    :func:`segmentation_epoch_scores`.
    """
    if segmentation:
        return segmentation_epoch_scores(preds, target, num_classes)
    if multilabel:
        return multilabel_epoch_scores(preds, target)
    return {
        "accuracy": multiclass_accuracy(preds, target, num_classes, average="micro",
                                        validate_args=False),
        "f1_macro": multiclass_f1_score(preds, target, num_classes, average="macro",
                                        validate_args=False),
    }


def publish_epoch_values(
    trainer: L.Trainer, values: dict[str, torch.Tensor], prog_bar: Iterable[str]
) -> None:
    """Hand a stage's epoch values to the trainer as ``self.log(..., on_epoch=True)`` would:
    ``trainer.callback_metrics`` (read by early stopping, checkpoints, schedulers, the history),
    ``trainer.progress_bar_metrics`` (the names in ``prog_bar``, as floats) and, not while
    sanity checking, ``trainer.logged_metrics`` and every logger (at the step of the epoch's
    last batch, with the epoch).

    ``self.log`` costs ~0.6 ms a value: Lightning registers each value anew every epoch and
    deep-copies its metadata to move it to the value's device. During ``fit`` nothing reads
    the values from Lightning's result collection, so they are published directly; Lightning
    clears both dictionaries where it would clear logged values (after the sanity check).
    """
    trainer.callback_metrics.update(values)
    trainer.progress_bar_metrics.update({name: float(values[name]) for name in prog_bar})
    if trainer.sanity_checking:
        return
    trainer.logged_metrics.update(values)
    if trainer.loggers:
        scalars = {name: float(value) for name, value in values.items()}
        scalars["epoch"] = trainer.current_epoch
        # Lightning logs epoch values at the step of the epoch's last batch: one optimiser
        # step a batch, so the steps taken so far minus one
        step = max(trainer.global_step - 1, 0)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            logger.save()
