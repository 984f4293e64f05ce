"""Optimisers with parameter groups, and per-epoch learning-rate schedules.

:func:`build_optimizer` honours a model's ``parameter_groups()`` (a list of
``{"params": [...], "lr_scale": float, "name": str}``, e.g. a smaller LR for a pretrained
backbone) and gives parameters of the tabular branch (name contains ``tab``) extra weight decay.
:func:`build_scheduler` returns a Lightning ``lr_scheduler`` dict; every schedule but ``plateau``
is a per-epoch LR multiplier (:func:`lr_factor`) after an optional linear warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from geofuse.config import TrainConfig

TABULAR_KEY = "tab"


def _model_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The model's own groups (``parameter_groups()``), plus one for parameters it left out."""
    if not callable(getattr(model, "parameter_groups", None)):
        return [{"params": list(model.parameters()), "lr_scale": 1.0, "name": "all"}]
    groups = [dict(g) for g in model.parameter_groups()]
    seen = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr_scale": 1.0, "name": "rest"})
    return groups


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Optimiser param groups: lr = ``cfg.lr * lr_scale``; tabular parameters split off.

    Parameters whose name contains ``tab`` get ``weight_decay + tabular_l2`` in a group of
    their own (named ``<group>/tabular``) when ``cfg.tabular_l2 > 0``. Empty groups are dropped.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in _model_groups(model):
        params = list(group["params"])
        tab = [p for p in params if TABULAR_KEY in names.get(id(p), "")] if cfg.tabular_l2 else []
        tab_ids = {id(p) for p in tab}
        base = {"lr": cfg.lr * float(group.get("lr_scale", 1.0)), "name": group.get("name", "")}
        split = [
            {**base, "params": [p for p in params if id(p) not in tab_ids],
             "weight_decay": cfg.weight_decay},
            {**base, "params": tab, "weight_decay": cfg.weight_decay + cfg.tabular_l2,
             "name": f"{base['name']}/tabular"},
        ]
        out += [g for g in split if g["params"]]
    return out


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.optimizer`` over :func:`parameter_groups`."""
    groups = parameter_groups(model, cfg)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)


def _triangle(epoch: int, half: int) -> float:
    """0 -> 1 -> 0 over ``2 * half`` epochs."""
    x = epoch % (2 * half)
    return x / half if x <= half else 2 - x / half


def lr_factor(cfg: TrainConfig, max_epochs: int) -> Callable[[int], float]:
    """Multiplier of ``cfg.lr`` at each epoch (0-based) for every schedule but plateau.

    Warm-up: epoch ``e < W`` gets ``(e + 1) / (W + 1)``; the schedule then starts at epoch W.
    ``linear``/``cosine`` reach ``min_lr_fraction`` at the last epoch, ``step`` multiplies by
    ``gamma`` every ``step_size`` epochs, ``exponential`` every epoch, ``cyclic`` moves
    linearly between ``cyclic_base_lr`` and ``cyclic_max_lr`` every ``step_size`` epochs.
    """
    warm = cfg.warmup_epochs
    span = max(1, max_epochs - 1 - warm)
    floor = cfg.min_lr_fraction
    low = (cfg.cyclic_base_lr or cfg.lr * floor) / cfg.lr
    high = (cfg.cyclic_max_lr or cfg.lr) / cfg.lr

    def factor(epoch: int) -> float:
        if epoch < warm:
            return (epoch + 1) / (warm + 1)
        t = epoch - warm
        progress = min(t / span, 1.0)
        if cfg.scheduler == "linear":
            return 1 - (1 - floor) * progress
        if cfg.scheduler == "cosine":
            return floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2
        if cfg.scheduler == "step":
            return cfg.gamma ** (t // cfg.step_size)
        if cfg.scheduler == "exponential":
            return cfg.gamma**t
        if cfg.scheduler == "cyclic":
            return low + (high - low) * _triangle(t, cfg.step_size)
        return 1.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, max_epochs: int
) -> dict[str, Any] | None:
    """Lightning ``lr_scheduler`` config for ``cfg.scheduler``; None for ``none`` without warm-up.

    ``plateau`` is ReduceLROnPlateau on ``train.monitor`` (default ``val_loss``;
    ``plateau_factor``/``plateau_patience``); the others step once per epoch.
    """
    if cfg.scheduler == "plateau":
        mode = "min" if cfg.monitor.endswith("loss") else "max"
        scheduler: Any = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
        return {"scheduler": scheduler, "monitor": cfg.monitor, "interval": "epoch"}
    if cfg.scheduler == "none" and not cfg.warmup_epochs:
        return None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, max_epochs))
    return {"scheduler": scheduler, "interval": "epoch"}
