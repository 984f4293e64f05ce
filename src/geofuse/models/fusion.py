"""Late and decision fusion of per-modality encoders.

Fusion is a model concern: every model here takes the stacked bands (B, C, P, P) of a run and
``modalities`` (name -> channel count, in channel order) and splits the stack itself.

*Early fusion* needs no class of its own: any single network on the stacked bands is early
fusion, so ``simple_cnn`` on all bands *is* early fusion (registered also as ``early_fusion``).

- :class:`LateFusion` (``late_fusion``): one encoder per modality; features concatenated or
  attention-weighted; one classification head.
- :class:`DecisionFusion` (``decision_fusion``): one classifier per modality; class
  probabilities mixed by fixed or learned weights; returns log-probabilities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from geofuse.errors import ConfigError
from geofuse.models.encoders import (
    DEFAULT_ENCODER,
    build_encoder,
    check_keys,
    mlp_head,
    resolve_modalities,
    split_modalities,
)


def _check_classes(name: str, num_classes: int) -> None:
    if num_classes < 1:
        raise ConfigError(
            f"{name} needs >= 1 output, got num_classes={num_classes}; check the label classes"
        )


def _encoders(
    name: str, modalities: dict[str, int], patch_size: int, encoders: dict[str, str] | None
) -> nn.ModuleDict:
    """One encoder per modality: ``encoders[m]`` or :data:`DEFAULT_ENCODER`."""
    chosen = dict(encoders or {})
    check_keys(name, "encoders", dict(chosen), modalities)
    return nn.ModuleDict({
        m: build_encoder(chosen.get(m, DEFAULT_ENCODER), channels, patch_size)
        for m, channels in modalities.items()
    })


class LateFusion(nn.Module):
    """One encoder per modality, features merged before a single head.

    Args:
        in_channels: total bands of the stack.
        num_classes: number of classes.
        patch_size: patch side in pixels.
        modalities: modality name -> channel count, in channel order (default: one modality).
        encoders: encoder name per modality (default ``small_cnn`` for every modality).
        merge: ``concat`` joins the feature vectors; ``attention`` projects each to ``hidden``
            units and sums them with softmax weights scored from the features themselves.
        hidden: units of the head (and of the attention projection).
        dropout: dropout before the output layer.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        modalities: dict[str, int] | None = None,
        encoders: dict[str, str] | None = None,
        merge: str = "concat",
        hidden: int = 128,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_classes("late_fusion", num_classes)
        if merge not in ("concat", "attention"):
            raise ConfigError(
                f"late_fusion: merge={merge!r} is not supported; use concat or attention"
            )
        self.modalities = resolve_modalities("late_fusion", in_channels, modalities)
        self.encoders = _encoders("late_fusion", self.modalities, patch_size, encoders)
        self.merge = merge
        dims = {m: enc.feature_dim for m, enc in self.encoders.items()}
        if merge == "attention":
            self.project = nn.ModuleDict({
                m: nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True))
                for m, d in dims.items()
            })
            self.score = nn.Linear(hidden, 1)
            head_in = hidden
        else:
            head_in = sum(dims.values())
        self.head = mlp_head(head_in, num_classes, hidden, dropout)
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) of stacked patches (B, C, P, P).

        With ``merge='attention'`` the modality weights of the batch, (B, M), are kept in
        ``last_weights`` for inspection.
        """
        parts = split_modalities(x, self.modalities)
        feats = {m: self.encoders[m](part) for m, part in parts.items()}
        if self.merge == "concat":
            return self.head(torch.cat(list(feats.values()), dim=1))
        tokens = torch.stack([self.project[m](f) for m, f in feats.items()], dim=1)  # B, M, H
        weights = torch.softmax(self.score(tokens).squeeze(-1), dim=1)  # B, M
        self.last_weights = weights.detach()
        return self.head((weights.unsqueeze(-1) * tokens).sum(dim=1))


class DecisionFusion(nn.Module):
    """One classifier per modality; their class probabilities are mixed.

    ``p(c) = sum_m w_m softmax(logits_m)(c)``, and the model returns ``log p`` as its "logits":
    ``log_softmax(log p) == log p``, so the usual cross-entropy on logits is the exact negative
    log-likelihood of the mixture, and ``argmax`` gives the fused decision.

    Args:
        in_channels: total bands of the stack.
        num_classes: number of classes.
        patch_size: patch side in pixels.
        modalities: modality name -> channel count, in channel order (default: one modality).
        encoders: encoder name per modality (default ``small_cnn``).
        weights: fixed non-negative weight per modality, normalised to sum 1; every modality
            must be named. ``None`` learns the weights (softmax of one parameter per modality,
            starting equal).
        hidden: units of each modality's head.
        dropout: dropout before each output layer.
        multilabel: mix per-class sigmoid probabilities instead,
            ``p(c) = sum_m w_m sigmoid(logits_m(c))``, and return ``logit p`` (so that
            ``sigmoid`` of the output is the mixture and BCE on it its exact likelihood).
        regression: mix the modalities' outputs themselves, ``sum_m w_m out_m`` (a weighted
            mean of per-modality estimates of a continuous target).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        modalities: dict[str, int] | None = None,
        encoders: dict[str, str] | None = None,
        weights: dict[str, float] | None = None,
        hidden: int = 128,
        dropout: float = 0.5,
        multilabel: bool = False,
        regression: bool = False,
    ) -> None:
        super().__init__()
        self.multilabel = multilabel
        self.regression = regression
        _check_classes("decision_fusion", num_classes)
        self.modalities = resolve_modalities("decision_fusion", in_channels, modalities)
        self.encoders = _encoders("decision_fusion", self.modalities, patch_size, encoders)
        self.heads = nn.ModuleDict({
            m: mlp_head(enc.feature_dim, num_classes, hidden, dropout)
            for m, enc in self.encoders.items()
        })
        self.weight_logits: nn.Parameter | None = None
        if weights is None:
            self.weight_logits = nn.Parameter(torch.zeros(len(self.modalities)))
            self.register_buffer("fixed_weights", torch.empty(0))
        else:
            self.register_buffer("fixed_weights", self._fixed(weights))

    def _fixed(self, weights: dict[str, float]) -> torch.Tensor:
        check_keys("decision_fusion", "weights", dict(weights), self.modalities)
        missing = [m for m in self.modalities if m not in weights]
        values = [float(weights.get(m, 0.0)) for m in self.modalities]
        if missing or any(v < 0 or not math.isfinite(v) for v in values) or sum(values) <= 0:
            raise ConfigError(
                f"decision_fusion: weights {dict(weights)} must give every modality "
                f"{list(self.modalities)} a finite weight >= 0 with a positive sum; fix "
                "train.model.weights (or remove it to learn the weights)"
            )
        total = sum(values)
        return torch.tensor([v / total for v in values], dtype=torch.float32)

    @property
    def modality_weights(self) -> torch.Tensor:
        """Current mixing weights (M,), in modality order; they sum to 1."""
        if self.weight_logits is not None:
            return torch.softmax(self.weight_logits, dim=0)
        return self.fixed_weights

    def modality_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each modality classifier's own logits (B, num_classes)."""
        parts = split_modalities(x, self.modalities)
        return {m: self.heads[m](self.encoders[m](part)) for m, part in parts.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, num_classes) of the weighted probability mixture (multi-label:
        the mixture's per-class log-odds)."""
        if self.regression:
            z = torch.stack(list(self.modality_logits(x).values()), dim=0)  # M, B, K
            return (self.modality_weights.view(-1, 1, 1) * z).sum(dim=0)
        log_w = torch.log(self.modality_weights).view(-1, 1, 1)  # a zero weight gives -inf
        if self.multilabel:
            z = torch.stack(list(self.modality_logits(x).values()), dim=0)  # M, B, K
            log_p = torch.logsumexp(F.logsigmoid(z) + log_w, dim=0)
            log_not_p = torch.logsumexp(F.logsigmoid(-z) + log_w, dim=0)
            return log_p - log_not_p
        per_mod = torch.stack(
            [F.log_softmax(z, dim=1) for z in self.modality_logits(x).values()], dim=0
        )  # M, B, K
        return torch.logsumexp(per_mod + log_w, dim=0)
