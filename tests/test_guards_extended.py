"""Extended collapse guard: flat validation loss, frozen-share diagnosis, stopping on collapse.

The end-to-end test reproduces the reference course's failure shape (Week 4: 85% of a
network frozen, a loss that does not move, chance-level predictions) with a SimpleCNN whose
convolutions and hidden layer are frozen, on 8x8 patches.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import geofuse.training.train as train_mod
from factories import make_config, make_patchset
from geofuse.config import GuardConfig, StudyConfig
from geofuse.data.patchset import PatchSet
from geofuse.evaluation.metrics import classification_metrics
from geofuse.models.freeze import frozen_fraction, frozen_parameter_fraction
from geofuse.rundir import RunDir, read_history
from geofuse.training.guards import (
    CollapseStopper,
    check_flat_loss,
    longest_flat_run,
    run_guards,
)
from geofuse.training.task import ClassificationTask

NAMES = ["forest", "water", "urban", "crop"]


def _history(val_losses: list[float]) -> list[dict[str, Any]]:
    return [{"epoch": i, "train_loss": 1.0, "val_loss": v} for i, v in enumerate(val_losses)]


def test_flat_validation_loss_is_flagged_after_flat_epochs() -> None:
    guard = GuardConfig()  # 10 epochs within 0.1% of the mean
    flat = _history([2.0, 1.5] + [1.3862 + 1e-5 * (i % 2) for i in range(10)])
    reasons = check_flat_loss(flat, guard)
    assert len(reasons) == 1 and reasons[0].startswith("val_loss flat for 10 epochs (2-11")
    assert check_flat_loss(flat[:-1], guard) == []  # only 9 flat epochs
    learning = _history([1.4 - 0.01 * i for i in range(15)])
    assert check_flat_loss(learning, guard) == []
    broken = _history([1.0] * 5 + [float("nan")] + [1.0] * 5)
    assert longest_flat_run([r["val_loss"] for r in broken], 1e-3) == (0, 5)
    assert check_flat_loss(broken, guard) == []


def test_diagnosis_names_the_frozen_share_and_the_flat_loss() -> None:
    y = np.arange(100) % 4
    metrics = {"val": classification_metrics(y, np.zeros_like(y), NAMES)}
    verdict = run_guards(metrics, _history([1.386] * 10), GuardConfig(), frozen=0.98)
    assert verdict.collapsed
    assert verdict.diagnosis == (
        "98% of the network's layers frozen; validation loss flat for 10 epochs")
    assert verdict.to_dict()["frozen_fraction"] == 0.98
    good = {"val": classification_metrics(y, y.copy(), NAMES)}
    passed = run_guards(good, _history([1.0, 0.5]), GuardConfig(), frozen=0.98)
    assert not passed.collapsed and passed.diagnosis == ""


def test_frozen_fractions_count_layers_and_parameter_elements() -> None:
    task = ClassificationTask("simple_cnn", in_channels=6, num_classes=4, patch_size=8)
    assert frozen_fraction(task.model) == frozen_parameter_fraction(task.model) == 0.0
    for p in task.model.features.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in task.model.features.parameters())
    total = sum(p.numel() for p in task.model.parameters())
    assert frozen_parameter_fraction(task.model) == pytest.approx(frozen / total)
    assert frozen_fraction(task.model) == pytest.approx(4 / 6)  # 2 conv + 2 BN of 6 layers


def _freeze_all_but_output(task: ClassificationTask) -> ClassificationTask:
    """Keras-style heavy freezing: only the output layer trains; BN statistics fixed."""
    for p in task.model.parameters():
        p.requires_grad_(False)
    for p in task.model.head[-1].parameters():
        p.requires_grad_(True)
    for m in task.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    return task


def test_heavily_frozen_network_collapses_and_is_stopped_with_diagnosis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build = train_mod.build_task

    def frozen_task(cfg: StudyConfig, patches: PatchSet) -> ClassificationTask:
        return _freeze_all_but_output(build(cfg, patches))

    monkeypatch.setattr(train_mod, "build_task", frozen_task)
    cfg = make_config(tmp_path, epochs=30, lr=1e-7, augment=False)
    cfg.guards.stop_on_collapse = True
    make_patchset(n=80).save(cfg.patches_path)
    run = RunDir(train_mod.train_model(cfg, progress=False))

    info = json.loads(run.run_json.read_text())
    assert info["frozen_fraction"] > 0.8 and info["frozen_parameter_fraction"] > 0.95
    assert info["collapse_stop"] == {"epoch": 9, "reason": "val_loss flat for 10 epochs at "
                                                           "epoch 9"}
    assert len(read_history(run.history)) == 10  # stopped, not 30 epochs
    guard = json.loads(run.metrics.read_text())["guard"]
    assert guard["collapsed"] is True
    assert any(r.startswith("val_loss flat for 10 epochs") for r in guard["reasons"])
    share = f"{info['frozen_fraction']:.0%}"
    assert guard["diagnosis"].startswith(
        f"{share} of the network's layers frozen; validation loss flat for 10 epochs; training "
        "stopped early")
    assert f"**Diagnosis:** {share} of the network's layers frozen" in run.report.read_text()
    assert "Diagnosis:" in capsys.readouterr().err


def _fake_trainer(val_loss: float) -> SimpleNamespace:
    return SimpleNamespace(callback_metrics={"val_loss": torch.tensor(val_loss)},
                           current_epoch=0, sanity_checking=False, should_stop=False,
                           world_size=1)


def _validate(stopper: CollapseStopper, trainer: SimpleNamespace, task: ClassificationTask,
              labels: torch.Tensor) -> None:
    stopper.on_validation_epoch_start(trainer, task)
    task(torch.randn(len(labels), 6, 8, 8))
    stopper.on_validation_batch_end(trainer, task, None, {"label": labels}, 0)
    stopper.on_validation_end(trainer, task)


def test_stopper_fires_on_nan_loss_and_on_persistent_one_class_predictions() -> None:
    task = ClassificationTask("simple_cnn", in_channels=6, num_classes=4, patch_size=8,
                              class_names=NAMES).eval()
    labels = torch.arange(40) % 4
    nan = CollapseStopper(GuardConfig())
    trainer = _fake_trainer(float("nan"))
    _validate(nan, trainer, task, labels)
    assert trainer.should_stop and nan.reason == "non-finite val_loss at epoch 0"

    with torch.no_grad():
        task.model.head[-1].weight.zero_()
        task.model.head[-1].bias.copy_(torch.tensor([0.0, 0.0, 9.0, 0.0]))
    one = CollapseStopper(GuardConfig(flat_epochs=2))
    first, second = _fake_trainer(1.5), _fake_trainer(0.9)
    _validate(one, first, task, labels)
    assert not first.should_stop  # one epoch of one-class predictions is tolerated
    second.current_epoch = 1
    _validate(one, second, task, labels)
    assert second.should_stop and one.epoch == 1
    assert one.reason.startswith("val: predicts 'urban' for 100% of 40 samples")
