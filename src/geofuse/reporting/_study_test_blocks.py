"""Report blocks of a study's test set (figures from :mod:`._study_test`): the summary's
poor-transfer alert and the test-set section (tables named after the test set, floors,
paired comparisons, per-class F1 and confusion matrices)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from matplotlib.figure import Figure as MplFigure

from geofuse.reporting import html as doc
from geofuse.reporting import study_plots as sp
from geofuse.reporting.plots import plot_confusion_matrix

#: (figure, file stem, title) -> a report figure saved under the study's plots/.
FigureFn = Callable[[MplFigure, str, str], doc.Figure]


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) \
        else f"{x:.{digits}f}"


def _p(x: Any) -> str:
    return "n/a" if x is None or not math.isfinite(x) else "<0.001" if x < 0.001 else f"{x:.3f}"


def _ci(v: Mapping[str, float] | None) -> str:
    """``value [low, high]`` (the value alone without an interval)."""
    if v is None:
        return "-"
    if not math.isfinite(v.get("ci_low", math.nan)):
        return _f(v["value"])
    return f"{_f(v['value'])} [{_f(v['ci_low'])}, {_f(v['ci_high'])}]"


def _accuracy(t: Mapping[str, Any], multilabel: bool) -> str:
    return "subset accuracy" if multilabel else "OA"


def _causes(t: Mapping[str, Any], train: Mapping[str, Any]) -> str:
    groups = t.get("train_groups")
    augment = ("no augmentation (`train.augment: false`)" if train.get("augment") is False
               else "augmentation limited to flips and rotations" + (
                   "" if train.get("jitter") else " (no radiometric jitter, `train.jitter`)"))
    monitor = train.get("monitor", "val_loss")
    selection = ("" if train.get("checkpoint") == "last" else
                 f"; model selection on the validation fold (`train.monitor: {monitor}`), "
                 "which lies in the training area")
    balanced = ("; a class-balanced loss (`train.loss.class_weights: balanced`), which trades "
                "overall accuracy for the rare classes"
                if (train.get("loss") or {}).get("class_weights") == "balanced" else "")
    return ("Likely causes: overfitting to the training area ("
            + (f"{groups} groups to learn from" if groups else "few training groups")
            + f"); {augment}{selection}{balanced}. Remedies to try: more and more "
            "varied training groups, `train.augment` and `train.jitter`, `train.tta`, the fold "
            "ensemble, a smaller model or stronger regularisation"
            + (", `train.checkpoint: last` with a cosine schedule" if selection else "")
            + (", unweighted loss" if balanced else "") + ".")


def _flag_item(flag: Mapping[str, Any], row: Mapping[str, Any], acc: str) -> str:
    parts = [f"{acc if b['metric'] == 'accuracy' else 'macro F1'} {_f(b['value'])} below the "
             f"{b['floor']} {_f(b['floor_value'])} (gap {b['gap']:+.3f})" for b in flag["below"]]
    ens = row["ensemble"]
    extra = (f"; fold ensemble {acc} {_f(ens['accuracy']['value'])}, macro F1 "
             f"{_f(ens['f1_macro']['value'])}" if ens else "")
    return (f"**{flag['config_id']}**: " + "; ".join(parts)
            + f" (mean of {row['n_models']} fold models{extra}; cross-validation macro F1 "
            f"{_f(row['val']['f1_macro'])})")


def effective_train(config: Mapping[str, Any], config_id: str) -> dict[str, Any]:
    """The ``train`` settings a configuration ran with: the study's, updated by the
    ``ablation.models`` entry whose label (or name) ends its config id."""
    train = dict(config.get("train") or {})
    label = config_id.split("/", 1)[-1]
    for entry in (config.get("ablation") or {}).get("models") or []:
        if isinstance(entry, Mapping) and (entry.get("label") or entry.get("name")) == label:
            train.update(entry.get("train") or {})
    return train


def _all_causes(t: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """One likely-causes sentence, or one per flagged configuration when their training
    settings differ (``ablation.models[i].train`` overrides)."""
    ids = [f["config_id"] for f in t["flags"]]
    causes = {cid: _causes(t, effective_train(config, cid)) for cid in ids}
    if len(set(causes.values())) == 1:
        return [next(iter(causes.values()))]
    return [f"**{cid}**: {text}" for cid, text in causes.items()]


def transfer_alert(t: Mapping[str, Any] | None, config: Mapping[str, Any],
                   multilabel: bool) -> list[doc.Block]:
    """The summary's POOR TRANSFER alert (or a one-line pass) for the test set; ``config`` is
    the study's resolved config (its train section and per-model overrides)."""
    if t is None:
        return []
    acc = _accuracy(t, multilabel)
    floors = "the majority-class floor" + (" and the random forest" if any(
        t["forest_for"].values()) else "")
    if not t["flags"]:
        return [doc.Alert("ok", f"Test set {t['name']}: every configuration is at or above "
                                f"{floors} on {acc} and macro F1.")]
    items = [_flag_item(f, t["configs"][f["config_id"]], acc) for f in t["flags"]]
    below = floors.replace(" and ", " or ")
    return [doc.Alert("caution", f"POOR TRANSFER on the test set {t['name']}: "
                      f"{len(items)} configuration(s) score below {below} on data they never "
                      "saw. Their cross-validation figures overstate what they give on new "
                      "ground (this is not a collapse: their own-area metrics may be normal).",
                      [*items, *_all_causes(t, config)])]


