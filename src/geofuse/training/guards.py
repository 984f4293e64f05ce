"""Collapse guard: detect a model that predicts one class, or does no better than chance.

The Week 4 ResNet50 fusion runs reported 0-13% accuracy because the network predicted a single
class for every input; nothing in the pipeline said so. This guard checks every evaluated split
and the training history (NaN losses, a validation loss that stays flat), and reports loudly
(console panel, metrics.json, report) with a diagnosis such as "98% of the network frozen;
validation loss flat for 10 epochs". :class:`CollapseStopper` applies the same checks during
training and stops a run that has collapsed (``guards.stop_on_collapse``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.panel import Panel
from torch import nn

from geofuse.config import GuardConfig
from geofuse.data.patchset import MASK_IGNORE
from geofuse.evaluation.metrics import classification_metrics
from geofuse.evaluation.multilabel_metrics import multilabel_metrics
from geofuse.evaluation.regression_metrics import regression_metrics
from geofuse.training._distributed import gather_rows, is_distributed

LOSS_COLUMNS = ("train_loss", "val_loss")
FROZEN_NOTE_FRACTION = 0.5  # the diagnosis names the frozen share from here on


@dataclass
class GuardVerdict:
    """Outcome of the collapse guard.

    Attributes:
        collapsed: True when any check fired.
        reasons: one human-readable sentence per fired check.
        details: per-split numbers the checks looked at.
        diagnosis: short likely cause of a collapse (frozen share, flat loss), or "".
        frozen_fraction: share of frozen layers of the network, when known.
    """

    collapsed: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    diagnosis: str = ""
    frozen_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form stored under ``"guard"`` in metrics.json."""
        return {"collapsed": self.collapsed, "reasons": list(self.reasons),
                "details": dict(self.details), "diagnosis": self.diagnosis,
                "frozen_fraction": self.frozen_fraction}


def check_predictions(metrics: Mapping[str, Any], guard: GuardConfig, split: str) -> list[str]:
    """Reasons to call the predictions of one split collapsed (empty list: fine).

    One class taking ``one_class_fraction`` of the predictions counts only when that class is
    rarer than this in the truth; the majority-rate check needs at least two true classes.

    Args:
        metrics: output of :func:`geofuse.evaluation.metrics.classification_metrics`.
        guard: thresholds.
        split: split name, used in the messages.
    """
    n = metrics["n"]
    if n == 0:
        return []
    if metrics.get("regression"):
        return check_values(metrics, guard, split)
    if metrics.get("multilabel"):
        return check_label_sets(metrics, guard, split)
    reasons = check_one_class(metrics, guard, split)
    classes_present = sum(1 for c in metrics["per_class"].values() if c["support"] > 0)
    limit = metrics["majority_rate"] + guard.majority_margin
    if classes_present > 1 and metrics["accuracy"] <= limit:
        reasons.append(
            f"{split}: accuracy {metrics['accuracy']:.3f} is no better than always predicting "
            f"{metrics['majority_class']!r} ({metrics['majority_rate']:.3f}"
            f"{f' + margin {guard.majority_margin:.3f}' if guard.majority_margin else ''})"
        )
    return reasons


def check_label_sets(metrics: Mapping[str, Any], guard: GuardConfig, split: str) -> list[str]:
    """Collapse of a multi-label model (empty list: fine): no class predicted (all outputs
    below 0.5), every class predicted, or one label set predicted, for at least
    ``one_class_fraction`` of the samples (the last only when no label set is that common in
    the truth)."""
    n = metrics["n"]
    if n == 0:
        return []
    limit = guard.one_class_fraction
    reasons = []
    for key, what in (("empty_predictions", "no class"), ("full_predictions", "every class")):
        share = metrics.get(key, 0) / n
        if share >= limit:
            reasons.append(f"{split}: predicts {what} for {share:.0%} of {n} samples "
                           f"(threshold {limit:.0%})")
    top = metrics.get("top_prediction_set_share", 0.0)
    if not reasons and top >= limit and metrics["majority_rate"] < limit:
        reasons.append(f"{split}: predicts the same label set for {top:.0%} of {n} samples "
                       f"(threshold {limit:.0%}; the most common true set: "
                       f"{metrics['majority_rate']:.0%})")
    return reasons


