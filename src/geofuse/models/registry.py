"""Model registry: YAML names (``train.model.name``) mapped to model constructors.

Every constructor takes ``in_channels``, ``num_classes`` and ``patch_size`` plus its own keyword
arguments and returns an ``nn.Module`` mapping (B, C, P, P) to logits (B, num_classes). A
constructor that also takes ``band_names`` gets the input band names, one that takes
``time_steps`` the number of dates T stacked time-major in the channels (C = T x bands).
Segmentation models (:data:`SEGMENTATION_MODELS`) map (B, T*C, H, W) to logits at full
resolution: (B, 1, H, W), one binary logit, for 2 classes, else (B, num_classes, H, W).
New models (fusion models) slot in by adding one entry to :data:`MODELS`;
:func:`describe_models` lists every model's options with their defaults, and the
scikit-learn baselines of :mod:`geofuse.models.forest` (:data:`BASELINE_OPTIONS`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from geofuse.errors import ConfigError
from geofuse.models.backbones import backbone_builders
from geofuse.models.fusion import DecisionFusion, LateFusion
from geofuse.models.lstm_unet import LSTMUNet
from geofuse.models.pixel_net import PixelNet
from geofuse.models.progressive import ProgressiveFusion
from geofuse.models.seg_baselines import EarlyFusionUNet, SiameseUNet, SingleDateUNet
from geofuse.models.seg_fusion import LateFusionUNet
from geofuse.models.simple_cnn import SimpleCNN
from geofuse.models.tabular import TabularFusion
from geofuse.models.temporal import TemporalCNN

ModelBuilder = Callable[..., nn.Module]

MODELS: dict[str, ModelBuilder] = {
    "simple_cnn": SimpleCNN,
    "pixel_net": PixelNet,  # per-pixel spectra, mean/max/std pooled (models/pixel_net.py)
    **backbone_builders(),
    # fusion models (models/fusion.py): one network on the stacked bands *is* early fusion
    "early_fusion": SimpleCNN,
    "late_fusion": LateFusion,
    "decision_fusion": DecisionFusion,
    "progressive_fusion": ProgressiveFusion,
    "tabular_fusion": TabularFusion,
    # a time series of dates held as modalities of one stack (models/temporal.py)
    "temporal_cnn": TemporalCNN,
    # dense (per-pixel) models for time series (models/lstm_unet.py, models/seg_baselines.py)
    "lstm_unet": LSTMUNet,
    "unet_early": EarlyFusionUNet,
    "siamese_unet": SiameseUNet,
    "unet_single": SingleDateUNet,
    "unet_late": LateFusionUNet,  # one encoder per modality (models/seg_fusion.py)
}

#: Models whose output is a logit map (B, 1 or K, H, W) rather than (B, K) patch logits.
SEGMENTATION_MODELS: tuple[str, ...] = ("lstm_unet", "unet_early", "siamese_unet", "unet_single",
                                        "unet_late")

_REQUIRED = ("in_channels", "num_classes", "patch_size")
# given by geofuse, not config options
_SUPPLIED = (*_REQUIRED, "band_names", "multilabel", "regression", "time_steps")


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(MODELS)


def _options(builder: ModelBuilder) -> dict[str, Any]:
    """Option name -> default of a builder (``inspect.Parameter.empty`` when it has none)."""
    bound = set(builder.keywords) if isinstance(builder, functools.partial) else set()
    return {
        name: param.default for name, param in inspect.signature(builder).parameters.items()
        if name not in _SUPPLIED and name not in bound
        and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    }


def model_options(name: str) -> dict[str, Any]:
    """Options (``train.model`` keys) that model ``name`` accepts, with their defaults.

    Raises:
        ConfigError: unknown name.
    """
    return _options(_builder(name))


def takes_band_names(name: str) -> bool:
    """Whether model ``name`` wants the input band names (e.g. for band-aware adaptation)."""
    return "band_names" in inspect.signature(_builder(name)).parameters


def takes_time_steps(name: str) -> bool:
    """Whether model ``name`` wants the number of dates stacked in the channels."""
    return "time_steps" in inspect.signature(_builder(name)).parameters


def is_segmentation_model(name: str) -> bool:
    """Whether model ``name`` predicts a mask (B, 1 or K, H, W) instead of patch logits.

    Raises:
        ConfigError: unknown name.
    """
    _builder(name)
    return name in SEGMENTATION_MODELS


def takes_regression(name: str) -> bool:
    """Whether model ``name``'s output layer depends on continuous targets (``regression``);
    every other model's single output is read as the value itself."""
    return "regression" in inspect.signature(_builder(name)).parameters


def takes_multilabel(name: str) -> bool:
    """Whether model ``name``'s output layer depends on multi-label targets (``multilabel``);
    every other model returns logits that the task reads through a sigmoid or a softmax."""
    return "multilabel" in inspect.signature(_builder(name)).parameters


#: scikit-learn baselines (:mod:`geofuse.models.forest`) -> their ``train.baseline`` options.
BASELINE_OPTIONS: dict[str, tuple[str, ...]] = {
    "logistic_regression": ("features", "c", "max_iter"),
    "random_forest": ("features", "n_estimators", "max_depth"),
}


def describe_models() -> dict[str, dict[str, Any]]:
    """Every model name accepted by ``train.model.name`` -> its options and their defaults.

    Networks (sorted by name) list their ``train.model`` options; the scikit-learn baselines
    (random_forest, logistic_regression) follow, with their ``train.baseline.*`` options.
    """
    from geofuse.config import BaselineConfig

    out = {name: _options(MODELS[name]) for name in list_models()}
    fields = BaselineConfig.model_fields
    for name, keys in BASELINE_OPTIONS.items():
        out[name] = {f"train.baseline.{key}": fields[key].default for key in keys}
    return out


def _builder(name: str) -> ModelBuilder:
    builder = MODELS.get(name)
    if builder is None:
        raise ConfigError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}; "
            "fix train.model.name in the config"
        )
    return builder


def create_model(
    name: str, in_channels: int, num_classes: int, patch_size: int,
    band_names: Sequence[str] | None = None, multilabel: bool = False, time_steps: int = 1,
    regression: bool = False, **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: registry key as written in YAML, e.g. ``simple_cnn``.
        in_channels: number of input bands.
        num_classes: number of classes.
        patch_size: patch height/width in pixels.
        band_names: input band names; passed on only to models that take them.
        multilabel: the targets are label sets; passed on only to models whose output
            depends on it (:func:`takes_multilabel`).
        time_steps: dates T stacked time-major in the channels; passed on only to models
            that take it (:func:`takes_time_steps`).
        regression: one continuous target per patch (``num_classes`` = 1 output); passed on
            only to models whose output depends on it (:func:`takes_regression`).
        **kwargs: model-specific options (e.g. ``hidden``, ``dropout``).

    Raises:
        ConfigError: unknown name, or an option the model does not take.
    """
    builder = _builder(name)
    accepted = set(_options(builder))
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"model {name!r} does not take option(s) {unknown}; it takes {sorted(accepted)}; "
            "fix train.model in the config"
        )
    if band_names is not None and takes_band_names(name):
        kwargs["band_names"] = list(band_names)
    if multilabel and takes_multilabel(name):
        kwargs["multilabel"] = True
    if regression and takes_regression(name):
        kwargs["regression"] = True
    if takes_time_steps(name):
        kwargs["time_steps"] = time_steps
    return builder(in_channels=in_channels, num_classes=num_classes, patch_size=patch_size,
                   **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
