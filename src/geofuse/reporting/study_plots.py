"""Plots of an ablation study; each function returns a matplotlib Figure (Agg), never shown."""

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


def plot_ablation_bars(
    summary: Mapping[str, Mapping[str, Any]], metric: str = "f1_macro",
    baseline: str | None = None, significant: Sequence[str] = (),
) -> Figure:
    """Mean metric per configuration with 95% CI error bars and the unit values as dots.

    Args:
        summary: config_id -> :func:`geofuse.evaluation.stats.descriptive` output with
            ``units`` (unit -> value).
        metric: axis label.
        baseline: configuration drawn in grey with a dashed reference line.
        significant: configurations marked with ``*`` (different from the baseline).
    """
    ids = sorted(summary, key=lambda c: np.nan_to_num(summary[c]["mean"], nan=-1.0))
    fig = _new_figure(9, max(2.5, 0.55 * len(ids) + 1.4))
    ax = fig.subplots()
    means = np.array([summary[c]["mean"] for c in ids], dtype=np.float64)
    lo = np.array([summary[c]["ci_low"] for c in ids], dtype=np.float64)
    hi = np.array([summary[c]["ci_high"] for c in ids], dtype=np.float64)
    err = np.nan_to_num(np.vstack([means - lo, hi - means]), nan=0.0)
    colors = ["tab:gray" if c == baseline else "tab:blue" for c in ids]
    y = np.arange(len(ids))
    ax.barh(y, np.nan_to_num(means), xerr=err, color=colors, alpha=0.8, capsize=4,
            error_kw={"elinewidth": 1.2})
    for i, cid in enumerate(ids):
        units = list(summary[cid].get("units", {}).values())
        ax.scatter(units, np.full(len(units), i), s=12, color="black", zorder=3)
        ax.text(np.nan_to_num(hi[i], nan=means[i]) + 0.01, i,
                f"{means[i]:.3f}{' *' if cid in significant else ''}", va="center", fontsize=8)
    if baseline in summary:
        ax.axvline(summary[baseline]["mean"], color="tab:gray", ls="--", lw=1)
    ax.set_yticks(y, labels=ids)
    unit_values = [v for c in ids for v in summary[c].get("units", {}).values()]
    low = min([0.0, *[v for v in (*lo, *unit_values) if np.isfinite(v)]])  # R2 may be < 0
    ax.set(xlabel=f"{metric} (mean, 95% CI; dots: units)", xlim=(max(low, -1.0) - 0.05, 1.1),
           title=f"Ablation: {metric}" + (f" (baseline {baseline}, * = significant)"
                                          if baseline else ""))
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_per_class_heatmap(
    values: np.ndarray | Sequence[Sequence[float]], config_ids: Sequence[str],
    class_names: Sequence[str], title: str = "Per-class F1 (mean over cells)",
    label: str = "F1",
) -> Figure:
    """Heatmap configurations x classes, annotated with the values (0-1); ``label`` names the
    colour bar."""
    data = np.asarray(values, dtype=np.float64)
    fig = _new_figure(max(5.0, 0.9 * len(class_names) + 3.5), max(2.5, 0.5 * len(config_ids) + 1.8))
    ax = fig.subplots()
    image = ax.imshow(data, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, label=label)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            text = f"{data[i, j]:.2f}" if np.isfinite(data[i, j]) else "n/a"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if data[i, j] > 0.6 else "white")
    ax.set_xticks(range(len(class_names)), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(len(config_ids)), labels=list(config_ids))
    ax.set_title(title)
    return fig


def plot_curves_by_config(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], ylabel: str = "val macro F1",
) -> Figure:
    """One line per configuration: a metric per epoch (e.g. mean over cells)."""
    fig = _new_figure(9, 4.5)
    ax = fig.subplots()
    for cid, (epochs, values) in curves.items():
        ax.plot(epochs, values, marker="o", ms=2.5, lw=1.4, label=cid)
    finite = [v for _, values in curves.values() for v in values if np.isfinite(v)]
    low = max(min([0.0, *finite]), -1.0)  # an R2 below -1 is off the chart
    ax.set(xlabel="epoch", ylabel=ylabel, ylim=(low, 1.02), title=f"Training curves: {ylabel}")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_importance(
    importance: Mapping[str, Mapping[str, Mapping[str, float]]], title: str = "",
) -> Figure:
    """Grouped bars of permutation importance (drop of the metric) with std error bars.

    Args:
        importance: config_id -> name (modality or band) -> {"mean", "std"}.
        title: figure title.
    """
    names = sorted({n for per in importance.values() for n in per})
    configs = list(importance)
    fig = _new_figure(max(6.0, 0.5 * len(names) * max(len(configs), 1) + 3), 4.2)
    ax = fig.subplots()
    width = 0.8 / max(len(configs), 1)
    x = np.arange(len(names))
    for k, cid in enumerate(configs):
        means = [importance[cid].get(n, {}).get("mean", np.nan) for n in names]
        stds = [importance[cid].get(n, {}).get("std", 0.0) for n in names]
        ax.bar(x + (k - (len(configs) - 1) / 2) * width, np.nan_to_num(means), width,
               yerr=np.nan_to_num(stds), capsize=3, label=cid)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, labels=names, rotation=45 if len(names) > 6 else 0, ha="right"
                  if len(names) > 6 else "center")
    ax.set(ylabel="metric drop when permuted", title=title or "Permutation importance")
    ax.grid(axis="y", alpha=0.3)
    if configs:
        ax.legend(fontsize=8)
    return fig
