"""Train a model on a PatchSet and leave a complete, self-describing run directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import numpy as np
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping
from rich.console import Console

from geofuse.config import StudyConfig, dump_config, parse_config
from geofuse.data.datamodule import (
    PatchDataModule,
    check_splits,
    select_inputs,
    train_tabular_stats,
)
from geofuse.data.label_fraction import subsample_training
from geofuse.data.normalize import BandStats, TabularStats, compute_band_stats
from geofuse.data.patchset import MASK_IGNORE, PatchSet
from geofuse.errors import ConfigError, RunDirError
from geofuse.io_utils import atomic_write_json
from geofuse.locks import locked
from geofuse.rundir import (
    HISTORY_COLUMNS,
    RunDir,
    append_history,
    default_run_name,
    read_history,
    write_history,
)
from geofuse.training._distributed import (
    ddp_strategy,
    launch_environment,
    restore_callback_states,
    stop_processes,
)
from geofuse.training._progress import ThrottledProgressBar
from geofuse.training._quiet import quiet_lightning as _quiet_lightning
from geofuse.training._regression import TargetScaler
from geofuse.training._run_state import (
    finish_run_info,
    mark_failed,
    mark_interrupted,
    prepare_run_dir,
    record_killed,
    require_checkpoint,
    run_info,
)
from geofuse.training._step_costs import NoOpProfiler, cuda_check_without_missing_nvml
from geofuse.training.checkpoints import BestAndLastCheckpoint
from geofuse.training.guards import CollapseStopper
from geofuse.training.task import ClassificationTask

StatsT = TypeVar("StatsT", BandStats, TabularStats)



class HistoryWriter(Callback):
    """Append a row to ``history.csv`` after every epoch. At the start the file is rewritten
    (atomically) with the rows of earlier epochs only: those before the resumed epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lr: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:  # one writer (data-parallel training)
            return
        start = trainer.current_epoch
        write_history(self.path, [row for row in read_history(self.path) if row["epoch"] < start])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # per-epoch schedulers step before on_train_epoch_end: keep the LR this epoch used
        self.lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        for column in HISTORY_COLUMNS[1:-1]:
            value = metrics.get(column)
            row[column] = float(value) if value is not None else None
        row["lr"] = self.lr
        append_history(self.path, row)


def train_model(
    cfg: StudyConfig,
    resume: bool = False,
    run_name: str | None = None,
    progress: bool = True,
    patchset: PatchSet | None = None,
    epochs: int | None = None,
    overwrite: bool = False,
    run_info_extra: dict[str, Any] | None = None,
    figures: bool = True,
) -> Path:
    """Train ``cfg.train.model`` on the PatchSet, then evaluate and write the report.

    The run directory is locked while this runs (a second command on it is refused); a run
    found ``running`` with no live holder was killed and is marked interrupted first.

    Args:
        cfg: the study config.
        resume: continue the run from ``checkpoints/last.ckpt``.
        run_name: run directory name under ``cfg.runs_path``; default
            :func:`geofuse.rundir.default_run_name`.
        progress: show Lightning's progress bar and model summary.
        patchset: use this PatchSet instead of reading ``cfg.patches_path``; it is saved as
            ``patches.h5`` in the run directory so that the run stays self-describing.
        epochs: override ``cfg.train.epochs`` (the maximum; early stopping may end sooner).
        overwrite: replace an existing finished run of the same name.
        run_info_extra: more keys for ``run.json`` (e.g. the study cell's fingerprint).
        figures: draw the report's figures (a study's cells leave them to the study report).

    Returns:
        The run directory.

    Raises:
        DataNotFoundError: no PatchSet (run ``geofuse extract``).
        SplitError: an empty split or a class missing from train/val.
        BandError: unknown band or modality in ``cfg.train``.
        RunDirError: nothing to resume, or the run exists and neither resume nor overwrite.
        LockedError: another live process is training in the same run directory.
        StopRequested: Ctrl+C or SIGTERM; last.ckpt and run.json say where it stopped.
    """
    run = RunDir(cfg.runs_path / (run_name or default_run_name(cfg)))
    if resume:
        require_checkpoint(run)  # before the lock creates the folder
    with locked(run.path, f"run {run.name!r}"):
        killed = record_killed(run)
        if killed is not None and progress:
            Console(stderr=True).print(
                f"[yellow]run {run.name} was stopped without notice (killed) after "
                f"{killed['epochs_trained']} epoch(s); it is marked interrupted[/]",
                soft_wrap=True)
        return _train_locked(cfg, run, resume, progress, patchset, epochs, overwrite,
                             run_info_extra, figures)


