"""The study report's look at the data: random patches per class and the class balance per fold.

Read from the study's own fold file (``folds/fold<k>.h5``) without loading it whole: labels and
groups, then only the few patches shown, so a study of a large dataset reports in bounded
memory. Of a multi-label set a class's patches are those holding it (``multi_hot``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from matplotlib.figure import Figure

from geofuse.data.patchset import PatchSet
from geofuse.reporting import html as doc
from geofuse.reporting.show import find_rgb, plot_class_counts, plot_sample_grid, sensor_rgb

PER_CLASS = 6


def _fold_file(study_dir: Path) -> Path | None:
    files = sorted((study_dir / "folds").glob("fold*.h5"))
    return files[0] if files else None


def sample_patches(path: Path, per_class: int = PER_CLASS, seed: int = 0) -> PatchSet:
    """Up to ``per_class`` seeded random patches per class of the PatchSet file at ``path``
    (of a multi-label set: patches holding the class), read patch by patch (the rest of the
    file is never loaded)."""
    with h5py.File(path, "r") as f:
        y = f["y"][()]
        multi_hot = f["multi_hot"][()] if "multi_hot" in f else None
        members = ([np.flatnonzero(col == 1) for col in multi_hot.T] if multi_hot is not None
                   else [np.flatnonzero(y == k) for k in np.unique(y)])
        rng = np.random.default_rng(seed)
        chosen = np.unique(np.concatenate([
            rng.choice(idx, min(per_class, idx.size), replace=False) for idx in members]
            + [np.empty(0, np.int64)]))
        return PatchSet(
            x=f["x"][chosen], y=y[chosen], band_names=json.loads(f.attrs["band_names"]),
            modalities=json.loads(f.attrs["modalities"]),
            class_names=json.loads(f.attrs["class_names"]),
            groups=np.char.decode(f["groups"][chosen], "utf-8"),
            coords=f["coords"][chosen],
            multi_hot=None if multi_hot is None else multi_hot[chosen],
            provenance={"sensors": json.loads(f.attrs.get("provenance", "{}")).get("sensors")},
        )


def plot_fold_balance(counts: dict[str, dict[str, int]], class_names: list[str],
                      multilabel: bool = False) -> Figure:
    """Patches per class (bars) in each fold and the test set (``counts``: split -> class ->
    patches, as in study.json's ``data.split_counts``; of a multi-label study, the patches
    holding each class)."""
    return plot_class_counts(counts, class_names, "Class balance per fold", multilabel)


def data_figure_blocks(
    study_dir: Path, data: dict[str, Any], class_names: list[str],
    figure: Callable[[Figure, str, str], doc.Figure], multilabel: bool = False,
) -> list[doc.Block]:
    """Figures for the report's Data section (none when the study has no fold file or no RGB
    bands); ``figure(fig, name, title)`` saves one and returns its block."""
    blocks: list[doc.Block] = []
    counts = data.get("split_counts") or {}
    if counts and class_names:
        blocks.append(figure(plot_fold_balance(counts, class_names, multilabel),
                             "class_balance", "Class balance per fold"))
    path = _fold_file(study_dir)
    if path is None:
        return blocks
    try:
        with h5py.File(path, "r") as f:
            bands = json.loads(f.attrs["band_names"])
            modalities = json.loads(f.attrs["modalities"])
            sensors = json.loads(f.attrs.get("provenance", "{}")).get("sensors")
    except (OSError, KeyError, ValueError):
        return blocks
    if find_rgb(bands, sensor_rgb(modalities, sensors)) is not None:
        blocks.append(figure(plot_sample_grid(sample_patches(path), per_class=PER_CLASS),
                             "samples", "Random patches per class (true colour)"))
    return blocks
