"""Training past one device: data-parallel processes (``train.devices``), mixed precision
(``train.precision``), and the checks and interruptions around them. On the CPU each device is
a process (gloo); the same code paths serve GPUs."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.plugins.precision import MixedPrecision

from factories import make_config, make_multilabel_patchset, make_patchset
from geofuse.config import dump_config
from geofuse.errors import ConfigError
from geofuse.preflight import check_config
from geofuse.rundir import RunDir, read_history
from geofuse.training.train import _build_trainer, train_model
from test_interrupt import RUN, _children, _outliving, _start, _wait_for

pytestmark = pytest.mark.slow


def test_two_processes_train_on_shards_and_judge_the_whole_split(tmp_path: Path) -> None:
    # label sets: two epochs leave mediocre figures that a process seeing only its half of
    # the validation split, or its own batch-norm statistics, would get wrong; a tolerance of
    # 100% makes every val_loss "flat", so the collapse guard stops at the second epoch
    cfg = make_config(tmp_path, epochs=5, devices=2, accelerator="cpu", checkpoint="last")
    cfg.guards.stop_on_collapse = True
    cfg.guards.flat_epochs = 2
    cfg.guards.flat_tolerance = 1.0
    patches = make_multilabel_patchset()
    patches.split[np.flatnonzero(patches.split == 1)[0]] = 0  # an odd validation split
    patches.save(cfg.patches_path)
    run = RunDir(train_model(cfg, progress=False))

    history = read_history(run.history)
    assert [row["epoch"] for row in history] == [0, 1]  # one writer; stopped by the guard
    info = json.loads(run.run_json.read_text())
    # the guard's verdict came back from the training processes through last.ckpt
    assert info["status"] == "finished"
    assert info["collapse_stop"]["epoch"] == 1
    assert "flat" in info["collapse_stop"]["reason"]
    # each process took half of the training patches a step: half the steps of one device
    n_train = int((patches.split == 0).sum())
    last = torch.load(run.last_ckpt, map_location="cpu", weights_only=False)
    assert last["global_step"] == 2 * math.ceil(math.ceil(n_train / 2) / cfg.train.batch_size)
    assert last["global_step"] < 2 * (n_train // cfg.train.batch_size)
    # the values the processes computed together equal one process evaluating the saved
    # (final) weights on the whole validation split (31 patches: none counted twice)
    metrics = json.loads((run.path / "metrics.json").read_text())["val"]
    assert metrics["n"] == int((patches.split == 1).sum())
    assert history[-1]["val_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert history[-1]["val_f1_macro"] == pytest.approx(metrics["f1_macro"], abs=1e-6)
    assert 0.0 < metrics["accuracy"] < 1.0


def test_mixed_precision_trains_in_bfloat16(tmp_path: Path) -> None:
    cfg32 = make_config(tmp_path / "fp32", epochs=2, accelerator="cpu")
    cfg16 = make_config(tmp_path / "bf16", epochs=2, accelerator="cpu", precision="bf16-mixed")
    trainer = _build_trainer(cfg16, RunDir(tmp_path / "probe"), 2, progress=False)
    assert isinstance(trainer.precision_plugin, MixedPrecision)
    assert trainer.precision_plugin.precision == "bf16-mixed"
    losses = []
    for cfg in (cfg32, cfg16):
        make_patchset().save(cfg.patches_path)
        run = RunDir(train_model(cfg, progress=False))
        losses.append(read_history(run.history)[0]["train_loss"])
        val = json.loads((run.path / "metrics.json").read_text())["val"]
        assert val["accuracy"] >= 0.9
    assert losses[0] != losses[1]  # the bf16 run really computed in bf16


def test_devices_and_precision_are_checked_before_training(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, devices=999, accelerator="gpu")
    problems = [str(p) for p in check_config(cfg, "train")]
    assert any("train.devices" in p and "999" in p and "GPU(s)" in p for p in problems)
    cfg = make_config(tmp_path, devices=2)
    cfg.ablation.ray.num_gpus_per_cell = 1
    problems = [str(p) for p in check_config(cfg, "ablate")]
    assert any("ablation.ray.num_gpus_per_cell" in p and "at least 2" in p for p in problems)
    for bad in ({"devices": 0}, {"strategy": "ddp_sapwn"}, {"precision": "16"},
                {"accelerator": "tpuu"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            make_config(tmp_path, **bad)
    cfg = make_config(tmp_path / "shares", devices=5)
    few = make_patchset(n=40)
    few.split[few.split == 1] = 0
    few.split[:4] = 1  # one validation patch per class, 4 for 5 devices
    few.save(cfg.patches_path)
    with pytest.raises(ConfigError, match=r"validation split holds 4 patch\(es\), fewer than "
                                          r"train.devices = 5"):
        train_model(cfg, progress=False)
    # past the preflight (the Python API), Lightning's refusal is a one-line ConfigError and
    # the run says it failed
    cfg = make_config(tmp_path, devices=39, accelerator="gpu")  # 40 validation patches
    make_patchset().save(cfg.patches_path)
    with pytest.raises(ConfigError, match=r"Lightning cannot train with train.accelerator = "
                                          r"'gpu', devices = 39.*change those keys"):
        train_model(cfg, progress=False)
    run = next(cfg.runs_path.iterdir())
    assert json.loads((run / "run.json").read_text())["status"] == "failed"


def test_sigterm_stops_every_training_process_and_the_run_resumes(tmp_path: Path) -> None:
    # forked processes inherit the command's signal handlers (spawned ones start bare)
    # last.ckpt after every epoch (a loaded machine must not space the writes out)
    cfg = make_config(tmp_path, epochs=200, early_stopping_patience=500,
                      strategy="ddp_fork", accelerator="cpu", model={"hidden": 32},
                      checkpoint_overhead=1.0)
    make_patchset(n=600, patch_size=16).save(cfg.patches_path)
    path = tmp_path / "study.yaml"
    dump_config(cfg, path)
    run = RunDir(cfg.runs_path / RUN)
    proc = _start("train", "-c", str(path), "--devices", "2", "--precision", "bf16-mixed",
                  root=tmp_path)
    _wait_for("2 epochs", lambda: len(read_history(run.history)) >= 2, proc)
    recorded = yaml.safe_load(run.config.read_text())["train"]  # the flags override the file
    assert (recorded["devices"], recorded["precision"]) == (2, "bf16-mixed")
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers  # the two training processes
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "Traceback" not in out, out
    assert not _outliving(workers), out
    assert json.loads(run.run_json.read_text())["status"] == "interrupted", out
    done = torch.load(run.last_ckpt, map_location="cpu", weights_only=False)["epoch"]
    assert done >= len(read_history(run.history)) - 2  # at most one epoch lost
    # the resumable state written by the processes continues on one device, in 32 bit
    train_model(cfg, resume=True, progress=False, run_name=RUN, epochs=done + 2)
    assert json.loads(run.run_json.read_text())["status"] == "finished"
    assert [r["epoch"] for r in read_history(run.history)] == list(range(done + 2))


def test_each_device_drops_only_its_own_one_sample_last_batch() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    from geofuse.data.datamodule import PatchDataModule

    for n_train, drop in ((66, True), (65, True), (161, False), (64, False)):
        patches = make_patchset(n=n_train + 10)
        patches.split[:] = 1
        patches.split[:n_train] = 0
        module = PatchDataModule(patches, batch_size=32)
        module.trainer = SimpleNamespace(world_size=2, global_rank=1)  # shares 33, 33, 81, 32
        assert module.train_dataloader().drop_last is drop, n_train
        val = module.val_dataloader()
        assert isinstance(val.sampler, UnrepeatedDistributedSampler)
        assert len(val.sampler) == 5  # rank 1's 5 of the 10 validation patches, none padded
