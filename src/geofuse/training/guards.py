"""Collapse guard: detect a model that predicts one class, or does no better than chance.

The Week 4 ResNet50 fusion runs reported 0-13% accuracy because the network predicted a single
class for every input; nothing in the pipeline said so. This guard checks every evaluated split
and the training history, and reports loudly (console panel, metrics.json, report).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.panel import Panel

from geofuse.config import GuardConfig

LOSS_COLUMNS = ("train_loss", "val_loss")


@dataclass
class GuardVerdict:
    """Outcome of the collapse guard.

    Attributes:
        collapsed: True when any check fired.
        reasons: one human-readable sentence per fired check.
        details: per-split numbers the checks looked at.
    """

    collapsed: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form stored under ``"guard"`` in metrics.json."""
        return {"collapsed": self.collapsed, "reasons": list(self.reasons),
                "details": dict(self.details)}


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
    reasons = []
    counts = metrics["prediction_counts"]
    top_class = max(counts, key=counts.get)
    top_share = counts[top_class] / n
    true_share = metrics["per_class"][top_class]["support"] / n
    if top_share >= guard.one_class_fraction and true_share < guard.one_class_fraction:
        reasons.append(
            f"{split}: predicts {top_class!r} for {top_share:.0%} of {n} samples "
            f"(threshold {guard.one_class_fraction:.0%}; true share {true_share:.0%})"
        )
    classes_present = sum(1 for c in metrics["per_class"].values() if c["support"] > 0)
    limit = metrics["majority_rate"] + guard.majority_margin
    if classes_present > 1 and metrics["accuracy"] <= limit:
        reasons.append(
            f"{split}: accuracy {metrics['accuracy']:.3f} is no better than always predicting "
            f"{metrics['majority_class']!r} ({metrics['majority_rate']:.3f}"
            f"{f' + margin {guard.majority_margin:.3f}' if guard.majority_margin else ''})"
        )
    return reasons


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


def run_guards(
    split_metrics: Mapping[str, Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]],
    guard: GuardConfig,
) -> GuardVerdict:
    """Apply every check to the evaluated splits and the history."""
    reasons = check_losses(history)
    details = {}
    for split, metrics in split_metrics.items():
        reasons += check_predictions(metrics, guard, split)
        counts = metrics["prediction_counts"]
        n = max(metrics["n"], 1)
        details[split] = {
            "accuracy": metrics["accuracy"],
            "majority_rate": metrics["majority_rate"],
            "max_prediction_share": max(counts.values()) / n,
        }
    return GuardVerdict(collapsed=bool(reasons), reasons=reasons, details=details)


def print_verdict(verdict: GuardVerdict, console: Console | None = None) -> None:
    """Print a red panel when the run collapsed; a one-line note otherwise."""
    console = console or Console(stderr=True)
    if not verdict.collapsed:
        console.print("[green]collapse guard: passed[/]")
        return
    body = "\n".join(f"• {r}" for r in verdict.reasons)
    body += ("\n\nThe metrics of this run are not meaningful. Check class balance and splits, "
             "the learning rate, input normalisation and frozen layers.")
    console.print(Panel(body, title="[bold]MODEL COLLAPSE DETECTED[/]", border_style="bold red",
                        style="red"))
