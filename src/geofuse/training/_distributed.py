"""Data-parallel training (``train.devices`` > 1): what every process must do together.

Lightning's DDP gives each device a shard of every split (a ``DistributedSampler``) and
averages the gradients. geofuse computes its epoch values from the predictions of the whole
split, so each process hands its own to the others (:func:`gather_rows`) before the values
are computed: every process then holds the same values, and the callbacks that read them
(early stopping, checkpoints, the collapse guard) take the same decisions. The training
processes are children of the command (``ddp_spawn``/``ddp_fork``); what the command needs
afterwards comes back through the files rank 0 writes (``history.csv``, ``last.ckpt`` with
the callbacks' state: :func:`restore_callback_states`).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.trainer.call import _interrupt

from geofuse._signals import install_stop_handlers
from geofuse.training._quiet import silence_lightning

_START_METHODS = {"ddp_spawn": "spawn", "ddp_fork": "fork"}


class _GuardedLauncher(_MultiProcessingLauncher):
    """Lightning's launcher, whose training processes stop on SIGINT/SIGTERM and run the
    callbacks' ``on_exception`` hooks as a one-process fit does (Lightning's launcher calls
    the fit without them): rank 0 saves the resumable state of an interrupted run."""

    def _wrapping_function(self, process_idx: int, trainer: L.Trainer | None,
                           function: Callable[..., Any], args: Any, kwargs: Any,
                           return_queue: Any, global_states: Any = None) -> None:
        def guarded(*a: Any, **k: Any) -> Any:
            install_stop_handlers()
            try:
                return function(*a, **k)
            except BaseException as err:
                if trainer is not None:
                    _interrupt(trainer, err)
                raise

        super()._wrapping_function(process_idx, trainer, guarded, args, kwargs, return_queue,
                                   global_states)


class QuietDDPStrategy(DDPStrategy):
    """Lightning's DDP whose training processes are as quiet as the command itself, run the
    exception hooks, and draw their own random augmentations (seed + rank)."""

    def _configure_launcher(self) -> None:
        self._launcher = _GuardedLauncher(self, start_method=self._start_method)

    def setup_environment(self) -> None:
        silence_lightning()
        super().setup_environment()  # every process reseeded with the same seed
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is not None:  # DDP copies rank 0's weights: only the augmentations differ
            rank_seed = int(seed) + self.global_rank
            torch.manual_seed(rank_seed)
            np.random.seed(rank_seed % 2**32)
            random.seed(rank_seed)


def ddp_strategy(name: str) -> QuietDDPStrategy:
    """The strategy of ``train.strategy`` (``ddp_spawn`` or ``ddp_fork``)."""
    return QuietDDPStrategy(start_method=_START_METHODS[name])


def is_distributed(trainer: L.Trainer) -> bool:
    """Whether more than one process trains."""
    return trainer.world_size > 1


def gather_rows(module: L.LightningModule, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` of every process concatenated along dim 0, in rank order (the same tensor in
    every process). Processes may hold different numbers of rows; the trailing shapes must
    agree. Collective: every process must call it."""
    device = module.device
    dtype = rows.dtype
    local = rows.to(device)
    if dtype == torch.bool:  # not every backend gathers booleans
        local = local.to(torch.uint8)
    sizes = module.all_gather(torch.tensor([len(local)], device=device)).reshape(-1)
    longest = int(sizes.max())
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local
    gathered = module.all_gather(padded)  # (world, longest, ...)
    parts = [gathered[rank, : int(size)] for rank, size in enumerate(sizes)]
    return torch.cat(parts).to(dtype=dtype, device=rows.device)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (batch-norm running statistics). DDP syncs them
    only before training steps, so the last step of an epoch leaves each process with its own;
    validating with rank 0's makes the epoch's values those of the weights rank 0 saves.
    Collective."""
    for buffer in module.buffers():
        torch.distributed.broadcast(buffer.data, src=0)


def gather_mean_loss(module: L.LightningModule, loss: torch.Tensor, count: int) -> torch.Tensor:
    """The sample-weighted mean of every process's epoch loss (``count`` samples each)."""
    pair = torch.stack([loss.detach().double() * count,
                        torch.tensor(float(count), dtype=torch.float64)]).to(module.device)
    totals = module.all_gather(pair).reshape(-1, 2).sum(dim=0)
    return (totals[0] / totals[1]).to(device=loss.device, dtype=torch.float32)


def restore_callback_states(trainer: L.Trainer, checkpoint: Path) -> None:
    """Load the callbacks' state saved in ``checkpoint`` into this process's callbacks.

    Under ``ddp_spawn``/``ddp_fork`` the callbacks ran in the child processes; rank 0 saved
    their state (early stopping's stopped epoch, the collapse guard's verdict) in last.ckpt
    when training ended, and the command reads it back from there.
    """
    if not checkpoint.is_file():
        return
    # memory-mapped: only the callbacks' entries are read, not the weights and optimiser
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False,
                       mmap=True).get("callbacks", {})
    for callback in trainer.callbacks:
        state = saved.get(callback.state_key)
        if state is not None:
            callback.load_state_dict(state)


def stop_processes(trainer: L.Trainer | None, grace_s: float = 5.0) -> None:
    """End the training processes the command started (nothing when there are none): the
    command was interrupted or failed while they ran, and Lightning leaves them running.

    SIGTERM first; a process still alive after ``grace_s`` seconds (blocked in a collective
    whose peer is gone, where no Python handler runs) gets SIGKILL, so that the command can
    exit (Python waits for its children at exit). They lose at most the epoch in progress:
    last.ckpt is written after every epoch.
    """
    if trainer is None:
        return
    processes = getattr(trainer.strategy.launcher, "procs", None) or []
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(timeout=max(deadline - time.monotonic(), 0.0))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(timeout=grace_s)


def in_training_process(trainer: L.Trainer) -> bool:
    """False in the command's own process while child processes train (``ddp_spawn``,
    ``ddp_fork``): there the callbacks only see an untrained copy, and must not write."""
    return trainer.world_size == 1 or torch.distributed.is_initialized()


@contextlib.contextmanager
def launch_environment() -> Iterator[None]:
    """Leave ``MASTER_ADDR`` / ``MASTER_PORT`` as they were: Lightning's launcher sets them in
    the command's process, and a later data-parallel run (the next study cell) would reuse a
    port the previous process group may still hold."""
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
