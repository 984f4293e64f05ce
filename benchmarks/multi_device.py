"""Training throughput on several devices and in mixed precision, against one device in 32 bit.

Each case trains the same model on the same synthetic PatchSet with ``train_model`` (the
whole geofuse run: history, checkpoints, evaluation): one untimed epoch (a warm-up), then one
timed epoch and ``--epochs`` timed epochs (run.json ``train_s_total``); the difference gives
the steady seconds per epoch without the start-up (spawning the training processes, building
the model), which is printed apart. Throughput is
training patches per second (the validation pass included in the epoch). The final validation
accuracy shows that the cases learn alike.

Baseline: ``--devices`` 1 with ``32-true``, measured in the same run.

On a CPU every device is a process on the same cores (gloo): with as many processes as cores
there is nothing to gain, and the figure measures the cost of the synchronisation. On a
machine with several GPUs, ``--accelerator gpu --devices 1,2,4`` measures the scaling.

Run: ``.venv/bin/python benchmarks/multi_device.py [--n 2000] [--epochs 4] [--devices 1,2]
[--precision 32-true,bf16-mixed] [--accelerator cpu] [--model simple_cnn]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from geofuse.config import StudyConfig, parse_config
from geofuse.data.patchset import PatchSet
from geofuse.training.train import train_model

CLASSES = ["a", "b", "c", "d"]
BANDS = [f"b{i}" for i in range(6)]


def make_patches(n: int, patch_size: int, seed: int = 0) -> PatchSet:
    """Learnable 6-band PatchSet with noisy class means, 70/20/10 split."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    means = rng.normal(0, 0.1, (len(CLASSES), len(BANDS)))
    x = means[y][:, :, None, None] + rng.normal(0, 1.0, (n, len(BANDS), patch_size, patch_size))
    split = np.zeros(n, dtype=np.uint8)
    split[(np.arange(n) // len(CLASSES)) % 10 >= 7] = 1
    split[(np.arange(n) // len(CLASSES)) % 10 == 9] = 2
    return PatchSet(x=x.astype(np.float32), y=y, band_names=BANDS, modalities={"s2": BANDS},
                    class_names=CLASSES, groups=[str(i) for i in range(n)],
                    coords=np.zeros((n, 2)), split=split)


def make_config(root: Path, args: argparse.Namespace, devices: int, precision: str,
                epochs: int) -> StudyConfig:
    return parse_config({
        "name": "bench", "workdir": str(root), "seed": 0,
        "modalities": [{"name": "s2", "files": ["s2.tif"], "bands": BANDS}],
        "train": {"model": {"name": args.model}, "batch_size": args.batch_size,
                  "epochs": epochs, "checkpoint": "last", "accelerator": args.accelerator,
                  "devices": devices, "precision": precision},
    }, root)


def timed_run(root: Path, args: argparse.Namespace, devices: int, precision: str,
              epochs: int) -> tuple[float, float]:
    """Training seconds (run.json ``train_s_total``) and final validation accuracy of one run."""
    cfg = make_config(root, args, devices, precision, epochs)
    run = train_model(cfg, progress=False, run_name=f"d{devices}-{precision}-e{epochs}",
                      overwrite=True)
    info = json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return float(info["train_s_total"]), float(metrics["val"]["accuracy"])


def measure(args: argparse.Namespace, devices: int, precision: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        patches = make_patches(args.n, args.patch_size)
        patches.save(root / "patches.h5")
        n_train = int((patches.split == 0).sum())
        timed_run(root, args, devices, precision, 1)  # warm-up: lazy imports, caches
        one, _ = timed_run(root, args, devices, precision, 1)
        many, accuracy = timed_run(root, args, devices, precision, args.epochs)
    per_epoch = (many - one) / (args.epochs - 1)
    if per_epoch <= 0:  # noise (a loaded machine, tiny epochs): the longer run was not slower
        print(f"note: {devices} device(s), {precision}: the {args.epochs}-epoch run took no "
              f"longer than the 1-epoch run ({many:.3f} s vs {one:.3f} s); its epoch time is "
              "the whole run's mean per epoch, startup included (a lower bound on throughput)")
        per_epoch = many / args.epochs
    return {"devices": devices, "precision": precision, "startup_s": max(one - per_epoch, 0.0),
            "epoch_s": per_epoch, "patches_s": n_train / per_epoch, "val_accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="patches (70%% train)")
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="timed run's epochs (>= 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="per device")
    parser.add_argument("--devices", default="1,2", help="comma-separated device counts")
    parser.add_argument("--precision", default="32-true,bf16-mixed")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--model", default="simple_cnn")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2")
    cases = [(int(d), p) for d in args.devices.split(",") for p in args.precision.split(",")]
    if cases[0] != (1, "32-true"):
        cases.insert(0, (1, "32-true"))  # the baseline
    print(f"{args.model}, {args.n} patches of {args.patch_size} px x {len(BANDS)} bands, "
          f"batch {args.batch_size} per device, accelerator {args.accelerator}, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'devices':>7} {'precision':>10} {'start-up s':>10} {'s/epoch':>8} "
          f"{'patches/s':>10} {'ratio':>6} {'val acc':>8}")
    base = None
    for devices, precision in cases:
        row = measure(args, devices, precision)
        base = base or row["patches_s"]
        print(f"{devices:>7} {precision:>10} {row['startup_s']:>10.2f} {row['epoch_s']:>8.3f} "
              f"{row['patches_s']:>10.1f} {row['patches_s'] / base:>6.2f} "
              f"{row['val_accuracy']:>8.3f}")
    print("ratio: training patches per second against 1 device, 32-true (the first row)")


if __name__ == "__main__":
    main()
