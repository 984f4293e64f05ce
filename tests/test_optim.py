"""Optimisers, parameter groups and per-epoch LR schedules (trajectories and in training)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from factories import make_config, make_patchset
from geofuse.config import TrainConfig
from geofuse.errors import ConfigError
from geofuse.rundir import RunDir, read_history
from geofuse.training.optim import build_optimizer, build_scheduler, parameter_groups
from geofuse.training.train import train_model


class _Grouped(nn.Module):
    """A backbone + head + tabular branch that declares its own parameter groups."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.tab_mlp = nn.Linear(3, 2)

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.backbone.parameters()), "lr_scale": 0.1, "name": "backbone"},
                {"params": list(self.head.parameters()), "lr_scale": 1.0, "name": "head"}]


def _trajectory(cfg: TrainConfig, epochs: int) -> list[float]:
    """LR of each epoch as Lightning steps it (once per epoch), relative to cfg.lr."""
    opt = build_optimizer(nn.Linear(2, 2), cfg)
    sched = build_scheduler(opt, cfg, epochs)
    assert sched is not None and sched["interval"] == "epoch"
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"] / cfg.lr)
        opt.step()
        sched["scheduler"].step()
    return out


def test_default_is_adam_with_plateau_on_val_loss() -> None:
    cfg = TrainConfig()
    opt = build_optimizer(nn.Linear(2, 2), cfg)
    assert type(opt) is torch.optim.Adam
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(1e-3, 0.0)]
    sched = build_scheduler(opt, cfg, 50)
    plateau = sched["scheduler"]
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (plateau.patience, plateau.factor, sched["monitor"]) == (4, 0.5, "val_loss")


@pytest.mark.parametrize(("name", "cls"), [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD),
                                           ("rmsprop", torch.optim.RMSprop)])
def test_optimizer_choice_and_momentum(name: str, cls: type) -> None:
    opt = build_optimizer(nn.Linear(2, 2), TrainConfig(optimizer=name, momentum=0.8,
                                                      weight_decay=0.01))
    assert type(opt) is cls
    assert opt.param_groups[0]["weight_decay"] == 0.01
    if name != "adamw":
        assert opt.param_groups[0]["momentum"] == 0.8


def test_parameter_groups_scale_lr_and_tabular_gets_extra_l2() -> None:
    model = _Grouped()
    cfg = TrainConfig(lr=0.01, weight_decay=1e-4, tabular_l2=0.05)
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    assert set(groups) == {"backbone", "head", "rest/tabular"}
    assert groups["backbone"]["lr"] == pytest.approx(0.001)
    assert groups["head"]["lr"] == pytest.approx(0.01)
    tab = groups["rest/tabular"]
    assert tab["weight_decay"] == pytest.approx(0.0501)
    assert {id(p) for p in tab["params"]} == {id(p) for p in model.tab_mlp.parameters()}
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    plain = parameter_groups(model, TrainConfig(lr=0.01))
    assert [g["name"] for g in plain] == ["backbone", "head", "rest"]  # no split without l2


def test_tabular_params_split_off_in_a_model_without_groups() -> None:
    model = nn.ModuleDict({"conv": nn.Linear(2, 2), "tab": nn.Linear(2, 2)})
    groups = parameter_groups(model, TrainConfig(tabular_l2=0.1))
    assert [(g["name"], g["weight_decay"], len(g["params"])) for g in groups] == [
        ("all", 0.0, 2), ("all/tabular", 0.1, 2)]


def test_linear_decays_to_one_percent_and_cosine_to_floor() -> None:
    linear = _trajectory(TrainConfig(scheduler="linear"), 11)
    assert linear[0] == pytest.approx(1.0) and linear[-1] == pytest.approx(0.01)
    assert linear[5] == pytest.approx(0.505)
    cosine = _trajectory(TrainConfig(scheduler="cosine", min_lr_fraction=0.1), 11)
    assert cosine[0] == pytest.approx(1.0) and cosine[-1] == pytest.approx(0.1)
    assert cosine[5] == pytest.approx(0.55)
    assert all(a >= b for a, b in itertools.pairwise(cosine))


def test_step_exponential_and_cyclic_trajectories() -> None:
    step = _trajectory(TrainConfig(scheduler="step", step_size=5, gamma=0.1), 12)
    assert step == pytest.approx([1.0] * 5 + [0.1] * 5 + [0.01] * 2)
    expo = _trajectory(TrainConfig(scheduler="exponential", gamma=0.5), 4)
    assert expo == pytest.approx([1, 0.5, 0.25, 0.125])
    cyc = _trajectory(TrainConfig(scheduler="cyclic", lr=0.1, step_size=2, cyclic_base_lr=0.01,
                                  cyclic_max_lr=0.05), 6)
    assert cyc == pytest.approx([0.1, 0.3, 0.5, 0.3, 0.1, 0.3])


def test_warmup_ramps_then_hands_over_to_the_schedule() -> None:
    ramp = _trajectory(TrainConfig(scheduler="none", warmup_epochs=3), 6)
    assert ramp == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    warm_step = _trajectory(TrainConfig(scheduler="step", step_size=2, gamma=0.5,
                                        warmup_epochs=1), 5)
    assert warm_step == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.5])
    assert build_scheduler(build_optimizer(nn.Linear(2, 2), TrainConfig(scheduler="none")),
                           TrainConfig(scheduler="none"), 5) is None


def test_warmup_with_plateau_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="warmup_epochs=2 cannot be combined"):
        make_config(tmp_path, warmup_epochs=2)


def test_schedule_is_applied_by_training(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, epochs=3, scheduler="linear", optimizer="sgd", lr=0.01,
                      loss={"name": "focal", "gamma": 1.0})
    make_patchset(n=80).save(cfg.patches_path)
    run = RunDir(train_model(cfg, progress=False))
    lrs = [row["lr"] for row in read_history(run.history)]
    assert lrs == pytest.approx([0.01, 0.00505, 0.0001])
    assert "name: focal" in run.config.read_text()
