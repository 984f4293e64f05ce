"""Small per-modality encoders and the shared building blocks of the fusion models.

An *encoder* maps a patch (B, C, P, P) to a feature vector (B, ``feature_dim``). Fusion models
build one per modality with :func:`build_encoder`, which knows ``small_cnn`` (the default) and
adapts any registered model that exposes ``.features`` (``simple_cnn``, and backbones that
follow the same contract), so a 1-band DEM can get a small CNN while S2 gets a bigger network.
"""

from __future__ import annotations

import torch
from torch import nn

from geofuse.errors import ConfigError

MIN_PATCH_SIZE = 4
DEFAULT_ENCODER = "small_cnn"


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """Conv3x3 (padding 1, so 8x8 and 32x32 keep their size at stride 1) - BatchNorm - ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SEBlock(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018): reweight channels by a learned gate.

    ``s = sigmoid(W2 relu(W1 avgpool(x)))``; the output is ``x * s`` channel by channel.

    Args:
        channels: feature channels.
        reduction: bottleneck ratio of the gate (at least one hidden unit is kept).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Recalibrated features, same shape as ``x``."""
        return x * self.gate(x)


class SmallCNNEncoder(nn.Module):
    """Two conv blocks (32, 64 filters, 2x2 max-pool each) pooled to 2x2: 256 features.

    Args:
        in_channels: bands of the modality (1 for a DEM is fine).
        patch_size: patch side in pixels (at least 4).
        channels: filters of the two blocks.
    """

    def __init__(self, in_channels: int, patch_size: int, channels: tuple[int, int] = (32, 64)):
        super().__init__()
        check_patch_size("small_cnn", patch_size)
        c1, c2 = channels
        self.body = nn.Sequential(
            conv_bn_relu(in_channels, c1), nn.MaxPool2d(2),
            conv_bn_relu(c1, c2), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.feature_dim = c2 * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature vectors (B, feature_dim) of patches (B, C, P, P)."""
        return self.body(x)


class FeaturesEncoder(nn.Module):
    """Adapt a registered model with a ``.features`` module or method into an encoder.

    A 4-D output (feature map) is flattened; ``feature_dim`` is taken from the model when it
    declares one, else measured with one dry run.
    """

    def __init__(self, name: str, model: nn.Module, in_channels: int, patch_size: int) -> None:
        super().__init__()
        features = getattr(model, "features", None)
        if features is None:
            raise ConfigError(
                f"model {name!r} cannot be a fusion encoder: it has no .features; use small_cnn, "
                "simple_cnn or a backbone that exposes .features in train.model.encoders"
            )
        # keep only the feature extractor when it is a submodule (drops the unused head)
        self.body: nn.Module = features if isinstance(features, nn.Module) else model
        self._call_method = not isinstance(features, nn.Module)
        declared = getattr(model, "feature_dim", None)
        self.feature_dim = int(declared) if declared else self._measure(in_channels, patch_size)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.features(x) if self._call_method else self.body(x)

    def _measure(self, in_channels: int, patch_size: int) -> int:
        was_training = self.body.training
        self.body.eval()
        with torch.no_grad():
            out = self._features(torch.zeros(1, in_channels, patch_size, patch_size))
        self.body.train(was_training)
        return int(out.flatten(1).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features (B, feature_dim)."""
        return self._features(x).flatten(1)


def check_patch_size(name: str, patch_size: int) -> None:
    """Raise :class:`ConfigError` for patches smaller than :data:`MIN_PATCH_SIZE`."""
    if patch_size < MIN_PATCH_SIZE:
        raise ConfigError(
            f"{name} needs patches of at least {MIN_PATCH_SIZE}x{MIN_PATCH_SIZE} pixels, got "
            f"patch_size={patch_size}; raise extract.patch_size"
        )


def build_encoder(name: str, in_channels: int, patch_size: int) -> nn.Module:
    """Encoder ``name`` for a modality of ``in_channels`` bands; has ``.feature_dim``.

    Raises:
        ConfigError: unknown name, or a registered model without ``.features``.
    """
    if name == DEFAULT_ENCODER:
        return SmallCNNEncoder(in_channels, patch_size)
    from geofuse.models.registry import MODELS  # late import: the registry imports this module

    builder = MODELS.get(name)
    if builder is None:
        valid = sorted({DEFAULT_ENCODER, *MODELS})
        raise ConfigError(
            f"unknown encoder {name!r}; valid names: {', '.join(valid)}; fix "
            "train.model.encoders in the config"
        )
    model = builder(in_channels=in_channels, num_classes=2, patch_size=patch_size)
    return FeaturesEncoder(name, model, in_channels, patch_size)


def resolve_modalities(
    name: str, in_channels: int, modalities: dict[str, int] | None
) -> dict[str, int]:
    """Modality name -> channel count; ``None`` means one modality ``image`` of all bands.

    Raises:
        ConfigError: the counts do not add up to ``in_channels`` or one is not positive.
    """
    mods = {"image": in_channels} if not modalities else dict(modalities)
    bad = {m: c for m, c in mods.items() if int(c) < 1}
    if bad or sum(mods.values()) != in_channels:
        raise ConfigError(
            f"{name}: modalities {mods} do not split {in_channels} input bands; each modality "
            "needs >= 1 band and the counts must add up (check train.bands / train.modalities)"
        )
    return mods


def split_modalities(x: torch.Tensor, modalities: dict[str, int]) -> dict[str, torch.Tensor]:
    """Split a stacked batch (B, C, P, P) into per-modality tensors, in channel order."""
    parts = torch.split(x, list(modalities.values()), dim=1)
    return dict(zip(modalities, parts, strict=True))


def check_keys(
    name: str, option: str, given: dict[str, object], modalities: dict[str, int]
) -> None:
    """Raise :class:`ConfigError` when ``given`` names a modality that is not in the run."""
    unknown = sorted(set(given) - set(modalities))
    if unknown:
        raise ConfigError(
            f"{name}: train.model.{option} names unknown modality {unknown}; this run has "
            f"{list(modalities)}; fix train.model.{option}"
        )


def mlp_head(in_features: int, num_classes: int, hidden: int, dropout: float) -> nn.Sequential:
    """Dense ``hidden`` - ReLU - Dropout - Linear to ``num_classes`` (the SimpleCNN head)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
