"""Per-step shortcuts of CPU training: the NVML check variable, the direct backward pass and
the batch transfer (geofuse.training._step_costs, PatchDataModule.transfer_batch_to_device)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import geofuse.training._step_costs as step_costs
from factories import make_config, make_patchset
from geofuse.data.datamodule import PatchDataModule
from geofuse.rundir import RunDir
from geofuse.training._step_costs import (
    NVML_CHECK_VARIABLE,
    NoOpProfiler,
    cuda_check_without_missing_nvml,
)
from geofuse.training.train import _build_trainer, _quiet_lightning, build_task, train_model


@pytest.fixture
def nvml_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NVML_CHECK_VARIABLE, "1")  # as importing Lightning leaves it


def test_nvml_variable_unset_while_training_without_nvml(
    nvml_variable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(step_costs, "nvml_loadable", lambda: False)
    with cuda_check_without_missing_nvml():
        assert NVML_CHECK_VARIABLE not in os.environ
    assert os.environ[NVML_CHECK_VARIABLE] == "1"
    with pytest.raises(RuntimeError), cuda_check_without_missing_nvml():
        raise RuntimeError("training failed")
    assert os.environ[NVML_CHECK_VARIABLE] == "1", "not restored after an exception"


def test_nvml_variable_kept_where_nvml_loads(
    nvml_variable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(step_costs, "nvml_loadable", lambda: True)
    with cuda_check_without_missing_nvml():  # it then avoids initialising CUDA in the parent
        assert os.environ[NVML_CHECK_VARIABLE] == "1"


def test_train_model_restores_the_nvml_variable(
    tmp_path: Path, nvml_variable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str | None] = []
    monkeypatch.setattr(step_costs, "nvml_loadable", lambda: False)
    monkeypatch.setattr(torch.optim.Adam, "step", _recording_step(seen, torch.optim.Adam.step))
    cfg = make_config(tmp_path, epochs=1)
    train_model(cfg, patchset=make_patchset(n=60, seed=1), progress=False)
    assert seen and set(seen) == {None}, "optimiser steps ran with the NVML check on"
    assert os.environ[NVML_CHECK_VARIABLE] == "1"


def _recording_step(seen: list[str | None], step: Any) -> Any:
    def recorded(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        seen.append(os.environ.get(NVML_CHECK_VARIABLE))
        return step(self, *args, **kwargs)
    return recorded


class BackwardCounter(Callback):
    """Counts the backward passes Lightning announces to callbacks."""

    def __init__(self) -> None:
        self.before = self.after = 0

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        self.before += 1

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.after += 1


def _fit(tmp_path: Path, extra: list[Callback]) -> tuple[Any, L.Trainer]:
    cfg = make_config(tmp_path, epochs=2)
    patches = make_patchset(n=70, seed=2)
    task = build_task(cfg, patches)
    data = PatchDataModule(patches, batch_size=cfg.train.batch_size, seed=cfg.seed)
    with _quiet_lightning():
        trainer = _build_trainer(cfg, RunDir(tmp_path / "run"), 2, False)
        trainer.callbacks.extend(extra)
        trainer.fit(task, datamodule=data)
    return task, trainer


def test_direct_backward_when_nothing_hooks_it(tmp_path: Path) -> None:
    task, trainer = _fit(tmp_path, [])
    assert task._direct_backward
    assert trainer.global_step > 0  # the optimiser still stepped through Lightning


def test_backward_hooks_still_called_when_a_callback_has_them(tmp_path: Path) -> None:
    counter = BackwardCounter()
    task, trainer = _fit(tmp_path, [counter])
    assert not task._direct_backward
    assert counter.before == counter.after == trainer.global_step > 0


def test_transfer_keeps_a_batch_already_on_the_device() -> None:
    data = PatchDataModule(make_patchset(n=40, seed=3), batch_size=8)
    batch = next(iter(data.train_dataloader()))
    assert data.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    moved = data.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved is not batch
    assert {v.device.type for v in moved.values()} == {"meta"}
    assert moved.keys() == batch.keys()


def test_trainer_profiler_records_nothing_and_reuses_one_context(tmp_path: Path) -> None:
    trainer = _build_trainer(make_config(tmp_path), RunDir(tmp_path / "run"), 1, False)
    assert isinstance(trainer.profiler, NoOpProfiler)
    first = trainer.profiler.profile("[Callback]a.on_train_batch_end")
    assert trainer.profiler.profile("training_step") is first
    with first, first:  # reusable, also nested
        pass