def _train_locked(
    cfg: StudyConfig, run: RunDir, resume: bool, progress: bool, patchset: PatchSet | None,
    epochs: int | None, overwrite: bool, run_info_extra: dict[str, Any] | None,
    figures: bool = True,
) -> Path:
    """:func:`train_model` once the run directory's lock is held."""
    from geofuse.evaluation.evaluate import evaluate_run
    from geofuse.models.forest import fit_baseline, is_baseline
    from geofuse.reporting.report import write_report

    prepare_run_dir(run, resume, overwrite)
    patches, patches_path = _load_patches(cfg, run, patchset, resume)
    max_epochs = epochs or cfg.train.epochs
    stats = _band_stats(run, patches, resume)
    tab_stats = _tabular_stats(run, patches, resume)
    _write_resolved_config(cfg, run, patches_path, max_epochs)
    info = run_info(cfg, run, patches, patches_path, resume, run_info_extra)
    atomic_write_json(run.run_json, info)
    if is_baseline(cfg.train.model.name):  # scikit-learn: fit, then the same evaluation/report
        fit_baseline(cfg, run, patches, stats, info)
        evaluate_run(run.path, verbose=progress)
        write_report(run.path, figures=figures)
        return run.path

    _check_shares(cfg, patches, patches_path)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = PatchDataModule(
        patches, batch_size=cfg.train.batch_size, num_workers=cfg.train.num_workers,
        augment=cfg.train.augment, stats=stats, seed=cfg.seed, tabular_stats=tab_stats,
        jitter=cfg.train.jitter, per_patch=cfg.train.normalization == "per_patch",
        crop=cfg.train.crop,
    )
    task = build_task(cfg, patches)
    if task.regression:  # how the network's outputs map back to the target's unit
        info["target_scaler"] = task.scaler.to_dict()
    started = time.perf_counter()
    with _quiet_lightning(), cuda_check_without_missing_nvml(), launch_environment():
        trainer: L.Trainer | None = None
        try:
            trainer = _build_trainer(cfg, run, max_epochs, progress)
            trainer.fit(task, datamodule=datamodule, ckpt_path=run.last_ckpt if resume else None)
        except (KeyboardInterrupt, SystemExit) as err:  # Lightning: Ctrl+C -> sys.exit(1)
            stop_processes(trainer)
            raise mark_interrupted(cfg, run, info, err) from None
        except Exception as err:
            stop_processes(trainer)
            mark_failed(run, info, err)
            raise
    if cfg.train.devices > 1:  # the callbacks ran in the training processes
        restore_callback_states(trainer, run.last_ckpt)
    finish_run_info(run, info, trainer, time.perf_counter() - started, task.model)
    evaluate_run(run.path, verbose=progress)
    write_report(run.path, figures=figures)
    return run.path


def _check_shares(cfg: StudyConfig, patches: PatchSet, path: Path) -> None:
    """Every device needs at least one validation patch (each validates its own share)."""
    devices, n_val = cfg.train.devices, len(patches.split_indices("val"))
    if devices > n_val:
        raise ConfigError(
            f"{str(path)!r}: the validation split holds {n_val} patch(es), fewer than "
            f"train.devices = {devices}; lower train.devices or give the split more patches"
        )


def build_task(cfg: StudyConfig, patches: PatchSet) -> ClassificationTask:
    """The Lightning task for ``cfg.train`` on ``patches`` (bands already selected)."""
    t = cfg.train
    if patches.targets().ndim == 1 and not (patches.regression or patches.segmentation) \
            and patches.num_classes < 2:
        raise ConfigError(
            f"the PatchSet holds {patches.num_classes} class ({patches.class_names}); a "
            "classifier needs at least 2: label more classes, or give each patch a value "
            "(regression)")
    scaler = None
    if patches.values is not None:  # regression: one output, the standardised target
        train_values = patches.values[patches.split_indices("train")]
        scaler = TargetScaler.fit(train_values[np.isfinite(train_values)],
                                  t.target_transform).to_dict()
    return ClassificationTask(
        model=t.model.name, in_channels=len(patches.band_names),
        num_classes=1 if patches.regression else
        len(patches.mask_names) if patches.segmentation else patches.num_classes,
        patch_size=patches.patch_size, model_kwargs=model_kwargs(cfg, patches),
        lr=t.lr, weight_decay=t.weight_decay, plateau_patience=t.plateau_patience,
        plateau_factor=t.plateau_factor,
        class_names=list(patches.mask_names if patches.segmentation else patches.class_names),
        train_config=t.model_dump(mode="json", exclude={"model"}),
        class_counts=_train_class_counts(patches),
        multilabel=patches.multilabel, segmentation=patches.segmentation,
        time_steps=patches.time_steps, regression=patches.regression, target_scaler=scaler,
        dense=patches.dense_values,
    )


