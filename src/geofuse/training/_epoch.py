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
        """Add one batch: its mean loss (a scalar), predicted and true class indices."""
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
        """All predicted and true class indices added since the last reset."""
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


def epoch_scores(preds: torch.Tensor, target: torch.Tensor, num_classes: int,
                 multilabel: bool = False) -> dict[str, torch.Tensor]:
    """``accuracy`` (overall) and ``f1_macro`` of a stage's epoch, as torchmetrics computes them.

    The values equal those of ``MulticlassAccuracy(num_classes, average="micro")`` and
    ``MulticlassF1Score(num_classes, average="macro")`` updated batch by batch (the same counts,
    reduced by the same functions), at a fraction of the cost of the stateful metric objects.
    Inputs are not validated again: the loss of every step already required valid targets, and
    the predictions are arg-maxes over ``num_classes`` logits. Multi-label predictions
    (B, K) go to :func:`multilabel_epoch_scores`.
    """
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