CONSTANT_SPREAD = 0.05  #: predictions spread below this share of the truth's: constant


def check_values(metrics: Mapping[str, Any], guard: GuardConfig, split: str) -> list[str]:
    """Collapse of a regression model (empty list: fine): (nearly) the same value for every
    sample (spread under :data:`CONSTANT_SPREAD` of the truth's), or an R2 no better than
    always predicting the split's mean (``r2 <= guards.majority_margin``)."""
    n = metrics["n"]
    if n < 2 or not metrics["std_true"] > 0:
        return []
    if not (math.isfinite(metrics["r2"]) and math.isfinite(metrics["std_pred"])):
        return [f"{split}: non-finite estimates (NaN or infinite) for some of the {n} samples; "
                "lower train.lr or check the inputs for extreme values"]
    reasons = []
    spread = metrics["std_pred"] / metrics["std_true"]
    if spread < CONSTANT_SPREAD:
        reasons.append(f"{split}: predicts nearly one value for all {n} samples (spread "
                       f"{spread:.1%} of the true values'; threshold {CONSTANT_SPREAD:.0%})")
    margin = guard.majority_margin
    if metrics["r2"] <= margin:
        reasons.append(f"{split}: R2 {metrics['r2']:.3f} is no better than always predicting "
                       f"the mean ({metrics['mean_true']:.4g}; R2 0"
                       f"{f' + margin {margin:.3f}' if margin else ''})")
    return reasons


def check_one_class(metrics: Mapping[str, Any], guard: GuardConfig, split: str) -> list[str]:
    """The one-class reason of :func:`check_predictions` alone (empty list: fine)."""
    n = metrics["n"]
    if n == 0:
        return []
    counts = metrics["prediction_counts"]
    top_class = max(counts, key=counts.get)
    top_share = counts[top_class] / n
    true_share = metrics["per_class"][top_class]["support"] / n
    if top_share >= guard.one_class_fraction and true_share < guard.one_class_fraction:
        return [
            f"{split}: predicts {top_class!r} for {top_share:.0%} of {n} samples "
            f"(threshold {guard.one_class_fraction:.0%}; true share {true_share:.0%})"
        ]
    return []


