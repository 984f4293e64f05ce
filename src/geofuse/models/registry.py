"""Model registry: YAML names (``train.model.name``) mapped to model constructors.

Every constructor takes ``in_channels``, ``num_classes`` and ``patch_size`` plus its own keyword
arguments and returns an ``nn.Module`` mapping (B, C, P, P) to logits (B, num_classes). New
models (resnet, fusion models) slot in by adding one entry to :data:`MODELS`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from geofuse.errors import ConfigError
from geofuse.models.simple_cnn import SimpleCNN

ModelBuilder = Callable[..., nn.Module]

MODELS: dict[str, ModelBuilder] = {
    "simple_cnn": SimpleCNN,
}

_REQUIRED = ("in_channels", "num_classes", "patch_size")


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(MODELS)


def create_model(
    name: str, in_channels: int, num_classes: int, patch_size: int, **kwargs: Any
) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: registry key as written in YAML, e.g. ``simple_cnn``.
        in_channels: number of input bands.
        num_classes: number of classes.
        patch_size: patch height/width in pixels.
        **kwargs: model-specific options (e.g. ``hidden``, ``dropout``).

    Raises:
        ConfigError: unknown name, or an option the model does not take.
    """
    builder = MODELS.get(name)
    if builder is None:
        raise ConfigError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}; "
            "fix train.model.name in the config"
        )
    accepted = set(inspect.signature(builder).parameters) - set(_REQUIRED)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"model {name!r} does not take option(s) {unknown}; it takes {sorted(accepted)}; "
            "fix train.model in the config"
        )
    return builder(in_channels=in_channels, num_classes=num_classes, patch_size=patch_size,
                   **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
