"""Seconds per epoch of geofuse training against a plain PyTorch loop on the same inputs.

geofuse: the ClassificationTask + PatchDataModule under the Trainer that ``train_model`` builds
(history, early-stopping and checkpoint callbacks, torchmetrics, Adam + ReduceLROnPlateau).
Plain:   the same model class, seed, loaders (same PatchDataModule, so the same normalisation
and augmentation), batch size, Adam + ReduceLROnPlateau, a train pass and a validation pass
(loss and accuracy) per epoch, nothing else. The ratio is therefore the framework overhead.

Models: SimpleCNN on 8x8 patches; ResNet-50 (timm, from scratch) on 32x32 patches.
Each runs ``--warmup`` epochs untimed, then ``--epochs`` timed epochs, and counts its median
epoch; ``--pairs`` plain and geofuse runs alternate, and the medians over the pairs are
reported, so that a burst of load on a shared machine does not decide the ratio. The plain
loop runs in the environment of a script that never imports Lightning
(:func:`without_lightning_environment`).

``--floor`` adds a third run to each pair: a bare LightningModule (the same model, Adam, loss
returned from ``training_step``; no metrics, callbacks, scheduler or logging) under a plain
Trainer, the least any Lightning training costs.

Run: ``.venv/bin/python benchmarks/train_overhead.py [--n 2000] [--epochs 9] [--pairs 5]
[--floor]``.
Target (issue #3): geofuse <= 1.15x the plain loop.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from geofuse.config import StudyConfig, parse_config
from geofuse.data.datamodule import PatchDataModule
from geofuse.data.patchset import PatchSet
from geofuse.models.registry import MODELS
from geofuse.rundir import RunDir
from geofuse.training._step_costs import NVML_CHECK_VARIABLE, cuda_check_without_missing_nvml
from geofuse.training.train import _build_trainer, _quiet_lightning, build_task

CASES = {"simple_cnn": 8, "resnet50": 32}  # model -> patch size
CLASSES = ["a", "b", "c", "d"]


def make_patches(n: int, patch_size: int, seed: int = 0) -> PatchSet:
    """Learnable 6-band PatchSet, 70/20/10 split."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    means = rng.normal(0, 1, (len(CLASSES), 6))
    x = means[y][:, :, None, None] + rng.normal(0, 0.6, (n, 6, patch_size, patch_size))
    split = np.zeros(n, dtype=np.uint8)
    split[(np.arange(n) // len(CLASSES)) % 10 >= 7] = 1
    split[(np.arange(n) // len(CLASSES)) % 10 == 9] = 2
    bands = [f"b{i}" for i in range(6)]
    return PatchSet(x=x, y=y, band_names=bands, modalities={"s2": bands},
                    class_names=CLASSES, groups=[str(i) for i in range(n)],
                    coords=np.zeros((n, 2)), split=split)


def make_config(root: Path, model: str, batch_size: int, device: str) -> StudyConfig:
    return parse_config({
        "name": "bench", "workdir": str(root),
        "modalities": [{"name": "s2", "files": ["s2.tif"], "bands": [f"b{i}" for i in range(6)]}],
        "train": {"model": {"name": model}, "batch_size": batch_size,
                  "accelerator": "gpu" if device == "cuda" else "cpu",
                  "early_stopping_patience": 100},
    }, root)


class EpochTimer(Callback):
    """Wall-clock time at the start and end (after validation) of every training epoch, and at
    the end of training (after the one-off final checkpoint writes)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.end = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ends.append(time.perf_counter())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end = time.perf_counter()


def time_geofuse(
    cfg: StudyConfig, patches: PatchSet, warmup: int, epochs: int
) -> tuple[float, float]:
    """Median seconds of the timed epochs of geofuse training (start to start: train,
    validation, callbacks, Lightning's epoch-end work), and the one-off seconds after the last
    epoch (final best/last checkpoint writes)."""
    timer = _timed_fit(
        cfg, patches, lambda: build_task(cfg, patches),
        lambda: _build_trainer(cfg, RunDir(cfg.runs_path / "bench"), warmup + epochs, False),
    )
    return _median_epoch(timer, warmup), timer.end - timer.ends[-1]


class BareTask(L.LightningModule):
    """The least a LightningModule does: forward, cross-entropy, Adam."""

    def __init__(self, model: torch.nn.Module, lr: float) -> None:
        super().__init__()
        self.model, self.lr = model, lr

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.model(batch["image"]), batch["label"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.model(batch["image"]), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def time_bare_lightning(cfg: StudyConfig, patches: PatchSet, warmup: int, epochs: int) -> float:
    """Median seconds of the timed epochs of :class:`BareTask` under a Trainer without
    logger, checkpointing, progress bar or model summary."""
    timer = _timed_fit(
        cfg, patches, lambda: BareTask(build_task(cfg, patches).model, cfg.train.lr),
        lambda: L.Trainer(max_epochs=warmup + epochs, accelerator=cfg.train.accelerator,
                          devices=1, deterministic=cfg.train.deterministic, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False),
    )
    return _median_epoch(timer, warmup)


def _timed_fit(
    cfg: StudyConfig, patches: PatchSet, make_task: Callable[[], L.LightningModule],
    make_trainer: Callable[[], L.Trainer],
) -> EpochTimer:
    """Seed, build the task and trainer (in that order, so both sides draw the same initial
    weights), fit with an :class:`EpochTimer` added, as ``train_model`` runs the fit."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = PatchDataModule(patches, batch_size=cfg.train.batch_size, seed=cfg.seed)
    task = make_task()
    timer = EpochTimer()
    with _quiet_lightning(), cuda_check_without_missing_nvml():
        trainer = make_trainer()
        trainer.callbacks.append(timer)
        trainer.fit(task, datamodule=data)
    return timer


def _median_epoch(timer: EpochTimer, warmup: int) -> float:
    starts = timer.starts[warmup:]
    seconds = [b - a for a, b in itertools.pairwise(starts)]
    seconds.append(timer.ends[-1] - starts[-1])
    return statistics.median(seconds)


def _plain_epoch(
    model: torch.nn.Module, data: PatchDataModule, opt: Any, sched: Any, device: str
) -> None:
    model.train()
    for batch in data.train_dataloader():
        x, y = batch["image"].to(device), batch["label"].to(device)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            x, y = batch["image"].to(device), batch["label"].to(device)
            logits = model(x)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    sched.step(total / n)


@contextlib.contextmanager
def without_lightning_environment() -> Iterator[None]:
    """The environment of a script that never imports Lightning: without the
    ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` that importing Lightning sets (which makes every Adam
    step on a machine without NVML try to load it, ~0.2 ms)."""
    value = os.environ.pop(NVML_CHECK_VARIABLE, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[NVML_CHECK_VARIABLE] = value


def time_plain(
    cfg: StudyConfig, patches: PatchSet, warmup: int, epochs: int, device: str
) -> float:
    """Median seconds of the timed epochs of a plain PyTorch loop over the same model and
    loaders."""
    with without_lightning_environment():
        return _time_plain(cfg, patches, warmup, epochs, device)


def _time_plain(
    cfg: StudyConfig, patches: PatchSet, warmup: int, epochs: int, device: str
) -> float:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(bool(cfg.train.deterministic))
    data = PatchDataModule(patches, batch_size=cfg.train.batch_size, seed=cfg.seed)
    model = build_task(cfg, patches).model.to(device)  # same constructor and options
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.train.plateau_factor,
                                                       patience=cfg.train.plateau_patience)
    for _ in range(warmup):
        _plain_epoch(model, data, opt, sched, device)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        _plain_epoch(model, data, opt, sched, device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="patches (SimpleCNN)")
    parser.add_argument("--n-resnet", type=int, default=160, help="patches (ResNet-50)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--pairs", type=int, default=5,
                        help="interleaved plain/geofuse runs per model; medians are reported")
    parser.add_argument("--floor", action="store_true",
                        help="also time a bare LightningModule in each pair (Lightning's floor)")
    args = parser.parse_args()
    rows = []
    for model, size in CASES.items():
        if model not in args.models:
            continue
        if model not in MODELS:
            print(f"{model}: not registered in this checkout (geofuse.models.registry); skipped")
            continue
        n = args.n if model == "simple_cnn" else args.n_resnet
        patches = make_patches(n, size)
        plain, geo, final, ratios, floor = [], [], [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            cfg = make_config(Path(tmp), model, args.batch_size, args.device)
            for _ in range(args.pairs):  # alternated, so both sides see the same machine load
                plain.append(time_plain(cfg, patches, args.warmup, args.epochs, args.device))
                seconds, end_seconds = time_geofuse(cfg, patches, args.warmup, args.epochs)
                geo.append(seconds)
                final.append(end_seconds)
                ratios.append(seconds / plain[-1])
                if args.floor:
                    bare = time_bare_lightning(cfg, patches, args.warmup, args.epochs)
                    floor.append(bare / plain[-1])
        rows.append((model, f"{size}x{size}", n, statistics.median(plain),
                     statistics.median(geo), ratios, statistics.median(final), floor))
    print(f"\n{'model':<12}{'patch':>7}{'patches':>9}{'plain s/epoch':>15}{'geofuse s/epoch':>17}"
          f"{'ratio':>8}{'ratio range':>14}{'one-off end s':>15}"
          + (f"{'bare Lightning':>16}" if args.floor else ""))
    for model, size, n, plain_s, geo_s, ratios, final_s, floor in rows:
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        bare = f"{statistics.median(floor):>15.2f}x" if floor else ""
        print(f"{model:<12}{size:>7}{n:>9}{plain_s:>15.3f}{geo_s:>17.3f}"
              f"{statistics.median(ratios):>7.2f}x{spread:>14}{final_s:>15.2f}{bare}")
    print(f"\n{args.pairs} alternated pairs of runs, each {args.epochs} timed epochs after "
          f"{args.warmup} warm-up, batch {args.batch_size}, {args.device} "
          f"({torch.get_num_threads()} CPU threads). s/epoch: median epoch of a run, median over "
          "the runs; ratio: median over the pairs; target geofuse <= 1.15x plain")
    print("one-off end: writing best.ckpt and last.ckpt once when training ends (not per epoch)")
    if args.floor:
        print("bare Lightning: a LightningModule that only returns the loss, under a plain "
              "Trainer, against the same plain loop (median over the pairs)")

if __name__ == "__main__":
    main()
