"""ClassificationTask's fast paths give bit for bit what the per-step version gave.

Per-epoch logging (instead of ``self.log`` at every step) and manual optimisation with the
task's own scheduler stepping (instead of Lightning's automatic loop) must leave every logged
value, learning rate and weight as it was.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from factories import make_config, make_patchset
from geofuse.data.datamodule import PatchDataModule
from geofuse.rundir import RunDir
from geofuse.training._epoch import EpochAccumulator, epoch_scores
from geofuse.training.optim import build_optimizer, build_scheduler
from geofuse.training.task import STAGES, ClassificationTask
from geofuse.training.train import _build_trainer, _quiet_lightning, build_task


def _collection(stage: str, num_classes: int) -> MetricCollection:
    return MetricCollection({"accuracy": MulticlassAccuracy(num_classes, average="micro"),
                             "f1_macro": MulticlassF1Score(num_classes, average="macro")},
                            prefix=f"{stage}_")


class PerStepLoggingTask(ClassificationTask):
    """ClassificationTask as it was: loss and torchmetrics logged at every step, automatic
    optimisation, schedulers stepped by Lightning."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = True
        self.step_metrics = nn.ModuleDict(
            {f"{s}_metrics": _collection(s, kwargs["num_classes"]) for s in STAGES})

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def on_train_epoch_end(self) -> None:
        pass

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.train_config
        optimizer = build_optimizer(self.model, cfg)
        scheduler = build_scheduler(optimizer, cfg, int(self.trainer.max_epochs or cfg.epochs))
        if scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        logits = self(batch["image"], batch.get("tab"))
        target = batch["label"]
        loss = self.loss_fn(logits, target)
        metrics = self.step_metrics[f"{stage}_metrics"]
        metrics.update(logits.argmax(dim=1), target)
        size = len(target)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=size,
                 prog_bar=stage != "test")
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=size,
                      prog_bar=stage == "val")
        return loss

    def _log_epoch(self, stage: str) -> None:
        pass


