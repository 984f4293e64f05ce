"""``geofuse prepare``: align every modality onto one grid and write the fused stack.

Outputs, beside ``cfg.stack_path`` (default ``work/stack.tif``):

- ``stack.tif``: float32 physical values, NaN = nodata, DEFLATE-compressed COG, band
  descriptions = band names;
- ``stack.json``: the :class:`~geofuse.raster.manifest.StackManifest`;
- ``stack_qc.json`` and ``stack_qc.md``: the QC report (see :mod:`geofuse.raster.qc`);
- ``stack_clear.tif`` (composite modalities only): the clear acquisitions behind every pixel,
  one band per composite modality (``<modality>_clear_acquisitions``), NaN where it has no
  file.

The stack is built window by window in a hidden temporary folder beside the target and only
renamed onto ``stack.tif`` once complete and checked, so a failed run never touches an
existing stack.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rich.progress import Progress

from geofuse.config import StudyConfig
from geofuse.errors import (
    AlignmentError,
    ConfigError,
    GeofuseError,
    RasterError,
    write_error,
    write_failure,
)
from geofuse.io_utils import scratch_dir
from geofuse.progress_bars import step_progress
from geofuse.raster.align import ModalityPlan, plan_modality, reference_grid
from geofuse.raster.io import (
    Grid,
    StackWriter,
    gdal_env,
    read_info,
    read_stack_header,
    write_cog,
)
from geofuse.raster.manifest import StackManifest, manifest_path
from geofuse.raster.qc import QCAccumulator, raise_if_failed, write_qc

# GDAL block cache while preparing (GDAL's default is 5 % of RAM). With the window size it
# bounds memory use, whatever the size of the scene.
GDAL_CACHE_MB = 256


@dataclass
class PrepareResult:
    """Paths written by :func:`prepare_stack` and the QC report."""

    stack_path: Path
    manifest_path: Path
    qc_path: Path
    qc: dict[str, Any]


def prepare_stack(cfg: StudyConfig, progress: bool = True) -> PrepareResult:
    """Align and fuse all modalities of ``cfg`` into one COG with manifest and QC report.

    Args:
        cfg: The study config; ``cfg.modalities``, ``cfg.grid`` and ``cfg.prepare`` are used.
        progress: Show a progress bar on stderr.

    Returns:
        The written paths and the QC report.

    Raises:
        DataNotFoundError: A configured file or pattern does not exist.
        RasterError: A file is unreadable, has no CRS or the wrong band count, or a band has
            more invalid pixels than ``prepare.max_nan_fraction`` (QC report still written).
        AlignmentError: A modality does not overlap the reference grid.
        ConfigError: The config reads a dataset layout (no stack to prepare).
    """
    if cfg.dataset is not None:
        raise ConfigError(
            f"{cfg.source or 'config'}: dataset {cfg.dataset.name!r} is read directly into "
            "patches; skip prepare and run 'geofuse extract -c CONFIG'"
        )
    plans, grid = plan_stack(cfg)
    stack_path = cfg.stack_path
    stack_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        gdal_env(GDAL_CACHE_MB),
        scratch_dir(stack_path) as tmp,
        step_progress(progress) as bar,
    ):
        raw, cog = Path(tmp) / "raw.tif", Path(tmp) / "cog.tif"
        clear_raw = Path(tmp) / "clear_raw.tif"
        inputs = [str(f.info.path) for plan in plans for f in plan.files]
        inputs += [str(f.mask.info.path) for plan in plans for f in plan.files if f.mask]
        with _writing(stack_path, inputs):
            qc = _fuse(plans, grid, raw, _block_size(cfg.prepare.block_size), bar, clear_raw)
        report = qc.report(stack_path, cfg.prepare.max_nan_fraction)
        qc_path = write_qc(report, stack_path)
        raise_if_failed(report, qc_path)
        task = bar.add_task("write COG (compress, overviews)", total=1)
        with _writing(stack_path):
            write_cog(raw, cog, overview_resampling=_overview_resampling(plans))
        bar.advance(task)
        _verify_stack(cog, grid, cfg.band_names)
        if clear_raw.is_file():  # composites: clear acquisitions per pixel, beside the stack
            clear_cog = Path(tmp) / "clear_cog.tif"
            with _writing(clear_path(stack_path)):
                write_cog(clear_raw, clear_cog, overview_resampling="nearest")
            os.replace(clear_cog, clear_path(stack_path))
        else:  # no composite (any more): no stale counts beside the new stack
            clear_path(stack_path).unlink(missing_ok=True)
        os.replace(cog, stack_path)
    manifest = build_manifest(plans, grid, report)
    man_path = manifest_path(stack_path)
    manifest.save(man_path)
    for message in report["warnings"]:  # after the progress bar, so each shows on one line
        warnings.warn(f"QC warning: {message} (see {qc_path.with_suffix('.md')})",
                      UserWarning, stacklevel=2)
    return PrepareResult(stack_path, man_path, qc_path, report)


@contextlib.contextmanager
def _writing(stack_path: Path, inputs: list[str] | None = None) -> Iterator[None]:
    """Turn a GDAL or OS write failure (disk full, read-only) into a one-line GeofuseError;
    an error that names one of the ``inputs`` is a read failure of that input instead."""
    try:
        yield
    except GeofuseError:
        raise
    except (RasterioError, CPLE_BaseError, OSError) as err:
        text = " ".join(str(err).split())
        source = next((p for p in inputs or [] if p in text or Path(p).name in text), None)
        if source is not None and write_error(err) is None:
            raise RasterError(
                f"cannot read {source!r} ({text}); the file is damaged or incomplete: "
                "re-download or re-export it, or remove it from the modality's files"
            ) from None
        raise write_failure(err, stack_path) from None


def plan_stack(cfg: StudyConfig) -> tuple[list[ModalityPlan], Grid]:
    """Read every modality's file headers, pick the reference grid and check alignment."""
    infos = {m.name: [read_info(p) for p in cfg.modality_files(m)] for m in cfg.modalities}
    masks = {m.name: [read_info(p) for p in cfg.mask_files(m) or []] for m in cfg.modalities}
    grid = reference_grid(cfg.grid, infos[cfg.modalities[0].name])
    plans = [plan_modality(m, infos[m.name], grid, masks[m.name]) for m in cfg.modalities]
    return plans, grid


