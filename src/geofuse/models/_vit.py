"""Vision-transformer plumbing for :class:`~geofuse.models.backbones.BackboneClassifier`.

timm's ViTs are built for the patch itself (``img_size`` = the patch side, or ``upsample_to``)
with tokens of ``vit_patch_size`` pixels. Weights pretrained at another image or token size
(ViT-S/16 at 224 px: 14 x 14 tokens of 16 px) are resampled by timm's own loader filter: the
position embedding is interpolated onto the new token grid and the patch-embedding kernels are
resized with FlexiViT's pseudo-inverse (Beyer et al. 2023), so a token of the new size responds
as the pretrained token did to the same content upsampled.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from geofuse.errors import ConfigError

#: Token sides tried by default, largest first.
TOKEN_SIDES: tuple[int, ...] = (16, 8, 4, 2, 1)
#: Tokens per side the default token size keeps at least.
MIN_TOKENS_PER_SIDE = 4


def is_vit(name: str) -> bool:
    """Whether the timm backbone ``name`` is a vision transformer."""
    return name.startswith("vit_")


def default_token_size(side: int) -> int:
    """The largest of :data:`TOKEN_SIDES` that divides ``side`` into at least 4 x 4 tokens."""
    return next(t for t in TOKEN_SIDES
                if (side % t == 0 and side // t >= MIN_TOKENS_PER_SIDE) or t == 1)


def vit_kwargs(name: str, side: int, token_size: int | None) -> dict[str, Any]:
    """timm ``create_model`` options of a ViT for ``side`` x ``side`` inputs.

    Raises:
        ConfigError: a token size that does not divide the input side.
    """
    token = token_size or default_token_size(side)
    if side % token:
        raise ConfigError(
            f"{name}: vit_patch_size={token} does not divide the {side} px input into whole "
            f"tokens; pick a divisor of {side} for train.model.vit_patch_size (or leave it "
            f"out: {default_token_size(side)})"
        )
    return {"img_size": side, "patch_size": token}


def fit_vit_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A timm ViT state dict resampled onto ``model``'s token grid and token size."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(state, model)  # type: ignore[no-any-return]


def vit_stage_paths(model: nn.Module) -> dict[str, list[str]]:
    """Named stages of a timm ViT: ``patch_embed``, ``blocks.0`` ... and ``norm``."""
    blocks = model.get_submodule("blocks")
    return {"patch_embed": ["patch_embed"],
            **{f"blocks.{i}": [f"blocks.{i}"] for i in range(len(blocks))},  # type: ignore[arg-type]
            "norm": ["norm"]}


def vit_root_parameters(model: nn.Module) -> nn.Module:
    """The parameters a timm ViT owns itself (class and register tokens, position
    embedding), held by a module outside the model, so that freezing the ``patch_embed``
    stage freezes them too (the model's state dict is unchanged)."""
    holder = nn.Module()
    for name, param in model.named_parameters(recurse=False):
        holder.register_parameter(name, param)
    return holder
