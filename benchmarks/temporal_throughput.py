"""Training samples per second and peak memory of the LSTM-UNet: geofuse against a plain loop.

Data: synthetic land-take tiles (:func:`geofuse.data.datasets.land_take.make_land_take`, the
land-take experiment's shape by default: T = 7 annual steps of C = 9 Sentinel-2 bands, 64 x 64
px, binary change masks, clouds as NaN), ``batch x (warmup + steps)`` training tiles and one
validation batch.

geofuse: :class:`~geofuse.training.task.ClassificationTask` (``segmentation=True``,
``time_steps=T``) + :class:`~geofuse.data.datamodule.PatchDataModule` under the Trainer that
``train_model`` builds (history, early-stopping and checkpoint callbacks, epoch metrics, Adam +
ReduceLROnPlateau), fitted for one epoch.
Plain:   the same model (``create_model("lstm_unet", ...)`` with the same options and seed, so
the same initial weights), the same loaders (the same PatchDataModule: normalisation,
augmentation, batch size, shuffle order), the same loss (``build_loss``: focal, class weights
[0.75, 0.25]) and Adam; forward, zero_grad, backward, step, nothing else.

Only training steps are timed: a step is the time from the end of one optimiser step to the end
of the next (so loading and collating the batch, and every per-step hook, are in it). Each run
takes ``--warmup`` untimed steps, then ``--steps`` timed ones, and counts its median step;
samples/s = batch size / median step. ``--pairs`` plain and geofuse runs alternate and the
median over the pairs is reported (ratio = geofuse seconds per step / plain seconds per step),
so that a burst of load on a shared machine does not decide the ratio. The plain loop runs in
the environment of a script that never imports Lightning
(:func:`train_overhead.without_lightning_environment`).

Memory: peak RSS over a run's training steps (Linux: ``VmHWM``, reset through
``/proc/self/clear_refs`` before each run, after garbage collection and ``malloc_trim``; the
geofuse run's peak includes its sanity-check validation; elsewhere ``ru_maxrss``, the process's
peak so far) and, on CUDA, ``torch.cuda.max_memory_allocated`` over the same steps.

Run: ``.venv/bin/python benchmarks/temporal_throughput.py [--device auto|cpu|cuda]
[--encoders resnet18 resnet50] [--steps 10] [--warmup 1] [--pairs 3] [--quick]``.
``--quick``: tiny inputs (16 x 16 px, T = 3, C = 4, ConvLSTM hidden 8, 2 steps, 1 pair) for the
smoke test; explicit options still win.
Target (issue #13): geofuse <= 1.1x the plain loop's time per step.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from train_overhead import without_lightning_environment

from geofuse.config import StudyConfig, parse_config
from geofuse.data.datamodule import PatchDataModule
from geofuse.data.datasets.land_take import make_land_take
from geofuse.data.patchset import SPLIT_CODES, PatchSet
from geofuse.models.registry import create_model
from geofuse.rundir import RunDir
from geofuse.training._step_costs import cuda_check_without_missing_nvml
from geofuse.training.losses import build_loss
from geofuse.training.train import _build_trainer, _quiet_lightning, build_task, model_kwargs

MODEL = "lstm_unet"
ENCODERS = ("resnet18", "resnet50")
CLASS_WEIGHTS = [0.75, 0.25]  # focal alpha 0.25 on the change class (binary_focal_alpha)
#: Option defaults: the land-take experiment's shape, and the smoke test's (``--quick``).
REAL: dict[str, int] = {"size": 64, "time_steps": 7, "bands": 9, "hidden": 256,
                        "batch_size": 4, "steps": 10, "warmup": 1, "pairs": 3}
QUICK: dict[str, int] = {"size": 16, "time_steps": 3, "bands": 4, "hidden": 8,
                         "batch_size": 4, "steps": 2, "warmup": 1, "pairs": 1}


@dataclasses.dataclass
class RunResult:
    """One timed run: median seconds per training step and memory over the training steps."""

    step_s: float
    rss_start_mb: float
    rss_peak_mb: float
    gpu_peak_mb: float | None


def make_patches(n_train: int, n_val: int, size: int, time_steps: int, bands: int,
                 seed: int = 0) -> PatchSet:
    """Synthetic land-take tiles: ``n_train`` training tiles, then ``n_val`` validation tiles."""
    patches = make_land_take(n_tiles=n_train + n_val, years=time_steps, bands=bands, size=size,
                             seed=seed)
    split = np.full(n_train + n_val, SPLIT_CODES["val"], dtype=np.uint8)
    split[:n_train] = SPLIT_CODES["train"]
    return dataclasses.replace(patches, split=split)


def make_config(root: Path, encoder: str, hidden: int, batch_size: int, device: str
                ) -> StudyConfig:
    """A study config training ``lstm_unet`` with the land-take loss on ``device``.

    CUDA runs use ``deterministic: warn``: the decoder's bilinear upsampling has no
    deterministic CUDA backward kernel.
    """
    return parse_config({
        "name": "bench", "workdir": str(root),
        "modalities": [{"name": "s2", "files": ["s2.tif"], "bands": ["B02"]}],
        "train": {"model": {"name": MODEL, "encoder": encoder, "lstm_hidden_dim": hidden},
                  "batch_size": batch_size, "accelerator": "gpu" if device == "cuda" else "cpu",
                  "deterministic": "warn" if device == "cuda" else True,
                  "early_stopping_patience": 100,
                  "loss": {"name": "focal", "class_weights": CLASS_WEIGHTS}},
    }, root)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _current_rss_mb() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak RSS since the last :func:`start_memory`: VmHWM (Linux), else
    ``ru_maxrss`` (the peak of the whole process so far)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def start_memory(device: str) -> float:
    """Free what earlier runs left (garbage collection, ``malloc_trim``), reset the peak RSS
    (``/proc/self/clear_refs``) and the CUDA peak; the RSS now, in MB."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc).malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return _current_rss_mb()