def _block_size(block_size: int) -> int:
    """Window size: ``block_size`` rounded down to a multiple of 16 (GeoTIFF tile rule)."""
    return max(16, block_size // 16 * 16)


def clear_path(stack_path: Path) -> Path:
    """``stack_clear.tif`` beside ``stack.tif``: clear acquisitions per pixel of every
    composite modality (band ``<modality>_clear_acquisitions``)."""
    return stack_path.with_name(f"{stack_path.stem}_clear.tif")


def _fuse(
    plans: list[ModalityPlan], grid: Grid, raw: Path, block: int, bar: Progress,
    clear_raw: Path | None = None,
) -> QCAccumulator:
    """Write every window of every modality to ``raw`` (and the clear acquisitions of the
    composites to ``clear_raw``); return the accumulated QC."""
    bands = [b for p in plans for b in p.config.bands]
    qc = QCAccumulator(grid, [p.config for p in plans], {p.name: len(p.files) for p in plans})
    composites = [p.name for p in plans if p.config.composite]
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(StackWriter(raw, grid, bands, tile=block))
        counts = stack.enter_context(StackWriter(
            clear_raw, grid, [f"{n}_clear_acquisitions" for n in composites], tile=block,
        )) if composites and clear_raw is not None else None
        task = bar.add_task(
            f"prepare {len(bands)} bands, {grid.width}x{grid.height} px",
            total=grid.n_windows(block),
        )
        for window in grid.windows(block):
            parts, clear = [], []
            for plan in plans:
                data, observed = plan.read_observed(grid, window)
                covered = plan.coverage(grid, window)
                qc.update(plan.name, data, covered, window, observed)
                parts.append(data)
                if observed.clear is not None:
                    clear.append(np.where(covered, observed.clear, np.nan))
            writer.write(window, np.concatenate(parts))
            if counts is not None:
                counts.write(window, np.stack(clear))
            bar.advance(task)
    return qc



def _overview_resampling(plans: list[ModalityPlan]) -> str:
    """Nearest overviews when any modality is categorical, else average."""
    categorical = any(p.config.resampling in ("nearest", "mode") for p in plans)
    return "nearest" if categorical else "average"


def _verify_stack(path: Path, grid: Grid, bands: list[str]) -> None:
    """Check that the written stack has exactly the reference grid and the band names."""
    header = read_stack_header(path)
    problems = []
    if header.grid != grid:
        problems.append(f"grid {header.grid} differs from the reference grid {grid}")
    if header.descriptions != tuple(bands):
        problems.append(f"band descriptions {header.descriptions} differ from {bands}")
    if header.layout != "COG" or header.dtype != "float32":
        problems.append(f"layout {header.layout}/{header.dtype} is not COG/float32")
    if problems:
        raise AlignmentError(
            f"internal check of the written stack {path} failed: {'; '.join(problems)}; "
            "please report this with your config"
        )


def build_manifest(plans: list[ModalityPlan], grid: Grid, report: dict[str, Any]) -> StackManifest:
    """The stack manifest: bands, grid, sources and per-band statistics."""
    stat_keys = ("min", "max", "mean", "std", "valid_fraction")
    return StackManifest(
        bands=[b for p in plans for b in p.config.bands],
        modalities={p.name: list(p.config.bands) for p in plans},
        crs=grid.crs_string(),
        transform=list(grid.transform)[:6],
        width=grid.width,
        height=grid.height,
        sources={p.name: _source_entry(p, report["modalities"][p.name]) for p in plans},
        band_stats={
            name: {k: b[k] for k in stat_keys} for name, b in report["bands"].items()
        },
    )


def _source_entry(plan: ModalityPlan, coverage: dict[str, Any]) -> dict[str, Any]:
    m = plan.config
    file_nodata = {_json_number(f.nodata) for f in plan.files}
    return {
        "files": [str(f.info.path) for f in plan.files],
        "combine": m.combine,
        "resampling": m.resampling,
        "scale": m.scale,
        "offset": m.offset,
        "nodata": _json_number(m.nodata),
        "file_nodata": sorted(file_nodata, key=str),
        "sensor": m.sensor,
        "valid_range": list(m.valid_range) if m.valid_range else None,
        "covered_fraction": coverage["covered_fraction"],
        "uncovered_bounds": coverage["uncovered_bounds"],
        **_mask_entry(plan, coverage),
        **({"clear_acquisitions": f"{m.name}_clear_acquisitions"} if m.composite else {}),
    }


def _mask_entry(plan: ModalityPlan, coverage: dict[str, Any]) -> dict[str, Any]:
    """The mask rule, its files and what it removed (only for a modality with a mask)."""
    m = plan.config.mask
    if m is None or plan.rule is None:
        return {}
    files = [str(f.mask.info.path) for f in plan.files if f.mask and m.files]
    rule = {"band": m.band or 1, "files": files or None, "preset": m.preset,
            "invalid_values": list(plan.rule.values), "invalid_bits": list(plan.rule.bits),
            "threshold": plan.rule.threshold,
            "buffer": m.buffer}
    return {"mask": rule, "observations": coverage.get("observations")}


def _json_number(value: float | None) -> float | str | None:
    """JSON has no NaN: write a NaN nodata value as the string 'nan'."""
    if value is not None and math.isnan(value):
        return "nan"
    return value
