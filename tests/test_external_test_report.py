"""Test predictions, fold ensembles and the study report's test-set section (issue 12)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from factories import make_config, make_multilabel_patchset, make_patchset
from geofuse.data.external_test import with_external_test
from geofuse.data.patchset import PatchSet
from geofuse.evaluation import group_bootstrap as gb
from geofuse.evaluation.metrics import classification_metrics
from geofuse.evaluation.multilabel_metrics import multilabel_metrics
from geofuse.evaluation.predictions import PREDICTIONS_FILE, load_predictions, save_predictions
from geofuse.evaluation.stats import finite_or_none
from geofuse.experiments.ablation import run_ablation
from geofuse.experiments.ensemble import ENSEMBLES_FILE, write_ensembles
from geofuse.experiments.runner import load_cells
from geofuse.reporting._study_test import read_test_data, study_test_stats
from geofuse.reporting.study_report import load_study, write_study_report

pytestmark = pytest.mark.slow

CNN, FOREST = "s2/simple_cnn", "s2/random_forest"
CI = r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """simple_cnn (learning rate too small to learn: worse than the forest) + random forest,
    2 folds, tested on an external set 'OtherCity' of 40 patches in 20 groups."""
    root = tmp_path_factory.mktemp("external")
    p = make_patchset(n=120, seed=0)
    train = p.subset(np.arange(80))._replace(split=np.zeros(80, np.uint8))
    test = p.subset(np.arange(80, 120))
    test = test._replace(groups=np.array([f"block:{i // 2}" for i in range(40)]))
    cfg = make_config(root, epochs=1, batch_size=16, model={"hidden": 8}, lr=1e-6)
    cfg.ablation.folds = 2
    cfg.ablation.sensors = [["s2"]]
    cfg.ablation.models = ["simple_cnn", "random_forest"]
    cfg.train.baseline.n_estimators = 20
    return run_ablation(cfg, progress=False,
                        patchset=with_external_test(train, test, "OtherCity"))


def _fold_set(study: Path) -> PatchSet:
    return PatchSet.load(study / "folds" / "fold0.h5")


def test_predictions_are_saved_and_reproduce_the_cell_metrics(study: Path) -> None:
    patches = _fold_set(study)
    idx = patches.split_indices("test")
    cells = load_cells(study)
    assert {c["config_id"] for c in cells} == {CNN, FOREST} and len(cells) == 4
    for cell in cells:
        pred = load_predictions(study / cell["run_dir"] / PREDICTIONS_FILE)
        assert pred is not None
        assert pred.indices.shape == (40,) and np.array_equal(pred.indices, idx)
        assert pred.probabilities.shape == (40, 4) and pred.probabilities.dtype == np.float32
        np.testing.assert_allclose(pred.probabilities.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(pred.targets, patches.y[idx])
        again = classification_metrics(pred.targets, pred.labels(), list(patches.class_names))
        assert again["accuracy"] == pytest.approx(cell["test"]["accuracy"])
        assert again["f1_macro"] == pytest.approx(cell["test"]["f1_macro"])


def test_ensembles_json_is_the_average_of_the_fold_models(study: Path) -> None:
    data = json.loads((study / ENSEMBLES_FILE).read_text())
    assert data["folds"] == [0, 1] and data["incomplete"] == []
    assert {(e["config_id"], e["seed"]) for e in data["ensembles"]} == {(CNN, 7), (FOREST, 7)}
    cells = load_cells(study)
    for e in data["ensembles"]:
        members = [load_predictions(study / c["run_dir"]) for c in cells
                   if c["config_id"] == e["config_id"]]
        probs = np.mean([m.probabilities.astype(np.float64) for m in members if m], axis=0)
        hand = classification_metrics(members[0].targets, probs.argmax(axis=1),
                                      data["class_names"])
        assert e["n"] == 40
        assert e["test"]["accuracy"] == pytest.approx(hand["accuracy"])
        assert e["test"]["f1_macro"] == pytest.approx(hand["f1_macro"])
        assert e["test"]["confusion_matrix"] == hand["confusion_matrix"]


def test_report_names_the_test_set_with_intervals_floors_and_paired_tests(study: Path) -> None:
    md = (study / "report.md").read_text()
    summary = md.split("## Results")[0]
    assert "POOR TRANSFER on the test set OtherCity" in summary
    assert f"**{CNN}**" in summary and "below the random forest" in summary
    assert "Likely causes: overfitting to the training area" in summary
    assert "## Test set: OtherCity" in md
    section = md.split("## Test set: OtherCity")[1]
    assert "40 patches in 20 groups" in section
    assert "Test set: OtherCity (95% CI over test groups)" in section
    assert len(re.findall(CI, section)) >= 8
    assert "Floors on OtherCity" in section
    assert "majority class of the training folds" in section
    assert f"random forest {FOREST}, fold ensemble" in section
    assert f"Paired comparison on OtherCity against {CNN}" in section
    assert "| macro F1, fold ensemble |" in section and "**POOR TRANSFER**" in section
    assert "plots/per_class_f1_test.png" in section and "confusion_test_baseline" in section
    t = json.loads((study / "stats.json").read_text())["test_set"]
    assert [f["config_id"] for f in t["flags"]] == [CNN]
    assert t["forest_for"] == {CNN: FOREST, FOREST: None}
    comp = t["comparisons"][0]
    assert comp["config_id"] == FOREST and comp["compared"] == "ensemble"
    assert comp["f1_macro"]["p_holm"] == pytest.approx(comp["f1_macro"]["p"])  # one test
    row = t["configs"][FOREST]["ensemble"]["accuracy"]
    assert row["ci_low"] <= row["value"] <= row["ci_high"]


def test_a_model_better_than_the_forest_is_not_flagged(study: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(study, tmp_path / "better")
    for cell in load_cells(copy):
        if cell["config_id"] == CNN:  # perfect predictions: at least the forest's scores
            pred = load_predictions(copy / cell["run_dir"])
            assert pred is not None
            save_predictions(copy / cell["run_dir"], pred.indices,
                             np.eye(4)[pred.targets], pred.targets)
    write_study_report(copy)
    md = (copy / "report.md").read_text()
    assert "POOR TRANSFER" not in md
    assert "Test set OtherCity: every configuration is at or above the majority-class " \
           "floor and the random forest" in md


def test_bootstrap_is_seeded(study: Path) -> None:
    s = load_study(study)
    first, second = (finite_or_none(study_test_stats(s, CNN)) for _ in range(2))
    assert first == second  # NaN (no mAP here) made None: equal when the figures are
    other = study_test_stats(s, CNN, seed=1)
    assert other is not None and first is not None
    assert other["configs"][CNN]["fold_models"] != first["configs"][CNN]["fold_models"]


def test_interval_is_wider_with_fewer_groups() -> None:
    rng = np.random.default_rng(0)
    n, k = 200, 3
    y = rng.integers(0, k, n)
    clusters = np.arange(n) // 20  # 10 groups; a whole group is right or wrong
    right = rng.random(10) < 0.6
    pred = np.where(right[clusters], y, (y + 1) % k)
    probs = np.eye(k)[pred]

    def width(groups: np.ndarray) -> float:
        codes, g = gb.group_codes(groups.astype(str))
        scores = gb.model_scores(y, probs, codes, g, gb.resample_weights(g))
        low, high = gb.percentile_ci(scores["accuracy"][1])
        return high - low

    assert width(clusters) > 2 * width(np.arange(n))


def test_counts_reproduce_the_metric_functions() -> None:
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 300), rng.random((300, 4))
    codes, g = gb.group_codes(rng.integers(0, 30, 300).astype(str))
    got = gb.model_scores(y, p, codes, g, gb.resample_weights(g, 10))
    ref = classification_metrics(y, p.argmax(axis=1), ["a", "b", "c", "d"])
    assert got["accuracy"][0] == pytest.approx(ref["accuracy"])
    assert got["f1_macro"][0] == pytest.approx(ref["f1_macro"])
    hot = make_multilabel_patchset(n=120).multi_hot
    assert hot is not None
    probs = np.clip(hot + rng.normal(0, 0.4, hot.shape), 0, 1)
    codes, g = gb.group_codes(np.arange(120).astype(str))
    got = gb.model_scores(hot, probs, codes, g, gb.resample_weights(g, 10))
    ref = multilabel_metrics(hot, probs, ["a", "b", "c", "d"])
    assert got["accuracy"][0] == pytest.approx(ref["accuracy"])
    assert got["f1_macro"][0] == pytest.approx(ref["f1_macro"])


def test_held_out_test_set_is_named_by_its_fraction(study: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(study, tmp_path / "held")
    make_patchset(n=40).save(copy / "folds" / "fold0.h5")  # no external test in provenance
    s = load_study(copy)
    s.config["ablation"]["test_fraction"] = 0.1
    data = read_test_data(s)
    assert data is not None and not data.external
    assert data.name == "held-out groups (ablation.test_fraction = 0.1)"
    assert len(data.indices) == 4 and data.majority_label in ("forest", "water", "urban", "crop")


def test_old_study_without_predictions_has_no_ensembles(study: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(study, tmp_path / "old")
    for npz in copy.glob(f"runs/*/{PREDICTIONS_FILE}"):
        npz.unlink()
    assert write_ensembles(copy) is None and not (copy / ENSEMBLES_FILE).exists()
    write_study_report(copy)
    t = json.loads((copy / "stats.json").read_text())["test_set"]
    assert not t["has_ensembles"] and t["configs"][CNN]["ensemble"] is None
    assert t["comparisons"] == [] and [f["config_id"] for f in t["flags"]] == [CNN]
    md = (copy / "report.md").read_text()
    assert "configurations have no intervals and no ensembles: the cells saved no test " \
           "predictions" in md


def test_likely_causes_follow_each_configurations_own_training_settings() -> None:
    from geofuse.reporting._study_test_blocks import _all_causes, effective_train

    config = {"train": {"augment": True, "jitter": 0.0, "monitor": "val_loss"},
              "ablation": {"models": ["random_forest",
                                      {"name": "simple_cnn", "label": "cnn_jitter",
                                       "train": {"jitter": 0.1, "monitor": "val_f1_macro"}}]}}
    assert effective_train(config, "s2/cnn_jitter")["monitor"] == "val_f1_macro"
    assert effective_train(config, "s2/simple_cnn")["monitor"] == "val_loss"
    t = {"train_groups": 40, "flags": [{"config_id": "s2/simple_cnn"},
                                       {"config_id": "s2/cnn_jitter"}]}
    causes = _all_causes(t, config)
    assert len(causes) == 2 and causes[1].startswith("**s2/cnn_jitter**")
    assert "val_f1_macro" in causes[1] and "no radiometric jitter" not in causes[1]
    assert "no radiometric jitter" in causes[0]
    assert len(_all_causes({**t, "flags": t["flags"][:1]}, config)) == 1
    assert "class-balanced loss" not in causes[0] and "checkpoint: last" in causes[0]
    config["ablation"]["models"][1]["train"].update(
        checkpoint="last", loss={"name": "cross_entropy", "class_weights": "balanced"})
    causes = _all_causes(t, config)
    assert "model selection on the validation fold" not in causes[1]
    assert "class-balanced loss" in causes[1] and "unweighted loss" in causes[1]


def test_out_of_fold_comparison_pools_the_validation_predictions(study: Path) -> None:
    from geofuse.reporting._study_oof import study_oof_stats

    folds = _fold_set(study)
    pooled = np.flatnonzero(folds.split != 2)  # every patch outside the test set
    loaded = load_study(study)
    o = study_oof_stats(loaded, FOREST)
    assert o is not None and o["n_patches"] == len(pooled) == 80
    assert o["n_groups"] == len(np.unique(folds.groups[pooled]))
    for cid in (CNN, FOREST):
        preds = [load_predictions(study / c["run_dir"], "val") for c in load_cells(study)
                 if c["config_id"] == cid]
        assert len(preds) == 2 and all(p is not None for p in preds)
        indices = np.concatenate([p.indices for p in preds])
        assert sorted(indices.tolist()) == pooled.tolist()  # each patch exactly once
        labels = np.concatenate([p.labels() for p in preds])
        targets = np.concatenate([p.targets for p in preds])
        hand = classification_metrics(targets, labels, list(folds.class_names))
        row = o["configs"][cid]
        assert row["accuracy"]["value"] == pytest.approx(hand["accuracy"])
        assert row["f1_macro"]["value"] == pytest.approx(hand["f1_macro"])
        assert row["accuracy"]["ci_low"] <= hand["accuracy"] <= row["accuracy"]["ci_high"]
        assert row["selected"] == (cid == CNN)  # the forest selects no checkpoint
    (comparison,) = o["comparisons"]
    assert comparison["config_id"] == CNN and comparison["compared"] == "out-of-fold"
    diff = o["configs"][CNN]["accuracy"]["value"] - o["configs"][FOREST]["accuracy"]["value"]
    assert comparison["accuracy"]["diff"] == pytest.approx(diff)
    md = (study / "report.md").read_text()
    assert "### Out-of-fold comparison" in md and "80 patches in" in md
    assert "Out-of-fold paired comparison against" in md
