"""Checkpointing that costs little per epoch: best weights kept in memory, files written rarely.

Writing a full checkpoint every epoch (weights + optimiser state, ~280 MB for a ResNet-50) made
training ~3x slower than a plain loop on CPU. This callback instead:

- keeps a copy of the best weights (lowest ``val_loss``) in memory and writes ``best.ckpt``
  (weights only, with the best epoch) when training ends or is interrupted;
- writes the full ``last.ckpt`` (for ``--resume``) when training ends, when it is interrupted
  (Ctrl+C or an exception), and at most every ``interval_s`` seconds in between, so a hard kill
  loses at most that much training.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from geofuse.io_utils import atomic_path


class BestAndLastCheckpoint(Callback):
    """Keep the best weights in memory; write best.ckpt and last.ckpt rarely and atomically.

    Args:
        best_path: file for the best weights (weights-only Lightning checkpoint).
        last_path: file for the full resumable checkpoint.
        interval_s: write ``last_path`` at most this often during training (seconds).
        monitor: metric to minimise.
    """

    def __init__(self, best_path: Path, last_path: Path, interval_s: float = 300.0,
                 monitor: str = "val_loss") -> None:
        self.best_path, self.last_path = Path(best_path), Path(last_path)
        self.interval_s, self.monitor = interval_s, monitor
        self.best_score = math.inf
        self.best_epoch: int | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._last_write = time.monotonic()

    # -- tracking -------------------------------------------------------------------------
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        score = float(value) if value is not None else math.nan
        if math.isfinite(score) and score < self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self._best_state = {k: v.detach().to("cpu", copy=True)
                                for k, v in pl_module.state_dict().items()}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if time.monotonic() - self._last_write >= self.interval_s:
            self._write_last(trainer)

    # -- writing --------------------------------------------------------------------------
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_all(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._write_all(trainer)

    def _write_all(self, trainer: L.Trainer) -> None:
        self._write_last(trainer)
        self._write_best(trainer)

    def _write_last(self, trainer: L.Trainer) -> None:
        with atomic_path(self.last_path, suffix=".ckpt") as tmp:
            trainer.save_checkpoint(tmp)
        self._last_write = time.monotonic()

    def _write_best(self, trainer: L.Trainer) -> None:
        """Write the best weights; with no finite val_loss ever (a diverged run), the current
        weights, so the run can still be evaluated and flagged by the guard."""
        if self._best_state is None and self.best_path.exists():
            return  # no improvement in this session: keep the earlier file
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=True)
        if self._best_state is not None:
            checkpoint["state_dict"] = self._best_state
            checkpoint["epoch"] = self.best_epoch
        with atomic_path(self.best_path, suffix=".ckpt") as tmp:
            torch.save(checkpoint, tmp)

    # -- resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = float(state_dict.get("best_score", math.inf))
        self.best_epoch = state_dict.get("best_epoch")
