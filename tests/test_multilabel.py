"""Multi-label classification: label sets in the PatchSet, splits and folds, losses, metrics,
the collapse guard, decision fusion, and training + evaluation of a network and a forest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss

from factories import make_config, make_multilabel_patchset
from geofuse.config import GuardConfig, LossConfig
from geofuse.data.patchset import PatchSet, primary_labels
from geofuse.data.splits import assign_splits
from geofuse.errors import ConfigError, SplitError
from geofuse.evaluation.multilabel_metrics import multilabel_metrics
from geofuse.experiments.folds import TEST_FOLD, make_folds
from geofuse.models.fusion import DecisionFusion
from geofuse.models.registry import is_segmentation_model, list_models
from geofuse.training._epoch import epoch_scores
from geofuse.training.guards import check_predictions
from geofuse.training.losses import BinaryCrossEntropyLoss, MultiLabelFocalLoss, build_loss
from geofuse.training.train import build_task, train_model


def test_patchset_keeps_label_sets_through_subset_and_file(tmp_path: Path) -> None:
    ps = make_multilabel_patchset(n=40)
    assert ps.multilabel and ps.targets().shape == (40, 4)
    assert ps.class_counts() == dict(zip(ps.class_names, ps.multi_hot.sum(axis=0).tolist(),
                                         strict=True))
    back = PatchSet.load(ps.save(tmp_path / "p.h5"))
    np.testing.assert_array_equal(back.multi_hot, ps.multi_hot)
    sub = back.subset(np.arange(5, 15))
    np.testing.assert_array_equal(sub.multi_hot, ps.multi_hot[5:15])
    assert not make_multilabel_patchset(n=8)._replace(multi_hot=None).multilabel
    with pytest.raises(ValueError, match=r"multi_hot must be \(N, K\)"):
        ps._replace(multi_hot=ps.multi_hot[:, :3])
    with pytest.raises(ValueError, match="0 and 1"):
        ps._replace(multi_hot=ps.multi_hot * 2)


def test_primary_label_is_the_rarest_present_class() -> None:
    m = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0], [1, 1, 0]])
    # frequencies: class 0 x4, class 1 x2, class 2 x1
    assert primary_labels(m).tolist() == [1, 0, 2, -1, 1]


def test_splits_keep_groups_whole_and_spread_every_label() -> None:
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), 4).astype(str)
    multi_hot = (rng.random((120, 5)) < 0.3).astype(np.uint8)
    multi_hot[:, 4] = 0
    multi_hot[groups.astype(int) < 3, 4] = 1  # a rare class in 3 groups
    split = assign_splits(multi_hot, groups, 0.2, 0.2, seed=1)
    for g in np.unique(groups):
        assert len(set(split[groups == g].tolist())) == 1
    for s in (0, 1, 2):
        assert (multi_hot[split == s].sum(axis=0) > 0).all()
    with pytest.raises(SplitError, match="cannot split 2 group"):
        assign_splits(multi_hot[:8], groups[:8], 0.2, 0.2, seed=1)


def test_folds_are_grouped_stratified_and_hold_out_a_test_set() -> None:
    ps = make_multilabel_patchset(n=120)
    ps = ps._replace(groups=np.array([f"tile:{i // 3}" for i in range(120)]))
    folds = make_folds(ps, n_folds=3, test_fraction=0.2, seed=4)
    assert (folds.fold == TEST_FOLD).any()
    for unit in np.unique(folds.units):
        assert len(set(folds.fold[folds.units == unit].tolist())) == 1
    for k in range(3):
        assert (ps.multi_hot[folds.fold == k].sum(axis=0) > 0).all()
    with pytest.raises(SplitError, match="cannot make 3 stratified folds of 2"):
        make_folds(ps.subset(np.arange(6)), n_folds=3)


def test_multilabel_losses() -> None:
    logits = torch.randn(6, 4)
    target = (torch.rand(6, 4) < 0.4).float()
    ref = F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(BinaryCrossEntropyLoss()(logits, target), ref)
    torch.testing.assert_close(MultiLabelFocalLoss(gamma=0.0)(logits, target), ref)
    assert MultiLabelFocalLoss(gamma=2.0)(logits, target) < ref
    assert isinstance(build_loss(LossConfig(), 4, multilabel=True), BinaryCrossEntropyLoss)
    assert isinstance(build_loss(LossConfig(name="focal"), 4, multilabel=True),
                      MultiLabelFocalLoss)
    with pytest.raises(ConfigError, match="use 'bce' or 'focal'"):
        build_loss(LossConfig(name="cross_entropy"), 4, multilabel=True)


def test_metrics_match_scikit_learn_and_the_training_scores() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((60, 5)) < 0.35).astype(int)
    y[:, 4] = 0  # a class absent from the truth
    p = np.round(rng.random((60, 5)), 2)
    pred = (p >= 0.5).astype(int)
    m = multilabel_metrics(y, p, list("abcde"))
    assert m["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["f1_samples"] == pytest.approx(f1_score(y, pred, average="samples",
                                                     zero_division=0))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    aps = [average_precision_score(y[:, k], p[:, k]) for k in range(4)]
    assert [m["per_class"][c]["ap"] for c in "abcd"] == pytest.approx(aps)
    assert m["per_class"]["e"]["ap"] is None and m["map"] == pytest.approx(np.mean(aps))
    present = (y.sum(axis=0) + pred.sum(axis=0)) > 0
    ref_macro = f1_score(y, pred, average=None, zero_division=0)[present].mean()
    assert m["f1_macro"] == pytest.approx(ref_macro)
    scores = epoch_scores(torch.from_numpy(pred), torch.from_numpy(y), 5, multilabel=True)
    assert float(scores["f1_macro"]) == pytest.approx(m["f1_macro"], abs=1e-6)
    assert float(scores["accuracy"]) == pytest.approx(m["accuracy"])


def test_guard_flags_empty_full_and_constant_label_sets() -> None:
    guard = GuardConfig()
    rng = np.random.default_rng(1)
    y = (rng.random((50, 4)) < 0.4).astype(int)
    y[y.sum(axis=1) == 0, 0] = 1
    names = list("abcd")
    assert check_predictions(multilabel_metrics(y, y.astype(float), names), guard, "val") == []
    empty = check_predictions(multilabel_metrics(y, np.zeros((50, 4)), names), guard, "val")
    assert "predicts no class for 100% of 50 samples" in empty[0]
    full = check_predictions(multilabel_metrics(y, np.ones((50, 4)), names), guard, "val")
    assert "predicts every class" in full[0]
    same = np.tile([1.0, 0, 1, 0], (50, 1))
    assert "same label set" in check_predictions(multilabel_metrics(y, same, names),
                                                 guard, "test")[0]


def test_decision_fusion_mixes_per_class_probabilities() -> None:
    torch.manual_seed(0)
    model = DecisionFusion(6, 4, 8, modalities={"s2": 4, "dem": 2},
                           weights={"s2": 0.75, "dem": 0.25}, multilabel=True).eval()
    x = torch.randn(3, 6, 8, 8)
    with torch.no_grad():
        parts = model.modality_logits(x)
        mixture = 0.75 * parts["s2"].sigmoid() + 0.25 * parts["dem"].sigmoid()
        torch.testing.assert_close(model(x).sigmoid(), mixture)


def test_network_and_forest_train_and_evaluate_on_label_sets(tmp_path: Path) -> None:
    patches = make_multilabel_patchset(n=120, seed=2)
    for model in ("simple_cnn", "random_forest"):
        cfg = make_config(tmp_path, model={"name": model, "hidden": 16}, epochs=4)
        run = train_model(cfg, patchset=patches, progress=False, run_name=model)
        metrics = json.loads((run / "metrics.json").read_text())
        test = metrics["test"]
        assert test["multilabel"] and "confusion_matrix" not in test
        # the signatures are learnable: far above the rate of the most common label set
        assert test["map"] > 0.8 and test["f1_micro"] > 0.6, (model, test)
        assert not metrics["guard"]["collapsed"], metrics["guard"]
        report = (run / "report.md").read_text()
        assert "subset accuracy" in report and "| AP |" in report
        assert "Confusion matrix" not in report


def test_every_registry_model_gives_one_logit_per_label(tmp_path: Path) -> None:
    """Each network of the registry, built for a multi-label set, yields (B, K) logits whose
    BCE loss is finite and back-propagates (the task reads them through a sigmoid)."""
    patches = make_multilabel_patchset(n=8, patch_size=32)
    patches = patches._replace(tabular=np.random.default_rng(0).random((8, 3)),
                               tabular_names=["a", "b", "c"])
    batch = {"image": torch.from_numpy((patches.x[:4] - 1500) / 800),
             "label": torch.from_numpy(patches.multi_hot[:4].astype(np.float32)),
             "tab": torch.from_numpy(patches.tabular[:4])}
    for name in list_models():
        if is_segmentation_model(name):  # dense models: masks, not label sets
            continue
        series = {"time_series": ["s2"]} if name == "temporal_cnn" else {}
        cfg = make_config(tmp_path, model={"name": name, **series})
        task = build_task(cfg, patches)
        assert task.multilabel and getattr(task.model, "multilabel", True)
        loss = task._shared_step(batch, "train")
        assert torch.isfinite(loss), name
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for p in task.model.parameters()), name
        probs = task.predict_step(batch, 0)
        assert probs.shape == (4, 4) and ((probs >= 0) & (probs <= 1)).all(), name
