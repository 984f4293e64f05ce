"""Freezing pretrained layers: by fraction, by named stage, and what fraction is frozen.

The unit of "fraction" is the *parameterised layer*: a module that owns parameters directly
(Conv2d, BatchNorm2d, Linear, ...), in registration order. For the timm backbones geofuse uses
this is forward order, except that a residual block's shortcut (``downsample``) is listed after
its main path. This mirrors the Keras "freeze the first N layers" of the reference course, whose
ResNet-50 with 85% of its layers frozen collapsed to one class.

Frozen batch-norm layers must also stop updating their running statistics; call
:func:`frozen_batchnorm_eval` after every ``model.train()`` (``BackboneClassifier`` does).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from geofuse.errors import ConfigError

COLLAPSE_RISK_FRACTION = 0.8


def parameter_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module that owns parameters directly, in registration order."""
    return [
        (name, m) for name, m in module.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    ]


def set_trainable(modules: Iterable[nn.Module], trainable: bool, recurse: bool = True) -> None:
    """Set ``requires_grad`` of every parameter of ``modules`` (only their own with
    ``recurse=False``)."""
    for m in modules:
        for p in m.parameters(recurse=recurse):
            p.requires_grad_(trainable)


def freeze_by_fraction(module: nn.Module, fraction: float) -> list[str]:
    """Freeze the first ``round(fraction * n)`` of the ``n`` parameterised layers of ``module``.

    Returns:
        Names of the frozen layers, relative to ``module``.

    Raises:
        ConfigError: ``fraction`` outside [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(
            f"freeze_fraction must be between 0 and 1, got {fraction}; fix "
            "train.model.freeze_fraction (0 trains everything)"
        )
    layers = parameter_layers(module)
    count = round(fraction * len(layers))
    # a layer's own parameters only: a ViT owns its class token and position embedding
    # directly, and freezing them must not freeze every block below it
    set_trainable((m for _, m in layers[:count]), False, recurse=False)
    return [name for name, _ in layers[:count]]


def freeze_named_stages(stages: dict[str, list[nn.Module]], names: Iterable[str]) -> None:
    """Freeze the stages ``names`` of a ``{stage name: modules}`` mapping.

    Raises:
        ConfigError: a name that is not a stage; the message lists the valid names.
    """
    names = list(names)
    unknown = [n for n in names if n not in stages]
    if unknown:
        raise ConfigError(
            f"unknown freeze_stages {unknown}; this model's stages are "
            f"{', '.join(stages)}; fix train.model.freeze_stages"
        )
    for name in names:
        set_trainable(stages[name], False)


def frozen_fraction(model: nn.Module) -> float:
    """Share of ``model``'s parameterised layers whose parameters are all frozen (0 to 1)."""
    layers = parameter_layers(model)
    if not layers:
        return 0.0
    frozen = sum(
        1 for _, m in layers if not any(p.requires_grad for p in m.parameters(recurse=False))
    )
    return frozen / len(layers)


def frozen_parameter_fraction(model: nn.Module) -> float:
    """Share of ``model``'s parameter elements that are frozen (0 to 1)."""
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return frozen / total if total else 0.0


def frozen_batchnorm_eval(model: nn.Module) -> int:
    """Put every batch-norm layer whose affine parameters are all frozen into eval mode.

    Eval mode keeps its running mean and variance fixed (the pretrained statistics) while the
    rest of the network trains. Returns the number of layers switched.
    """
    count = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params) and m.training:
                m.eval()
                count += 1
    return count
