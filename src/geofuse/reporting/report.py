"""report.md for a run directory: summary, metrics tables, guard verdict, data, plots, config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from geofuse.io_utils import atomic_path, atomic_write_text
from geofuse.reporting._calibration_report import calibration_lines, calibration_plots
from geofuse.reporting._regression_report import (
    guard_details,
    is_regression,
    regression_plots,
    regression_rows,
)
from geofuse.reporting._seg_report import (
    is_segmentation,
    load_split_masks,
    per_class_rows,
    plot_mask_examples,
    seg_metrics_lines,
    seg_metrics_note,
)
from geofuse.reporting.plots import plot_confusion_matrix, plot_training_curves
from geofuse.rundir import RunDir, read_history

SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _write_plots(run: RunDir, metrics: dict[str, Any], info: dict[str, Any]) -> dict[str, str]:
    """Write every plot; returns plot key -> path relative to the run directory."""
    plots: dict[str, Path] = {}
    history = read_history(run.history)
    if history:
        plots["training_curves"] = save_figure(
            plot_training_curves(history), run.plots / "training_curves.png")
    classes = info.get("mask_names") or info["class_names"]
    for split in EVAL_SPLITS:
        if split in metrics and metrics[split].get("confusion_matrix") is not None:
            fig = plot_confusion_matrix(metrics[split]["confusion_matrix"], classes,
                                        title=f"Confusion matrix ({split})")
            plots[f"confusion_{split}"] = save_figure(
                fig, run.plots / f"confusion_matrix_{split}.png")
    if is_segmentation(metrics):
        plots.update(_mask_plots(run, info))
    if is_regression(metrics):
        plots.update(regression_plots(run.path, run.plots, info, save_figure))
    plots.update(calibration_plots(metrics, run.plots, save_figure))
    return {key: path.relative_to(run.path).as_posix() for key, path in plots.items()}


def _mask_plots(run: RunDir, info: dict[str, Any]) -> dict[str, Path]:
    """Example tiles (first and last date, true and predicted mask) of each evaluated split."""
    from geofuse.data.patchset import PatchSet

    out: dict[str, Path] = {}
    try:
        patches = PatchSet.load(info["patches_path"]).select_bands(info["bands"])
    except (OSError, ValueError):  # the PatchSet moved: the report goes on without figures
        return out
    for split in EVAL_SPLITS:
        saved = load_split_masks(run.path, split)
        if saved is not None and len(saved[0]):
            fig = plot_mask_examples(patches, *saved)
            out[f"masks_{split}"] = save_figure(fig, run.plots / f"masks_{split}.png")
    return out


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _guard_section(guard: dict[str, Any]) -> list[str]:
    if guard.get("collapsed"):
        lines = ["> [!CAUTION]", "> **MODEL COLLAPSE DETECTED: the metrics below are not "
                 "meaningful.**", ">"]
        lines += [f"> - {reason}" for reason in guard["reasons"]]
        if guard.get("diagnosis"):
            lines += [">", f"> **Diagnosis:** {guard['diagnosis']}."]
        lines += [">", "> Check class balance and splits, the learning rate, input "
                  "normalisation and frozen layers.", ""]
        return lines
    if any("r2" in d for d in guard.get("details", {}).values()):
        return [f"**Collapse guard: passed** ({'; '.join(guard_details(guard['details']))}).",
                ""]
    unit = "pixel accuracy" if "iou" in next(iter(guard.get("details", {}).values()), {}) \
        else "accuracy"
    parts = [f"{split}: largest prediction share {d['max_prediction_share']:.0%}, {unit} "
             f"{d['accuracy']:.3f} vs majority-class rate {d['majority_rate']:.3f}"
             for split, d in guard.get("details", {}).items()]
    return [f"**Collapse guard: passed** ({'; '.join(parts)}).", ""]


def _model_options(model: dict[str, Any]) -> dict[str, Any]:
    """The recorded ``train.model`` options that the network takes (all of them for a name
    the registry no longer knows)."""
    from geofuse.errors import ConfigError
    from geofuse.models.registry import model_options

    kwargs = dict(model.get("kwargs", {}))
    try:
        accepted = model_options(model["name"])
    except ConfigError:  # a baseline (random_forest, ...) or a model from another version
        return kwargs
    return {k: v for k, v in kwargs.items() if k in accepted}


def _summary_section(info: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    model = info["model"]
    kwargs = ", ".join(f"{k}={v}" for k, v in _model_options(model).items())
    rows = [
        ["model", f"`{model['name']}` ({kwargs}), {info.get('num_params', '?'):,} parameters"
         if isinstance(info.get("num_params"), int) else f"`{model['name']}` ({kwargs})"],
        ["inputs", f"{info['in_channels']} bands, {info['patch_size']}x{info['patch_size']} px"],
        ["modalities", ", ".join(f"{m} ({len(b)})" for m, b in info["modalities"].items())],
        ["classes", ", ".join(info.get("mask_names") or info["class_names"])],
        ["seed", info["seed"]],
        ["epochs", f"{info.get('epochs_trained', '?')} of max {info.get('max_epochs', '?')}"
         + (" (early stopping)" if info.get("stopped_early") else "")],
        ["best checkpoint", f"epoch {metrics.get('best_epoch')} (`{metrics.get('checkpoint')}`)"],
        ["training time", f"{info.get('train_s_total', 0):.1f} s"],
        ["PatchSet", f"`{info['patches_path']}`"],
    ]
    return ["## Run", "", *_table(["", ""], rows)]


def _ratios(scores: dict[str, Any], predicted: int) -> list[str]:
    """Precision, recall, F1 as text; n/a for a class neither present nor predicted."""
    if scores["support"] == 0 and predicted == 0:
        return ["n/a"] * 3
    return [f"{scores[k]:.3f}" for k in ("precision", "recall", "f1")]


def _multilabel_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    header = ["split", "n", "subset accuracy", "macro F1", "micro F1", "sample F1", "mAP",
              "Hamming loss", "most common label set"]
    rows = [[split, m["n"], *[f"{m[k]:.3f}" for k in ("accuracy", "f1_macro", "f1_micro",
                                                        "f1_samples", "map", "hamming_loss")],
             f"{m['majority_rate']:.3f} ({m['majority_class'] or 'none'})"]
            for split in EVAL_SPLITS if (m := metrics.get(split))]
    return header, rows


def _per_class_rows(m: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    header = ["class", "precision", "recall", "F1", "support", "predicted"]
    rows = [[name, *_ratios(c, m["prediction_counts"][name]), c["support"],
             m["prediction_counts"][name]] for name, c in m["per_class"].items()]
    if m.get("multilabel"):  # threshold-free average precision per class
        header.insert(4, "AP")
        for row, c in zip(rows, m["per_class"].values(), strict=True):
            row.insert(4, "n/a" if c.get("ap") is None else f"{c['ap']:.3f}")
    return header, rows


def _metrics_section(metrics: dict[str, Any], info: dict[str, Any]) -> list[str]:
    if is_regression(metrics):
        scaler = info.get("target_scaler") or {}
        note = [f"Regression of `{info.get('value_name', 'value')}`: errors in its own unit; "
                f"the model learnt the standardised "
                f"{'log(1 + value)' if scaler.get('transform') == 'log1p' else 'value'}. R2 "
                "above 0 beats always predicting the split's mean."
                + (" One value per pixel: n counts the split's labelled pixels, pooled over "
                   "its tiles." if any(metrics.get(s, {}).get("dense") for s in EVAL_SPLITS)
                   else ""), ""]
        return ["## Metrics (best checkpoint)", "", *note,
                *_table(*regression_rows(metrics, info.get("value_name", "value")))]
    if is_segmentation(metrics):
        lines = ["## Metrics (best checkpoint)", "", *seg_metrics_note(metrics),
                 *_table(*seg_metrics_lines(metrics))]
        for split in EVAL_SPLITS:
            if (m := metrics.get(split)) is not None:
                lines += [f"### Per class ({split})", "", *_table(*per_class_rows(m))]
        return lines
    if any(metrics.get(split, {}).get("multilabel") for split in EVAL_SPLITS):
        header, rows = _multilabel_rows(metrics)
        note = [f"Multi-label: a class is predicted from probability "
                f"{next(metrics[s]['threshold'] for s in EVAL_SPLITS if s in metrics)}; subset "
                "accuracy counts patches whose whole label set is right.", ""]
        lines = ["## Metrics (best checkpoint)", "", *note, *_table(header, rows)]
        return lines + _per_class_sections(metrics)
    header = ["split", "n", "accuracy", "macro F1", "macro precision", "macro recall",
              "majority-class rate"]
    rows = [[split, m["n"], f"{m['accuracy']:.3f}", f"{m['f1_macro']:.3f}",
             f"{m['precision_macro']:.3f}", f"{m['recall_macro']:.3f}",
             f"{m['majority_rate']:.3f} ({m['majority_class']})"]
            for split in EVAL_SPLITS if (m := metrics.get(split))]
    lines = ["## Metrics (best checkpoint)", "", *_table(header, rows)]
    return lines + _per_class_sections(metrics)


def _per_class_sections(metrics: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for split in EVAL_SPLITS:
        if (m := metrics.get(split)) is None:
            continue
        lines += [f"### Per class ({split})", "", *_table(*_per_class_rows(m))]
    return lines


def _data_section(info: dict[str, Any]) -> list[str]:
    counts = info["class_counts"]
    splits = [s for s in SPLITS if sum(counts.get(s, {}).values())]
    rows = [[name, *[counts[s][name] for s in splits]] for name in info["class_names"]]
    rows.append(["**total**", *[sum(counts[s].values()) for s in splits]])
    shown = info.get("step_bands") or info["bands"]  # a time series: the bands of one date
    bands = ", ".join(f"`{b}`" for b in shown) + (
        f" at each of {info['time_steps']} dates" if info.get("step_bands") else "")
    what = {"segmentation": "Tiles per stratum", "regression": "Patches per stratum (value "
            "range)"}.get(info.get("task", ""), "Patches per class")
    if info.get("dense"):
        what = "Tiles per stratum (range of the tiles' mean value)"
    steps = ([f"Time series: {info['time_steps']} dates ({', '.join(info['timestamps'])}), "
              f"bands per date: {', '.join(info['step_bands'])}.", ""]
             if info.get("time_steps") else [])
    return ["## Data", "", *steps, f"{what} and split:", "",
            *_table(["class", *splits], rows), f"Bands used ({len(info['bands'])}): {bands}", ""]


def _plots_section(plots: dict[str, str] | None) -> list[str]:
    if plots is None:
        return ["## Plots", "", "Not drawn for a study's cell (the study report has the "
                "study's figures; `ablation.cell_figures: true` draws every cell's): run "
                "`geofuse report` on this folder to draw them.", ""]
    titles = {"training_curves": "Training curves", "confusion_val": "Confusion matrix (val)",
              "confusion_test": "Confusion matrix (test)",
              "masks_val": "Example tiles (val)", "masks_test": "Example tiles (test)",
              "scatter_val": "Observed vs predicted (val)",
              "scatter_test": "Observed vs predicted (test)",
              "tiles_val": "True and predicted values of example tiles (val)",
              "tiles_test": "True and predicted values of example tiles (test)",
              "reliability": "Reliability diagram"}
    lines = ["## Plots", ""]
    for key, rel in plots.items():
        lines += [f"### {titles.get(key, key)}", "", f"![{titles.get(key, key)}]({rel})", ""]
    return lines


def _config_section(run: RunDir) -> list[str]:
    return ["## Reproduce", "",
            "The resolved config of this run (absolute paths) is `config.yaml`; to train it "
            "again under a new name:", "", "```bash",
            f"geofuse train -c {run.config} --run-name {run.name}-repro", "```", "",
            "```yaml", run.config.read_text().rstrip(), "```", ""]


def write_report(run_dir: str | Path, figures: bool = True) -> Path:
    """Write ``report.md`` and its PNG plots into ``run_dir``; returns the report path.
    ``figures=False`` (a study's cells) writes the report without drawing them.

    Raises:
        RunDirError: run.json, metrics.json or config.yaml is missing.
    """
    run = RunDir(Path(run_dir))
    run.require(run.run_json, run.metrics, run.config)
    info = run.read_json(run.run_json)
    metrics = run.read_json(run.metrics)
    plots = _write_plots(run, metrics, info) if figures else None
    lines = [f"# Run report: {run.name}", "", *_guard_section(metrics.get("guard", {})),
             *_metrics_section(metrics, info), *calibration_lines(metrics),
             *_summary_section(info, metrics),
             *_data_section(info), *_plots_section(plots), *_config_section(run)]
    atomic_write_text(run.report, "\n".join(lines))
    return run.report
