"""So2Sat-POP city folder -> a PatchSet with one sample per 1 km cell, plus tabular attributes.

Layout of a city folder: ``<layer>/Class_<k>/<cell>_<layer>.tif`` (layer: sen2_rgb_<season>,
dem, viirs; lcz is a label raster and not read), ``*_features.csv`` (GRD_ID + per-cell attributes
and the target itself) and optionally ``*_<city>.csv`` (GRD_ID, Class, POP; cross-checked).

- Grid and values: see :mod:`geofuse.data.datasets._so2sat_cells` (one centre-cropped window
  of ``side`` native pixels per cell, 96 px for Gdansk; the largest window shift is
  ``provenance['max_centre_offset_m']``; cells with misplaced layers are dropped and listed in
  ``provenance['dropped_cells']``; S2 scaled by 1e-4; NaN outside the rotated cell).
- ``patch_size`` below ``side`` downsamples that window with rasterio ``Resampling.average``
  (NaN ignored): 96 -> 32 px averages 3 x 3 blocks into 30 m pixels. Above ``side`` it raises,
  since upsampling would invent pixels.
- Bands follow the files' descriptions (B4, B3, B2 -> ``<season>_R``, ``_G``, ``_B``); the
  CSV's ``SEN2_*_R``/``_B`` statistics match the blue/red rasters (names swapped; kept as is).
- Tabular: every numeric column of ``*_features.csv`` except the id (``GRD_ID``) and the target
  or values derived from it (``CLASS``, ``POP``, ``POP_DENS``, ``LOG_POP_DENS``); NaN kept.

Usage: ``assign_so2sat_splits(load_so2sat_pop(city, patch_size=32, target="bins"))``, then
``train_model(cfg, patchset=...)`` or save it where ``configs/so2sat_pop_tabular.yaml`` reads it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from geofuse.data.datasets._so2sat_cells import (
    FILE_PATTERN,
    S2_SCALE,
    SEASONS,
    Cell,
    check_s2_bands,
    check_seasons_layers,
    city_folder,
    common_grid,
    downsample,
    layer_dirs_for,
    max_offset,
    modalities_for,
    read_cells,
    scan_cells,
)
from geofuse.data.patchset import PatchSet
from geofuse.data.splits import assign_splits, split_summary
from geofuse.errors import ConfigError, DataNotFoundError, LabelError, SplitError

ID_COLUMN = "GRD_ID"
TARGETS = ("class", "bins", "population")
_TARGET_LIKE = re.compile(r"(^|_)(pop|class)(_|$)", re.IGNORECASE)

# So2Sat-POP classes grow with population (0 = uninhabited). Classes 1-3 hold 1, 2 and 4 of
# Gdansk's 267 cells, too few for a grouped train/val/test split, so the default target merges
# the classes into four ordered bins of 47/55/86/79 cells.
DEFAULT_CLASS_BINS: dict[str, tuple[int, ...]] = {
    "none": (0,),
    "low": tuple(range(1, 8)),
    "medium": tuple(range(8, 12)),
    "high": tuple(range(12, 15)),
}


def _check_labels_csv(city: Path, cells: list[Cell]) -> Path | None:
    """Cross-check the class folders against ``*_<city>.csv`` (GRD_ID, Class) when present."""
    paths = [p for p in sorted(city.glob("*.csv")) if not p.name.endswith("_features.csv")]
    if len(paths) != 1:
        return None
    table = pd.read_csv(paths[0], dtype={ID_COLUMN: str})
    if not {ID_COLUMN, "Class"} <= set(table.columns):
        return None
    known = dict(zip(table[ID_COLUMN], table["Class"].astype(int), strict=True))
    wrong = [c.id for c in cells if c.id in known and known[c.id] != c.label]
    if wrong:
        raise LabelError(
            f"{str(paths[0])!r}: Class differs from the Class_<k> folder for cells {wrong[:5]}; "
            "fix the table or the folders"
        )
    return paths[0]


def _read_population(city: Path, labels_csv: Path | None, cell_ids: list[str]) -> np.ndarray:
    """Each cell's population count (POP of ``*_<city>.csv``), in ``cell_ids`` order.

    Raises:
        DataNotFoundError: no ``*_<city>.csv`` with GRD_ID and POP.
        LabelError: a cell without a row, or a POP that is missing or negative.
    """
    if labels_csv is None:
        raise DataNotFoundError(
            f"dataset.target population needs the table *_<city>.csv (GRD_ID, Class, POP) in "
            f"{str(city)!r}; restore it or use target: bins")
    table = pd.read_csv(labels_csv, dtype={ID_COLUMN: str})
    if "POP" not in table.columns:
        raise LabelError(f"{str(labels_csv)!r} has no POP column (has {list(table.columns)}); "
                         "use the So2Sat-POP table with the population counts")
    pop = dict(zip(table[ID_COLUMN], pd.to_numeric(table["POP"], errors="coerce"), strict=True))
    missing = [c for c in cell_ids if c not in pop]
    if missing:
        raise LabelError(f"{str(labels_csv)!r} has no row for {len(missing)} cell(s), e.g. "
                         f"{missing[:5]}; use the table of the same city")
    values = np.array([pop[c] for c in cell_ids], dtype=np.float64)
    bad = [c for c, v in zip(cell_ids, values, strict=True) if not np.isfinite(v) or v < 0]
    if bad:
        raise LabelError(f"{str(labels_csv)!r}: POP is missing or negative for cell(s) "
                         f"{bad[:5]}; fix those rows")
    return values.astype(np.float32)


def tabular_columns(columns: Sequence[str]) -> list[str]:
    """Columns usable as inputs: all but the cell id and target-derived ones (POP*, CLASS)."""
    return [c for c in columns if c.upper() != ID_COLUMN and not _TARGET_LIKE.search(c)]


def _read_features(city: Path, cell_ids: list[str]) -> tuple[np.ndarray, list[str], Path, list]:
    """(N, F) float32 attributes in ``cell_ids`` order, their names, the file, dropped columns."""
    found = sorted(city.glob("*_features.csv"))
    if len(found) != 1:
        raise DataNotFoundError(
            f"expected one *_features.csv in {str(city)!r}, found {[p.name for p in found]}; "
            "restore the So2Sat-POP features table"
        )
    path = found[0]
    table = pd.read_csv(path, dtype={ID_COLUMN: str})
    if ID_COLUMN not in table.columns:
        raise LabelError(
            f"{str(path)!r} has no {ID_COLUMN!r} column (has {list(table.columns)[:6]}...); "
            "use the So2Sat-POP features table, whose GRD_ID matches the cell file names"
        )
    if table[ID_COLUMN].duplicated().any():
        raise LabelError(f"{str(path)!r} repeats GRD_ID(s) "
                         f"{table[ID_COLUMN][table[ID_COLUMN].duplicated()].tolist()[:5]}; "
                         "keep one row per cell")
    table = table.set_index(ID_COLUMN)
    missing = [c for c in cell_ids if c not in table.index]
    if missing:
        raise LabelError(
            f"{str(path)!r} has no row for {len(missing)} cell(s), e.g. {missing[:5]}; use the "
            "features table of the same city"
        )
    names = [c for c in tabular_columns(list(table.columns))
             if pd.api.types.is_numeric_dtype(table[c])]
    if not names:
        raise LabelError(f"{str(path)!r} has no numeric attribute columns; check the file")
    dropped = [c for c in table.columns if c not in names]
    values = table.loc[cell_ids, names].to_numpy(dtype=np.float32)
    return values, names, path, [ID_COLUMN, *dropped]


def _check_arguments(seasons: Sequence[str], layers: Sequence[str], target: str,
                     class_bins: Mapping[str, Sequence[int]] | None) -> None:
    check_seasons_layers(seasons, layers)
    if target not in TARGETS or (class_bins is not None and target == "class"):
        raise ConfigError(f"target={target!r} with class_bins={class_bins!r} is invalid; use "
                          "target='class', or target='bins' or 'population' with optional "
                          "class_bins")


def load_so2sat_pop(
    city_dir: str | Path,
    seasons: Sequence[str] = SEASONS,
    layers: Sequence[str] = (),
    patch_size: int | None = None,
    target: str = "class",
    class_bins: Mapping[str, Sequence[int]] | None = None,
) -> PatchSet:
    """Read a So2Sat-POP city folder into a PatchSet with one sample per 1 km cell.

    Args:
        city_dir: the city folder (with ``sen2_rgb_*``, ``dem``, ``viirs`` and the CSVs).
        seasons: Sentinel-2 seasons to stack, as modalities ``s2_<season>`` with bands
            ``<season>_R``, ``_G``, ``_B`` (reflectance); at least one.
        layers: extra layers ``dem`` (band ``dem_elevation``, m) and/or ``viirs``
            (``viirs_radiance``).
        patch_size: output side in pixels; default the smallest native side (no resampling);
            smaller values are block-averaged (see the module docstring).
        target: ``class`` (the population classes present, named by their folder number),
            ``bins`` (classes merged by ``class_bins``, default :data:`DEFAULT_CLASS_BINS`) or
            ``population``: regression of each cell's population count (``values``, from
            POP of ``*_<city>.csv``), with the bins as the strata ``y`` of splits and folds.
        class_bins: bin name -> population classes, in bin order (``bins``, ``population``).

    Returns:
        PatchSet with groups ``cell:<GRD_ID>``, coords = cell centres, tabular attributes and
        splits unassigned (see :func:`assign_so2sat_splits`).

    Raises:
        DataNotFoundError: the folder, a layer folder, a cell file or the features CSV is missing.
        LabelError: the features table lacks GRD_ID or cells, or class folders disagree.
        AlignmentError: rasters on different CRS/pixel sizes or with unexpected bands.
        ConfigError: unknown season/layer/target, or ``patch_size`` above the native side.
    """
    city = city_folder(city_dir)
    _check_arguments(seasons, layers, target, class_bins)
    layer_dirs = layer_dirs_for(seasons, layers)
    cells = scan_cells(city, layer_dirs)
    labels_csv = _check_labels_csv(city, cells)
    tabular, names, features_csv, excluded = _read_features(city, [c.id for c in cells])
    side, crs, res = common_grid(cells, layer_dirs)
    if patch_size is not None and not 1 <= patch_size <= side:
        raise ConfigError(
            f"patch_size={patch_size} is outside 1..{side}, the smallest native side of these "
            f"rasters; pass patch_size <= {side} (upsampling would invent pixels)"
        )
    size = patch_size or side
    check_s2_bands(cells[0].files[layer_dirs[0]])
    reads, keep, dropped = read_cells(cells, layer_dirs, side)
    x = np.stack([downsample(r.planes, r.transform, crs, size) for r in reads])
    coords = np.array([r.centre for r in reads])
    cells, tabular = [c for c, k in zip(cells, keep, strict=True) if k], tabular[keep]
    raw = np.array([c.label for c in cells])
    present = sorted(set(raw.tolist()))
    modalities = modalities_for(seasons, layers)
    provenance = {
        "dataset": "so2sat_pop", "city": city.name, "city_dir": str(city.resolve()),
        "file_pattern": FILE_PATTERN, "layer_dirs": layer_dirs, "cells": len(cells),
        "features_csv": str(features_csv.resolve()),
        "labels_csv": str(labels_csv.resolve()) if labels_csv else None,
        "tabular_excluded": excluded, "native_side_px": side, "patch_size": size,
        "pixel_size_m": res * side / size, "resampling": "average" if size < side else None,
        "s2_scale": S2_SCALE, "max_centre_offset_m": max_offset(reads), "dropped_cells": dropped,
        "raw_class": raw.tolist(),
    }
    patches = PatchSet(
        x=x, y=np.searchsorted(present, raw), band_names=[b for v in modalities.values()
                                                         for b in v],
        modalities=modalities, class_names=[str(k) for k in present],
        groups=[f"cell:{c.id}" for c in cells], coords=coords,
        nodata_fraction=np.isnan(x).any(axis=1).mean(axis=(1, 2)), crs=crs,
        provenance=provenance, tabular=tabular, tabular_names=names,
    )
    if target == "class":
        return patches
    binned = bin_classes(patches, class_bins or DEFAULT_CLASS_BINS)
    if target == "bins":
        return binned
    pop = _read_population(city, labels_csv, [c.id for c in cells])
    return dataclasses.replace(binned, values=pop, value_name="population")


def bin_classes(patches: PatchSet, bins: Mapping[str, Sequence[int]]) -> PatchSet:
    """Merge numeric population classes into named bins (bins without cells are left out).

    Raises:
        LabelError: class names are not numbers, a class is in two bins or in none.
    """
    try:
        numbers = [int(c) for c in patches.class_names]
    except ValueError:
        raise LabelError(
            f"bin_classes needs numeric population classes, got {patches.class_names}; load "
            "with target='class' before binning"
        ) from None
    lookup: dict[int, str] = {}
    for name, members in bins.items():
        for k in members:
            if k in lookup:
                raise LabelError(f"class {k} is in bins {lookup[k]!r} and {name!r}; put each "
                                 "population class in one bin")
            lookup[int(k)] = name
    unbinned = [k for k in numbers if k not in lookup]
    if unbinned:
        raise LabelError(f"population class(es) {unbinned} are in no bin of {dict(bins)}; add "
                         "them to class_bins")
    present = [name for name in bins if name in {lookup[k] for k in numbers}]
    remap = np.array([present.index(lookup[k]) for k in numbers])
    provenance = {**patches.provenance,
                  "class_bins": {name: [int(k) for k in bins[name]] for name in present}}
    return dataclasses.replace(patches, y=remap[patches.y], class_names=present,
                               provenance=provenance)


def assign_so2sat_splits(
    patches: PatchSet, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 42
) -> PatchSet:
    """Train/val/test splits stratified by class and grouped by cell (every class in each).

    Raises:
        SplitError: a class has fewer cells than splits (load with ``target='bins'``).
    """
    try:
        split = assign_splits(patches.y, patches.groups, val_fraction, test_fraction, seed,
                              list(patches.class_names))
    except SplitError as err:
        raise SplitError(f"{err.one_line()}; for So2Sat-POP, merge sparse population classes with "
                         "load_so2sat_pop(..., target='bins')") from None
    provenance = dict(patches.provenance)
    provenance["splits"] = {
        "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
        "summary": split_summary(patches.y, patches.groups, split, list(patches.class_names)),
    }
    return dataclasses.replace(patches, split=split, provenance=provenance)
