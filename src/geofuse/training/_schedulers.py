"""Epoch-interval LR scheduling for a LightningModule that optimises manually.

Under manual optimisation Lightning keeps the schedulers (it saves and restores their state
with the checkpoints) but neither steps them nor keeps their ``monitor``/``interval`` keys.
:class:`EpochSchedule` holds a scheduler with those keys and :meth:`EpochSchedule.step` steps it
at the moments Lightning's automatic optimisation does (``_TrainingEpochLoop
.update_lr_schedulers`` in Lightning 2.x), so the learning rates, and the training, stay the
same:

- a non-plateau scheduler right after the optimizer step of the epoch's last batch (before
  ``on_train_batch_end`` and before validation);
- a ``ReduceLROnPlateau`` at the end of the training epoch, with its ``monitor`` value from
  ``trainer.callback_metrics`` (missing: an error when ``strict``, else a warning and no step);

both only on epochs where ``(epoch + 1) % frequency == 0``. Step-interval schedules are not
supported (:func:`geofuse.training.optim.build_scheduler` makes none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim.lr_scheduler import ReduceLROnPlateau


@dataclass(frozen=True)
class EpochSchedule:
    """An LR scheduler stepped once per epoch.

    Attributes:
        scheduler: the torch scheduler.
        monitor: the metric a ``ReduceLROnPlateau`` watches (None for other schedulers).
        frequency: step every ``frequency`` epochs.
        strict: a missing ``monitor`` is an error (else a warning and no step).
    """

    scheduler: Any
    monitor: str | None = None
    frequency: int = 1
    strict: bool = True

    @property
    def reduce_on_plateau(self) -> bool:
        """True for a scheduler stepped with the monitored value."""
        return isinstance(self.scheduler, ReduceLROnPlateau)

    @classmethod
    def from_lightning(cls, config: dict[str, Any]) -> EpochSchedule:
        """From a Lightning ``lr_scheduler`` dict (``scheduler``, ``monitor``, ``interval``...).

        Raises:
            ValueError: an ``interval`` other than ``"epoch"``, or a plateau scheduler without
                ``monitor``.
        """
        interval = config.get("interval", "epoch")
        if interval != "epoch":
            raise ValueError(f"LR scheduler interval {interval!r} is not supported; "
                             "ClassificationTask steps schedulers once per epoch")
        schedule = cls(scheduler=config["scheduler"], monitor=config.get("monitor"),
                       frequency=int(config.get("frequency", 1)),
                       strict=bool(config.get("strict", True)))
        if schedule.reduce_on_plateau and schedule.monitor is None:
            raise ValueError("a ReduceLROnPlateau scheduler needs a 'monitor' metric")
        return schedule

    def step(self, module: L.LightningModule, reduce_on_plateau: bool) -> None:
        """Step the scheduler if it is of the kind asked for and due this epoch.

        Raises:
            MisconfigurationException: a strict plateau scheduler's monitor was not logged (the
                error Lightning raises).
        """
        if self.reduce_on_plateau != reduce_on_plateau:
            return
        trainer = module.trainer
        if (trainer.current_epoch + 1) % self.frequency:
            return
        metric = None
        if self.reduce_on_plateau:
            metric = trainer.callback_metrics.get(str(self.monitor))
            if metric is None:
                if self.strict:
                    raise MisconfigurationException(
                        f"ReduceLROnPlateau conditioned on metric {self.monitor} which is not "
                        f"available. Available metrics are: {list(trainer.callback_metrics)}. "
                        "Condition can be set using `monitor` key in lr scheduler dict"
                    )
                rank_zero_warn(
                    f"ReduceLROnPlateau conditioned on metric {self.monitor} which is not "
                    "available but strict is set to `False`. Skipping learning rate update.",
                    category=RuntimeWarning,
                )
                return
        module.lr_scheduler_step(self.scheduler, metric)
