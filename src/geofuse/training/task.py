"""Lightning task for patch classification: model, loss, optimiser and per-stage metrics.

Per-step work is kept to the forward/backward pass, so that small, fast models are not slowed
down by the framework (``benchmarks/train_overhead.py``):

- a step only keeps its loss, predicted and true classes
  (:class:`~geofuse.training._epoch.EpochAccumulator`); each stage's epoch values are computed
  once, at the stage's last batch, so that every callback sees them in its epoch-end hooks as
  it did when they were logged at every step. During ``fit`` they go straight to
  ``trainer.callback_metrics``, the progress bar and the loggers
  (:func:`~geofuse.training._epoch.publish_epoch_values`); ``trainer.validate`` and
  ``trainer.test`` log them with ``self.log``, so that they return them. ``{stage}_loss`` is the
  sample-weighted mean of the batch losses, bit for bit what ``self.log(..., on_epoch=True,
  batch_size=len(batch))`` gave; accuracy and macro F1 come from torchmetrics, once over the
  epoch's predictions, which gives the same counts and so the same values;
- the optimisation step is written out (manual optimisation, :meth:`training_step`), with the
  LR schedulers stepped when Lightning's automatic optimisation would step them
  (:mod:`geofuse.training._schedulers`): the same losses, learning rates and weights.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from geofuse.config import TrainConfig
from geofuse.models.registry import create_model
from geofuse.training._batch_mix import cutmix_images
from geofuse.training._distributed import (
    broadcast_buffers,
    gather_mean_loss,
    gather_rows,
    is_distributed,
)
from geofuse.training._epoch import EpochAccumulator, epoch_scores, publish_epoch_values
from geofuse.training._regression import (
    TargetScaler,
    build_regression_loss,
    regression_epoch_scores,
)
from geofuse.training._schedulers import EpochSchedule
from geofuse.training._step_costs import direct_backward_allowed
from geofuse.training.losses import build_loss
from geofuse.training.optim import build_optimizer, build_scheduler

STAGES = ("train", "val", "test")


def _is_last(batch_idx: int, dataloader_idx: int, counts: list[int | float]) -> bool:
    """Whether this is the last batch of the last loader, given the batches per loader."""
    return dataloader_idx == len(counts) - 1 and batch_idx + 1 >= counts[dataloader_idx]


def _default_temperature(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                         *_: Any) -> None:
    """Load hook: a checkpoint written before temperature scaling gets T = 1."""
    state_dict.setdefault(prefix + "logit_temperature", torch.ones(()))


class ClassificationTask(L.LightningModule):
    """Classification of ``batch["image"]`` into ``num_classes`` classes.

    Reports ``{stage}_loss``, ``{stage}_accuracy`` (overall) and ``{stage}_f1_macro`` per epoch
    (in ``trainer.callback_metrics``, the progress bar and the loggers).

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
        multilabel: targets are multi-hot label sets (B, K): sigmoid outputs (a class is
            predicted from probability 0.5), BCE or focal loss, accuracy = subset accuracy.
        segmentation: targets are pixel masks (``batch["mask"]``, (B, H, W), 255 =
            unlabelled) and the model returns logits (B, K, H, W); a binary model may return
            one channel z, read as the logits [0, z] (softmax = sigmoid(z)). Adds
            ``{stage}_iou`` (the change class of a binary mask, else mean IoU).
        time_steps: dates of a time series stacked time-major in the channels (T x C).
        regression: targets are continuous values (``batch["label"]`` float, (B,)) and the
            model has one output (``num_classes`` = 1), the standardised target of
            ``target_scaler``; reports ``{stage}_rmse``, ``_mae`` and ``_r2`` in the target's
            unit instead of accuracy and F1.
        target_scaler: :meth:`~geofuse.training._regression.TargetScaler.to_dict` of the
            training split (regression only).
        dense: a regression target per pixel (``batch["label"]`` float (B, H, W), NaN =
            unlabelled) of a segmentation network with one output channel (B, 1, H, W);
            losses and scores count the labelled pixels.
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
        multilabel: bool = False,
        segmentation: bool = False,
        time_steps: int = 1,
        regression: bool = False,
        target_scaler: dict[str, Any] | None = None,
        dense: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(
            model, in_channels=in_channels, num_classes=num_classes, patch_size=patch_size,
            multilabel=multilabel, time_steps=time_steps, regression=regression,
            **(model_kwargs or {}),
        )
        self.multilabel = multilabel
        self.segmentation = segmentation
        self.regression = regression
        self.dense = dense and regression
        self.scaler = TargetScaler(**(target_scaler or {}))
        self._mixup_alpha = float(self.train_config.mixup)
        self._cutmix_alpha = float(self.train_config.cutmix)
        self.loss_fn: nn.Module = (
            build_regression_loss(self.train_config.loss) if regression else
            build_loss(self.train_config.loss, num_classes, class_counts, multilabel=multilabel))
        self._epoch = {stage: EpochAccumulator() for stage in STAGES}
        # the same zero_grad/backward/step as Lightning's automatic optimisation, without its
        # per-step closure and hook machinery (see training_step)
        self.automatic_optimization = False
        self._train_epoch_done = False
        self._schedule: EpochSchedule | None = None  # set by configure_optimizers
        self._direct_backward = False  # set by on_train_start
        # temperature scaling of the logits, fitted on the validation split after training
        # (geofuse.evaluation.calibrate); 1 while training. Checkpoints of older runs lack it.
        self.register_buffer("logit_temperature", torch.ones(()))
        self.register_load_state_dict_pre_hook(_default_temperature)

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets ``_current_fx_name`` (a str or None) around every hook call, dozens of
        # times a step; nn.Module.__setattr__'s parameter/module/buffer checks made that ~3 ms
        # an epoch of SimpleCNN on CPU. It is never a parameter, module or buffer: set it plainly.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

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
        ``uses_tabular`` (e.g. ``tabular_fusion``), their tabular attributes (B, F); divided
        by the fitted temperature ``logit_temperature`` (1 until calibrated)."""
        tabular = getattr(self.model, "uses_tabular", False)
        logits = self.model(x, tab) if tabular else self.model(x)
        if self.regression:
            return logits
        if self.segmentation and logits.shape[1] == 1:  # binary: one logit z -> [0, z]
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        # x / 1 is exact: an uncalibrated task returns its logits bit for bit
        return logits / self.logit_temperature

    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        target = batch["mask"] if self.segmentation else batch["label"]
        if stage == "train" and len(target) > 1 and not (self.segmentation or self.dense):
            mode = self._batch_mix_mode()
            if mode is not None:
                return self._mixed_step(batch, mode)
        logits = self(batch["image"], batch.get("tab"))
        loss = self._loss(logits, target)
        self._epoch[stage].update(loss, self._predicted(logits), target)
        return loss

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss; of a regression task on the standardised target."""
        if self.regression:
            return self.loss_fn(logits, self.scaler.encode(target))
        return self.loss_fn(logits, target)

    def _predicted(self, logits: torch.Tensor) -> torch.Tensor:
        """What the epoch's scores compare with the targets: class indices, label sets
        (sigmoid >= 0.5) or, of a regression task, values in the target's unit."""
        if self.dense:  # (B, 1, H, W) -> values (B, H, W)
            return self.scaler.decode(logits[:, 0])
        if self.regression:
            return self.scaler.decode(logits.reshape(len(logits), -1)[:, 0])
        return logits >= 0 if self.multilabel else logits.argmax(dim=1)

    def _batch_mix_mode(self) -> str | None:
        """``mixup``, ``cutmix`` or None for this training batch (one at random when both
        are on, as timm's Mixup does)."""
        modes = [m for m, a in (("mixup", self._mixup_alpha), ("cutmix", self._cutmix_alpha))
                 if a > 0]
        if len(modes) == 2:
            return modes[int(torch.randint(0, 2, (1,)))]
        return modes[0] if modes else None

    def _mixed_step(self, batch: dict[str, Any], mode: str) -> torch.Tensor:
        """A training step on the batch blended with a shuffled copy of itself: mixup blends
        whole patches (and tabular attributes), cutmix pastes a box of the partner patch; the
        loss is blended with the same weight, the epoch's scores count the dominant target."""
        image = batch["image"]
        tab = batch.get("tab")
        if mode == "mixup":
            lam = float(torch.distributions.Beta(self._mixup_alpha, self._mixup_alpha).sample())
            perm = torch.randperm(len(batch["label"]), device=image.device)
            image = lam * image + (1 - lam) * image[perm]
            if tab is not None:
                tab = lam * tab + (1 - lam) * tab[perm]
        else:
            perm = torch.randperm(len(batch["label"]), device=image.device)
            image, lam = cutmix_images(image, perm, self._cutmix_alpha)
        target = batch["label"]
        logits = self(image, tab)
        loss = lam * self._loss(logits, target) + (1 - lam) * self._loss(logits, target[perm])
        dominant = target if lam >= 0.5 else target[perm]
        self._epoch["train"].update(loss, self._predicted(logits), dominant)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One optimisation step, written out (manual optimisation).

        Lightning's automatic loop does the same work in the same order (forward, zero_grad,
        backward, optimizer step, with the same callback hooks around backward and step)
        through a closure and more hook calls, ~0.2 ms a step. When no callback hooks the
        backward pass, ``loss.backward()`` replaces ``manual_backward``
        (:func:`~geofuse.training._step_costs.direct_backward_allowed`). The epoch-interval LR
        schedulers step as Lightning would (:mod:`geofuse.training._schedulers`).
        """
        optimizer = self.optimizers()
        if isinstance(optimizer, list):  # configure_optimizers returns a single optimizer
            optimizer = optimizer[0]
        loss = self._shared_step(batch, "train")
        optimizer.zero_grad()  # after the forward pass, as Lightning's automatic loop
        if self._direct_backward:  # nothing hooks the backward pass (on_train_start)
            loss.backward()
        else:
            self.manual_backward(loss)
        optimizer.step()
        if self._is_last_train_batch(batch_idx):
            self._train_epoch_done = True
            if self._schedule is not None:
                self._schedule.step(self, reduce_on_plateau=False)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def _is_last_train_batch(self, batch_idx: int) -> bool:
        """Whether the step is the epoch's last (as Lightning's ``_num_ready_batches_reached``)."""
        trainer = self.trainer
        return (batch_idx + 1 >= trainer.num_training_batches
                or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    def on_train_start(self) -> None:
        self._direct_backward = direct_backward_allowed(self.trainer, self)

    # -- epoch values: reset at the start, logged once at the last batch -----------------------
    def on_train_epoch_start(self) -> None:
        self._epoch["train"].reset()
        self._train_epoch_done = False

    def on_validation_epoch_start(self) -> None:
        self._epoch["val"].reset()
        if is_distributed(self.trainer):
            broadcast_buffers(self)

    def on_test_epoch_start(self) -> None:
        self._epoch["test"].reset()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._is_last_train_batch(batch_idx):
            self._log_epoch("train")

    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        trainer = self.trainer
        counts = trainer.num_sanity_val_batches if trainer.sanity_checking else \
            trainer.num_val_batches
        if _is_last(batch_idx, dataloader_idx, counts):
            self._log_epoch("val")

    def on_test_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if _is_last(batch_idx, dataloader_idx, self.trainer.num_test_batches):
            self._log_epoch("test")

    # an epoch cut short (trainer.should_stop, unsized loaders) is logged at its end instead
    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        # after the epoch-end hooks of the callbacks, as Lightning's automatic optimisation
        # (before EarlyStopping's, which does not read the learning rate)
        restarting = self.trainer.fit_loop.restarting
        if self._schedule is not None and self._train_epoch_done and not restarting:
            self._schedule.step(self, reduce_on_plateau=True)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def _log_epoch(self, stage: str) -> None:
        """Publish ``{stage}_loss`` and the stage's metrics of the epoch so far, then reset
        them; nothing when no step ran since the last reset."""
        epoch = self._epoch[stage]
        if epoch.empty:
            return
        loss = epoch.loss()
        preds, target = epoch.predictions()
        if is_distributed(self.trainer):  # the whole split: every process's share
            if self.segmentation:  # pixels (tile shapes may differ), one byte each
                preds, target = preds.reshape(-1).byte(), target.reshape(-1).byte()
            elif self.dense:  # pixels (tile shapes may differ)
                preds, target = preds.reshape(-1), target.reshape(-1)
            loss = gather_mean_loss(self, loss, sum(epoch.sizes))
            preds, target = gather_rows(self, preds), gather_rows(self, target)
            if self.segmentation:
                preds, target = preds.long(), target.long()
        epoch.reset()
        scores = regression_epoch_scores(preds, target) if self.regression else \
            epoch_scores(preds, target, int(self.hparams["num_classes"]),
                         multilabel=self.multilabel, segmentation=self.segmentation)
        values = {f"{stage}_loss": loss}
        values.update({f"{stage}_{name}": value for name, value in scores.items()})
        prog_bar = [name for name in values
                    if stage == "val" or (stage == "train" and name == "train_loss")]
        if self.trainer.state.fn == TrainerFn.FITTING:
            publish_epoch_values(self.trainer, values, prog_bar)
            return
        # logged once per epoch: batch_size=1 leaves the value as it is (x * 1 / 1)
        for name, value in values.items():
            self.log(name, value, on_step=False, on_epoch=True, batch_size=1,
                     prog_bar=name in prog_bar, add_dataloader_idx=False)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Class indices (B,) or, of a segmentation task, class masks (B, H, W); of a
        multi-label task, class probabilities (B, K); of a regression task, values (B,)."""
        logits = self(batch["image"], batch.get("tab"))
        if self.regression:
            return self._predicted(logits)
        return logits.sigmoid() if self.multilabel else logits.argmax(dim=1)

    def configure_optimizers(self) -> dict[str, Any]:
        """Optimiser and LR schedule of ``train_config`` (default: Adam + plateau on val_loss)."""
        cfg = self.train_config
        optimizer = build_optimizer(self.model, cfg)
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        epochs = max_epochs if max_epochs and max_epochs > 0 else cfg.epochs
        scheduler = build_scheduler(optimizer, cfg, epochs)
        if scheduler is None:
            self._schedule = None
            return {"optimizer": optimizer}
        # Lightning keeps (saves, restores) the scheduler; the task steps it (training_step)
        self._schedule = EpochSchedule.from_lightning(scheduler)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self._schedule.scheduler}}
