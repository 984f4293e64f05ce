"""The encoder of a registered model, with pooling and a SimCLR projection head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from geofuse.errors import ConfigError
from geofuse.models.backbones import BACKBONES, BackboneClassifier
from geofuse.models.registry import create_model
from geofuse.models.simple_cnn import SimpleCNN

#: Models whose encoder ``geofuse pretrain`` trains (``train.model.name``).
SUPPORTED = ("simple_cnn", "early_fusion", *BACKBONES)
#: Model options that pretraining ignores: it starts from scratch and trains every layer.
_IGNORED = ("pretrained_path", "freeze_fraction", "freeze_stages")


class Encoder(nn.Module):
    """A model's feature extractor: (B, C, P, P) -> pooled features (B, feature_dim).

    ``weights()`` gives the encoder's tensors under the keys that the model's
    ``pretrained_path`` loads.
    """

    feature_dim: int

    def weights(self) -> dict[str, torch.Tensor]:
        """The encoder's state dict, keyed as the full model's (``features.*``, ``backbone.*``)."""
        raise NotImplementedError


class _SimpleCNNEncoder(Encoder):
    """SimpleCNN's ``features`` conv blocks + global average pooling (64 features)."""

    def __init__(self, model: SimpleCNN) -> None:
        super().__init__()
        self.features = model.features
        self.feature_dim = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))

    def weights(self) -> dict[str, torch.Tensor]:
        return {f"features.{k}": v.detach().cpu() for k, v in self.features.state_dict().items()}


class _BackboneEncoder(Encoder):
    """A timm backbone's pooled features (timm pools globally)."""

    def __init__(self, model: BackboneClassifier) -> None:
        super().__init__()
        self.model = model
        self.feature_dim = model.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def weights(self) -> dict[str, torch.Tensor]:
        return {f"backbone.{k}": v.detach().cpu()
                for k, v in self.model.backbone.state_dict().items()}


class SimCLRModel(nn.Module):
    """Encoder -> 2-layer projection MLP (feature_dim -> feature_dim -> ReLU -> projection_dim).

    Args:
        encoder: the model's feature extractor.
        projection_dim: size of the projections the NT-Xent loss compares.
    """

    def __init__(self, encoder: Encoder, projection_dim: int = 64) -> None:
        super().__init__()
        self.encoder = encoder
        dim = encoder.feature_dim
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True),
                                       nn.Linear(dim, projection_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projections (B, projection_dim) of a batch (B, C, P, P)."""
        return self.projector(self.encoder(x))


def build_encoder(
    name: str, in_channels: int, num_classes: int, patch_size: int, kwargs: dict[str, Any],
) -> Encoder:
    """The encoder of model ``name`` built from scratch with its ``train.model`` options.

    Raises:
        ConfigError: a model whose encoder cannot be pretrained, or input_adaptation reduce.
    """
    if name not in SUPPORTED:
        raise ConfigError(
            f"geofuse pretrain trains the encoder of {', '.join(SUPPORTED)}, not "
            f"train.model.name {name!r}; pick one of those models"
        )
    kwargs = {k: v for k, v in kwargs.items() if k not in _IGNORED}
    if kwargs.get("input_adaptation") == "reduce":
        raise ConfigError(
            "geofuse pretrain writes weights for the run's own bands, which "
            "train.model.input_adaptation 'reduce' (bands -> 3 RGB channels) cannot load; set "
            "it to 'cycle' (weights for exactly the input bands are used as they are)"
        )
    model = create_model(name, in_channels, num_classes, patch_size, **kwargs)
    if isinstance(model, SimpleCNN):
        return _SimpleCNNEncoder(model)
    assert isinstance(model, BackboneClassifier)  # SUPPORTED holds only these two kinds
    return _BackboneEncoder(model)
