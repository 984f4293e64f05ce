"""Inputs and outputs of ``geofuse show``: which files, decimated stack reads, atomic PNG writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
from matplotlib.figure import Figure

from geofuse.errors import ConfigError, DataNotFoundError, RasterError
from geofuse.io_utils import atomic_path
from geofuse.raster.io import open_raster

#: Resolution of the written PNGs.
DPI = 150


def _study_input(path: Path) -> list[tuple[str, Path]]:
    """A study directory: its first fold file (``folds/fold<k>.h5``) as a PatchSet, else the
    directory itself (kind ``'study'``: only its class balance per fold)."""
    if not (path / "study.json").is_file():
        raise DataNotFoundError(
            f"{str(path)!r} is a directory without study.json; pass a PatchSet (.h5), a stack "
            "(.tif) or a study directory written by 'geofuse ablate'")
    folds = sorted((path / "folds").glob("fold*.h5"))
    return [("patchset", folds[0])] if folds else [("study", path)]


def study_fold_counts(study_dir: Path) -> tuple[dict[str, dict[str, int]], list[str]] | None:
    """Patches per class of each fold (and the test set) from a study's study.json
    (``data.split_counts``), with the class names; None when it records none."""
    try:
        meta = json.loads((study_dir / "study.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    data = meta.get("data") or {}
    counts = data.get("split_counts") or {}
    names = meta.get("class_names") or data.get("class_names") or list(
        dict.fromkeys(c for per in counts.values() for c in per))
    return (counts, list(names)) if counts and names else None


def resolve_inputs(path: Path | None, config: Path | None) -> list[tuple[str, Path]]:
    """``[(kind, path)]`` with kind ``'patchset'``, ``'stack'`` or ``'study'``, from PATH (a
    file or a study directory) or a study config.

    Raises:
        ConfigError: neither or both of PATH and ``--config`` given.
        DataNotFoundError: PATH, or both of the config's outputs, do not exist; PATH is a
            directory without study.json.
        RasterError: PATH is neither an HDF5 PatchSet nor a readable GeoTIFF.
    """
    if (path is None) == (config is None):
        raise ConfigError("geofuse show: give either PATH (a PatchSet .h5 or a stack .tif) or "
                          "-c study.yaml, not both or neither")
    if config is not None:
        from geofuse.config import load_config

        cfg = load_config(config)
        found = [(k, p) for k, p in (("stack", cfg.stack_path), ("patchset", cfg.patches_path))
                 if p.is_file()]
        if not found:
            raise DataNotFoundError(
                f"{str(config)!r}: neither the stack {str(cfg.stack_path)!r} nor the PatchSet "
                f"{str(cfg.patches_path)!r} exists; run 'geofuse prepare -c {config}' and/or "
                f"'geofuse extract -c {config}' first")
        return found
    if path is not None and path.is_dir():
        return _study_input(path)
    if path is None or not path.is_file():
        raise DataNotFoundError(
            f"{str(path)!r} does not exist; pass a PatchSet written by 'geofuse extract' (.h5) "
            "or a stack written by 'geofuse prepare' (.tif)")
    if h5py.is_hdf5(path):
        return [("patchset", path)]
    try:
        with open_raster(path) as src:
            src.count  # noqa: B018 - opening is the check
    except RasterError:
        raise RasterError(
            f"{str(path)!r} is neither a PatchSet (HDF5 from 'geofuse extract') nor a GeoTIFF "
            "stack (from 'geofuse prepare'); pass one of those") from None
    return [("stack", path)]


def read_stack_bands(path: Path, indexes: list[int], max_size: int = 2000
                     ) -> tuple[np.ndarray, list[str]]:
    """Read 0-based bands ``indexes`` decimated to at most ``max_size`` px on the long side.

    Returns:
        float32 (len(indexes), h, w) with nodata as NaN, and the band names of the whole stack
        (descriptions; ``band_N`` where a band has none).
    """
    with open_raster(path) as src:
        names = [d or f"band_{i + 1}" for i, d in enumerate(src.descriptions)]
        if not indexes:
            return np.empty((0, 0, 0), np.float32), names
        factor = max(1, math.ceil(max(src.width, src.height) / max_size))
        shape = (len(indexes), max(1, src.height // factor), max(1, src.width // factor))
        data = src.read([i + 1 for i in indexes], out_shape=shape).astype(np.float32)
        if src.nodata is not None and not np.isnan(src.nodata):
            data[data == src.nodata] = np.nan
    return data, names


def save_figures(figures: dict[str, Figure], out_dir: Path) -> list[Path]:
    """Save each figure as ``out_dir/<name>.png`` (atomic writes); return the paths."""
    paths = []
    for name, fig in figures.items():
        target = out_dir / f"{name}.png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
        paths.append(target)
    return paths
