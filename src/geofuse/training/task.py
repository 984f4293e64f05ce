"""Lightning task for patch classification: model, loss, optimiser and per-stage metrics."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from geofuse.config import TrainConfig
from geofuse.models.registry import create_model
from geofuse.training.losses import build_loss
from geofuse.training.optim import build_optimizer, build_scheduler

STAGES = ("train", "val", "test")


class ClassificationTask(L.LightningModule):
    """Classification of ``batch["image"]`` into ``num_classes`` classes.

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
        train_config: ``train`` section (JSON dump, without ``model``) for the loss,
            optimiser and scheduler; the explicit arguments above override its values.
        class_counts: training-split count per class (for balanced class weights).
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
        train_config: dict[str, Any] | None = None,
        class_counts: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(
            model, in_channels=in_channels, num_classes=num_classes, patch_size=patch_size,
            **(model_kwargs or {}),
        )
        self.loss_fn = build_loss(self.train_config.loss, num_classes, class_counts)
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

    @property
    def train_config(self) -> TrainConfig:
        """The effective training settings (loss, optimiser, scheduler)."""
        hp = self.hparams
        return TrainConfig.model_validate({
            **(hp.get("train_config") or {}), "lr": hp.lr, "weight_decay": hp.weight_decay,
            "plateau_patience": hp.plateau_patience, "plateau_factor": hp.plateau_factor,
        })

    def forward(self, x: torch.Tensor, tab: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, num_classes) of images (B, C, P, P) and, for models with
        ``uses_tabular`` (e.g. ``tabular_fusion``), their tabular attributes (B, F)."""
        if getattr(self.model, "uses_tabular", False):
            return self.model(x, tab)
        return self.model(x)

    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        logits = self(batch["image"], batch.get("tab"))
        target = batch["label"]
        loss = self.loss_fn(logits, target)
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
        return self(batch["image"], batch.get("tab")).argmax(dim=1)

    def configure_optimizers(self) -> dict[str, Any]:
        """Optimiser and LR schedule of ``train_config`` (default: Adam + plateau on val_loss)."""
        cfg = self.train_config
        optimizer = build_optimizer(self.model, cfg)
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        epochs = max_epochs if max_epochs and max_epochs > 0 else cfg.epochs
        scheduler = build_scheduler(optimizer, cfg, epochs)
        if scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
