"""Plot functions: each returns a matplotlib Figure on an Agg canvas; the caller saves it.

Figures are built without pyplot, so no global backend is switched and nothing stays open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_curves(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Loss, accuracy/F1 and learning rate per epoch; the best (lowest val_loss) epoch marked.

    Args:
        history: rows of history.csv (``epoch``, ``train_loss``, ``val_loss``, ...).
    """
    fig = _new_figure(13, 3.8)
    ax_loss, ax_score, ax_lr = fig.subplots(1, 3)
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        ax_loss.plot(*_series(history, key), marker="o", ms=3, label=label)
    regression = any(row.get("val_r2") is not None for row in history)
    scores = ((("train_r2", "train R2", "C0-"), ("val_r2", "val R2", "C1-")) if regression else
              (("train_accuracy", "train accuracy", "C0-"), ("val_accuracy", "val accuracy", "C1-"),
               ("train_f1_macro", "train macro F1", "C0--"),
               ("val_f1_macro", "val macro F1", "C1--")))
    for key, label, style in scores:
        epochs, values = _series(history, key)
        if epochs:  # runs written before train macro F1 was recorded lack it
            ax_score.plot(epochs, values, style, marker="o", ms=3, label=label)
    ax_lr.plot(*_series(history, "lr"), marker="o", ms=3, color="tab:gray")
    epochs, val_loss = _series(history, "val_loss")
    finite = [(e, v) for e, v in zip(epochs, val_loss, strict=True) if np.isfinite(v)]
    if finite:
        best = min(finite, key=lambda p: p[1])[0]
        for ax in (ax_loss, ax_score):
            ax.axvline(best, color="tab:red", ls="--", lw=1, label=f"best epoch {best}")
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="training loss (train.loss)")
    if regression:  # R2 has no lower bound; below -1 is off the chart
        ax_score.set(title="R2 (coefficient of determination)", xlabel="epoch",
                     ylim=(max(-1.0, min([0.0, *_series(history, "val_r2")[1]])), 1.02))
    else:
        ax_score.set(title="Accuracy and macro F1", xlabel="epoch", ylim=(0, 1.02))
    ax_lr.set(title="Learning rate", xlabel="epoch", yscale="log")
    for ax in (ax_loss, ax_score):
        ax.legend(fontsize=8)
    for ax in (ax_loss, ax_score, ax_lr):
        ax.grid(alpha=0.3)
    return fig


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str], title: str = ""
) -> Figure:
    """Row-normalised confusion matrix (rows = true class), cells annotated with counts.

    Args:
        matrix: counts (K, K), rows true, columns predicted.
        class_names: K names.
        title: figure title.
    """
    cm = np.asarray(matrix, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    k = len(class_names)
    size = max(4.0, 0.7 * k + 2.5)
    fig = _new_figure(size + 1, size)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of true class")
    for i in range(k):
        for j in range(k):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                    fontsize=8, color=color)
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return fig