def _train_class_counts(patches: PatchSet) -> list[int]:
    """Training-split count per output class: patches per class, or labelled pixels per mask
    class of a segmentation set (for balanced class weights)."""
    if patches.masks is None:
        return list(patches.class_counts("train").values())
    masks = patches.masks[patches.split_indices("train")]
    return np.bincount(masks[masks != MASK_IGNORE].ravel(),
                       minlength=len(patches.mask_names)).tolist()


def model_kwargs(cfg: StudyConfig, patches: PatchSet) -> dict[str, Any]:
    """``create_model`` options from ``cfg.train.model``, plus the input band names, the
    modalities' channel counts (fusion and temporal models) and, for band-aware weights on a
    sensor that numbers its bands otherwise (``landsat57``), its red, green and blue bands.

    An option is passed when the model takes it or when it differs from its default (so that
    the model rejects it with a ConfigError); ``pretrained_path`` is resolved against the
    config file's folder.
    """
    from geofuse.models.registry import is_segmentation_model, model_options

    model = cfg.train.model
    accepted = model_options(model.name)
    defaults = type(model)().model_dump()
    # segmentation models keep their own defaults for options left at the config default
    own = is_segmentation_model(model.name)
    out = {k: v for k, v in model.model_dump(exclude={"name"}).items()
           if (k in accepted and not own) or v != defaults.get(k)}
    if out.get("pretrained_path"):
        out["pretrained_path"] = str(cfg.resolve(out["pretrained_path"]).resolve())
    out["band_names"] = list(patches.band_names)
    if "rgb_bands" in accepted and not out.get("rgb_bands"):
        from geofuse.sensors import sensor_rgb

        rgb = sensor_rgb(patches.modalities, {m.name: m.sensor for m in cfg.modalities})
        if rgb is not None:  # e.g. Landsat 4/5/7: red B3, green B2, blue B1
            out["rgb_bands"] = rgb
    if "modalities" in accepted:  # fusion models split the stacked bands themselves
        out["modalities"] = {m: len(bands) for m, bands in patches.modalities.items()}
    if "num_tabular" in accepted:  # image + tabular models
        if patches.tabular is None:
            raise ConfigError(
                f"model {model.name!r} needs tabular attributes per patch, but the PatchSet has "
                "none; add a tabular array to the PatchSet or pick an image-only model"
            )
        out["num_tabular"] = int(patches.tabular.shape[1])
    return out


def _load_patches(
    cfg: StudyConfig, run: RunDir, patchset: PatchSet | None, resume: bool
) -> tuple[PatchSet, Path]:
    """PatchSet restricted to the run's bands, with splits checked, and its file path.

    A PatchSet passed in memory is saved into the run directory (kept as is on resume).
    """
    if patchset is None:
        path = cfg.patches_path.resolve()
    else:
        path = run.patches_copy.resolve()
        if not (resume and path.exists()):
            patchset.save(path)
    patches = subsample_training(select_inputs(PatchSet.load(path), cfg.train),
                                 cfg.train.label_fraction, cfg.seed)
    check_splits(patches, path)
    return patches, path


def _band_stats(run: RunDir, patches: PatchSet, resume: bool) -> BandStats:
    return _run_stats(
        run, BandStats, run.normalization, list(patches.band_names), resume,
        lambda: compute_band_stats(patches.x[patches.split_indices("train")],
                                   patches.band_names, patches.time_steps),
        f"bands {{saved}}, the config now selects {{now}}; resume with the run's own "
        f"{run.config.name} or start a new run with --run-name",
    )


