"""Statistics of a cross-validated ablation study: summaries, paired tests, Holm, overfitting.

Unit of analysis. Every cell of a study is one (configuration, seed, fold) run. Folds differ in
their validation data; seeds on the same fold only differ in training noise and are evaluated on
the *same* patches, so they are not independent observations. By default (``unit="fold"``) the
seeds of a fold are averaged first and the fold means are the units: the confidence intervals and
paired tests then have ``n = folds`` and do not pretend that re-running a seed adds new
evaluation data (pseudo-replication, which shrinks standard errors). Pairs for a comparison are
matched on (seed, fold) *before* averaging, so a seed that is missing in one configuration is
left out on both sides. ``unit="cell"`` treats every (seed, fold) pair as a unit instead (larger
n, optimistic); whichever is chosen is used for every number, and recorded in the output.

Even fold means are not fully independent (training sets overlap), so p-values are mildly
optimistic (Nadeau & Bengio, 2003); with few folds, read the effect size and CI alongside them.
An exact two-sided Wilcoxon signed-rank test cannot go below ``2 / 2**n``: with fewer than six
units it can never reach alpha = 0.05, and the output says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

Unit = Literal["fold", "cell"]
Key = tuple[int, int]  # (seed, fold)

DROP_WARN = 0.05  # best -> final metric drop that the overfitting summary flags
GAP_WARN = 0.15  # train - validation accuracy gap that the overfitting summary flags


def _nan() -> float:
    return float("nan")


def descriptive(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, std (ddof=1), t-based confidence interval and coefficient of variation.

    Args:
        values: one score per unit.
        confidence: level of the two-sided interval.

    Returns:
        ``n``, ``mean``, ``std``, ``ci_low``, ``ci_high``, ``cv`` (std / mean) and ``note``;
        statistics that need two units are NaN when there is one.
    """
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    out: dict[str, Any] = {"n": n, "mean": _nan(), "std": _nan(), "ci_low": _nan(),
                           "ci_high": _nan(), "cv": _nan(), "note": ""}
    if n == 0:
        out["note"] = "no values"
        return out
    mean = float(x.mean())
    out["mean"] = mean
    if n < 2:
        out["note"] = "one unit: no spread or confidence interval"
        return out
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    out.update(std=std, ci_low=mean - half, ci_high=mean + half,
               cv=std / abs(mean) if mean != 0 else _nan())
    return out


def unit_values(scores: Mapping[Key, float], unit: Unit = "fold") -> dict[Any, float]:
    """Scores per unit: the mean over seeds per fold (``fold``) or every (seed, fold) (``cell``)."""
    if unit == "cell":
        return dict(sorted(scores.items()))
    if unit != "fold":
        raise ValueError(f"unit must be 'fold' or 'cell', got {unit!r}")
    by_fold: dict[int, list[float]] = {}
    for (_, fold), value in sorted(scores.items()):
        by_fold.setdefault(fold, []).append(value)
    return {fold: float(np.mean(v)) for fold, v in by_fold.items()}