def check_losses(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Reasons from the training history: NaN or infinite losses, naming the epochs."""
    reasons = []
    for column in LOSS_COLUMNS:
        bad = [row["epoch"] for row in history
               if isinstance(row.get(column), float) and not math.isfinite(row[column])]
        if bad:
            reasons.append(f"non-finite {column} at epoch(s) {bad}; lower train.lr or check "
                           "the inputs for extreme values")
    return reasons


def longest_flat_run(values: Sequence[float | None], tolerance: float) -> tuple[int, int]:
    """(start index, length) of the longest run of finite values with max - min within
    ``tolerance`` times their mean magnitude."""
    best = (0, 0)
    for i in range(len(values)):
        lo = hi = None
        for j in range(i, len(values)):
            v = values[j]
            if v is None or not math.isfinite(v):
                break
            lo, hi = min(v, lo if lo is not None else v), max(v, hi if hi is not None else v)
            if hi - lo > tolerance * max(abs(hi + lo) / 2, 1e-12):
                break
            if j - i + 1 > best[1]:
                best = (i, j - i + 1)
    return best


def check_flat_loss(history: Sequence[Mapping[str, Any]], guard: GuardConfig) -> list[str]:
    """Reason when val_loss stays flat (within ``flat_tolerance``) for ``flat_epochs`` epochs."""
    values = [row.get("val_loss") for row in history]
    start, length = longest_flat_run(values, guard.flat_tolerance)
    if length < guard.flat_epochs:
        return []
    first, last = history[start]["epoch"], history[start + length - 1]["epoch"]
    return [f"val_loss flat for {length} epochs ({first}-{last}, at {values[start]:.4f}; "
            f"threshold {guard.flat_epochs} epochs within {guard.flat_tolerance:.1e}); the "
            "network is not learning: unfreeze layers or raise train.lr"]


def diagnose(
    history: Sequence[Mapping[str, Any]], guard: GuardConfig,
    frozen: float | None = None, stop_reason: str | None = None,
) -> str:
    """Likely causes in one line; "" when nothing stands out.

    Example: ``98% of the network's layers frozen; validation loss flat for 10 epochs``.
    """
    parts = []
    if frozen is not None and frozen >= FROZEN_NOTE_FRACTION:
        parts.append(f"{frozen:.0%} of the network's layers frozen")
    _, flat = longest_flat_run([row.get("val_loss") for row in history], guard.flat_tolerance)
    if flat >= guard.flat_epochs:
        parts.append(f"validation loss flat for {flat} epochs")
    if check_losses(history):
        parts.append("non-finite losses (learning rate too high or extreme inputs)")
    if stop_reason:
        parts.append(f"training stopped early: {stop_reason}")
    return "; ".join(parts)


def run_guards(
    split_metrics: Mapping[str, Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]],
    guard: GuardConfig,
    frozen: float | None = None,
    stop_reason: str | None = None,
) -> GuardVerdict:
    """Apply every check to the evaluated splits and the history.

    Args:
        split_metrics: split name -> :func:`~geofuse.evaluation.metrics.classification_metrics`.
        history: rows of history.csv.
        guard: thresholds.
        frozen: share of frozen layers (:func:`geofuse.models.freeze.frozen_fraction`).
        stop_reason: why :class:`CollapseStopper` ended training, if it did.
    """
    reasons = check_losses(history) + check_flat_loss(history, guard)
    if stop_reason:
        reasons.append(f"training stopped by the collapse guard: {stop_reason}")
    details = {}
    for split, metrics in split_metrics.items():
        reasons += check_predictions(metrics, guard, split)
        if metrics.get("regression"):
            details[split] = {k: metrics[k] for k in ("r2", "rmse", "std_true", "std_pred")}
            continue
        counts = metrics["prediction_counts"]
        n = max(metrics["n"], 1)
        details[split] = {
            "accuracy": metrics["accuracy"],
            "majority_rate": metrics["majority_rate"],
            "max_prediction_share": max(counts.values()) / n,
        }
    diagnosis = diagnose(history, guard, frozen, stop_reason) if reasons else ""
    return GuardVerdict(collapsed=bool(reasons), reasons=reasons, details=details,
                        diagnosis=diagnosis, frozen_fraction=frozen)


def print_verdict(verdict: GuardVerdict, console: Console | None = None) -> None:
    """Print a red panel when the run collapsed; a one-line note otherwise."""
    console = console or Console(stderr=True)
    if not verdict.collapsed:
        console.print("[green]collapse guard: passed[/]")
        return
    body = "\n".join(f"• {r}" for r in verdict.reasons)
    if verdict.diagnosis:
        body += f"\n\nDiagnosis: {verdict.diagnosis}."
    body += ("\n\nThe metrics of this run are not meaningful. Check class balance and splits, "
             "the learning rate, input normalisation and frozen layers.")
    console.print(Panel(body, title="[bold]MODEL COLLAPSE DETECTED[/]", border_style="bold red",
                        style="red"))


class CollapseStopper(Callback):
    """Stop training at a validation epoch that shows collapse (``guards.stop_on_collapse``).

    Fires on a non-finite ``val_loss``, a ``val_loss`` flat for ``flat_epochs`` epochs, or
    one-class validation predictions (as :func:`check_one_class`) for ``flat_epochs`` epochs
    in a row; sets ``trainer.should_stop`` and records :attr:`reason` and :attr:`epoch`.
    """

    def __init__(self, guard: GuardConfig) -> None:
        self.guard = guard
        self.reason: str | None = None
        self.epoch: int | None = None
        self._losses: list[float | None] = []
        self._one_class_epochs = 0
        self._preds: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._hook: Any = None

    def _record(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim < 2:
            return  # under DDP the module's call is also the step itself (returns the loss)
        if getattr(module, "regression", False):  # standardised values
            self._preds.append(output.detach()[:, 0].float().cpu())
        elif getattr(module, "multilabel", False):  # label sets: sigmoid >= 0.5
            self._preds.append((output.detach() >= 0).cpu())
        else:
            self._preds.append(output.detach().argmax(dim=1).flatten().cpu())

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._preds, self._labels = [], []
        if not trainer.sanity_checking:
            self._hook = pl_module.register_forward_hook(self._record)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        if self._hook is not None:
            label = torch.as_tensor(batch["mask"] if "mask" in batch else batch["label"]).cpu()
            self._labels.append(label if label.ndim == 2 else label.flatten())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._hook is None:
            return
        self._hook.remove()
        self._hook = None
        if is_distributed(trainer):  # every process judges the whole split, as rank 0 does
            self._preds = [gather_rows(pl_module, torch.cat(self._preds))] if self._preds else []
            self._labels = ([gather_rows(pl_module, torch.cat(self._labels))]
                            if self._labels else [])
        reason = self._check(trainer, pl_module)
        if is_distributed(trainer):
            reason = trainer.strategy.broadcast(reason, src=0)
        if reason and self.reason is None:
            self.reason, self.epoch = reason, trainer.current_epoch
            trainer.should_stop = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a resumed run is judged afresh (the saved verdict is for the command's read-back
        # after data-parallel training: restore_callback_states)
        self.reason, self.epoch = None, None

    def state_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reason, self.epoch = state_dict.get("reason"), state_dict.get("epoch")

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        value = trainer.callback_metrics.get("val_loss")
        loss = float(value) if value is not None else None
        self._losses.append(loss)
        epoch = trainer.current_epoch
        if loss is not None and not math.isfinite(loss):
            return f"non-finite val_loss at epoch {epoch}"
        _, flat = longest_flat_run(self._losses[-self.guard.flat_epochs:],
                                   self.guard.flat_tolerance)
        if flat >= self.guard.flat_epochs:
            return f"val_loss flat for {flat} epochs at epoch {epoch}"
        if self._preds and self._labels:
            y_pred = torch.cat(self._preds).numpy()
            y_true = torch.cat(self._labels).numpy()
            if getattr(pl_module, "segmentation", False):  # pixels; unlabelled ones left out
                labelled = y_true != MASK_IGNORE
                y_pred, y_true = y_pred[labelled], y_true[labelled]
            k = int(pl_module.hparams.get("num_classes", y_pred.max() + 1))
            names = pl_module.hparams.get("class_names") or [str(i) for i in range(k)]
            if getattr(pl_module, "regression", False):  # one value for every sample
                values = pl_module.scaler.decode_numpy(y_pred)
                one = [r for r in check_values(regression_metrics(y_true, values),
                                               self.guard, "val") if "nearly one value" in r]
            elif getattr(pl_module, "multilabel", False):
                one = check_label_sets(multilabel_metrics(y_true, y_pred.astype(np.float32),
                                                          list(names)), self.guard, "val")
            else:
                one = check_one_class(classification_metrics(y_true, y_pred, list(names)),
                                      self.guard, "val")
            self._one_class_epochs = self._one_class_epochs + 1 if one else 0
            if self._one_class_epochs >= self.guard.flat_epochs:
                return (f"{one[0]} for {self._one_class_epochs} epochs in a row, at "
                        f"epoch {epoch}")
        return None