def _results_table(t: Mapping[str, Any], multilabel: bool) -> doc.Table:
    acc, name = _accuracy(t, multilabel), t["name"]
    flagged = {f["config_id"] for f in t["flags"]}
    header = ["configuration", f"CV {acc}", "CV macro F1", f"{acc}, fold models",
              "macro F1, fold models", f"{acc}, fold ensemble", "macro F1, fold ensemble"]
    header += ["mAP, fold models", "mAP, fold ensemble"] if multilabel else []
    rows = []
    for cid, r in t["configs"].items():
        fm, ens = r["fold_models"], r["ensemble"] or {}
        row = [cid + (" (baseline)" if cid == t["baseline"] else ""), _f(r["val"]["accuracy"]),
               _f(r["val"]["f1_macro"]), _ci(fm["accuracy"]), _ci(fm["f1_macro"]),
               _ci(ens.get("accuracy")), _ci(ens.get("f1_macro"))]
        row += [_f(r["map"]["fold_models"]), _f(r["map"]["ensemble"])] if multilabel else []
        rows.append([*row, "**POOR TRANSFER**" if cid in flagged else "-"])
    return doc.Table([*header, "flag"], rows, caption=f"Test set: {name} (95% CI over test "
                     "groups); CV: mean over the validation folds")


def _floor_table(t: Mapping[str, Any], multilabel: bool) -> doc.Table:
    acc, fl = _accuracy(t, multilabel), t["floors"]
    what = "most frequent label set" if multilabel else "majority class"
    rows = [[f"{what} of the training folds ({fl['majority_label'] or 'n/a'})",
             _ci(fl["majority"]["accuracy"]), _ci(fl["majority"]["f1_macro"])]]
    for forest in dict.fromkeys(f for f in t["forest_for"].values() if f):
        r = t["configs"][forest]
        rows.append([f"random forest {forest}, fold models", _ci(r["fold_models"]["accuracy"]),
                     _ci(r["fold_models"]["f1_macro"])])
        if r["ensemble"]:
            rows.append([f"random forest {forest}, fold ensemble",
                         _ci(r["ensemble"]["accuracy"]), _ci(r["ensemble"]["f1_macro"])])
    return doc.Table(["floor", acc, "macro F1"], rows, caption=f"Floors on {t['name']}")


def _comparison_blocks(t: Mapping[str, Any], multilabel: bool) -> list[doc.Block]:
    if not t["comparisons"]:
        why = ("no baseline configuration" if not t["baseline"] else
               "the cells saved no test predictions" if not t["has_predictions"] else
               "the baseline has no test predictions")
        return [doc.Para(f"No paired comparison on {t['name']}: {why}.")]
    acc = _accuracy(t, multilabel)
    rows = _comparison_rows(t["comparisons"], acc)
    return [doc.Para(
        f"Paired bootstrap over the groups of {t['name']} ({t['resamples']} resamples, the "
        "same for every configuration): difference configuration - baseline "
        f"(**{t['baseline']}**), of the fold ensembles when both have them, else of the "
        "fold-model means; two-sided p-values, Holm-corrected across configurations per "
        f"metric; significant: p_holm < {t['alpha']}."),
        doc.Table(["configuration", "compared", "diff macro F1 [95% CI]", "p", "p_holm",
                   f"diff {acc} [95% CI]", "p", "p_holm", "significant"], rows,
                  caption=f"Paired comparison on {t['name']} against {t['baseline']}")]


def _comparison_rows(comparisons: list[Mapping[str, Any]], acc: str) -> list[list[Any]]:
    rows = []
    for c in comparisons:
        row = [c["config_id"], c["compared"]]
        for m in ("f1_macro", "accuracy"):
            d = c[m]
            row += [f"{d['diff']:+.3f} [{_f(d['ci_low'])}, {_f(d['ci_high'])}]", _p(d["p"]),
                    _p(d["p_holm"])]
        sig = [f"**{lbl}** ({'better' if c[m]['diff'] > 0 else 'worse'})"
               for m, lbl in (("f1_macro", "macro F1"), ("accuracy", acc)) if c[m]["significant"]]
        rows.append([*row, ", ".join(sig) or "no"])
    return rows


