"""best.ckpt holds the lowest-val_loss epoch's weights; last.ckpt resumes; files are rare."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

import geofuse.training.checkpoints as ck
import geofuse.training.train as train_mod
from factories import make_config, make_patchset
from geofuse.errors import StopRequested
from geofuse.rundir import RunDir, read_history
from geofuse.training.train import train_model


def test_best_checkpoint_is_the_lowest_val_loss_epoch(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=8, lr=0.05)  # a high lr makes val_loss wander
    run = RunDir(train_model(cfg, progress=False, patchset=make_patchset(n=120)))
    history = read_history(run.history)
    losses = np.array([float(r["val_loss"]) for r in history])
    best = torch.load(run.best_ckpt, map_location="cpu", weights_only=True)
    last = torch.load(run.last_ckpt, map_location="cpu", weights_only=True)
    assert best["epoch"] == int(np.nanargmin(losses))
    assert "optimizer_states" not in best and "optimizer_states" in last
    if best["epoch"] != len(history) - 1:
        changed = [k for k, v in best["state_dict"].items()
                   if v.dtype.is_floating_point and not torch.equal(v, last["state_dict"][k])]
        assert changed, "best.ckpt must hold the best epoch's weights, not the final ones"
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]


def _cadence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, epoch_s: float, write_s: float,
             epochs: int = 30, interval_s: float = 300.0) -> list[int]:
    """Epochs after which last.ckpt is written, on a fake clock: epochs of ``epoch_s``,
    writes of ``write_s`` seconds, a 5% overhead budget."""
    clock = [0.0]
    monkeypatch.setattr(ck, "_clock", lambda: clock[0])
    cb = ck.BestAndLastCheckpoint(tmp_path / "b.ckpt", tmp_path / "l.ckpt", interval_s,
                                  max_overhead=0.05)
    written: list[int] = []
    epoch = [0]

    def fake_write(trainer: object) -> None:
        clock[0] += write_s
        cb.writes += 1
        cb._last_write = clock[0]
        written.append(epoch[0])

    monkeypatch.setattr(cb, "_write_all", fake_write)
    for epoch[0] in range(epochs):
        clock[0] += epoch_s
        trainer = SimpleNamespace(current_epoch=epoch[0], world_size=1)
        cb.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    return written


def test_checkpoint_after_every_epoch_while_writes_are_cheap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert _cadence(monkeypatch, tmp_path, epoch_s=1.0, write_s=0.04) == list(range(30))


def test_expensive_checkpoints_are_spaced_to_the_budget_and_the_interval(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # 0.5 s writes after 1 s epochs: 5% allows one write per 10 s of training (first two
    # writes always: the first one's cost is not taken as representative)
    written = _cadence(monkeypatch, tmp_path, epoch_s=1.0, write_s=0.5)
    assert written[:2] == [0, 1]
    assert all(b - a == 10 for a, b in itertools.pairwise(written[1:]))
    # the interval caps the gap whatever the cost
    written = _cadence(monkeypatch, tmp_path, epoch_s=1.0, write_s=5.0, interval_s=20.0)
    assert all(b - a <= 20 for a, b in itertools.pairwise(written))


class _StopAt(L.Callback):
    """Raise StopRequested in epoch 1: during training batches, validation or at its end."""

    def __init__(self, where: str) -> None:
        self.where = where

    def _stop(self, trainer: L.Trainer, where: str) -> None:
        if where == self.where and trainer.current_epoch == 1 and not trainer.sanity_checking:
            raise StopRequested(15)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._stop(trainer, "train")

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._stop(trainer, "validation")

    def on_train_epoch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._stop(trainer, "epoch end")


@pytest.mark.parametrize("where", ["train", "validation", "epoch end"])
def test_a_run_stopped_anywhere_resumes_with_every_epoch_validated(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, ps = make_config(tmp_path, epochs=4), make_patchset(n=120)
    build = train_mod._build_trainer

    def with_stop(*args: Any, **kwargs: Any) -> L.Trainer:
        trainer = build(*args, **kwargs)
        trainer.callbacks.append(_StopAt(where))
        return trainer

    monkeypatch.setattr(train_mod, "_build_trainer", with_stop)
    with pytest.raises(StopRequested) as stop:
        train_model(cfg, progress=False, patchset=ps, run_name="r")
    assert stop.value.signum == 15 and "--resume --run-name r" in (stop.value.resume or "")
    monkeypatch.setattr(train_mod, "_build_trainer", build)
    run = RunDir(train_model(cfg, resume=True, progress=False, patchset=ps, run_name="r"))
    history = read_history(run.history)
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]
    assert all(r["val_loss"] is not None for r in history)
