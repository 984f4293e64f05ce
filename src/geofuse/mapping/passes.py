"""How a map's networks run: the torch device, and Monte Carlo dropout passes."""

from __future__ import annotations

import torch

from geofuse.errors import ConfigError


def member_passes(kind: str, mc_dropout: int) -> int:
    """Forward passes per member of ``kind``: ``mc_dropout`` for networks when set, else 1."""
    return mc_dropout if mc_dropout > 0 and kind in ("patch", "dense") else 1


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; a CUDA device torch cannot
    see is a one-line ConfigError."""
    name = device.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name.startswith("cuda"):
        index = name.partition(":")[2]
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: torch sees no CUDA GPU on this machine; use "
                              "--device cpu (or auto)")
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConfigError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA "
                              "GPU(s), numbered from 0; pick one of them")
        return name
    raise ConfigError(f"--device {device} is not a device geofuse maps on; use auto, cpu, "
                      "cuda or cuda:N")


def enable_mc_dropout(model: torch.nn.Module, what: str) -> None:
    """Switch every dropout layer of ``model`` (in eval mode) to training mode.

    Raises:
        ConfigError: the model has no dropout layer with p > 0.
    """
    layers = [m for m in model.modules()
              if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]
    if not layers:
        raise ConfigError(f"--mc-dropout: the model of {what} has no dropout layer with p > 0; "
                          "map it without --mc-dropout, or train with dropout (e.g. "
                          "train.model.dropout: 0.5)")
    for layer in layers:
        layer.train()
