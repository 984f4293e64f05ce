"""A run directory's life: prepared, running, interrupted (or killed, found later), finished.

``run.json`` says where a run stands. A command holds the run directory's lock
(:mod:`geofuse.locks`) while it trains, so a ``status: running`` found by the next command that
gets the lock belongs to a process that died without saying so (SIGKILL, power loss); it is
recorded as ``interrupted`` with ``killed: true``.
"""

from __future__ import annotations

import platform
import shutil
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

import geofuse
from geofuse.config import StudyConfig
from geofuse.data.datamodule import split_counts
from geofuse.data.patchset import PatchSet
from geofuse.errors import RunDirError, StopRequested, child_error
from geofuse.io_utils import atomic_write_json
from geofuse.locks import LOCK_NAME
from geofuse.models.freeze import frozen_fraction, frozen_parameter_fraction
from geofuse.models.registry import count_parameters
from geofuse.rundir import RunDir, read_history
from geofuse.training.guards import CollapseStopper


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def prepare_run_dir(run: RunDir, resume: bool, overwrite: bool) -> None:
    """Check that the run can start (or resume) in ``run``; empty it when overwriting.

    Raises:
        RunDirError: nothing to resume, or a run is there and neither resume nor overwrite.
    """
    if resume:
        require_checkpoint(run)
        return
    existing = [p for p in (run.last_ckpt, run.best_ckpt, run.metrics) if p.exists()]
    if existing and not overwrite:
        raise RunDirError(
            f"run directory {str(run.path)!r} already holds a run; pass --resume to continue "
            "it, --run-name NEW for a new run, or delete the folder"
        )
    if run.path.exists() and overwrite:
        for child in run.path.iterdir():  # keep the lock file this process holds
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    run.path.mkdir(parents=True, exist_ok=True)


def require_checkpoint(run: RunDir) -> None:
    """Raise :class:`RunDirError` when ``run`` has no ``last.ckpt`` to resume from."""
    if not run.last_ckpt.is_file():
        raise RunDirError(
            f"cannot resume: {str(run.last_ckpt)!r} does not exist; start the run "
            "without --resume (or pass the --run-name of an interrupted run)"
        )


def record_killed(run: RunDir) -> dict[str, Any] | None:
    """Mark a run whose ``run.json`` still says ``running`` as interrupted (call with the
    run's lock held: no live process is training it). Returns the updated record, if any."""
    if not run.run_json.is_file():
        return None
    try:
        info = run.read_json(run.run_json)
    except ValueError:
        return None
    if info.get("status") != "running":
        return None
    info.update(status="interrupted", epochs_trained=len(read_history(run.history)))
    if info.get("sessions"):
        info["sessions"][-1].update(killed=True, found_killed_at=now())
    atomic_write_json(run.run_json, info)
    return info


def versions() -> dict[str, str]:
    """Versions of geofuse and the libraries that decide a run's numbers."""
    import torchmetrics

    return {
        "geofuse": geofuse.__version__, "python": platform.python_version(),
        "torch": torch.__version__, "lightning": L.__version__,
        "torchmetrics": torchmetrics.__version__, "numpy": np.__version__,
        "platform": platform.platform(),
    }


def run_info(
    cfg: StudyConfig, run: RunDir, patches: PatchSet, patches_path: Path, resume: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Provenance record; on resume the earlier record is extended, not replaced."""
    info: dict[str, Any] = run.read_json(run.run_json) if resume and run.run_json.is_file() else {}
    info.update(
        run_name=run.name, status="running", patches_path=str(patches_path),
        bands=list(patches.band_names), modalities=dict(patches.modalities),
        class_names=list(patches.class_names), num_classes=patches.num_classes,
        patch_size=patches.patch_size, in_channels=len(patches.band_names), seed=cfg.seed,
        model={"name": cfg.train.model.name,
               "kwargs": cfg.train.model.model_dump(exclude={"name"})},
        class_counts=split_counts(patches), n_train=len(patches.split_indices("train")),
        versions=versions(), **(extra or {}),
    )
    if patches.segmentation:  # the model's classes are the mask's; class_names = strata
        info.update(task="segmentation", mask_names=list(patches.mask_names))
    if patches.regression:  # one continuous target per patch; class_names = its strata
        info.update(task="regression", value_name=patches.value_name,
                    dense=patches.dense_values)
    if patches.timestamps:
        info.update(time_steps=patches.time_steps, timestamps=list(patches.timestamps),
                    step_bands=patches.step_bands)
    info.setdefault("created_at", now())
    info.setdefault("sessions", []).append({"started_at": now(), "resumed": resume})
    return info


def resume_command(cfg: StudyConfig, run: RunDir) -> str:
    """The command line that continues ``run``."""
    config = str(cfg.source) if cfg.source is not None else "CONFIG"
    return f"geofuse train -c {config} --resume --run-name {run.name}"


def mark_interrupted(
    cfg: StudyConfig, run: RunDir, info: dict[str, Any], err: BaseException
) -> StopRequested:
    """Record an interrupted session; return the :class:`StopRequested` to raise instead of
    ``err`` (Lightning turns Ctrl+C into ``sys.exit(1)``: the signal is in its context)."""
    info.update(status="interrupted", epochs_trained=len(read_history(run.history)))
    info["sessions"][-1].update(interrupted_at=now())
    atomic_write_json(run.run_json, info)
    cause = err if isinstance(err, StopRequested) else err.__context__
    signum = getattr(cause, "signum", signal.SIGINT)
    return StopRequested(signum, resume=resume_command(cfg, run))


def mark_failed(run: RunDir, info: dict[str, Any], err: BaseException) -> None:
    """Record a session that ended with an error (not a kill: the next start must not take it
    for one)."""
    info.update(status="failed", epochs_trained=len(read_history(run.history)))
    err = child_error(err)  # a training process's own error, not torch's wrapper
    info["sessions"][-1].update(failed_at=now(), error=f"{type(err).__name__}: {err}"[:500])
    atomic_write_json(run.run_json, info)


def finish_run_info(
    run: RunDir, info: dict[str, Any], trainer: L.Trainer, seconds: float, model: torch.nn.Module
) -> None:
    """Record a finished training session in ``run.json``."""
    history = read_history(run.history)
    info["sessions"][-1].update(finished_at=now(), train_s=round(seconds, 3),
                                epochs_at_end=len(history))
    stopper = next((c for c in trainer.callbacks if isinstance(c, CollapseStopper)), None)
    if stopper is not None and stopper.reason:
        info["collapse_stop"] = {"epoch": stopper.epoch, "reason": stopper.reason}
    info.update(
        status="finished", epochs_trained=len(history), max_epochs=trainer.max_epochs,
        stopped_early=bool(trainer.early_stopping_callback
                           and trainer.early_stopping_callback.stopped_epoch > 0),
        train_s_total=round(sum(s.get("train_s", 0.0) for s in info["sessions"]), 3),
        num_params=count_parameters(model), frozen_fraction=frozen_fraction(model),
        frozen_parameter_fraction=frozen_parameter_fraction(model),
        best_checkpoint=str(run.best_ckpt.relative_to(run.path)),
    )
    atomic_write_json(run.run_json, info)
