"""Lightning task for patch classification: model, loss, optimiser and per-stage metrics."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from geofuse.models.registry import create_model

STAGES = ("train", "val", "test")


class ClassificationTask(L.LightningModule):
    """Cross-entropy classification of ``batch["image"]`` into ``num_classes`` classes.

    Logs ``{stage}_loss``, ``{stage}_accuracy`` (overall) and ``{stage}_f1_macro`` per epoch.

    Args:
        model: registry name of the network, e.g. ``simple_cnn``.
        in_channels: number of input bands.
        num_classes: number of classes.
        patch_size: patch height/width in pixels.
        model_kwargs: extra options for the model constructor.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        plateau_patience: epochs without val_loss improvement before the LR is reduced.
        plateau_factor: LR multiplier on a plateau.
        class_names: class names, stored with the checkpoint for provenance.
    """

    def __init__(
        self,
        model: str,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        model_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        plateau_patience: int = 4,
        plateau_factor: float = 0.5,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(
            model, in_channels=in_channels, num_classes=num_classes, patch_size=patch_size,
            **(model_kwargs or {}),
        )
        self.metrics = nn.ModuleDict(
            {f"{stage}_metrics": self._metric_collection(stage, num_classes) for stage in STAGES}
        )

    @staticmethod
    def _metric_collection(stage: str, num_classes: int) -> MetricCollection:
        return MetricCollection(
            {
                "accuracy": MulticlassAccuracy(num_classes, average="micro"),
                "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            },
            prefix=f"{stage}_",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) of a batch of images (B, C, P, P)."""
        return self.model(x)

    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        target = batch["label"]
        loss = F.cross_entropy(logits, target)
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(logits.argmax(dim=1), target)
        size = len(target)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=size,
                 prog_bar=stage != "test")
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=size,
                      prog_bar=stage == "val")
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).argmax(dim=1)

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam with ReduceLROnPlateau on ``val_loss``."""
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=hp.plateau_factor, patience=hp.plateau_patience
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch"},
        }