def _tabular_stats(run: RunDir, patches: PatchSet, resume: bool) -> TabularStats | None:
    """Train-split statistics of the tabular attributes, saved in the run directory (None and
    no file when the PatchSet has none); on resume the saved ones."""
    if patches.tabular is None:
        return None
    return _run_stats(
        run, TabularStats, run.tabular_normalization, list(patches.tabular_names), resume,
        lambda: train_tabular_stats(patches),
        "tabular columns {saved}, the PatchSet now has {now}; start a new run with --run-name",
    )


def _run_stats(
    run: RunDir, kind: type[StatsT], path: Path, names: list[str], resume: bool,
    compute: Callable[[], StatsT], mismatch: str,
) -> StatsT:
    """On resume the statistics saved at ``path`` (RunDirError, with ``mismatch`` filled in,
    when they are for other names); otherwise ``compute()``, saved at ``path``."""
    if resume and path.is_file():
        stats = kind.load(path)
        if stats.names != names:
            raise RunDirError(f"run {str(run.path)!r} was trained on "
                              + mismatch.format(saved=stats.names, now=names))
        return stats
    stats = compute()
    stats.save(path)
    return stats


def _write_resolved_config(
    cfg: StudyConfig, run: RunDir, patches_path: Path, max_epochs: int
) -> None:
    """config.yaml with absolute paths, the effective epochs and run name."""
    data = cfg.model_dump(mode="json")
    data["workdir"] = str(cfg.workdir_path.resolve())
    for mod in data["modalities"]:
        mod["files"] = [str(cfg.resolve(f).resolve()) for f in mod["files"]]
    for key in ("path", "raster"):  # label polygons or a label raster
        if data.get("labels") and data["labels"].get(key):
            data["labels"][key] = str(cfg.resolve(data["labels"][key]).resolve())
    data["prepare"]["output"] = str(cfg.stack_path.resolve())
    data["extract"]["output"] = str(patches_path)
    data["train"].update(output=str(run.path.parent.resolve()), epochs=max_epochs,
                         run_name=run.name)
    dump_config(parse_config(data, cfg.base_dir, source=str(run.config)), run.config)


def monitor_mode(monitor: str) -> str:
    """``min`` for a loss, ``max`` for a score (``train.monitor``)."""
    return "min" if monitor.endswith("loss") else "max"


def _build_trainer(cfg: StudyConfig, run: RunDir, max_epochs: int, progress: bool) -> L.Trainer:
    keep_last = cfg.train.checkpoint == "last"
    callbacks: list[Callback] = [
        HistoryWriter(run.history),
        BestAndLastCheckpoint(run.best_ckpt, run.last_ckpt, cfg.train.checkpoint_interval_s,
                              monitor=cfg.train.monitor, mode=monitor_mode(cfg.train.monitor),
                              max_overhead=cfg.train.checkpoint_overhead, keep_last=keep_last),
    ]
    if not keep_last:  # the final epoch is kept: nothing to stop early for
        callbacks.insert(1, EarlyStopping(monitor=cfg.train.monitor,
                                          mode=monitor_mode(cfg.train.monitor),
                                          patience=cfg.train.early_stopping_patience))
    if cfg.guards.stop_on_collapse:
        callbacks.append(CollapseStopper(cfg.guards))
    if progress:
        callbacks.append(ThrottledProgressBar())
    devices = cfg.train.devices
    try:
        return _trainer(cfg, run, max_epochs, progress, callbacks, devices)
    except MisconfigurationException as err:  # e.g. a GPU asked for and none present
        t = cfg.train
        raise ConfigError(
            f"{cfg.source or 'config'}: Lightning cannot train with train.accelerator = "
            f"{t.accelerator!r}, devices = {devices}, precision = {t.precision!r}: "
            f"{' '.join(str(err).split())}; change those keys in the train section"
        ) from None


def _trainer(cfg: StudyConfig, run: RunDir, max_epochs: int, progress: bool,
             callbacks: list[Callback], devices: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs, accelerator=cfg.train.accelerator, devices=devices,
        strategy=ddp_strategy(cfg.train.strategy) if devices > 1 else "auto",
        precision=cfg.train.precision,
        deterministic=cfg.train.deterministic, logger=False, callbacks=callbacks,
        enable_checkpointing=False,  # BestAndLastCheckpoint writes the files
        default_root_dir=run.path,
        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=1,
        profiler=NoOpProfiler(),
    )
