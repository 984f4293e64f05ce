"""The learning curve of a study (``ablation.label_fractions``): its numbers, figure and blocks.

A configuration trained on a share of the labels is named ``<sensors>/<model>@<share>``. The
curve of each ``<sensors>/<model>`` is its mean score (95% t interval over the units) against
the mean number of training patches; at every share each configuration is tested, paired over
the same folds and seeds, against the baseline's sensors and model at that share (Holm within
the share), which answers "does elevation help more when labels are few?".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from geofuse.evaluation import stats as st
from geofuse.reporting import html as doc

FigureFn = Callable[[Figure, str, str], doc.Figure]


def _share(cell: Mapping[str, Any]) -> float | None:
    value = (cell.get("overrides") or {}).get("train.label_fraction")
    return None if value is None else float(value)


def main_share_configs(cells: list[dict[str, Any]], baseline: str | None) -> set[str] | None:
    """The configurations trained on the baseline's label share (without a baseline, the
    largest share): the ones the main tables compare and the best is chosen among, as a
    model trained on fewer labels is no candidate for the study's map; None for a study
    without label shares."""
    share_of = {c["config_id"]: _share(c) for c in cells}
    shares = {v for v in share_of.values() if v is not None}
    if not shares:
        return None
    main = share_of.get(baseline) if baseline in share_of else max(shares)
    return {cid for cid, v in share_of.items() if v == main}


def learning_curve_stats(
    cells: list[dict[str, Any]], scores: Mapping[str, Mapping[st.Key, float]],
    baseline: str | None, alpha: float, unit: st.Unit,
) -> dict[str, Any] | None:
    """Curves and per-share comparisons of a study whose cells trained on at least two label
    shares (None otherwise). ``scores`` holds the comparable configurations only (the same
    finished folds as the baseline)."""
    share_of = {c["config_id"]: _share(c) for c in cells}
    if len({v for v in share_of.values() if v is not None}) < 2:
        return None
    summary = st.summarize_configs(scores, unit)
    curves: dict[str, list[dict[str, Any]]] = {}
    for cid, d in summary.items():
        share = share_of.get(cid)
        if share is None:
            continue
        n_train = [c["n_train"] for c in cells if c["config_id"] == cid and c.get("n_train")]
        curves.setdefault(cid.rsplit("@", 1)[0], []).append({
            "share": share, "config_id": cid, "mean": d["mean"], "ci_low": d["ci_low"],
            "ci_high": d["ci_high"], "n": d["n"],
            "n_train": float(np.mean(n_train)) if n_train else None})
    for points in curves.values():
        points.sort(key=lambda p: p["share"])
    reference = baseline.rsplit("@", 1)[0] if baseline else None
    comparisons: dict[str, list[dict[str, Any]]] = {}
    for share in sorted({p["share"] for pts in curves.values() for p in pts}):
        at = {p["config_id"]: scores[p["config_id"]] for pts in curves.values() for p in pts
              if p["share"] == share}
        ref = next((p["config_id"] for p in curves.get(reference or "", [])
                    if p["share"] == share), None)
        if ref is not None and len(at) > 1:
            comparisons[f"{share:g}"] = st.compare_to_baseline(at, ref, alpha, unit)
    return {"curves": curves, "reference": reference, "comparisons": comparisons}


def plot_learning_curves(curves: Mapping[str, list[dict[str, Any]]], metric: str) -> Figure:
    """Mean metric against training patches (or the share), one line per configuration,
    with its 95% interval as error bars (the lines nudged apart so that the bars do not
    hide each other)."""
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    by_patches = all(p["n_train"] for pts in curves.values() for p in pts)
    for i, (name, pts) in enumerate(curves.items()):
        nudge = 1 + 0.025 * (i - (len(curves) - 1) / 2)
        x = np.array([p["n_train"] if by_patches else p["share"] for p in pts], dtype=float)
        y = np.array([p["mean"] for p in pts], dtype=float)
        lo = np.array([p["ci_low"] for p in pts], dtype=float)
        hi = np.array([p["ci_high"] for p in pts], dtype=float)
        err = np.nan_to_num(np.vstack([y - lo, hi - y]), nan=0.0)
        ax.errorbar(x * nudge, y, yerr=err, marker="o", capsize=3, elinewidth=1, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training patches (mean over folds)" if by_patches else "share of labels")
    ax.set_ylabel(f"mean {metric}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _f(x: Any) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def learning_curve_blocks(lc: dict[str, Any] | None, metric: str, figure: FigureFn
                          ) -> list[doc.Block]:
    """The report's learning-curve section (nothing for a study without label shares)."""
    if not lc:
        return []
    curves = lc["curves"]
    shares = sorted({p["share"] for pts in curves.values() for p in pts})
    rows = [[name, *[next((f"{_f(p['mean'])} [{_f(p['ci_low'])}, {_f(p['ci_high'])}]"
                           for p in pts if p["share"] == s), "") for s in shares]]
            for name, pts in curves.items()]
    blocks: list[doc.Block] = [
        doc.Heading("Learning curve"),
        doc.Para("Each configuration trained on nested shares of every fold's training groups "
                 "(every class kept), judged on the same validation patches: where a curve "
                 "still rises, more labels would pay; where it is flat, they would not."),
        figure(plot_learning_curves(curves, metric), "learning_curve",
               f"Learning curve: mean {metric} with 95% CI"),
        doc.Table(["configuration", *[f"{100 * s:g}% of the labels" for s in shares]], rows)]
    comp = [[share_key, c["config_id"], _f(c["diff"]), f"[{_f(c['ci_low'])}, "
             f"{_f(c['ci_high'])}]", "n/a" if not np.isfinite(c["p_holm"]) else
             f"{c['p_holm']:.3f}", "yes" if c["significant"] else "no"]
            for share_key, rows_ in lc["comparisons"].items() for c in rows_]
    if comp:
        blocks += [doc.Para(f"At every share, each configuration against **{lc['reference']}** "
                            "trained on the same share (paired over folds and seeds, Holm "
                            "within the share):"),
                   doc.Table(["share", "configuration", f"difference in {metric}", "95% CI",
                              "p (Holm)", "significant"], comp)]
    return blocks
