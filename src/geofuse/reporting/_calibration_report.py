"""The calibration part of a run report: ECE table and reliability diagram."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

SAVE = Callable[[Figure, Path], Path]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def calibration_lines(metrics: dict[str, Any]) -> list[str]:
    """Markdown of metrics.json's ``calibration`` (empty when the run has none)."""
    cal = metrics.get("calibration")
    if not cal or not cal.get("splits"):
        return []
    if cal["method"] == "temperature":
        how = (f"Temperature scaling: the logits are divided by **T = "
               f"{cal['temperature']:.3f}**, fitted on {cal['fit_samples']} validation samples "
               "(minimum negative log-likelihood). The predicted classes are unchanged; the "
               "probabilities, and the uncertainty rasters of `geofuse predict`, are the "
               "calibrated ones. The validation figures after scaling are fitted on that same "
               "split: the test split, when present, is the honest check.")
        if cal.get("skipped"):
            how = f"Not calibrated: {cal['skipped']}."
    else:
        how = ("Uncalibrated probabilities (`train.calibration: none`, or a scikit-learn "
               "baseline's vote fractions).")
    header = ["split", "n", "ECE", "MCE", "Brier", "NLL"]
    scaled = cal["method"] == "temperature" and not cal.get("skipped")
    if scaled:
        header += ["ECE before", "NLL before"]
    rows = []
    for split, s in cal["splits"].items():
        row = [split, s.get("n"), *[_fmt(s.get(k)) for k in ("ece", "mce", "brier", "nll")]]
        if scaled:
            row += [_fmt(s.get("ece_before")), _fmt(s.get("nll_before"))]
        rows.append(row)
    table = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|",
             *["| " + " | ".join(str(c) for c in row) + " |" for row in rows], ""]
    return ["## Calibration of the probabilities", "", how, "",
            "ECE: expected calibration error (15 equal-width confidence bins; the mean gap "
            "between confidence and accuracy, weighted by the bin counts; 0 is perfect).", "",
            *table]


def plot_reliability(calibration: dict[str, Any]) -> Figure:
    """Reliability diagram per split: accuracy against confidence of each bin, before and
    after scaling, with the diagonal of perfect calibration."""
    splits = calibration["splits"]
    fig = Figure(figsize=(4.2 * len(splits), 4.0), layout="constrained")
    axes = fig.subplots(1, len(splits), squeeze=False)[0]
    scaled = calibration["method"] == "temperature" and not calibration.get("skipped")
    for ax, (split, s) in zip(axes, splits.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect")
        curves = [("after" if scaled else "model", s["bins"], "tab:blue")]
        if scaled:
            curves.insert(0, ("before (T = 1)", s["bins_before"], "tab:orange"))
        total = max(sum(b["count"] for b in s["bins"]), 1)
        for label, bins, colour in curves:
            if bins:
                ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins],
                        marker="o", color=colour, label=label, linewidth=1.2)
                ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins],
                           s=[400 * b["count"] / total for b in bins], color=colour,
                           alpha=0.25)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{split}: ECE {_fmt(s.get('ece'))}")
        ax.legend(loc="upper left", fontsize=8)
    return fig


def calibration_plots(metrics: dict[str, Any], plots_dir: Path, save: SAVE) -> dict[str, Path]:
    """``{"reliability": path}`` when the run has calibration figures."""
    cal = metrics.get("calibration")
    if not cal or not any(s.get("bins") for s in cal.get("splits", {}).values()):
        return {}
    return {"reliability": save(plot_reliability(cal), plots_dir / "reliability.png")}
