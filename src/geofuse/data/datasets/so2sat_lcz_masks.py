"""So2Sat-POP city folder -> Local Climate Zone *masks* (``dataset.target: mask``).

The segmentation counterpart of :mod:`geofuse.data.datasets.so2sat_lcz`: the same cells,
windows and lattice, but every window keeps the ``lcz`` raster under it as its mask (a class per
pixel) instead of the code at its centre. Unlabelled pixels (code 0), pixels outside the rotated
cell and classes found in fewer than ``min_cells_per_class`` cells are 255 (ignored). A window
is kept when at least ``min_labelled`` of its pixels carry a class; its stratum (``y``) is its
most frequent class among those dominant in enough cells (:func:`tile_strata`). Groups are
``cell:<GRD_ID>``: windows of one cell overlap, and never straddle train and validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geofuse.data.datasets._so2sat_cells import (
    FILE_PATTERN,
    S2_SCALE,
    CellRead,
    max_offset,
    modalities_for,
)
from geofuse.data.datasets.so2sat_lcz import LABEL_LAYER, LCZ_NAMES, lattice, read_lcz_windows
from geofuse.data.patchset import MASK_IGNORE, PatchSet
from geofuse.errors import SamplingError
from geofuse.labels.label_tiles import compact_mask_classes, tile_strata


def _cell_windows(read: CellRead, patch_size: int, stride: int, max_nodata: float,
                  min_labelled: float) -> tuple[list[np.ndarray], list[np.ndarray], list, list]:
    """Windows, their LCZ codes (0 = unlabelled or outside the cell), centre coordinates and
    nodata shares of one cell."""
    assert read.label is not None
    offsets = lattice(read.planes.shape[-1], patch_size, stride)
    xs, codes, coords, nodata = [], [], [], []
    for r0 in offsets.tolist():
        for c0 in offsets.tolist():
            patch = read.planes[:, r0:r0 + patch_size, c0:c0 + patch_size]
            invalid = np.isnan(patch).any(axis=0)
            if invalid.mean() > max_nodata:
                continue
            lab = np.where(invalid, 0, read.label[r0:r0 + patch_size, c0:c0 + patch_size]
                           ).astype(np.int16)  # LCZ codes 0-17
            if (lab != 0).mean() < min_labelled:
                continue
            xs.append(patch)
            codes.append(lab)
            coords.append(tuple(read.transform @ (c0 + patch_size / 2, r0 + patch_size / 2)))
            nodata.append(float(invalid.mean()))
    return xs, codes, coords, nodata


def _mask_classes(codes: np.ndarray, groups: np.ndarray, min_cells: int) -> list[int]:
    """LCZ codes present in the masks of at least ``min_cells`` cells, sorted."""
    kept = []
    for code in np.unique(codes[codes != 0]).tolist():
        holds = (codes == code).any(axis=(1, 2))
        if len(set(groups[holds].tolist())) >= min_cells:
            kept.append(int(code))
    return kept


def load_so2sat_lcz_masks(
    city_dir: str | Path, seasons: Sequence[str], layers: Sequence[str], patch_size: int,
    stride: int | None, max_nodata_fraction: float, min_cells_per_class: int,
    min_labelled: float,
) -> PatchSet:
    """Read LCZ windows with masks of a So2Sat-POP city folder (see the module docstring).

    Raises:
        DataNotFoundError, AlignmentError, ConfigError: as
            :func:`~geofuse.data.datasets.so2sat_lcz.load_so2sat_lcz`.
        SamplingError: no window with enough labelled pixels, or no class in enough cells.
    """
    got = read_lcz_windows(
        city_dir, seasons, layers, patch_size, stride, max_nodata_fraction,
        lambda read, step: _cell_windows(read, patch_size, step, max_nodata_fraction,
                                         min_labelled))
    city, xs, codes, coords, nodata = got.city, got.xs, got.labels, got.coords, got.nodata
    if not xs:
        raise SamplingError(
            f"{str(city)!r}: no window of {patch_size} px has {min_labelled:.0%} labelled LCZ "
            f"pixels with at most {max_nodata_fraction:.0%} outside its cell; lower "
            "extract.min_labelled or patch_size, or raise max_nodata_fraction"
        )
    code_arr, group_arr = np.stack(codes), np.array(got.groups)
    kept = _mask_classes(code_arr, group_arr, min_cells_per_class)
    if not kept:
        raise SamplingError(f"{str(city)!r}: no LCZ class occurs in {min_cells_per_class} "
                            "cells' windows; lower dataset.min_cells_per_class")
    lookup = np.full(int(code_arr.max()) + 1, MASK_IGNORE, dtype=np.uint8)
    lookup[kept] = np.arange(len(kept))
    masks = lookup[code_arr]
    pixels = np.stack([(masks == k).sum(axis=(1, 2)) for k in range(len(kept))], axis=1)
    strata, has, passed = tile_strata(pixels, group_arr, min_cells_per_class)
    present, y = np.unique(strata[has], return_inverse=True)
    all_names = [LCZ_NAMES[k] for k in kept]
    class_names = [all_names[k] for k in present.tolist()]
    masks, names = compact_mask_classes(masks[has], all_names)
    x = np.stack([xs[i] for i in np.flatnonzero(has).tolist()])
    modalities = modalities_for(seasons, layers)
    provenance = {
        "dataset": "so2sat_lcz", "target": "mask", "city": city.name,
        "city_dir": str(city.resolve()), "file_pattern": FILE_PATTERN,
        "layer_dirs": got.layer_dirs, "label_layer": LABEL_LAYER,
        "label_rule": "LCZ code of every pixel (0 = unlabelled and pixels outside the cell: "
                      "255); y = the window's most frequent class dominant in enough cells",
        "lcz_codes": {n: k for n, k in zip(all_names, kept, strict=True) if n in names},
        "cells": len(set(group_arr[has])),
        "native_side_px": got.side, "patch_size": patch_size, "stride": got.stride,
        "pixel_size_m": got.res, "s2_scale": S2_SCALE, "max_nodata_fraction": max_nodata_fraction,
        "min_labelled": min_labelled, "max_centre_offset_m": max_offset(got.reads),
        "dropped_cells": got.dropped_cells, "min_cells_per_class": min_cells_per_class,
        "dropped_classes": sorted({LCZ_NAMES.get(int(c), str(c)) for c in np.unique(code_arr)
                                   if c and int(c) not in kept}),
        "strata_passed_over": {all_names[k]: n for k, n in passed.items()},
    }
    return PatchSet(
        x=x, y=y, band_names=[b for v in modalities.values() for b in v],
        modalities=modalities, class_names=class_names,
        groups=group_arr[has], coords=np.array(coords)[has],
        nodata_fraction=np.array(nodata)[has], crs=got.crs, provenance=provenance,
        masks=masks, mask_names=names,
    )
