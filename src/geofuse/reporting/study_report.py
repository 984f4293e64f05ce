"""Study report of an ablation study directory: stats.json, report.md and report.html.

A study directory (written by the ablation runner) holds ``study.json`` and one
``cells/<slug>.json`` per (configuration, seed, fold). :func:`load_study` reads it, tolerating
missing optional keys and listing unreadable cells (see :mod:`._study_load`);
:func:`compute_study_stats` turns it into statistics (:mod:`geofuse.evaluation.stats`);
:func:`write_study_report` writes everything.

A multi-label study (cells' metrics with ``multilabel: True``, from
:mod:`geofuse.evaluation.multilabel_metrics`) reports subset accuracy, micro F1, sample F1 and
mAP beside the main metric, and per-class average precision instead of confusion matrices.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure as MplFigure

from geofuse.errors import ConfigError
from geofuse.evaluation import stats as st
from geofuse.evaluation.importance import aggregate_importance
from geofuse.io_utils import atomic_path, atomic_write_json, atomic_write_text
from geofuse.reporting import html as doc
from geofuse.reporting import study_plots as sp
from geofuse.reporting._completeness import completeness, continue_command, unfinished_alert
from geofuse.reporting._study_calibration import calibration_blocks, calibration_stats
from geofuse.reporting._study_data_figures import data_figure_blocks
from geofuse.reporting._study_extra_blocks import map_blocks, mask_blocks
from geofuse.reporting._study_learning import (
    learning_curve_blocks,
    learning_curve_stats,
    main_share_configs,
)
from geofuse.reporting._study_load import (
    CELL_DEFAULTS,
    Study,
    cell_scores,
    load_study,
    metric_names,
)
from geofuse.reporting._study_oof import study_oof_stats
from geofuse.reporting._study_test import study_test_stats
from geofuse.reporting._study_test_blocks import oof_blocks, study_test_blocks, transfer_alert
from geofuse.reporting.plots import plot_confusion_matrix

__all__ = ["CELL_DEFAULTS", "Study", "cell_scores", "compute_study_stats", "load_study",
           "write_study_report"]

#: Extra columns of the Results table of a multi-label study: metric -> header.
MULTILABEL_COLUMNS = {"f1_micro": "mean micro F1", "f1_samples": "mean sample F1",
                      "map": "mean mAP"}
#: Metrics where smaller is better (the best configuration has the lowest mean).
LOWER_IS_BETTER = ("rmse", "mae")


def _class_f1(cells: list[dict[str, Any]], split: str, name: str) -> float:
    """Mean F1 of class ``name`` over the cells where it occurs or is predicted."""
    values = [c[split]["per_class"][name]["f1"] for c in cells
              if name in c[split].get("per_class", {}) and (
                  c[split]["per_class"][name].get("support", 1) > 0
                  or c[split].get("prediction_counts", {}).get(name, 1) > 0)]
    return float(np.mean(values)) if values else float("nan")


def _class_ap(cells: list[dict[str, Any]], split: str, name: str) -> float:
    """Mean average precision of class ``name`` over the cells where it is defined (the class
    occurs in that cell's truth)."""
    values = [ap for c in cells
              if (ap := c[split].get("per_class", {}).get(name, {}).get("ap")) is not None
              and math.isfinite(ap)]
    return float(np.mean(values)) if values else float("nan")


def _threshold(study: Study, split: str) -> float | None:
    """The decision threshold of a multi-label study's ``split`` metrics, if recorded."""
    return next((float(c[split]["threshold"]) for c in study.cells
                 if isinstance(c.get(split), Mapping) and c[split].get("threshold") is not None),
                None)


def compute_study_stats(
    study: Study, metric: str = "f1_macro", split: str = "val", alpha: float = 0.05,
    unit: st.Unit = "fold", baseline: str | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as one JSON-able dict (NaN kept; see finite_or_none)."""
    scores = cell_scores(study, metric, split)
    if not scores:
        raise ConfigError(f"{study.path}: no cell has the {split} metric {metric!r}; choose one "
                          f"of {metric_names(study, split)}")
    baseline = baseline if baseline is not None else study.baseline
    notes = []
    if baseline is not None and baseline not in scores:
        notes.append(f"baseline {baseline!r} has no {split} results; no comparisons made")
        baseline = None
    summary = st.summarize_configs(scores, unit)
    complete = completeness(scores, study.grid, baseline)
    comparable = {cid: scores[cid] for cid in complete["comparable"]}
    curve_scores = dict(comparable)
    main = main_share_configs(study.cells, baseline)  # a learning curve: the main share only
    if main is not None:
        comparable = {cid: v for cid, v in comparable.items() if cid in main} or comparable
    main_study = study if main is None else \
        replace(study, cells=[c for c in study.cells if c["config_id"] in main])
    complete["continue"] = continue_command(study.kind, study.config_file)
    comparisons = st.compare_to_baseline(comparable, baseline, alpha, unit) if baseline else []
    by_config = {cid: [c for c in study.cells if c["config_id"] == cid] for cid in scores}
    evaluated = {cid: [c for c in cells if isinstance(c.get(split), Mapping)]
                 for cid, cells in by_config.items()}
    classes, multilabel, reg = study.class_names, study.multilabel, study.regression
    second = "rmse" if reg else "accuracy"  # the results table's second column
    dense = study.segmentation or reg  # no patch-class test section, per-class scores
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0  # errors: the smallest is best
    best = max(comparable, key=lambda c: np.nan_to_num(sign * summary[c]["mean"], nan=-np.inf))
    return {
        "metric": metric, "split": split, "unit": unit, "alpha": alpha, "baseline": baseline,
        "best": best, "notes": notes, "configs": summary, "comparisons": comparisons,
        "multilabel": multilabel, "threshold": _threshold(study, split) if multilabel else None,
        "regression": reg, "second": second,
        "accuracy": st.summarize_configs(cell_scores(study, second, split), unit),
        "multilabel_means": {k: st.summarize_configs(cell_scores(study, k, split), unit)
                             for k in MULTILABEL_COLUMNS} if multilabel else {},
        "test": st.summarize_configs(cell_scores(study, metric, "test"), unit),
        "test_accuracy": st.summarize_configs(cell_scores(study, second, "test"), unit),
        # patch-level test section (fold ensembles, floors, bootstrap over test groups);
        # a segmentation study's test figures are the per-pixel table of the results, a
        # regression study's the test split's R2 and RMSE of the results
        "test_set": None if dense else study_test_stats(main_study, baseline, alpha),
        "out_of_fold": None if dense else study_oof_stats(main_study, baseline, alpha),
        "per_class_f1_test": {} if reg else {
            cid: {k: _class_f1(cells, "test", k) for k in classes}
            for cid, cells in by_config.items()
            if any(isinstance(c.get("test"), Mapping) for c in cells)},
        "overfitting": {cid: st.overfitting_summary(
            cells, *(("IoU", "train IoU") if study.segmentation else ("R2", "train R2") if reg
                     else ())) for cid, cells in by_config.items()},
        "per_class_f1": {} if reg else {cid: {k: _class_f1(cells, split, k) for k in classes}
                                        for cid, cells in evaluated.items()},
        "per_class_ap": {cid: {k: _class_ap(cells, split, k) for k in classes}
                         for cid, cells in evaluated.items()} if multilabel else {},
        "confusion": {cid: np.sum([c[split]["confusion_matrix"] for c in cells
                                   if c[split].get("confusion_matrix")], axis=0).tolist()
                      for cid, cells in evaluated.items()
                      if any(c[split].get("confusion_matrix") for c in cells)},
        "curves": {cid: st.mean_curve([c["history"] for c in cells],
                                      "val_iou" if study.segmentation else "val_r2" if reg
                                      else "val_f1_macro")
                   for cid, cells in by_config.items()},
        "calibration": calibration_stats(by_config),
        "importance": {cid: imp for cid, cells in by_config.items()
                       if (imp := aggregate_importance([c["importance"] for c in cells]))},
        "collapsed": [{"config_id": c["config_id"], "seed": c["seed"], "fold": c["fold"],
                       "reasons": list(c["guard"].get("reasons") or []),
                       "diagnosis": c["guard"].get("diagnosis") or ""}
                      for c in study.cells if c["guard"].get("collapsed")],
        "skipped": list(study.skipped), "completeness": complete,
        "learning_curve": learning_curve_stats(study.cells, curve_scores, baseline, alpha,
                                               unit),
    }


# -- report blocks ---------------------------------------------------------------------------

def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) \
        else f"{x:.{digits}f}"


def _second(s: dict[str, Any], x: Any) -> str:
    """The results table's second column: accuracy, or a regression study's RMSE (4
    significant digits, in the target's unit)."""
    if s.get("regression") and x is not None and math.isfinite(x):
        return f"{x:.4g}"
    return _f(x)


def _p(x: Any) -> str:
    return "n/a" if x is None or not math.isfinite(x) else "<0.001" if x < 0.001 else f"{x:.3f}"


def _figure(fig: MplFigure, study: Study, name: str, title: str) -> doc.Figure:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    png = buf.getvalue()
    target = study.path / "plots" / f"{name}.png"
    with atomic_path(target, suffix=".png") as tmp:
        tmp.write_bytes(png)
    return doc.Figure(title=title, png=png, path=f"plots/{name}.png")


def _guard_blocks(s: dict[str, Any]) -> list[doc.Block]:
    blocks: list[doc.Block] = []
    if s["collapsed"]:
        items = [f"**{c['config_id']}** seed {c['seed']} fold {c['fold']}: "
                 + "; ".join(c["reasons"]) + (f" (diagnosis: {c['diagnosis']})"
                                              if c["diagnosis"] else "") for c in s["collapsed"]]
        blocks.append(doc.Alert("caution", f"MODEL COLLAPSE DETECTED in {len(items)} cell(s): "
                                "their metrics are not meaningful and pull the means down.",
                                items))
    else:
        blocks.append(doc.Alert("ok", "Collapse guard: passed in every cell."))
    if not s["completeness"]["finished"]:
        blocks.append(unfinished_alert(s["completeness"], list(s["configs"])))
    if s["skipped"]:
        blocks.append(doc.Alert("note", f"{len(s['skipped'])} cell file(s) skipped", s["skipped"]))
    return blocks


def _multilabel_note(s: dict[str, Any]) -> list[doc.Block]:
    if not s["multilabel"]:
        return []
    t = s["threshold"] if s["threshold"] is not None else 0.5
    return [doc.Para(f"Multi-label study: a class is predicted when its probability reaches "
                     f"{t:g}; subset accuracy is the share of patches whose whole label set is "
                     "predicted exactly, micro F1 pools every (patch, class) decision, sample F1 "
                     "averages the F1 of each patch's label set, and mAP (threshold-free) is the "
                     "mean over classes of the average precision.")]


def _results_blocks(s: dict[str, Any], study: Study) -> list[doc.Block]:
    m, collapsed = s["metric"], [c["config_id"] for c in s["collapsed"]]
    extra = s["multilabel_means"]
    rows = [[cid + (" (baseline)" if cid == s["baseline"] else ""), f"{d['n']} / {d['n_cells']}",
             _f(d["mean"]), _f(d["std"]), f"[{_f(d['ci_low'])}, {_f(d['ci_high'])}]", _f(d["cv"]),
             _second(s, s["accuracy"].get(cid, {}).get("mean")),
             *[_f(extra[k].get(cid, {}).get("mean")) for k in extra], collapsed.count(cid)]
            for cid, d in s["configs"].items()]
    accuracy = ("mean subset accuracy" if s["multilabel"] else "mean RMSE" if s.get("regression")
                else "mean accuracy")
    unit = "fold (seeds averaged within each fold)" if s["unit"] == "fold" else "(seed, fold) cell"
    sig = [c["config_id"] for c in s["comparisons"] if c["significant"]]
    blocks: list[doc.Block] = [
        doc.Heading("Results"),
        doc.Para(f"Main metric: **{m}** on the **{s['split']}** split. Unit of analysis: {unit}; "
                 "std uses ddof=1, the 95% CI is a t interval over the units, CV = std / mean. "
                 f"Best configuration: **{s['best']}**."),
        *_multilabel_note(s),
        doc.Table(["configuration", "units / cells", f"mean {m}", "std", "95% CI", "CV",
                   accuracy, *[MULTILABEL_COLUMNS[k] for k in extra], "collapsed cells"], rows),
        _figure(sp.plot_ablation_bars(s["configs"], m, s["baseline"], sig), study, "ablation",
                f"Ablation: mean {m} with 95% CI"),
    ]
    if s["test"]:
        name = s["test_set"]["name"] if s["test_set"] else "the test split"
        acc = s["test_accuracy"]
        blocks += [doc.Heading("Test split", 3), doc.Para(
            f"Every cell's model on **{name}** (t interval over the units, as above); the "
            f"section *Test set: {name}* adds the fold ensembles, intervals over test groups, "
            "the floors and the paired comparisons."), doc.Table(
            ["configuration", "units", f"mean {m}", "std", "95% CI",
             "mean subset accuracy" if s["multilabel"] else "mean RMSE" if s.get("regression")
             else "mean OA"],
            [[cid, d["n"], _f(d["mean"]), _f(d["std"]), f"[{_f(d['ci_low'])}, {_f(d['ci_high'])}]",
              _second(s, acc.get(cid, {}).get("mean"))]
             for cid, d in s["test"].items()],
            caption=f"Test set: {name}")]
    return blocks


def _significance_blocks(s: dict[str, Any]) -> list[doc.Block]:
    blocks: list[doc.Block] = [doc.Heading("Significance against the baseline")]
    if not s["baseline"]:
        return [*blocks, doc.Para("No baseline configuration named: no paired tests."),
                *[doc.Para(n) for n in s["notes"]],
                *oof_blocks(s.get("out_of_fold"), s["multilabel"])]
    rows = [[c["config_id"], c["n"], _f(c["diff"], 4), f"[{_f(c['ci_low'], 4)}, "
             f"{_f(c['ci_high'], 4)}]", _p(c["p_t"]), _p(c["p_wilcoxon"]), _p(c["p_holm"]),
             _f(c["d"], 2), ("**yes** (" + ("better" if (c["diff"] > 0) != (s["metric"] in
                                                                  LOWER_IS_BETTER)
                                            else "worse") + ")")
             if c["significant"] else "no"] for c in s["comparisons"]]
    notes = [f"{c['config_id']}: {c['note']}" for c in s["comparisons"] if c["note"]]
    return [*blocks, doc.Para(
        f"Differences are configuration - baseline (**{s['baseline']}**), paired on the same "
        "(seed, fold) cells. p_t: paired t-test; p_wilcoxon: Wilcoxon signed-rank; p_holm: "
        "t-test p-values Holm-corrected over all comparisons; d: paired Cohen's d (mean "
        f"difference / sd of differences). Significant: p_holm < {s['alpha']}."),
        doc.Table(["configuration", "n", "diff", "95% CI of diff", "p_t", "p_wilcoxon",
                   "p_holm", "d", "significant"], rows),
        *([doc.BulletList(notes + s["notes"])] if notes or s["notes"] else []),
        *oof_blocks(s.get("out_of_fold"), s["multilabel"])]


def _detail_blocks(s: dict[str, Any], study: Study) -> list[doc.Block]:
    classes, ids = study.class_names, list(s["per_class_f1"])
    matrix = [[s["per_class_f1"][cid][k] for k in classes] for cid in ids]
    blocks: list[doc.Block] = [
        doc.Heading("Per-class F1"),
        _figure(sp.plot_per_class_heatmap(matrix, ids, classes), study, "per_class_f1",
                "Per-class F1 across configurations")] if ids else []
    if s["per_class_ap"]:
        ap = [[s["per_class_ap"][cid][k] for k in classes] for cid in ids]
        blocks += [doc.Heading("Per-class average precision"),
                   doc.Para("Multi-label studies have no confusion matrix; the average "
                            "precision of each class (threshold-free, mean over the cells where "
                            "the class occurs) shows which classes each configuration ranks "
                            "well."),
                   _figure(sp.plot_per_class_heatmap(ap, ids, classes, "Per-class AP (mean "
                                                     "over cells)", label="AP"),
                           study, "per_class_ap", "Per-class AP across configurations")]
    if study.segmentation:
        blocks += mask_blocks(s, study, _figure)
    if s["confusion"]:
        blocks.append(doc.Heading("Confusion matrices (summed over folds and seeds)"))
    for role, cid in (("baseline", s["baseline"]), ("best", s["best"])):
        if cid in s["confusion"] and not (role == "best" and cid == s["baseline"]):
            blocks.append(_figure(plot_confusion_matrix(s["confusion"][cid], classes,
                                                        title=f"{role}: {cid}"), study,
                                  f"confusion_{role}", f"Confusion matrix, {role}: {cid}"))
    rows = [[cid, _f(o["best"]), _f(o["final"]), _f(o["drop"]), _f(o["worst_drop"]),
             _f(o["gap"]), _f(o["max_gap"]), _f(o["best_epoch"], 1), _f(o["final_epoch"], 1),
             o["flag"] or "-"] for cid, o in s["overfitting"].items()]
    score, short = (("IoU", "IoU") if study.segmentation else ("R2", "R2") if study.regression
                    else ("macro F1", "F1"))
    gap = ("IoU" if study.segmentation else "R2" if study.regression else
           ("subset " if s["multilabel"] else "") + "accuracy")
    blocks += [
        doc.Heading("Training curves and overfitting"),
        _figure(sp.plot_curves_by_config({k: v for k, v in s["curves"].items() if v[0]},
                                         f"val {score}"),
                study, "training_curves", f"Mean validation {score} per epoch"),
        doc.Para(f"Per configuration, means over cells: validation {score} at the best and at "
                 f"the final epoch, drop = final - best, and the train - validation {gap} gap "
                 f"at the best epoch. Flagged: drop below -{st.DROP_WARN} or gap above "
                 f"{st.GAP_WARN}."),
        doc.Table(["configuration", f"best {short}", f"final {short}", "drop", "worst drop",
                   "gap", "max gap", "best epoch", "final epoch", "flag"], rows)]
    return blocks


def _importance_blocks(s: dict[str, Any], study: Study) -> list[doc.Block]:
    blocks: list[doc.Block] = [doc.Heading("Sensor contribution (permutation importance)")]
    if not s["importance"]:
        return [*blocks, doc.Para("Not computed for this study.")]
    metric = "R2" if study.regression else "accuracy"
    blocks.append(doc.Para(f"Drop of the validation {metric} when a modality's bands (jointly) "
                           "or one band are permuted across patches; mean over cells ± std "
                           "across cells."))
    for kind in ("modality", "band"):
        per = {cid: imp[kind] for cid, imp in s["importance"].items() if kind in imp}
        if not per:
            continue
        names = sorted({n for v in per.values() for n in v})
        rows = [[cid, *(f"{_f(v[n]['mean'])} ± {_f(v[n]['std'])}" if n in v else "-"
                        for n in names)] for cid, v in per.items()]
        blocks += [doc.Table(["configuration", *names], rows, caption=f"Per {kind}"),
                   _figure(sp.plot_importance(per, f"Permutation importance per {kind}"),
                           study, f"importance_{kind}", f"Permutation importance per {kind}")]
    return blocks


def _data_blocks(study: Study) -> list[doc.Block]:
    d, g = study.data, study.grid
    counts = d.get("class_counts") or {}
    splits = d.get("split_counts") or {}
    rows = [[k, counts.get(k, "?"), *[splits[s].get(k, 0) for s in splits]]
            for k in study.strata_names]
    bands = d.get("bands") or study.cells[0].get("bands") or []
    modalities = d.get("modalities") or {m.get("name"): m.get("bands") for m in
                                         study.config.get("modalities") or []}
    sensors = [f"`{m}`: {', '.join(map(str, b)) if isinstance(b, list) else b}"
               for m, b in modalities.items()]
    grid = d.get("grid") or {}
    note = ([doc.Para("Multi-label data: each count is the patches holding the class, so a "
                      "patch with several labels counts once under each of them.")]
            if study.multilabel else [])
    header = "patches holding it" if study.multilabel else "patches"
    first = "class"
    if study.regression:
        first = "stratum"
        note = [doc.Para(f"Regression of `{study.data.get('value_name') or 'value'}`: folds "
                         "are stratified by each patch's stratum (a range of values); the "
                         "metrics compare the values themselves.")]
    if study.segmentation:
        first, header = "stratum", "tiles"
        note = [doc.Para("Segmentation: folds are stratified by each tile's stratum (e.g. its "
                         "change level); the metrics are per pixel of the mask classes "
                         f"({', '.join(study.class_names)}).")]
    return [doc.Heading("Data"), *note, doc.Table([first, header, *splits], rows),
            doc.BulletList([f"patches: {d.get('n_patches', '?')}",
                            f"bands ({len(bands)}): " + ", ".join(f"`{b}`" for b in bands),
                            "grid: " + (", ".join(f"{k} {v}" for k, v in grid.items()) or "n/a"),
                            f"folds: {g.get('folds', '?')}, grouped by {_grouping(d, g)}, "
                            f"seeds: {g.get('seeds', '?')}, "
                            f"held-out test set: {d.get('test', g.get('test', '?'))}",
                            *_buffer_lines(g)]),
            *([doc.Para("Sensors:"), doc.BulletList(sensors)] if sensors else []),
            *data_figure_blocks(study.path, d, study.strata_names,
                                lambda fig, name, title: _figure(fig, study, name, title),
                                study.multilabel)]


def _grouping(data: dict[str, Any], grid: dict[str, Any]) -> str:
    """What the folds keep together: tiles cut from a stack are grouped in spatial blocks
    whatever ``ablation.group_by`` says (their ``polygon`` is the block), label points in
    their groups."""
    units = data.get("units")
    count = f" ({units} units)" if units else ""
    example = str(data.get("unit_example") or "")
    if example.startswith("block:"):
        return f"spatial block of whole tiles (`block:<col>_<row>`){count}"
    if example.startswith("point:") and grid.get("group_by") == "polygon":
        return ("label points, those whose patches share a pixel (or closer than "
                f"`extract.group_distance`) together (`point:<first id>`){count}")
    return f"`{grid.get('group_by', '?')}`{count}"


def _buffer_lines(grid: dict[str, Any]) -> list[str]:
    """The spatial buffer of the folds (``ablation.buffer``) and what it left out."""
    if not grid.get("buffer"):
        return []
    left = ", ".join(f"fold {k}: {n}" for k, n in sorted(
        (int(k), int(n)) for k, n in (grid.get("buffer_excluded") or {}).items()))
    return [f"spatial buffer: {grid['buffer']:g} CRS units between training and validation/test "
            f"patch centres; training patches left out per fold: {left or 'none'}"]


def _reproduce_blocks(study: Study) -> list[doc.Block]:
    return [doc.Heading("Reproduce"),
            doc.Para("The resolved study config (also in `study.json`); run the ablation "
                     "with it again to reproduce every cell."),
            doc.Code(yaml.safe_dump(study.config, sort_keys=False) or "{}", "yaml"),
            doc.Para("Ablation grid:"),
            doc.Code(yaml.safe_dump({k: v for k, v in study.grid.items() if k != "cells"},
                                    sort_keys=False) or "{}", "yaml")]


def write_study_report(
    study_dir: str | Path, metric: str | None = None, split: str = "val", alpha: float = 0.05,
    unit: st.Unit = "fold", baseline: str | None = None,
) -> Path:
    """Write ``stats.json``, ``report.md``, ``report.html`` and ``plots/*.png``.

    Args:
        study_dir: study directory (``study.json`` + ``cells/``).
        metric: main metric of the cell metrics dicts; default the study's own (IoU of a
            segmentation study, else macro F1).
        split: ``val`` (cross-validation folds) or ``test``.
        alpha: significance level after Holm correction.
        unit: ``fold`` (seeds averaged per fold) or ``cell``; see :mod:`geofuse.evaluation.stats`.
        baseline: overrides the study's baseline configuration.

    Returns:
        Path of report.md (report.html lies beside it).
    """
    study = load_study(study_dir)
    s = compute_study_stats(study, metric or study.primary_metric, split, alpha, unit, baseline)
    atomic_write_json(study.path / "stats.json", st.finite_or_none(s))
    blocks: list[doc.Block] = [
        doc.Heading(f"Study report: {study.name}", 1),
        doc.Para(f"{len(s['configs'])} configurations, {len(study.cells)} cells; baseline: "
                 f"**{s['baseline'] or 'none'}**; best: **{s['best']}**."),
        *transfer_alert(s["test_set"], study.config, study.multilabel),
        *_guard_blocks(s), *_results_blocks(s, study), *_significance_blocks(s),
        *learning_curve_blocks(s["learning_curve"], s["metric"],
                               lambda fig, name, title: _figure(fig, study, name, title)),
        *study_test_blocks(s["test_set"], s["per_class_f1_test"], study.class_names,
                           study.multilabel,
                           lambda fig, name, title: _figure(fig, study, name, title)),
        *map_blocks(study),
        *_detail_blocks(s, study), *calibration_blocks(s["calibration"]),
        *_importance_blocks(s, study), *_data_blocks(study),
        *_reproduce_blocks(study)]
    md_path = study.path / "report.md"
    atomic_write_text(md_path, doc.to_markdown(blocks))
    atomic_write_text(study.path / "report.html", doc.to_html(f"Study report: {study.name}",
                                                              blocks))
    return md_path