def oof_blocks(o: Mapping[str, Any] | None, multilabel: bool) -> list[doc.Block]:
    """The pooled out-of-fold section (:mod:`geofuse.reporting._study_oof`); none without
    saved validation predictions."""
    if not o:
        return []
    acc = "subset accuracy" if multilabel else "OA"
    selected = [cid for cid, r in o["configs"].items() if r["selected"]]
    rows = [[cid + (" (baseline)" if cid == o["baseline"] else ""), r["n_seeds"],
             _ci(r["accuracy"]), _ci(r["f1_macro"]), "yes" if r["selected"] else "no"]
            for cid, r in o["configs"].items()]
    blocks: list[doc.Block] = [
        doc.Heading("Out-of-fold comparison", 3),
        doc.Para(f"The validation predictions of all folds pooled: {o['n_patches']} patches in "
                 f"{o['n_groups']} groups, each predicted once per seed by a fold model that "
                 "never trained on it (mean over seeds); 95% percentile bootstrap intervals "
                 f"over the groups ({o['resamples']} resamples, seed {o['seed']}), far tighter "
                 "than a t interval over the fold means."
                 + (f" Checkpoint picked on these validation folds (flatters them a little; "
                    f"`train.checkpoint: last` avoids it): {', '.join(selected)}."
                    if selected else " Nothing was selected on the validation folds.")),
        doc.Table(["configuration", "seeds", f"{acc} [95% CI]", "macro F1 [95% CI]",
                   "checkpoint selected on validation"], rows,
                  caption="Pooled out-of-fold predictions (95% CI over groups)")]
    if o["comparisons"]:
        blocks += [doc.Para(
            f"Paired bootstrap over the same groups: difference configuration - baseline "
            f"(**{o['baseline']}**); two-sided p-values, Holm-corrected across configurations "
            f"per metric; significant: p_holm < {o['alpha']}."),
            doc.Table(["configuration", "compared", "diff macro F1 [95% CI]", "p", "p_holm",
                       f"diff {acc} [95% CI]", "p", "p_holm", "significant"],
                      _comparison_rows(o["comparisons"], acc),
                      caption=f"Out-of-fold paired comparison against {o['baseline']}")]
    return blocks


def study_test_blocks(t: Mapping[str, Any] | None, per_class_f1: Mapping[str, Mapping[str, float]],
                class_names: list[str], multilabel: bool, figure: FigureFn) -> list[doc.Block]:
    """The test-set section; ``per_class_f1`` is config -> class -> mean test F1."""
    if t is None:
        return []
    name = t["name"]
    groups = f" in {t['n_groups']} groups" if t["n_groups"] else ""
    ci = (f"95% percentile bootstrap intervals over the test groups ({t['resamples']} "
          f"resamples, seed {t['seed']})" if t["resamples"] else "no intervals")
    if not t["has_predictions"]:
        ci += (" (configurations have no intervals and no ensembles: the cells saved no "
               "test predictions, being evaluated before `test_predictions.npz` existed)")
    blocks: list[doc.Block] = [
        doc.Heading(f"Test set: {name}"),
        doc.Para(f"{'External test set' if t['external'] else 'Held-out test set'} **{name}**: "
                 f"{t['n_patches']} patches{groups}, never used for training or model selection. "
                 "Fold models: the mean over every fold model (seeds and folds) of a "
                 "configuration; fold ensemble: the class probabilities of the k fold models of "
                 f"a seed averaged (mean over seeds). {ci[0].upper() + ci[1:]}. The majority-class "
                 "floor always predicts the class most frequent in the training folds (the "
                 f"test set's own majority covers {_f(t['floors']['test_majority_rate'])} of "
                 "its patches)."),
        _results_table(t, multilabel), _floor_table(t, multilabel),
        doc.Heading(f"Paired comparison on {name}", 3), *_comparison_blocks(t, multilabel)]
    ids = [cid for cid in t["configs"] if cid in per_class_f1]
    if ids:
        matrix = [[per_class_f1[cid].get(k, math.nan) for k in class_names] for cid in ids]
        blocks += [doc.Heading(f"Per-class F1 on {name}", 3), figure(
            sp.plot_per_class_heatmap(matrix, ids, class_names,
                                      f"Per-class F1 on {name} (mean over fold models)"),
            "per_class_f1_test", f"Per-class F1 on {name}")]
    blocks += _confusion_blocks(t, class_names, figure)
    return blocks


def _confusion_blocks(t: Mapping[str, Any], class_names: list[str], figure: FigureFn
                      ) -> list[doc.Block]:
    blocks: list[doc.Block] = []
    for role, cid in (("baseline", t["baseline"]), ("best", t["best"])):
        conf = (t["configs"].get(cid) or {}).get("confusion") if cid else None
        if conf is None or (role == "best" and cid == t["baseline"]):
            continue
        matrix, source = conf
        title = f"{role}: {cid} on {t['name']} ({source})"
        blocks.append(figure(plot_confusion_matrix(matrix, class_names, title=title),
                             f"confusion_test_{role}", f"Confusion matrix {title}"))
    if blocks:
        blocks.insert(0, doc.Heading(f"Confusion matrices on {t['name']}", 3))
    return blocks
