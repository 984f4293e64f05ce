"""Regression plumbing of the training task: target scaling, losses and epoch scores.

A regression network has one output per patch and learns the *standardised* target
``z = (T(value) - mean) / std``, with ``T`` the identity or ``log1p``
(``train.target_transform``) and mean/std of ``T(value)`` over the training split. The task
turns its outputs back into the target's unit (:meth:`TargetScaler.decode`) before any metric,
so RMSE and MAE are in persons, tonnes or metres, whatever the network learns. Decoded
estimates are kept within the training split's range of the target (``low``, ``high``), as a
random forest's are: a log-space network that extrapolates one patch far beyond every value
it saw (a 77,000-person cell where the densest training cell holds 16,000, measured on
So2Sat-POP) would otherwise decide the RMSE and R2 of a whole split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geofuse.config import LossConfig
from geofuse.errors import ConfigError


@dataclass(frozen=True)
class TargetScaler:
    """``z = (T(value) - mean) / std`` and back; ``T`` is ``none`` or ``log1p``."""

    transform: str = "none"
    mean: float = 0.0
    std: float = 1.0
    low: float | None = None  #: the smallest transformed training target
    high: float | None = None  #: the largest transformed training target

    @classmethod
    def fit(cls, values: np.ndarray, transform: str) -> TargetScaler:
        """Mean and std of the transformed training values (std 1 when they are constant).

        Raises:
            ConfigError: ``log1p`` of values at or below -1.
        """
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        v = v[np.isfinite(v)]  # unlabelled pixels of dense targets
        if transform == "log1p" and len(v) and v.min() <= -1:
            raise ConfigError(
                f"train.target_transform log1p needs values above -1, the training split "
                f"holds {v.min():g}; use target_transform: none"
            )
        t = np.log1p(v) if transform == "log1p" else v
        if not len(t):
            return cls(transform)
        std = float(t.std())
        return cls(transform, float(t.mean()), std if std > 0 else 1.0, float(t.min()),
                   float(t.max()))

    def to_dict(self) -> dict[str, Any]:
        return {"transform": self.transform, "mean": self.mean, "std": self.std,
                "low": self.low, "high": self.high}

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """Standardised network targets of values in their own unit."""
        v = values.float()
        t = torch.log1p(v) if self.transform == "log1p" else v
        return (t - self.mean) / self.std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Values in the target's unit of standardised outputs, within the training range."""
        t = z.float() * self.std + self.mean
        if self.low is not None or self.high is not None:
            t = t.clamp(self.low, self.high)
        return torch.expm1(t) if self.transform == "log1p" else t

    def decode_numpy(self, z: np.ndarray) -> np.ndarray:
        """:meth:`decode` of a NumPy array."""
        return self.decode(torch.from_numpy(np.asarray(z, dtype=np.float32))).numpy()


class RegressionLoss(nn.Module):
    """MSE, Huber or L1 between a model's single output (B, 1) or (B,) and targets (B,); of
    a dense model, between its output (B, 1, H, W) and targets (B, H, W) over the labelled
    (finite) pixels."""

    def __init__(self, name: str = "mse", delta: float = 1.0) -> None:
        super().__init__()
        self.name, self.delta = name, delta

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 3:  # per pixel: NaN = unlabelled
            pred = output[:, 0].float()
            labelled = torch.isfinite(target)
            if not bool(labelled.any()):  # a batch without labels: no gradient, graph intact
                return pred.sum() * 0.0
            pred, target = pred[labelled], target[labelled].float()
        else:
            pred = output.reshape(len(output), -1)[:, 0].float()
            target = target.float()
        if self.name == "huber":
            return F.huber_loss(pred, target, delta=self.delta)
        if self.name == "l1":
            return F.l1_loss(pred, target)
        return F.mse_loss(pred, target)


def build_regression_loss(cfg: LossConfig) -> RegressionLoss:
    """The loss of ``train.loss`` for continuous targets (``auto`` = mse).

    Raises:
        ConfigError: a classification loss or class weights for continuous targets.
    """
    name = "mse" if cfg.name == "auto" else cfg.name
    if name not in ("mse", "huber", "l1"):
        raise ConfigError(f"train.loss.name = {cfg.name!r} is for classes, but the patches "
                          "carry continuous targets (regression); use mse, huber, l1 or auto")
    if cfg.class_weights is not None:
        raise ConfigError("train.loss.class_weights weight classes, but the patches carry "
                          "continuous targets (regression); remove class_weights")
    return RegressionLoss(name, cfg.delta)


def regression_epoch_scores(preds: torch.Tensor, target: torch.Tensor
                            ) -> dict[str, torch.Tensor]:
    """``rmse``, ``mae`` and ``r2`` (1 - SSE / SST; 0 when the truth is constant) of values
    in the target's unit, as :func:`~geofuse.evaluation.regression_metrics.
    regression_metrics` computes them."""
    p, t = preds.reshape(-1).double(), target.reshape(-1).double()
    labelled = torch.isfinite(t)  # dense targets: NaN = unlabelled pixel
    if not bool(labelled.all()):
        p, t = p[labelled], t[labelled]
    err = p - t
    sst = ((t - t.mean()) ** 2).sum()
    r2 = 1 - (err ** 2).sum() / sst if sst > 0 else torch.zeros((), dtype=torch.float64)
    return {"rmse": err.pow(2).mean().sqrt().float(), "mae": err.abs().mean().float(),
            "r2": r2.float()}
