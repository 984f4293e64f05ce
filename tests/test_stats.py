"""Study statistics checked against scipy.stats and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from geofuse.evaluation.stats import (
    compare_to_baseline,
    descriptive,
    finite_or_none,
    holm,
    mean_curve,
    overfitting_summary,
    paired_test,
    summarize_configs,
    unit_values,
)

SEEDS, FOLDS = (0, 1, 2), (0, 1, 2, 3, 4, 5)


def _cells(base: float, effect: float, noise: float, seed: int) -> dict[tuple[int, int], float]:
    rng = np.random.default_rng(seed)
    fold_level = {f: 0.05 * f for f in FOLDS}  # folds differ in difficulty, shared by configs
    return {(s, f): base + effect + fold_level[f] + noise * rng.standard_normal()
            for s in SEEDS for f in FOLDS}


def test_descriptive_matches_scipy_t_interval() -> None:
    x = [0.70, 0.80, 0.75, 0.90]
    d = descriptive(x)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.7875)
    assert d["std"] == pytest.approx(np.std(x, ddof=1))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((lo, hi))
    assert d["cv"] == pytest.approx(np.std(x, ddof=1) / 0.7875)


@pytest.mark.parametrize("values", [[], [0.5]])
def test_descriptive_degenerate_has_nan_and_note(values: list[float]) -> None:
    d = descriptive(values)
    assert math.isnan(d["std"]) and math.isnan(d["ci_low"]) and d["note"]
    assert d["n"] == len(values)
    assert d["mean"] == 0.5 if values else math.isnan(d["mean"])


def test_unit_values_average_seeds_within_fold() -> None:
    scores = {(0, 0): 0.6, (1, 0): 0.8, (0, 1): 0.5, (1, 1): 0.7}
    assert unit_values(scores, "fold") == pytest.approx({0: 0.7, 1: 0.6})
    assert unit_values(scores, "cell") == scores
    with pytest.raises(ValueError, match="unit"):
        unit_values(scores, "seed")  # type: ignore[arg-type]


def test_paired_test_on_fold_means_matches_scipy() -> None:
    cand, base = _cells(0.6, 0.04, 0.03, 1), _cells(0.6, 0.0, 0.03, 2)
    a = [np.mean([cand[(s, f)] for s in SEEDS]) for f in FOLDS]
    b = [np.mean([base[(s, f)] for s in SEEDS]) for f in FOLDS]
    diffs = np.subtract(a, b)
    res = paired_test(cand, base, unit="fold")
    assert res["n"] == len(FOLDS)
    assert res["p_t"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert res["t"] == pytest.approx(sps.ttest_rel(a, b).statistic)
    assert res["p_wilcoxon"] == pytest.approx(sps.wilcoxon(diffs).pvalue)
    assert res["d"] == pytest.approx(diffs.mean() / diffs.std(ddof=1))
    lo, hi = sps.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=sps.sem(diffs))
    assert (res["diff"], res["ci_low"], res["ci_high"]) == pytest.approx((diffs.mean(), lo, hi))


def test_paired_test_cell_unit_and_matching_on_seed_fold() -> None:
    cand, base = _cells(0.6, 0.05, 0.02, 3), _cells(0.6, 0.0, 0.02, 4)
    del cand[(2, 5)]  # missing in the candidate: dropped on both sides
    base[(9, 9)] = 0.1  # only in the baseline: ignored
    keys = sorted(set(cand) & set(base))
    a, b = [cand[k] for k in keys], [base[k] for k in keys]
    res = paired_test(cand, base, unit="cell")
    assert res["n"] == len(SEEDS) * len(FOLDS) - 1
    assert res["p_t"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert res["p_wilcoxon"] == pytest.approx(sps.wilcoxon(np.subtract(a, b)).pvalue)
    # fold 5 keeps seeds 0 and 1 only, on both sides
    fold5 = paired_test(cand, base, unit="fold")
    a5 = np.mean([cand[(0, 5)], cand[(1, 5)]]) - np.mean([base[(0, 5)], base[(1, 5)]])
    assert fold5["n"] == len(FOLDS)
    assert fold5["diff"] == pytest.approx(np.mean(
        [np.mean([cand[(s, f)] - base[(s, f)] for s in SEEDS]) for f in FOLDS[:-1]] + [a5]))


def test_paired_test_degenerate_inputs_do_not_crash() -> None:
    same = {(0, f): 0.5 + 0.1 * f for f in range(4)}
    zero = paired_test(same, dict(same))
    assert zero["p_t"] == 1.0 and zero["p_wilcoxon"] == 1.0 and zero["d"] == 0.0
    assert "zero" in zero["note"]
    one = paired_test({(0, 0): 0.7}, {(0, 0): 0.5})
    assert one["n"] == 1 and math.isnan(one["p_t"]) and math.isnan(one["p_wilcoxon"])
    assert one["diff"] == pytest.approx(0.2) and "no test" in one["note"]
    shifted = paired_test({k: v + 0.1 for k, v in same.items()}, same)
    assert math.isnan(shifted["p_t"]) and math.isnan(shifted["d"])
    assert shifted["p_wilcoxon"] == pytest.approx(sps.wilcoxon([0.1] * 4).pvalue)
    assert "constant" in shifted["note"] and "cannot reach" in shifted["note"]
    assert paired_test({}, {})["n"] == 0


def test_holm_matches_hand_computation() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])  # 0.6 -> capped by monotonicity
    assert holm([0.7, 0.8]) == pytest.approx([1.0, 1.0])  # 1.4 capped at 1
    out = holm([0.01, float("nan"), 0.04])  # NaN: not tested, m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([]) == []


def test_compare_to_baseline_applies_holm_and_alpha() -> None:
    scores = {"base": _cells(0.6, 0.0, 0.01, 5), "better": _cells(0.6, 0.08, 0.01, 6),
              "same": _cells(0.6, 0.0, 0.01, 7), "lonely": {(0, 0): 0.9}}
    rows = {r["config_id"]: r for r in compare_to_baseline(scores, "base", alpha=0.05)}
    assert set(rows) == {"better", "same", "lonely"}
    p = [rows["better"]["p_t"], rows["same"]["p_t"]]
    assert [rows["better"]["p_holm"], rows["same"]["p_holm"]] == pytest.approx(holm(p))
    assert rows["better"]["significant"] and rows["better"]["d"] > 2
    assert not rows["same"]["significant"]
    assert math.isnan(rows["lonely"]["p_holm"]) and not rows["lonely"]["significant"]
    with pytest.raises(KeyError, match="nope"):
        compare_to_baseline(scores, "nope")


def test_summarize_configs_reports_units_and_cells() -> None:
    out = summarize_configs({"a": {(0, 0): 0.5, (1, 0): 0.7, (0, 1): 0.9, (1, 1): 0.9}})
    assert out["a"]["n"] == 2 and out["a"]["n_cells"] == 4
    assert out["a"]["units"] == pytest.approx({"0": 0.6, "1": 0.9})
    assert out["a"]["mean"] == pytest.approx(0.75)


def test_overfitting_summary_hand_numbers_and_missing_keys() -> None:
    cells = [{"best_val_f1_macro": 0.8, "final_val_f1_macro": 0.6, "train_val_gap": 0.3,
              "best_epoch": 4, "final_epoch": 10},
             {"best_val_f1_macro": 0.7, "final_val_f1_macro": 0.7, "train_val_gap": 0.1,
              "best_epoch": 8, "final_epoch": 10},
             {"best_val_f1_macro": None}]
    o = overfitting_summary(cells)
    assert o["best"] == pytest.approx(0.75) and o["final"] == pytest.approx(0.65)
    assert o["drop"] == pytest.approx(-0.1) and o["worst_drop"] == pytest.approx(-0.2)
    assert o["gap"] == pytest.approx(0.2) and o["max_gap"] == pytest.approx(0.3)
    assert o["best_epoch"] == pytest.approx(6.0)
    assert "falls 0.100" in o["flag"] and "exceeds" in o["flag"]
    empty = overfitting_summary([{}])
    assert math.isnan(empty["drop"]) and empty["flag"] == ""


def test_finite_or_none_makes_strict_json() -> None:
    assert finite_or_none({"a": [1.0, float("nan")], "b": (float("inf"), "x", 2)}) == \
        {"a": [1.0, None], "b": [None, "x", 2]}


def test_mean_curve_averages_runs_per_epoch() -> None:
    a = [{"epoch": 1, "f": 0.2}, {"epoch": 2, "f": 0.4}, {"epoch": 3, "f": 0.5}]
    b = [{"epoch": 1, "f": 0.4}, {"epoch": 2, "f": float("nan")}]
    assert mean_curve([a, b, None], "f") == ([1, 2, 3], pytest.approx([0.3, 0.4, 0.5]))