def _peaks(device: str) -> tuple[float, float | None]:
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return peak_rss_mb(), gpu


def _median_step(marks: list[float], warmup: int) -> float:
    """Median of the timed steps; ``marks`` are the start and the end of every step."""
    return statistics.median(np.diff(marks)[warmup:].tolist())


class StepTimer(Callback):
    """Wall-clock time at the start of the epoch and at the end of every training step, and
    the memory peaks at the end of the last one (``total`` steps)."""

    def __init__(self, total: int, device: str) -> None:
        self.total, self.device = total, device
        self.marks: list[float] = []
        self.peaks: tuple[float, float | None] = (float("nan"), None)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(self.device)
        self.marks.append(time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        _sync(self.device)
        self.marks.append(time.perf_counter())
        if batch_idx + 1 == self.total:
            self.peaks = _peaks(self.device)


def time_geofuse(cfg: StudyConfig, patches: PatchSet, warmup: int, steps: int,
                 device: str) -> RunResult:
    """One epoch of geofuse training (the Trainer ``train_model`` builds) of ``warmup + steps``
    training steps; median seconds per timed step and memory over the training steps."""
    rss_start = start_memory(device)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = PatchDataModule(patches, batch_size=cfg.train.batch_size, seed=cfg.seed)
    task = build_task(cfg, patches)
    timer = StepTimer(warmup + steps, device)
    with _quiet_lightning(), cuda_check_without_missing_nvml():
        trainer = _build_trainer(cfg, RunDir(cfg.runs_path / "bench"), 1, False)
        trainer.callbacks.append(timer)
        trainer.fit(task, datamodule=data)
    if len(timer.marks) != warmup + steps + 1:
        raise RuntimeError(f"geofuse ran {len(timer.marks) - 1} steps, expected {warmup + steps}")
    rss_peak, gpu_peak = timer.peaks
    return RunResult(_median_step(timer.marks, warmup), rss_start, rss_peak, gpu_peak)


def time_plain(cfg: StudyConfig, patches: PatchSet, warmup: int, steps: int,
               device: str) -> RunResult:
    """The same steps in a plain PyTorch loop over the same model, loaders, loss and Adam."""
    with without_lightning_environment():
        return _time_plain(cfg, patches, warmup, steps, device)


def _time_plain(cfg: StudyConfig, patches: PatchSet, warmup: int, steps: int,
                device: str) -> RunResult:
    rss_start = start_memory(device)
    deterministic = cfg.train.deterministic
    torch.use_deterministic_algorithms(deterministic is not False,
                                       warn_only=deterministic == "warn")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = PatchDataModule(patches, batch_size=cfg.train.batch_size, seed=cfg.seed)
    num_classes = len(patches.mask_names)
    model = create_model(  # what build_task builds, with the same seed: the same weights
        MODEL, in_channels=len(patches.band_names), num_classes=num_classes,
        patch_size=patches.patch_size, time_steps=patches.time_steps,
        **model_kwargs(cfg, patches),
    ).to(device)
    loss_fn = build_loss(cfg.train.loss, num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                           weight_decay=cfg.train.weight_decay)
    model.train()
    _sync(device)
    marks = [time.perf_counter()]
    for batch in data.train_dataloader():
        x, y = batch["image"].to(device), batch["mask"].to(device)
        logits = model(x)
        if logits.shape[1] == 1:  # one binary logit z -> the two-class logits [0, z]
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        marks.append(time.perf_counter())
    rss_peak, gpu_peak = _peaks(device)
    if len(marks) != warmup + steps + 1:
        raise RuntimeError(f"plain loop ran {len(marks) - 1} steps, expected {warmup + steps}")
    return RunResult(_median_step(marks, warmup), rss_start, rss_peak, gpu_peak)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here; use --device cpu")
    return device


def _options(args: argparse.Namespace) -> dict[str, int]:
    """The sizes and counts: given options, else the ``--quick`` or real-size defaults."""
    defaults = QUICK if args.quick else REAL
    return {key: getattr(args, key) if getattr(args, key) is not None else value
            for key, value in defaults.items()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--steps", type=int, help="timed training steps per run (10)")
    parser.add_argument("--warmup", type=int, help="untimed steps before them (1)")
    parser.add_argument("--pairs", type=int,
                        help="interleaved plain/geofuse runs per encoder; medians reported (3)")
    parser.add_argument("--batch-size", type=int, help="tiles per batch (4)")
    parser.add_argument("--size", type=int, help="tile side in px (64)")
    parser.add_argument("--time-steps", type=int, help="dates T (7)")
    parser.add_argument("--bands", type=int, help="bands per date C, at most 9 (9)")
    parser.add_argument("--hidden", type=int, help="ConvLSTM hidden channels (256)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny defaults: 16 x 16 px, T 3, C 4, hidden 8, 2 steps, 1 pair")
    return parser


def main() -> None:
    args = _parser().parse_args()
    opt = _options(args)
    device = _resolve_device(args.device)
    batch, warmup, steps = opt["batch_size"], opt["warmup"], opt["steps"]
    patches = make_patches(batch * (warmup + steps), batch, opt["size"], opt["time_steps"],
                           opt["bands"])
    rows = []
    for encoder in args.encoders:
        plain: list[RunResult] = []
        geo: list[RunResult] = []
        with tempfile.TemporaryDirectory() as tmp:
            cfg = make_config(Path(tmp), encoder, opt["hidden"], batch, device)
            for _ in range(opt["pairs"]):  # alternated, so both sides see the same machine load
                plain.append(time_plain(cfg, patches, warmup, steps, device))
                geo.append(time_geofuse(cfg, patches, warmup, steps, device))
        rows.append((encoder, geo, plain))
    _print_table(rows, device, batch)
    print(f"\n{opt['pairs']} alternated pairs of runs, each {steps} timed training steps after "
          f"{warmup} warm-up, batch {batch} x T {opt['time_steps']} x C {opt['bands']} x "
          f"{opt['size']} x {opt['size']} px, ConvLSTM hidden {opt['hidden']}, focal loss "
          f"(class weights {CLASS_WEIGHTS}), Adam; {_device_words(device)}")
    print("samples/s: batch / median step of a run, median over the runs; ratio: geofuse / "
          "plain seconds per step, median over the pairs; target geofuse <= 1.1x plain")
    print("RSS: peak resident memory over a run's training steps (reset before each run; "
          "'before' is the RSS at the reset, smallest over the runs)"
          + ("; GPU: torch.cuda.max_memory_allocated over the same steps" if device == "cuda"
             else ""))


def _print_table(rows: list[tuple[str, list[RunResult], list[RunResult]]], device: str,
                 batch: int) -> None:
    gpu = device == "cuda"
    print(f"\n{'encoder':<10}{'geofuse samples/s':>19}{'plain samples/s':>17}{'ratio':>8}"
          f"{'ratio range':>13}{'geofuse RSS MB':>16}{'plain RSS MB':>14}{'before MB':>11}"
          + (f"{'geofuse GPU MB':>16}{'plain GPU MB':>14}" if gpu else ""))
    for encoder, geo, plain in rows:
        ratios = [g.step_s / p.step_s for g, p in zip(geo, plain, strict=True)]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        line = (f"{encoder:<10}{batch / statistics.median(g.step_s for g in geo):>19.2f}"
                f"{batch / statistics.median(p.step_s for p in plain):>17.2f}"
                f"{statistics.median(ratios):>7.2f}x{spread:>13}"
                f"{statistics.median(g.rss_peak_mb for g in geo):>16.0f}"
                f"{statistics.median(p.rss_peak_mb for p in plain):>14.0f}"
                f"{min(r.rss_start_mb for r in geo + plain):>11.0f}")
        if gpu:
            line += (f"{statistics.median(g.gpu_peak_mb or 0.0 for g in geo):>16.0f}"
                     f"{statistics.median(p.gpu_peak_mb or 0.0 for p in plain):>14.0f}")
        print(line)


def _device_words(device: str) -> str:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"cuda: {props.name}, {props.total_memory / 2**30:.0f} GiB"
    return f"cpu ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