def paired_test(
    candidate: Mapping[Key, float], baseline: Mapping[Key, float], unit: Unit = "fold",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Paired comparison of two configurations on the same (seed, fold) cells.

    Differences are ``candidate - baseline``. Degenerate inputs never raise: with fewer than
    two pairs the p-values are NaN, with all differences zero they are 1, and with constant
    non-zero differences the t-test (zero variance) is NaN; ``note`` says which.

    Returns:
        ``n`` (units), ``diff`` (mean difference), ``ci_low``/``ci_high`` (t interval of the
        mean difference), ``t``, ``p_t`` (paired t-test), ``w``, ``p_wilcoxon`` (signed-rank,
        scipy defaults: zero differences dropped), ``d`` (mean diff / sd of diffs) and ``note``.
    """
    keys = sorted(set(candidate) & set(baseline))
    a = unit_values({k: candidate[k] for k in keys}, unit)
    b = unit_values({k: baseline[k] for k in keys}, unit)
    diffs = np.array([a[u] - b[u] for u in a], dtype=np.float64)
    desc = descriptive(diffs, confidence)
    out: dict[str, Any] = {"n": len(diffs), "diff": desc["mean"], "ci_low": desc["ci_low"],
                           "ci_high": desc["ci_high"], "t": _nan(), "p_t": _nan(),
                           "w": _nan(), "p_wilcoxon": _nan(), "d": _nan(), "note": ""}
    notes = []
    if len(diffs) < 2:
        out["note"] = f"{len(diffs)} matched unit(s): no test possible"
        return out
    if np.all(diffs == 0):
        out.update(t=0.0, p_t=1.0, w=0.0, p_wilcoxon=1.0, d=0.0,
                   note="all differences are zero: p = 1")
        return out
    sd = float(diffs.std(ddof=1))
    if sd == 0:
        notes.append("constant non-zero differences: t-test and d undefined")
    else:
        res = sps.ttest_rel(list(a.values()), list(b.values()))
        out.update(t=float(res.statistic), p_t=float(res.pvalue), d=float(diffs.mean() / sd))
    wil = sps.wilcoxon(diffs)
    out.update(w=float(wil.statistic), p_wilcoxon=float(wil.pvalue))
    nonzero = int(np.count_nonzero(diffs))
    if 2.0 / 2**nonzero > 0.05:
        notes.append(f"Wilcoxon with {nonzero} non-zero differences cannot reach p < 0.05")
    out["note"] = "; ".join(notes)
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in input order.

    NaN p-values (comparisons that could not be tested) stay NaN and do not count towards the
    number of comparisons m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(len(p), np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def compare_to_baseline(
    scores: Mapping[str, Mapping[Key, float]], baseline: str, alpha: float = 0.05,
    unit: Unit = "fold", confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Paired tests of every configuration against ``baseline``, Holm-corrected.

    Holm runs over the t-test p-values (``p_holm``, the primary decision) and, separately,
    over the Wilcoxon p-values (``p_wilcoxon_holm``). ``significant`` is ``p_holm < alpha``.

    Raises:
        KeyError: ``baseline`` is not among the configurations.
    """
    if baseline not in scores:
        raise KeyError(f"baseline {baseline!r} not among configurations {sorted(scores)}")
    rows = [{"config_id": cid, **paired_test(s, scores[baseline], unit, confidence)}
            for cid, s in scores.items() if cid != baseline]
    for column, target in (("p_t", "p_holm"), ("p_wilcoxon", "p_wilcoxon_holm")):
        for row, adj in zip(rows, holm([r[column] for r in rows]), strict=True):
            row[target] = adj
    for row in rows:
        row["significant"] = bool(np.isfinite(row["p_holm"]) and row["p_holm"] < alpha)
    return rows


def summarize_configs(
    scores: Mapping[str, Mapping[Key, float]], unit: Unit = "fold", confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """:func:`descriptive` per configuration over its units, plus ``n_cells`` and ``units``."""
    out = {}
    for cid, cells in scores.items():
        units = unit_values(cells, unit)
        out[cid] = {**descriptive(list(units.values()), confidence), "n_cells": len(cells),
                    "units": {str(k): v for k, v in units.items()}}
    return out


def _mean_or_nan(values: Iterable[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else _nan()


def overfitting_summary(cells: Sequence[Mapping[str, Any]], score: str = "macro F1",
                        gap: str = "train accuracy") -> dict[str, Any]:
    """Best vs final epoch and train-validation gap over the cells of one configuration.

    Args:
        cells: cell records with ``best_val_f1_macro``, ``final_val_f1_macro``,
            ``train_val_gap``, ``best_epoch`` and ``final_epoch`` (any may be missing).
        score: name of the selection score in the flag (IoU in segmentation studies).
        gap: name of the training figure compared with validation in the flag.

    Returns:
        Means of best/final F1, ``drop`` (final - best; negative = worse at the end),
        ``worst_drop``, mean and max ``gap``, mean epochs and a ``flag`` sentence (or "").
    """
    drops = [c["final_val_f1_macro"] - c["best_val_f1_macro"] for c in cells
             if c.get("final_val_f1_macro") is not None and c.get("best_val_f1_macro") is not None]
    gaps = [c["train_val_gap"] for c in cells if c.get("train_val_gap") is not None]
    out = {
        "n": len(cells),
        "best": _mean_or_nan(c.get("best_val_f1_macro") for c in cells),
        "final": _mean_or_nan(c.get("final_val_f1_macro") for c in cells),
        "drop": _mean_or_nan(drops),
        "worst_drop": float(min(drops)) if drops else _nan(),
        "gap": _mean_or_nan(gaps),
        "max_gap": float(max(gaps)) if gaps else _nan(),
        "best_epoch": _mean_or_nan(c.get("best_epoch") for c in cells),
        "final_epoch": _mean_or_nan(c.get("final_epoch") for c in cells),
    }
    flags = []
    if drops and out["drop"] < -DROP_WARN:
        flags.append(f"{score} falls {-out['drop']:.3f} from the best to the final epoch")
    if gaps and out["gap"] > GAP_WARN:
        flags.append(f"{gap} exceeds validation by {out['gap']:.3f}")
    out["flag"] = "; ".join(flags)
    return out


def mean_curve(
    histories: Sequence[Sequence[Mapping[str, Any]] | None], key: str,
) -> tuple[list[int], list[float]]:
    """Mean of ``key`` per epoch over several histories (each run counts where it has a value).

    Runs stopped early simply stop contributing; the later epochs average fewer runs.
    """
    by_epoch: dict[int, list[float]] = {}
    for history in histories:
        for row in history or []:
            v = row.get(key)
            if v is not None and row.get("epoch") is not None and math.isfinite(v):
                by_epoch.setdefault(int(row["epoch"]), []).append(float(v))
    epochs = sorted(by_epoch)
    return epochs, [float(np.mean(by_epoch[e])) for e in epochs]


def finite_or_none(obj: Any) -> Any:
    """Replace NaN/inf floats by None recursively (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj
