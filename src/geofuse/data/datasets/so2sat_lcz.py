"""So2Sat-POP city folder -> Local Climate Zone patches sampled from the ``lcz`` label raster.

Each 1 km cell is read on one window per layer (see :mod:`geofuse.data.datasets._so2sat_cells`,
which also drops cells whose layers are misplaced: in Gdansk the ``dem`` and ``lcz`` rasters of
cells 39, 50 and 99). Patch centres lie on a regular lattice inside that window (spacing
``stride``, the lattice centred in the window), and a patch is kept when:

- the LCZ label at its centre pixel is not 0 (unlabelled) -- the patch's label, as in So2Sat
  LCZ42 (for an even ``patch_size`` the centre pixel is the one at ``patch_size // 2``);
- its share of pixels outside the rotated cell (NaN) is at most ``max_nodata_fraction``.

Classes found in fewer than ``min_cells_per_class`` cells are dropped with a warning (grouped
k-fold cross-validation needs every class in at least k cells). Groups are ``cell:<GRD_ID>``,
so patches of one cell never straddle train and validation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geofuse.data.datasets._so2sat_cells import (
    FILE_PATTERN,
    S2_SCALE,
    SEASONS,
    CellRead,
    check_s2_bands,
    check_seasons_layers,
    city_folder,
    common_grid,
    layer_dirs_for,
    max_offset,
    modalities_for,
    read_cells,
    scan_cells,
)
from geofuse.data.patchset import PatchSet
from geofuse.errors import ConfigError, SamplingError

LABEL_LAYER = "lcz"
# LCZ 1-10 are built types, 11-17 the land-cover types A-G (Stewart & Oke 2012).
LCZ_NAMES: dict[int, str] = {
    1: "compact_highrise", 2: "compact_midrise", 3: "compact_lowrise", 4: "open_highrise",
    5: "open_midrise", 6: "open_lowrise", 7: "lightweight_lowrise", 8: "large_lowrise",
    9: "sparsely_built", 10: "heavy_industry", 11: "dense_trees", 12: "scattered_trees",
    13: "bush_scrub", 14: "low_plants", 15: "bare_rock_paved", 16: "bare_soil_sand",
    17: "water",
}


def lattice(side: int, patch_size: int, stride: int) -> np.ndarray:
    """Top-left offsets of patches on a lattice of spacing ``stride``, centred in ``side``."""
    n = (side - patch_size) // stride + 1
    margin = (side - patch_size - (n - 1) * stride) // 2
    return margin + stride * np.arange(n)


def _cell_patches(read: CellRead, patch_size: int, stride: int, max_nodata: float
                  ) -> tuple[list[np.ndarray], list[int], list[tuple[float, float]], list[float]]:
    """Patches, centre labels, centre coordinates and nodata shares of one cell."""
    assert read.label is not None
    offsets = lattice(read.planes.shape[-1], patch_size, stride)
    half = patch_size // 2
    xs, ys, coords, nodata = [], [], [], []
    for r0 in offsets.tolist():
        for c0 in offsets.tolist():
            code = int(read.label[r0 + half, c0 + half])
            if code == 0:
                continue
            patch = read.planes[:, r0:r0 + patch_size, c0:c0 + patch_size]
            frac = float(np.isnan(patch).any(axis=0).mean())
            if frac > max_nodata:
                continue
            xs.append(patch)
            ys.append(code)
            coords.append(tuple(read.transform @ (c0 + patch_size / 2, r0 + patch_size / 2)))
            nodata.append(frac)
    return xs, ys, coords, nodata


def _check(patch_size: int, stride: int | None, side: int, max_nodata: float) -> int:
    if not 1 <= patch_size <= side:
        raise ConfigError(f"patch_size={patch_size} is outside 1..{side}, the smallest native "
                          f"side of these cells; pass patch_size <= {side}")
    stride = stride or patch_size
    if stride < 1:
        raise ConfigError(f"stride={stride} must be >= 1 (pixels between patch centres)")
    if not 0 <= max_nodata <= 1:
        raise ConfigError(f"max_nodata_fraction={max_nodata} must be in [0, 1]")
    return stride


def _drop_rare(codes: np.ndarray, cells: np.ndarray, min_cells: int) -> tuple[list[int], dict]:
    """LCZ codes kept (in >= ``min_cells`` cells) and the dropped ones with their cell counts."""
    per_code = {int(k): len(set(cells[codes == k].tolist())) for k in np.unique(codes)}
    kept = [k for k, n in per_code.items() if n >= min_cells]
    dropped = {LCZ_NAMES.get(k, str(k)): n for k, n in per_code.items() if n < min_cells}
    if not kept:
        raise SamplingError(f"no LCZ class occurs in {min_cells} cells (cells per class: "
                            f"{per_code}); lower dataset.min_cells_per_class")
    if dropped:
        warnings.warn(f"So2Sat LCZ: dropped class(es) found in fewer than {min_cells} cells "
                      f"(cells per class: {dropped}); lower dataset.min_cells_per_class to keep "
                      "them", stacklevel=3)
    return kept, dropped


CellWindows = Callable[[CellRead, int], tuple[list, list, list, list]]


@dataclass
class LczWindows:
    """The cells of a city read on their windows and the lattice windows cut from them."""

    city: Path
    layer_dirs: list[str]
    side: int
    crs: str
    res: float
    stride: int
    reads: list[CellRead]
    dropped_cells: Any
    xs: list[np.ndarray] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    coords: list[tuple[float, float]] = field(default_factory=list)
    nodata: list[float] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)


def read_lcz_windows(
    city_dir: str | Path, seasons: Sequence[str], layers: Sequence[str], patch_size: int,
    stride: int | None, max_nodata: float, per_cell: CellWindows,
) -> LczWindows:
    """Read every usable cell of a city and cut its lattice windows with ``per_cell(read,
    stride)`` (windows, their labels, centre coordinates, nodata shares); groups per cell."""
    city = city_folder(city_dir)
    check_seasons_layers(seasons, layers)
    layer_dirs = layer_dirs_for(seasons, layers)
    cells = scan_cells(city, [*layer_dirs, LABEL_LAYER])
    side, crs, res = common_grid(cells, [*layer_dirs, LABEL_LAYER])
    step = _check(patch_size, stride, side, max_nodata)
    check_s2_bands(cells[0].files[layer_dirs[0]])
    reads, keep, dropped_cells = read_cells(cells, layer_dirs, side, LABEL_LAYER)
    out = LczWindows(city, layer_dirs, side, crs, res, step, reads, dropped_cells)
    kept_cells = [c for c, k in zip(cells, keep, strict=True) if k]
    for cell, read in zip(kept_cells, reads, strict=True):
        px, py, pc, pn = per_cell(read, step)
        out.xs += px
        out.labels += py
        out.coords += pc
        out.nodata += pn
        out.groups += [f"cell:{cell.id}"] * len(px)
    return out


def load_so2sat_lcz(
    city_dir: str | Path,
    seasons: Sequence[str] = SEASONS,
    layers: Sequence[str] = (),
    patch_size: int = 32,
    stride: int | None = None,
    max_nodata_fraction: float = 0.0,
    min_cells_per_class: int = 1,
) -> PatchSet:
    """Read LCZ patches of a So2Sat-POP city folder (see the module docstring).

    Args:
        city_dir: the city folder (``sen2_rgb_*``, ``dem``, ``viirs``, ``lcz``).
        seasons: Sentinel-2 seasons, as modalities ``s2_<season>`` (reflectance).
        layers: extra layers ``dem`` and/or ``viirs``.
        patch_size: patch side in native 10 m pixels.
        stride: lattice spacing in pixels (default ``patch_size``: patches do not overlap).
        max_nodata_fraction: largest share of pixels outside the cell in a kept patch.
        min_cells_per_class: classes in fewer cells are dropped (with a warning).

    Returns:
        PatchSet with classes named by :data:`LCZ_NAMES`, groups ``cell:<GRD_ID>`` and splits
        unassigned.

    Raises:
        DataNotFoundError: the folder, a layer folder or a cell file is missing.
        AlignmentError: rasters on different CRS/pixel sizes or with unexpected bands.
        ConfigError: unknown season/layer, bad patch_size/stride/max_nodata_fraction.
        SamplingError: no labelled patch (or no class in enough cells).
    """
    got = read_lcz_windows(
        city_dir, seasons, layers, patch_size, stride, max_nodata_fraction,
        lambda read, step: _cell_patches(read, patch_size, step, max_nodata_fraction))
    city, stride, reads = got.city, got.stride, got.reads
    side, crs, res, layer_dirs, dropped_cells = (got.side, got.crs, got.res, got.layer_dirs,
                                                 got.dropped_cells)
    xs, codes, coords, nodata, groups = got.xs, got.labels, got.coords, got.nodata, got.groups
    if not xs:
        raise SamplingError(
            f"{str(city)!r}: no patch of {patch_size} px has a labelled (non-zero) LCZ centre "
            f"with at most {max_nodata_fraction:.0%} pixels outside its cell; lower patch_size "
            "or raise max_nodata_fraction"
        )
    code_arr, group_arr = np.array(codes), np.array(groups)
    kept_codes, dropped_classes = _drop_rare(code_arr, group_arr, min_cells_per_class)
    sel = np.isin(code_arr, kept_codes)
    x = np.stack(xs)[sel]
    modalities = modalities_for(seasons, layers)
    provenance = {
        "dataset": "so2sat_lcz", "city": city.name, "city_dir": str(city.resolve()),
        "file_pattern": FILE_PATTERN, "layer_dirs": layer_dirs, "label_layer": LABEL_LAYER,
        "label_rule": "LCZ code at the patch's centre pixel (0 = unlabelled, skipped)",
        "lcz_codes": {LCZ_NAMES[k]: k for k in kept_codes}, "cells": len(set(group_arr[sel])),
        "native_side_px": side, "patch_size": patch_size, "stride": stride,
        "pixel_size_m": res, "s2_scale": S2_SCALE, "max_nodata_fraction": max_nodata_fraction,
        "max_centre_offset_m": max_offset(reads), "dropped_cells": dropped_cells,
        "min_cells_per_class": min_cells_per_class, "dropped_classes": dropped_classes,
    }
    return PatchSet(
        x=x, y=np.searchsorted(kept_codes, code_arr[sel]),
        band_names=[b for bands in modalities.values() for b in bands], modalities=modalities,
        class_names=[LCZ_NAMES[k] for k in kept_codes], groups=group_arr[sel],
        coords=np.array(coords)[sel], nodata_fraction=np.array(nodata)[sel], crs=crs,
        provenance=provenance,
    )
