"""best.ckpt holds the lowest-val_loss epoch's weights; last.ckpt resumes; files are rare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from factories import make_config, make_patchset
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