class Recorder(Callback):
    """What a callback sees in ``callback_metrics`` at each epoch's end and validation end."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, torch.Tensor]]] = []

    def _take(self, trainer: L.Trainer, when: str) -> None:
        metrics = {k: v.detach().clone() for k, v in trainer.callback_metrics.items()}
        metrics["lr"] = torch.tensor(trainer.optimizers[0].param_groups[0]["lr"])
        self.seen.append((when, metrics))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._take(trainer, f"val_end {trainer.current_epoch}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take(trainer, f"train_epoch_end {trainer.current_epoch}")


Seen = list[tuple[str, dict[str, torch.Tensor]]]


def _fit(tmp_path: Path, per_step: bool, **train: Any) -> tuple[Seen, dict[str, torch.Tensor]]:
    # 123 patches: uneven last batches; a small lr so that predictions are still mixed and
    # the plateau schedule reduces the lr
    cfg = make_config(tmp_path, epochs=5, lr=1e-7, plateau_patience=1, **train)
    patches = make_patchset(n=123, seed=4)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    task = build_task(cfg, patches)
    if per_step:
        state = task.state_dict()
        task = PerStepLoggingTask(**dict(task.hparams))
        task.load_state_dict(state)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # same shuffles and flips
    data = PatchDataModule(patches, batch_size=cfg.train.batch_size, seed=cfg.seed)
    recorder = Recorder()
    with _quiet_lightning():
        trainer = _build_trainer(cfg, RunDir(tmp_path / ("old" if per_step else "new")), 5,
                                 False)
        trainer.callbacks.append(recorder)
        trainer.fit(task, datamodule=data)
    return recorder.seen, task.state_dict()


@pytest.mark.parametrize("train", [{}, {"scheduler": "cosine", "warmup_epochs": 1}],
                         ids=["plateau", "cosine"])
def test_epoch_values_lrs_and_weights_equal_the_per_step_version(
    tmp_path: Path, train: dict[str, Any]
) -> None:
    (new, new_state), (old, old_state) = (_fit(tmp_path, per_step=p, **train)
                                          for p in (False, True))
    assert [when for when, _ in new] == [when for when, _ in old]
    names = {f"{s}_{m}" for s in ("train", "val") for m in ("loss", "accuracy", "f1_macro")}
    assert set(new[-1][1]) == set(old[-1][1]) == names | {"lr"}
    for (when, got), (_, want) in zip(new, old, strict=True):
        if when.startswith("val_end"):
            # during validation Lightning still showed the previous epoch's train values;
            # published at the last training batch, they are the current epoch's (below)
            got = {k: v for k, v in got.items() if not k.startswith("train_")}
            want = {k: v for k, v in want.items() if not k.startswith("train_")}
        assert got.keys() == want.keys(), when
        for key in want:
            assert got[key].dtype == want[key].dtype, (when, key)
            assert torch.equal(got[key], want[key]), (when, key, got[key], want[key])
    for (when, during_val), (_, at_end) in itertools.pairwise(new):
        if when.startswith("val_end"):
            assert all(torch.equal(during_val[k], at_end[k]) for k in names), when
    assert {float(m["val_f1_macro"]) for _, m in new} - {1.0}, "degenerate check: all F1 = 1"
    assert len({float(m["lr"]) for _, m in new}) > 1, "degenerate check: the lr never changed"
    assert new_state.keys() == old_state.keys()
    for key in old_state:
        assert torch.equal(new_state[key], old_state[key]), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_epoch_loss_is_lightnings_weighted_mean(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    acc = EpochAccumulator()
    expected = torch.tensor(0.0)  # Lightning: default dtype, value + loss * batch_size
    count = torch.tensor(0)
    for size in [32] * 40 + [7]:
        loss = (torch.rand((), generator=gen) * 3).to(dtype)
        acc.update(loss, torch.zeros(size, dtype=torch.long), torch.zeros(size, dtype=torch.long))
        value = loss if dtype in (torch.float32, torch.float64) else loss.to(torch.float32)
        expected = expected + value * size
        count = count + size
    got = acc.loss()
    assert got.dtype == (expected / count).dtype
    assert torch.equal(got, expected / count)


def test_epoch_scores_equal_torchmetrics_updated_per_batch() -> None:
    gen = torch.Generator().manual_seed(1)
    metrics = _collection("val", 5)
    acc = EpochAccumulator()
    for size in (32, 32, 9):
        preds = torch.randint(0, 4, (size,), generator=gen)  # class 4 never predicted
        target = torch.randint(0, 3, (size,), generator=gen)  # nor present
        metrics.update(preds, target)
        acc.update(torch.tensor(1.0), preds, target)
    want = metrics.compute()
    got = epoch_scores(*acc.predictions(), 5)
    for name in ("accuracy", "f1_macro"):
        assert torch.equal(got[name], want[f"val_{name}"]), name


def _trainer_with_csv_logger(tmp_path: Path, epochs: int) -> tuple[L.Trainer, Any, Any]:
    cfg = make_config(tmp_path, epochs=epochs)
    patches = make_patchset(n=70, seed=2)
    task = build_task(cfg, patches)
    data = PatchDataModule(patches, batch_size=cfg.train.batch_size, seed=cfg.seed)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1,
                        logger=CSVLogger(tmp_path / "logs", name="csv"),
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    return trainer, task, data


def test_epoch_values_reach_loggers_progress_bar_and_validate(tmp_path: Path) -> None:
    trainer, task, data = _trainer_with_csv_logger(tmp_path, epochs=2)
    with _quiet_lightning():
        trainer.fit(task, datamodule=data)
    assert set(trainer.progress_bar_metrics) == {"train_loss", "val_loss", "val_accuracy",
                                                 "val_f1_macro"}
    rows = list(csv.DictReader((Path(trainer.logger.log_dir) / "metrics.csv").open()))
    val_rows = [r for r in rows if r.get("val_loss")]
    train_rows = [r for r in rows if r.get("train_loss")]
    assert [int(r["epoch"]) for r in val_rows] == [int(r["epoch"]) for r in train_rows] == [0, 1]
    last = {k: v for row in (train_rows[-1], val_rows[-1]) for k, v in row.items() if v}
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_f1_macro"):
        assert float(last[name]) == pytest.approx(float(trainer.callback_metrics[name]))
    # as Lightning: at the step of the epoch's last batch (steps so far minus one)
    steps = [int(r["step"]) for r in val_rows] + [int(r["step"]) for r in train_rows]
    assert steps == [trainer.global_step // 2 - 1, trainer.global_step - 1] * 2
    assert set(trainer.logged_metrics) >= {"train_loss", "val_loss", "val_f1_macro"}
    # outside fit the values go through self.log, so that validate returns them
    with _quiet_lightning():
        (result,) = trainer.validate(task, datamodule=data, verbose=False)
    assert set(result) == {"val_loss", "val_accuracy", "val_f1_macro"}
    assert 0.0 <= result["val_accuracy"] <= 1.0 and result["val_loss"] > 0


def test_logged_metrics_filled_without_loggers_as_lightning_does(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=1)
    patches = make_patchset(n=70, seed=2)
    task = build_task(cfg, patches)
    data = PatchDataModule(patches, batch_size=cfg.train.batch_size, seed=cfg.seed)
    with _quiet_lightning():
        trainer = _build_trainer(cfg, RunDir(tmp_path / "run"), 1, False)  # logger=False
        trainer.fit(task, datamodule=data)
    assert not trainer.loggers
    names = {f"{s}_{m}" for s in ("train", "val") for m in ("loss", "accuracy", "f1_macro")}
    assert set(trainer.logged_metrics) == names
