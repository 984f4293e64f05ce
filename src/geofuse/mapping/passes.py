"""How a map's networks run: the torch device, and Monte Carlo dropout passes.

Monte Carlo dropout (``--mc-dropout N``) maps the scene with N thinned copies of a network:
pass k drops, in every dropout layer, the units of one mask drawn from a generator seeded by k
and the layer (channels for ``Dropout2d``/``3d``, every feature for ``Dropout``), the same
for every patch, tile and window. The N passes are then an ensemble of N fixed networks: the
map does not depend on windows, batches, workers, resumption or the device, and blended dense
tiles of one pass come from one network (independent masks per tile would shrink the spread
where tiles overlap). Batch normalisation stays in evaluation mode.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from geofuse.errors import ConfigError

MC_SEED = 7919  #: pass k, layer i: masks drawn from a generator seeded MC_SEED * (k + 1) + i
_CHANNEL_DROPOUT = (torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d)


def member_passes(kind: str, mc_dropout: int) -> int:
    """Forward passes per member of ``kind``: ``mc_dropout`` for networks when set, else 1."""
    return mc_dropout if mc_dropout > 0 and kind in ("patch", "dense") else 1


def check_mc_dropout(passes: int) -> None:
    """Raise a one-line ConfigError unless ``passes`` is 0 (off) or at least 2."""
    if passes < 0 or passes == 1:
        raise ConfigError(f"--mc-dropout {passes}: Monte Carlo dropout needs at least 2 passes "
                          "to measure a spread (e.g. --mc-dropout 10); 0 turns it off")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; a CUDA device torch cannot
    see is a one-line ConfigError."""
    name = device.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ConfigError(f"--device {device} is not a device geofuse maps on; use auto, cpu, "
                          "cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch sees no CUDA GPU on this machine; use "
                          "--device cpu (or auto)")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA "
                          "GPU(s), numbered from 0; pick one of them")
    return name


class McDropout:
    """Fixed dropout masks per pass on every dropout layer of a model (see the module
    docstring); :meth:`set_pass` selects the pass.

    Raises:
        ConfigError: the model has no dropout layer with p > 0.
    """

    def __init__(self, model: torch.nn.Module, what: str) -> None:
        layers = [m for m in model.modules()
                  if isinstance(m, torch.nn.modules.dropout._DropoutNd) and 0 < m.p < 1]
        if not layers:
            raise ConfigError(f"--mc-dropout: the model of {what} has no dropout layer with "
                              "0 < p < 1; map it without --mc-dropout, or train with dropout "
                              "(e.g. train.model.dropout: 0.5)")
        self._index = {id(layer): i for i, layer in enumerate(layers)}
        self._masks: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
        self.pass_index = 0
        self.active = True  #: False: the layers stay identities (the network's own features)
        for layer in layers:  # the layers stay in eval mode (identity); the hook drops units
            layer.register_forward_hook(self._drop)

    def set_pass(self, k: int) -> None:
        """Use the masks of pass ``k`` from now on."""
        self.pass_index = k
        self._masks.clear()

    def _drop(self, module: torch.nn.Module, inputs: tuple[Any, ...], output: torch.Tensor
              ) -> torch.Tensor:
        if not self.active:
            return output
        x = inputs[0]
        key = (id(module), tuple(x.shape[1:]))
        mask = self._masks.get(key)
        if mask is None:
            p = float(module.p)  # type: ignore[arg-type]
            channels = isinstance(module, _CHANNEL_DROPOUT) and x.ndim > 2
            shape = (1, x.shape[1], *[1] * (x.ndim - 2)) if channels else (1, *x.shape[1:])
            seed = MC_SEED * (self.pass_index + 1) + self._index[id(module)]
            keep = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) >= p
            mask = (keep.to(torch.float32) / (1.0 - p)).to(device=x.device, dtype=x.dtype)
            self._masks[key] = mask
        return output * mask
