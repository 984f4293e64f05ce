"""``geofuse pretrain``: SimCLR on a study's unlabelled patches, saved as a local weight file.

The file is ``{"state_dict": encoder tensors, "geofuse_pretrain": metadata}``: the encoder's
tensors keyed as in the full model (``features.*`` for simple_cnn, ``backbone.*`` for the timm
backbones), so that ``train.model.pretrained_path`` loads it, and the metadata: the bands, their
training-split mean and standard deviation (the normalisation used), the patches, settings and
the loss per epoch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geofuse.config import StudyConfig
from geofuse.data.datamodule import select_inputs
from geofuse.data.normalize import BandStats, compute_band_stats, normalize
from geofuse.data.patchset import PatchSet
from geofuse.data.transforms import standardize_patches
from geofuse.errors import ConfigError
from geofuse.io_utils import atomic_path
from geofuse.models.backbones import METADATA_KEY
from geofuse.progress_bars import step_progress
from geofuse.training.ssl.loss import nt_xent_loss
from geofuse.training.ssl.model import SimCLRModel, build_encoder
from geofuse.training.ssl.stack_windows import stack_windows
from geofuse.training.ssl.views import SimCLRViews

MIN_LR_FRACTION = 0.01


@dataclass
class PretrainResult:
    """What :func:`pretrain` wrote.

    Attributes:
        path: the weight file.
        losses: mean NT-Xent loss of every epoch.
        n_patches: unlabelled patches used.
        splits: the splits they came from.
        config_line: the config key to set, with the path relative to the config's folder.
        n_stack_windows: unlabelled windows of the fused stack used as well.
    """

    path: Path
    losses: list[float]
    n_patches: int
    splits: list[str]
    config_line: str = field(default="")
    n_stack_windows: int = 0


def default_output(cfg: StudyConfig) -> Path:
    """``pretrain.output`` resolved against the workdir, default
    ``<workdir>/pretrained/<model>_simclr.pt``."""
    return cfg.in_workdir(cfg.pretrain.output or
                          f"pretrained/{cfg.train.model.name}_simclr.pt")


def pretrain(
    cfg: StudyConfig, epochs: int | None = None, out: str | Path | None = None,
    include_test: bool | None = None, progress: bool = True, patchset: PatchSet | None = None,
) -> PretrainResult:
    """SimCLR-pretrain the encoder of ``cfg.train.model`` on the study's patches (no labels).

    Args:
        cfg: the study config (``pretrain`` section, ``train.model``, bands, seed).
        epochs: override ``pretrain.epochs``.
        out: the weight file; default :func:`default_output`.
        include_test: override ``pretrain.include_test`` (use the test split's images too).
        progress: show a progress bar on stderr.
        patchset: use this PatchSet instead of reading ``cfg.patches_path``.

    Returns:
        The file written, the loss per epoch and what was used.

    Raises:
        DataNotFoundError: no PatchSet (run ``geofuse extract``).
        ConfigError: a model whose encoder cannot be pretrained, or fewer than 2 patches.
        BandError: unknown band or modality in ``cfg.train``.
    """
    p = cfg.pretrain
    source = patchset if patchset is not None else PatchSet.load(cfg.patches_path)
    patches = select_inputs(source, cfg.train)
    splits = ["train", "val"] + (["test"] if (p.include_test if include_test is None
                                               else include_test) else [])
    index = np.sort(np.concatenate([patches.split_indices(s) for s in splits]))
    if len(index) < 2:
        raise ConfigError(f"geofuse pretrain needs at least 2 patches in the {splits} splits of "
                          f"{str(cfg.patches_path)!r}, found {len(index)}; extract more patches")
    stats = compute_band_stats(patches.x[patches.split_indices("train")], patches.band_names)
    device = _device(cfg.train.accelerator)
    images = patches.x[index]
    n_stack = 0
    if p.stack_patches:  # the unlabelled scene as well: normalised as the training split
        windows = stack_windows(cfg.stack_path, list(patches.band_names), patches.patch_size,
                                p.stack_patches, np.random.default_rng(cfg.seed))
        n_stack = len(windows)
        images = np.concatenate([images.astype(np.float32, copy=False), windows])
    x = torch.from_numpy(normalize(images, stats)).to(device)
    if cfg.train.normalization == "per_patch":  # the inputs the supervised run will see
        x = standardize_patches(x)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    from geofuse.training.train import model_kwargs

    encoder = build_encoder(cfg.train.model.name, len(patches.band_names), patches.num_classes,
                            patches.patch_size, model_kwargs(cfg, patches))
    model = SimCLRModel(encoder, p.projection_dim).to(device)
    n_epochs = epochs or p.epochs
    losses = _fit(model, x, n_epochs, cfg, generator, progress)
    path = Path(out) if out is not None else default_output(cfg)
    meta = _metadata(cfg, patches, stats, splits, len(index), n_epochs, losses)
    meta["patches"] = "(in memory)" if patchset is not None else str(cfg.patches_path.resolve())
    meta["stack_windows"] = n_stack
    if n_stack:
        meta["stack"] = str(cfg.stack_path.resolve())
    with atomic_path(path) as tmp:
        torch.save({"state_dict": encoder.weights(), METADATA_KEY: meta}, tmp)
    return PretrainResult(path=path, losses=losses, n_patches=len(index), splits=splits,
                          config_line=f"train.model.pretrained_path: {_relative(path, cfg)}",
                          n_stack_windows=n_stack)


def _fit(model: SimCLRModel, x: torch.Tensor, epochs: int, cfg: StudyConfig,
         generator: torch.Generator, progress: bool) -> list[float]:
    """Adam + per-step cosine decay over shuffled batches; the mean loss of every epoch."""
    p = cfg.pretrain
    batch = min(p.batch_size, len(x))
    starts = [s for s in range(0, len(x), batch) if len(x) - s >= 2]  # NT-Xent needs 2
    views = SimCLRViews(p.crop_scale, p.jitter, p.noise, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * len(starts), eta_min=p.lr * MIN_LR_FRACTION)
    losses: list[float] = []
    model.train()
    with step_progress(progress) as bar:
        task = bar.add_task(f"pretrain {cfg.train.model.name} (SimCLR)",
                            total=epochs * len(starts))
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=generator).to(x.device)
            total = 0.0
            for start in starts:
                xb = x[order[start:start + batch]]
                loss = nt_xent_loss(model(views(xb)), model(views(xb)), p.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach())
                bar.advance(task)
            losses.append(total / len(starts))
            if not math.isfinite(losses[-1]):
                raise ConfigError(f"geofuse pretrain: the loss became {losses[-1]} in epoch "
                                  f"{epoch + 1}; lower pretrain.lr (now {p.lr})")
            bar.update(task, description=f"pretrain {cfg.train.model.name} (SimCLR) epoch "
                       f"{epoch + 1}/{epochs} loss {losses[-1]:.4f}")
    return losses



def _device(accelerator: str) -> torch.device:
    """CUDA when ``train.accelerator`` allows it and one is present, else the CPU."""
    wants_gpu = accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def _metadata(cfg: StudyConfig, patches: PatchSet, stats: BandStats, splits: list[str],
              n_patches: int, epochs: int, losses: list[float]) -> dict[str, Any]:
    import geofuse

    settings = cfg.pretrain.model_dump(mode="json", exclude={"output", "include_test"})
    return {
        "method": "simclr", "model": cfg.train.model.name,
        "band_names": list(patches.band_names), "band_mean": stats.mean.tolist(),
        "band_std": stats.std.tolist(), "patch_size": int(patches.patch_size),
        "splits": splits, "n_patches": n_patches,
        "labels_used": False, **settings, "epochs": epochs, "seed": cfg.seed,
        "losses": losses, "geofuse_version": geofuse.__version__,
    }


def _relative(path: Path, cfg: StudyConfig) -> str:
    """``path`` relative to the config's folder when below it, else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(cfg.base_dir.resolve()))
    except ValueError:
        return os.fspath(path)
