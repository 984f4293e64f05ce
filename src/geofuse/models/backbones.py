"""timm backbones (ResNet, MobileNetV2, EfficientNet, ViT) as classifiers for any band count.

A :class:`BackboneClassifier` is ``[upsample] -> [1x1 reduce] -> timm feature extractor ->
dropout -> linear``. The timm network is built with ``pretrained=False, num_classes=0`` (it
returns pooled features); pretrained weights come only from a local state-dict file, are loaded
into the network the file was made for (RGB, or the file's own bands) and then adapted to the
input bands (:mod:`geofuse.models.adapt`; multispectral files by band name with
``pretrained_bands``). Vision transformers are built for the patch size (:mod:`._vit`).
Freezing (:mod:`geofuse.models.freeze`) applies to the timm network only; the head is always
trainable. ``features(x)`` gives the (B, feature_dim) vectors that fusion models reuse.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from geofuse.errors import ConfigError, DataNotFoundError
from geofuse.models._vit import (
    fit_vit_state,
    is_vit,
    vit_kwargs,
    vit_root_parameters,
    vit_stage_paths,
)
from geofuse.models.adapt import (
    InputAdaptation,
    adapt_first_conv,
    check_adaptation,
    matched_weight,
    reduce_adapter,
    replace_conv_input,
    resolve_pretrained_bands,
)
from geofuse.models.freeze import (
    COLLAPSE_RISK_FRACTION,
    freeze_by_fraction,
    freeze_named_stages,
    frozen_batchnorm_eval,
    frozen_fraction,
)

BACKBONES: tuple[str, ...] = ("resnet18", "resnet50", "mobilenetv2_100", "efficientnet_b0",
                               "vit_tiny_patch16_224", "vit_small_patch16_224",
                               "vit_base_patch16_224")
_WRAPPERS = ("state_dict", "model", "state_dict_ema")
_PREFIXES = ("module.", "model.", "backbone.")
_DROPPED_TOP = ("head", "adapter")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local torch state dict, unwrapping ``state_dict``/``model`` and key prefixes.

    ``module.``, ``model.`` and ``backbone.`` prefixes are removed, so timm state dicts,
    Lightning checkpoints and geofuse models all load.

    Raises:
        DataNotFoundError: the file does not exist.
        ConfigError: the file holds no tensors under string keys.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(
            f"pretrained weights file {str(path)!r} does not exist; fix "
            "train.model.pretrained_path (relative paths start at the config's folder; "
            "geofuse never downloads weights)"
        )
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the same user error
        raise ConfigError(
            f"pretrained weights file {str(path)!r} is not a torch state dict "
            f"({type(err).__name__}); save one with torch.save(model.state_dict(), path)"
        ) from None
    for key in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} \
        if isinstance(obj, dict) else {}
    if not tensors:
        raise ConfigError(
            f"pretrained weights file {str(path)!r} holds no tensors; save one with "
            "torch.save(model.state_dict(), path)"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


#: Key of the metadata dict that ``geofuse pretrain`` writes beside ``state_dict``.
METADATA_KEY = "geofuse_pretrain"


def read_file_metadata(path: str | Path) -> dict[str, Any]:
    """The ``geofuse pretrain`` metadata of a weight file (bands, statistics, ...); ``{}`` for
    other files. Call after :func:`load_state_dict_file` has checked the file."""
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: load_state_dict_file reports it
        return {}
    meta = obj.get(METADATA_KEY) if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


def _stage_paths(model: nn.Module) -> dict[str, list[str]]:
    """Named stages of a timm backbone, in forward order, as module paths."""
    if hasattr(model, "patch_embed"):
        return vit_stage_paths(model)
    if hasattr(model, "layer1"):  # resnet family
        return {"conv1": ["conv1", "bn1"], **{f"layer{i}": [f"layer{i}"] for i in range(1, 5)}}
    blocks = model.get_submodule("blocks")
    return {
        "conv_stem": ["conv_stem", "bn1"],
        **{f"blocks.{i}": [f"blocks.{i}"] for i in range(len(blocks))},  # type: ignore[arg-type]
        "conv_head": ["conv_head", "bn2"],
    }


class BackboneClassifier(nn.Module):
    """A timm backbone with its own head, for (B, C, P, P) patches of any band count.

    Args:
        in_channels: number of input bands.
        num_classes: number of classes.
        patch_size: patch height/width in pixels.
        backbone: timm model name, one of :data:`BACKBONES`.
        band_names: the input bands in channel order (needed by ``band_aware``).
        dropout: dropout probability before the linear head.
        pretrained_path: local state-dict file of the timm network (RGB, multispectral with
            ``pretrained_bands``, or for exactly the input bands); ``None`` trains from scratch
            (timm's initialisation for ``in_channels`` bands).
        input_adaptation: ``cycle``, ``band_aware`` or ``reduce`` (see :mod:`.adapt`) for RGB
            weights.
        rgb_bands: names of the red, green and blue bands for ``band_aware``.
        pretrained_bands: the weight file's input bands in order, or a preset name of
            :data:`~geofuse.models.adapt.PRETRAINED_BAND_SETS`; the input bands are matched to
            them by name. Default: the bands a ``geofuse pretrain`` file records, if any.
        freeze_fraction: share of the backbone's parameterised layers to freeze, first first.
        freeze_stages: named stages to freeze (see :meth:`stage_names`).
        upsample_to: bilinear upsampling of the input to this size (warned against).
        backbone_lr_scale: learning-rate multiplier of the backbone's parameter group.
        vit_patch_size: ViT backbones: token side in pixels (default: the largest of 16, 8, 4,
            2, 1 that cuts the input into at least 4 x 4 tokens).

    Raises:
        ConfigError: an invalid option; DataNotFoundError: a missing weights file.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        backbone: str = "resnet18",
        band_names: Sequence[str] | None = None,
        dropout: float = 0.5,
        pretrained_path: str | Path | None = None,
        input_adaptation: InputAdaptation = "cycle",
        rgb_bands: Sequence[str] | None = None,
        freeze_fraction: float = 0.0,
        freeze_stages: Sequence[str] | None = None,
        upsample_to: int | None = None,
        backbone_lr_scale: float = 1.0,
        pretrained_bands: str | Sequence[str] | None = None,
        vit_patch_size: int | None = None,
    ) -> None:
        super().__init__()
        self._check(backbone, in_channels, num_classes, patch_size, upsample_to,
                    backbone_lr_scale, input_adaptation)
        self.backbone_name = backbone
        self.input_adaptation = input_adaptation
        self.backbone_lr_scale = backbone_lr_scale
        self.upsample_to = upsample_to
        self.backbone = self._build_backbone(
            backbone, in_channels, pretrained_path, input_adaptation, band_names, rgb_bands,
            resolve_pretrained_bands(pretrained_bands),
            self._create_kwargs(backbone, upsample_to or patch_size, vit_patch_size))
        self.adapter: nn.Module = (
            reduce_adapter(in_channels) if input_adaptation == "reduce" else nn.Identity()
        )
        self.feature_dim = int(self.backbone.num_features)  # type: ignore[arg-type]
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_classes))
        freeze_by_fraction(self.backbone, freeze_fraction)
        freeze_named_stages(self.stages(), freeze_stages or [])
        frozen_batchnorm_eval(self.backbone)
        share = frozen_fraction(self)
        if share > COLLAPSE_RISK_FRACTION:
            warnings.warn(
                f"{backbone}: {share:.0%} of the layers are frozen; the reference ResNet-50 with "
                "85% frozen collapsed to one class on small EO datasets; freeze less "
                "(freeze_fraction <= 0.5) or train from scratch", stacklevel=2,
            )

    @staticmethod
    def _check(
        backbone: str, in_channels: int, num_classes: int, patch_size: int,
        upsample_to: int | None, lr_scale: float, adaptation: str,
    ) -> None:
        if backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
        check_adaptation(adaptation)
        if in_channels < 1 or num_classes < 1 or patch_size < 1:
            raise ConfigError(
                f"{backbone} needs >= 1 band, >= 1 output and patch_size >= 1, got "
                f"in_channels={in_channels}, num_classes={num_classes}, patch_size={patch_size}; "
                "check train.bands, the label classes and extract.patch_size"
            )
        if lr_scale < 0:
            raise ConfigError(f"backbone_lr_scale must be >= 0, got {lr_scale}; fix "
                              "train.model.backbone_lr_scale (0 keeps the backbone fixed)")
        if upsample_to is None:
            return
        if upsample_to <= patch_size:
            raise ConfigError(
                f"upsample_to={upsample_to} must exceed patch_size={patch_size}; remove "
                "train.model.upsample_to or raise it"
            )
        warnings.warn(
            f"upsample_to={upsample_to}: patches of {patch_size}x{patch_size} are bilinearly "
            "interpolated; the new pixels carry no new information and the smooth artefacts "
            "are unlike the textures pretrained filters expect (8x8 -> 32x32 was part of the "
            "reference course's ResNet-50 collapse); prefer larger native patches "
            "(extract.patch_size >= 32)", stacklevel=3,
        )

    @staticmethod
    def _create_kwargs(name: str, side: int, vit_patch_size: int | None) -> dict[str, Any]:
        """Extra timm options: a ViT's image and token size (``vit_patch_size`` means nothing
        to a CNN, which ignores it: an ablation grid may mix ViTs and CNNs)."""
        return vit_kwargs(name, side, vit_patch_size) if is_vit(name) else {}

    @staticmethod
    def _build_backbone(
        name: str, in_channels: int, pretrained_path: str | Path | None,
        adaptation: InputAdaptation, band_names: Sequence[str] | None,
        rgb_bands: Sequence[str] | None, pretrained_bands: list[str] | None,
        create: dict[str, Any],
    ) -> nn.Module:
        """timm network: pretrained weights loaded into the network they were made for, then
        adapted to the ``in_channels`` input bands."""
        def make(chans: int) -> nn.Module:
            return timm.create_model(name, pretrained=False, num_classes=0, in_chans=chans,
                                     **create)

        if pretrained_path is None:
            return make(3 if adaptation == "reduce" else in_channels)
        state = load_state_dict_file(pretrained_path)
        probe = make(3)
        first = str(probe.pretrained_cfg["first_conv"])
        src = state.get(f"{first}.weight")
        src_chans = int(src.shape[1]) if src is not None and src.ndim == 4 else 3
        source = pretrained_bands or _recorded_bands(pretrained_path, band_names, src_chans)
        _check_source(pretrained_path, src_chans, in_channels, adaptation, source)
        model = probe if src_chans == 3 else make(src_chans)
        if is_vit(name):
            state = fit_vit_state(state, model)
        classifier = str(model.pretrained_cfg.get("classifier", "fc"))
        state = {k: v for k, v in state.items()
                 if k.split(".", 1)[0] not in (classifier, *_DROPPED_TOP)}
        _load_strict(model, state, name, pretrained_path)
        if source is not None:
            if band_names is None or len(band_names) != in_channels:
                raise ConfigError(f"pretrained_bands needs the names of the {in_channels} input "
                                  "bands; build the model through 'geofuse train'")
            weight = model.get_submodule(first).weight
            replace_conv_input(model, first, matched_weight(weight, band_names, source))
        elif adaptation != "reduce" and src_chans == 3:
            adapt_first_conv(model, first, in_channels, adaptation, band_names, rgb_bands)
        return model

    # -- contract ---------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, feature_dim) of a batch (B, C, P, P)."""
        if self.upsample_to is not None:
            x = F.interpolate(x, size=(self.upsample_to, self.upsample_to), mode="bilinear",
                              align_corners=False)
        return self.backbone(self.adapter(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) of a batch (B, C, P, P)."""
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> BackboneClassifier:
        """Set train/eval mode; frozen batch-norm layers always stay in eval mode."""
        super().train(mode)
        frozen_batchnorm_eval(self.backbone)
        return self

    def stages(self) -> dict[str, list[nn.Module]]:
        """Backbone stages by name (``conv1``, ``layer1``.. or ``conv_stem``, ``blocks.0``..;
        a ViT's ``patch_embed`` stage holds its class token and position embedding too)."""
        stages = {stage: [self.backbone.get_submodule(p) for p in paths]
                  for stage, paths in _stage_paths(self.backbone).items()}
        if is_vit(self.backbone_name):
            stages["patch_embed"].append(vit_root_parameters(self.backbone))
        return stages

    def stage_names(self) -> list[str]:
        """Names accepted by ``freeze_stages``, in forward order."""
        return list(_stage_paths(self.backbone))

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: head (lr x 1) first, then adapter (x 1) and backbone (x scale).

        Frozen parameters stay in their group (they get no gradient, so no update).
        """
        groups = [{"name": "head", "params": list(self.head.parameters()), "lr_scale": 1.0},
                  {"name": "adapter", "params": list(self.adapter.parameters()),
                   "lr_scale": 1.0},
                  {"name": "backbone", "params": list(self.backbone.parameters()),
                   "lr_scale": self.backbone_lr_scale}]
        return [g for g in groups if g["params"]]


def _recorded_bands(
    path: str | Path, band_names: Sequence[str] | None, file_chans: int
) -> list[str] | None:
    """The bands a ``geofuse pretrain`` file was made for, when they differ from the input's
    (so they are matched by name); ``None`` otherwise."""
    made_for = read_file_metadata(path).get("band_names")
    if not made_for or len(made_for) != file_chans or list(made_for) == list(band_names or []):
        return None
    return [str(b) for b in made_for]


def _check_source(
    path: str | Path, file_chans: int, in_channels: int, adaptation: str,
    source: list[str] | None,
) -> None:
    """Refuse weights the input cannot be adapted to (with the option that would)."""
    if adaptation == "reduce" and (file_chans != 3 or source is not None):
        raise ConfigError(
            f"input_adaptation reduce feeds a 3-band (RGB) network, but the weights "
            f"{str(path)!r} take {file_chans} named bands; remove train.model.input_adaptation "
            "(the bands are matched by name)"
        )
    if source is None and file_chans not in (3, in_channels):
        raise ConfigError(
            f"pretrained weights {str(path)!r} have a first layer for {file_chans} bands and "
            f"the input has {in_channels}; name the file's bands in order in "
            "train.model.pretrained_bands (e.g. sentinel2_l1c for SSL4EO-S12's 13 bands) so "
            "geofuse matches them to the input bands by name"
        )


def state_mismatch(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], prefix: str = "",
    shown: int = 4, shape_label: str = "shape mismatch",
) -> list[str]:
    """How ``state`` does not fit a model whose state dict is ``own``: one text per kind
    (missing, unexpected, shape) naming the first ``shown`` keys (each with ``prefix``);
    empty when it fits. Batch-norm step counters may be missing."""
    missing = [f"{prefix}{k}" for k in own
               if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [f"{prefix}{k}" for k in state if k not in own]
    wrong = [f"{prefix}{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    return [f"{label} {keys[:shown]}" + (f" (+{len(keys) - shown} more)"
                                          if len(keys) > shown else "")
            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                (shape_label, wrong)) if keys]


def _load_strict(
    model: nn.Module, state: dict[str, torch.Tensor], name: str, path: str | Path
) -> None:
    """Load ``state`` into ``model``; ConfigError naming a few keys when they do not fit."""
    parts = state_mismatch(model.state_dict(), state)
    if parts:
        raise ConfigError(
            f"pretrained weights {str(path)!r} do not fit timm {name}: {'; '.join(parts)}; "
            f"use a state dict saved from timm.create_model({name!r})"
        )
    model.load_state_dict(state, strict=False)


def backbone_builders() -> dict[str, Any]:
    """Registry entries: one builder per backbone, named as in YAML (= the timm name)."""
    return {name: functools.partial(BackboneClassifier, backbone=name) for name in BACKBONES}
