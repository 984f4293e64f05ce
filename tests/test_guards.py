"""Collapse guard: fires on one-class / chance-level predictions and NaN losses only."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from factories import make_config, make_patchset
from geofuse.config import GuardConfig
from geofuse.evaluation.evaluate import predict
from geofuse.evaluation.metrics import classification_metrics
from geofuse.training.guards import check_losses, print_verdict, run_guards
from geofuse.training.task import ClassificationTask
from geofuse.training.train import train_model

NAMES = ["forest", "water", "urban", "crop"]
GUARD = GuardConfig()


def _balanced_labels(n: int = 200) -> np.ndarray:
    return np.arange(n) % len(NAMES)


def _constant_task(winner: int) -> ClassificationTask:
    """A real task whose output layer always favours class ``winner``."""
    task = ClassificationTask("simple_cnn", in_channels=3, num_classes=4, patch_size=8)
    last = task.model.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.nn.functional.one_hot(torch.tensor(winner), 4).float() * 5)
    return task.eval()


def test_model_that_outputs_one_class_triggers_guard() -> None:
    y = _balanced_labels()
    samples = [{"image": torch.randn(3, 8, 8), "label": int(c)} for c in y]
    y_true, y_pred = predict(_constant_task(winner=2), DataLoader(samples, batch_size=32))
    assert set(y_pred.tolist()) == {2}
    verdict = run_guards({"val": classification_metrics(y_true, y_pred, NAMES)}, [], GUARD)
    assert verdict.collapsed
    assert any("predicts 'urban' for 100%" in r for r in verdict.reasons)
    assert any("no better than always predicting" in r for r in verdict.reasons)
    assert verdict.to_dict()["details"]["val"]["max_prediction_share"] == 1.0


def test_good_model_passes() -> None:
    y = _balanced_labels()
    y_pred = y.copy()
    y_pred[::10] = (y_pred[::10] + 1) % 4  # 90% correct, predictions spread over classes
    verdict = run_guards({"val": classification_metrics(y, y_pred, NAMES)}, [], GUARD)
    assert not verdict.collapsed
    assert verdict.reasons == []


def test_chance_level_accuracy_triggers_majority_check() -> None:
    y = _balanced_labels()
    y_pred = (y + 1) % 4  # spread predictions, all wrong
    verdict = run_guards({"test": classification_metrics(y, y_pred, NAMES)}, [], GUARD)
    assert verdict.collapsed
    assert verdict.reasons == [verdict.reasons[0]]
    assert verdict.reasons[0].startswith("test: accuracy 0.000 is no better")


def test_margin_makes_majority_check_stricter() -> None:
    y = _balanced_labels()
    y_pred = np.where(np.arange(len(y)) % 10 < 3, y, (y + 1) % 4)  # 30% correct vs 25% majority
    metrics = {"val": classification_metrics(y, y_pred, NAMES)}
    assert not run_guards(metrics, [], GUARD).collapsed
    assert run_guards(metrics, [], GuardConfig(majority_margin=0.1)).collapsed


def test_imbalanced_truth_predicted_correctly_is_not_collapse() -> None:
    y = np.array([0] * 95 + [1] * 5)
    verdict = run_guards({"val": classification_metrics(y, y.copy(), NAMES[:2])}, [], GUARD)
    assert not verdict.collapsed


def test_single_class_split_predicted_correctly_is_not_collapse() -> None:
    y = np.full(12, 3)
    verdict = run_guards({"test": classification_metrics(y, y.copy(), NAMES)}, [], GUARD)
    assert not verdict.collapsed
    wrong = run_guards({"test": classification_metrics(y, np.zeros_like(y), NAMES)}, [], GUARD)
    assert wrong.collapsed


def test_nan_losses_are_flagged_with_their_epochs() -> None:
    history = [
        {"epoch": 0, "train_loss": 1.2, "val_loss": 1.1},
        {"epoch": 1, "train_loss": float("nan"), "val_loss": float("inf")},
        {"epoch": 2, "train_loss": float("nan"), "val_loss": None},
    ]
    reasons = check_losses(history)
    assert reasons[0].startswith("non-finite train_loss at epoch(s) [1, 2]")
    assert reasons[1].startswith("non-finite val_loss at epoch(s) [1]")
    assert check_losses(history[:1]) == []


def test_collapse_is_printed_as_a_red_panel() -> None:
    y = _balanced_labels()
    verdict = run_guards({"val": classification_metrics(y, np.zeros_like(y), NAMES)}, [], GUARD)
    buf = io.StringIO()
    print_verdict(verdict, Console(file=buf, width=120, color_system=None))
    text = buf.getvalue()
    assert "MODEL COLLAPSE DETECTED" in text
    assert "predicts 'forest'" in text


def test_diverging_run_is_flagged_in_metrics_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_config(tmp_path, epochs=3, lr=1e9)  # Adam steps of 1e9: losses overflow to NaN
    make_patchset(n=80).save(cfg.patches_path)
    run_dir = train_model(cfg, progress=False)
    guard = json.loads((run_dir / "metrics.json").read_text())["guard"]
    assert guard["collapsed"] is True
    assert any(r.startswith("non-finite val_loss at epoch(s) [0]") for r in guard["reasons"])
    assert "MODEL COLLAPSE DETECTED" in capsys.readouterr().err
    assert "MODEL COLLAPSE DETECTED" in (run_dir / "report.md").read_text()
