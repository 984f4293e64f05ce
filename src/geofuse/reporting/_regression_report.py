"""Run-report pieces of a regression run: the metrics table and observed-vs-predicted plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from geofuse.evaluation.predictions import load_predictions
from geofuse.reporting.plots import _new_figure

EVAL_SPLITS = ("val", "test")


def is_regression(metrics: dict[str, Any]) -> bool:
    """Whether a run's metrics.json holds regression metrics (one value per patch)."""
    return any(isinstance(metrics.get(s), dict) and metrics[s].get("regression")
               for s in EVAL_SPLITS)


def regression_rows(metrics: dict[str, Any], value_name: str
                    ) -> tuple[list[str], list[list[Any]]]:
    """Header and one row per evaluated split: errors in the target's unit and fit scores."""
    header = ["split", "n", f"RMSE ({value_name})", "MAE", "bias (pred - true)", "R2",
              "R2 of log(1 + value)", "Pearson r", "Spearman r", "mean true"]
    rows = [[split, m["n"], *[f"{m[k]:.4g}" for k in ("rmse", "mae", "bias")],
             *[f"{m.get(k, float('nan')):.3f}" for k in ("r2", "r2_log1p", "pearson_r",
                                                         "spearman_r")],
             f"{m['mean_true']:.4g}"]
            for split in EVAL_SPLITS if (m := metrics.get(split))]
    return header, rows


def guard_details(details: dict[str, Any]) -> list[str]:
    """The passed guard's figures per split."""
    return [f"{split}: R2 {d['r2']:.3f} (> 0: better than the mean), prediction spread "
            f"{d['std_pred'] / d['std_true']:.0%} of the true values'"
            for split, d in details.items() if d.get("std_true")]


def plot_observed_vs_predicted(y_true: np.ndarray, y_pred: np.ndarray, value_name: str,
                               title: str = "", log: bool = False) -> Figure:
    """Scatter of predicted against true values with the 1:1 line; ``log`` draws both axes
    on log(1 + value) (counts such as population)."""
    fig = _new_figure(4.8, 4.5)
    ax = fig.subplots()
    t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    shift = 1.0 if log else 0.0
    ax.scatter(t + shift, p + shift, s=12, alpha=0.7, edgecolors="none")
    finite = np.concatenate([t, p])[np.isfinite(np.concatenate([t, p]))]
    if finite.size:
        lo, hi = float(finite.min()) + shift, float(finite.max()) + shift
        if log:
            lo = max(lo, 1.0)
        ax.plot([lo, hi], [lo, hi], color="tab:red", lw=1, label="1:1")
        ax.legend(fontsize=8)
    if log:
        ax.set(xscale="log", yscale="log")
    suffix = " + 1" if log else ""
    ax.set(xlabel=f"true {value_name}{suffix}", ylabel=f"predicted {value_name}{suffix}",
           title=title)
    ax.grid(alpha=0.3)
    return fig


def regression_plots(run_path: Path, plots_dir: Path, info: dict[str, Any], save: Any
                     ) -> dict[str, Path]:
    """Observed-vs-predicted figure of each split with saved predictions."""
    out: dict[str, Path] = {}
    log = (info.get("target_scaler") or {}).get("transform") == "log1p"
    name = info.get("value_name", "value")
    if info.get("dense"):
        return _dense_plots(run_path, plots_dir, name, log, save)
    for split in EVAL_SPLITS:
        pred = load_predictions(run_path, split)
        if pred is not None and pred.regression and len(pred.targets):
            fig = plot_observed_vs_predicted(pred.targets, pred.values(), name,
                                             f"Observed vs predicted ({split})", log)
            out[f"scatter_{split}"] = save(fig, plots_dir / f"observed_vs_predicted_{split}.png")
    return out


#: labelled pixels drawn in a dense-regression run's observed-vs-predicted plot
SCATTER_PIXELS = 20_000


def plot_value_tiles(true: np.ndarray, pred: np.ndarray, value_name: str, title: str = ""
                     ) -> Figure:
    """True and predicted values of up to four tiles side by side, on one colour scale
    (unlabelled pixels blank)."""
    n = min(4, len(true))
    fig = _new_figure(2.2 * n + 0.8, 4.6)
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    finite = true[:n][np.isfinite(true[:n])]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = None
    for j in range(n):
        for i, (what, data) in enumerate((("true", true[j]), ("predicted", pred[j]))):
            image = axes[i, j].imshow(data, vmin=lo, vmax=hi, cmap="viridis")
            axes[i, j].set(xticks=[], yticks=[], title=f"tile {j + 1}: {what}")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=value_name)
    fig.suptitle(title)
    return fig


def _dense_plots(run_path: Path, plots_dir: Path, name: str, log: bool, save: Any
                 ) -> dict[str, Path]:
    """A dense-regression run's figures per split: observed vs predicted over a sample of
    labelled pixels, and true and predicted values of a few tiles."""
    from geofuse.evaluation.dense_evaluate import load_values

    out: dict[str, Path] = {}
    for split in EVAL_SPLITS:
        saved = load_values(run_path, split)
        if saved is None or not len(saved[1]):
            continue
        _, true, pred = saved
        labelled = np.flatnonzero(np.isfinite(true.reshape(-1)))
        if len(labelled) > SCATTER_PIXELS:
            labelled = np.sort(np.random.default_rng(0).choice(labelled, SCATTER_PIXELS,
                                                               replace=False))
        fig = plot_observed_vs_predicted(true.reshape(-1)[labelled], pred.reshape(-1)[labelled],
                                         name, f"Observed vs predicted pixels ({split})", log)
        out[f"scatter_{split}"] = save(fig, plots_dir / f"observed_vs_predicted_{split}.png")
        fig = plot_value_tiles(true, pred, name, f"{split} tiles")
        out[f"tiles_{split}"] = save(fig, plots_dir / f"value_tiles_{split}.png")
    return out
