"""So2Sat-POP city folder -> a PatchSet with one sample per 1 km cell, plus tabular attributes.

Layout of a city folder: ``<layer>/Class_<k>/<cell>_<layer>.tif`` (layer: sen2_rgb_<season>,
dem, viirs; lcz is a label raster and not read), ``*_features.csv`` (GRD_ID + per-cell attributes
and the target itself) and optionally ``*_<city>.csv`` (GRD_ID, Class, POP; cross-checked).

- Grid: the layers of one cell sit on slightly different 10 m grids (origins a few metres apart,
  112-114 px; cells on the city edge are clipped, down to ~96 px). Every layer is read in one
  square window of ``side`` native pixels centred on the centre of the cell's first S2 raster
  (offsets rounded to whole pixels and moved inwards where a clipped raster is too small; the
  largest resulting shift is ``provenance['max_centre_offset_m']``). ``side`` is the smallest
  width/height over all rasters read (96 px for Gdansk): a centre crop, never padded. A cell
  whose layer lies more than :data:`MAX_OFFSET_M` away is dropped with a warning and listed in
  ``provenance['dropped_cells']``: in Gdansk the ``dem`` (and ``lcz``) rasters of cells 39, 50
  and 99 lie 12-19 km from their S2 and VIIRS rasters.
- ``patch_size`` below ``side`` downsamples that window with rasterio ``Resampling.average``
  (NaN ignored): 96 -> 32 px averages 3 x 3 blocks into 30 m pixels. Above ``side`` it raises,
  since upsampling would invent pixels.
- Values: S2 RGB files hold reflectance x 10000 (uint16, typical 99th percentile ~1600), scaled
  by 1e-4; DEM (metres) and VIIRS (radiance) are kept as they are. Each raster is a UTM box
  around the rotated 1 km LAEA cell, and outside the cell every S2 band is 0: those pixels
  become NaN. DEM and VIIRS have no nodata value and 0 is a valid value for them, so they are
  masked with the cell footprint of the first S2 season.
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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from geofuse.data.patchset import PatchSet
from geofuse.data.splits import assign_splits, split_summary
from geofuse.errors import AlignmentError, ConfigError, DataNotFoundError, LabelError, SplitError

SEASONS = ("spring", "summer", "autumn", "winter")
EXTRA_LAYERS = {"dem": "dem_elevation", "viirs": "viirs_radiance"}
S2_DESCRIPTIONS = ("B4", "B3", "B2")
S2_BANDS = ("R", "G", "B")
S2_SCALE = 1e-4
ID_COLUMN = "GRD_ID"
TARGETS = ("class", "bins")
FILE_PATTERN = "<layer>/Class_<k>/<cell>_<layer>.tif"
MAX_OFFSET_M = 30.0  # 3 pixels; co-located layers are within ~9 m of the S2 centre
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


@dataclass(frozen=True)
class _Cell:
    """One 1 km cell: its id, population class and a file per layer folder."""
    id: str
    label: int
    files: dict[str, Path]


def _scan_layer(city: Path, layer: str) -> dict[str, tuple[int, Path]]:
    """``cell id -> (class, file)`` of one layer folder."""
    folder = city / layer
    if not folder.is_dir():
        raise DataNotFoundError(
            f"So2Sat-POP layer folder {str(folder)!r} does not exist; pass the city folder "
            "(e.g. so2sat_pop/gdansk) or drop that season/layer"
        )
    suffix = f"_{layer}.tif"
    out: dict[str, tuple[int, Path]] = {}
    for path in sorted(folder.glob("Class_*/*.tif")):
        match = re.fullmatch(r"Class_(\d+)", path.parent.name)
        if match and path.name.endswith(suffix):
            out[path.name[: -len(suffix)]] = (int(match.group(1)), path)
    if not out:
        raise DataNotFoundError(
            f"{str(folder)!r} holds no {layer}/Class_<k>/<cell>{suffix} files; restore the "
            "So2Sat-POP layout"
        )
    return out


def _scan_cells(city: Path, layer_dirs: list[str]) -> list[_Cell]:
    """Cells present in every layer folder, in the same class folder, sorted by class and id."""
    scans = {layer: _scan_layer(city, layer) for layer in layer_dirs}
    ids = sorted(set().union(*scans.values()))
    cells = []
    for cell_id in ids:
        absent = [layer for layer, scan in scans.items() if cell_id not in scan]
        if absent:
            raise DataNotFoundError(
                f"cell {cell_id!r} has no file in {absent} under {str(city)!r} (expected "
                f"{FILE_PATTERN}); restore it or drop those seasons/layers"
            )
        labels = {layer: scans[layer][cell_id][0] for layer in layer_dirs}
        if len(set(labels.values())) > 1:
            raise LabelError(
                f"cell {cell_id!r} sits in different Class_<k> folders per layer {labels}; "
                "move its files into one class folder"
            )
        files = {layer: scans[layer][cell_id][1] for layer in layer_dirs}
        cells.append(_Cell(cell_id, labels[layer_dirs[0]], files))
    return sorted(cells, key=lambda c: (c.label, c.id))


def _check_labels_csv(city: Path, cells: list[_Cell]) -> Path | None:
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


def _grid_of(path: Path) -> tuple[int, str, tuple[float, float]]:
    with rasterio.open(path) as src:
        return min(src.width, src.height), src.crs.to_string() if src.crs else "", src.res


def _common_grid(cells: list[_Cell], layer_dirs: list[str]) -> tuple[int, str, float]:
    """Smallest side in pixels over all rasters, their CRS and pixel size (all must agree)."""
    side, crs, res = _grid_of(cells[0].files[layer_dirs[0]])
    for cell in cells:
        for layer in layer_dirs:
            this_side, this_crs, this_res = _grid_of(cell.files[layer])
            if this_crs != crs or not np.allclose(this_res, res) or res[0] != res[1]:
                raise AlignmentError(
                    f"{str(cell.files[layer])!r} is on {this_crs or 'no CRS'} at {this_res} m, "
                    f"the first raster on {crs} at {res} m; all layers need one CRS and square "
                    "pixels of one size: reproject them first"
                )
            side = min(side, this_side)
    return side, crs, float(res[0])


def _check_s2_bands(path: Path) -> None:
    with rasterio.open(path) as src:
        descriptions, count = src.descriptions, src.count
    expected = zip(descriptions, S2_DESCRIPTIONS, strict=True) if count == 3 else ()
    if count != 3 or any(d not in (None, e) for d, e in expected):
        raise AlignmentError(f"{str(path)!r} has {count} bands {descriptions}; expected 3 bands "
                             f"{S2_DESCRIPTIONS} (R, G, B); restore the So2Sat-POP sen2_rgb files")


def _window(src: rasterio.DatasetReader, centre: tuple[float, float], side: int
            ) -> tuple[Window, float]:
    """``side`` x ``side`` window nearest to ``centre`` inside ``src``; its offset in metres."""
    t = src.transform
    col = min(max(round((centre[0] - t.c) / t.a - side / 2), 0), src.width - side)
    row = min(max(round((centre[1] - t.f) / t.e - side / 2), 0), src.height - side)
    cx, cy = t @ (col + side / 2, row + side / 2)
    return Window(col, row, side, side), float(np.hypot(cx - centre[0], cy - centre[1]))


def _downsample(stack: np.ndarray, transform: Affine, crs: str, size: int) -> np.ndarray:
    """Average ``stack`` (C, S, S) onto a ``size`` x ``size`` grid over the same extent."""
    side = stack.shape[-1]
    if size == side:
        return stack
    out = np.full((len(stack), size, size), np.nan, dtype=np.float32)
    reproject(stack, out, src_transform=transform, src_crs=crs, src_nodata=np.nan,
              dst_transform=transform @ Affine.scale(side / size), dst_crs=crs,
              dst_nodata=np.nan, resampling=Resampling.average)
    return out


def _read_cell(cell: _Cell, layer_dirs: list[str], side: int, size: int, crs: str
               ) -> tuple[np.ndarray, tuple[float, float], dict[str, float]]:
    """(C, size, size) physical values, the cell centre, each layer's window offset in metres."""
    with rasterio.open(cell.files[layer_dirs[0]]) as src:
        b = src.bounds
    centre = ((b.left + b.right) / 2, (b.bottom + b.top) / 2)
    planes, offsets = [], {}
    footprint: np.ndarray | None = None  # outside the cell: all bands 0 in the first S2 season
    transform = Affine.identity()
    for layer in layer_dirs:
        with rasterio.open(cell.files[layer]) as src:
            window, offset = _window(src, centre, side)
            data = src.read(window=window).astype(np.float32)
            if footprint is None:
                transform = src.window_transform(window)
        offsets[layer] = offset
        if layer.startswith("sen2_rgb_"):
            outside = (data == 0).all(axis=0)
            footprint = outside if footprint is None else footprint
            data *= S2_SCALE
        else:  # 0 is a valid DEM/VIIRS value: mask with the S2 footprint instead
            outside = footprint if footprint is not None else np.zeros(data.shape[1:], bool)
        data[:, outside] = np.nan
        planes.append(data)
    return _downsample(np.concatenate(planes), transform, crs, size), centre, offsets


def _read_cells(cells: list[_Cell], layer_dirs: list[str], side: int, size: int, crs: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, str], float]:
    """x, centres and kept-mask of the cells, dropped cells (id -> why), largest kept offset.

    Cells with a layer further than :data:`MAX_OFFSET_M` from the S2 centre are dropped.
    """
    read = [_read_cell(c, layer_dirs, side, size, crs) for c in cells]
    dropped: dict[str, str] = {}
    for cell, (_, _, offsets) in zip(cells, read, strict=True):
        layer, metres = max(offsets.items(), key=lambda kv: kv[1])
        if metres > MAX_OFFSET_M:
            dropped[cell.id] = f"{cell.files[layer].name} lies {metres:.0f} m from the S2 centre"
    if len(dropped) == len(cells):
        raise AlignmentError("every cell has a layer far from its S2 raster; check the files")
    if dropped:
        warnings.warn(f"So2Sat-POP: dropped {len(dropped)} cell(s) with misplaced rasters: "
                      f"{'; '.join(dropped.values())}", stacklevel=3)
    keep = np.array([c.id not in dropped for c in cells])
    kept = [r for r, k in zip(read, keep, strict=True) if k]
    worst = max(max(r[2].values()) for r in kept)
    return (np.stack([r[0] for r in kept]), np.array([r[1] for r in kept]), keep, dropped,
            round(worst, 3))


def _check_arguments(seasons: Sequence[str], layers: Sequence[str], target: str,
                     class_bins: Mapping[str, Sequence[int]] | None) -> None:
    for name, values, valid in [("seasons", seasons, SEASONS), ("layers", layers, EXTRA_LAYERS)]:
        if any(v not in valid for v in values) or len(set(values)) != len(values):
            raise ConfigError(f"{name}={list(values)} is invalid; pick distinct values from "
                              f"{list(valid)}")
    if not seasons:
        raise ConfigError(f"seasons is empty; pick at least one of {list(SEASONS)} (the S2 "
                          "raster defines each cell's centre and footprint)")
    if target not in TARGETS or (class_bins is not None and target != "bins"):
        raise ConfigError(f"target={target!r} with class_bins={class_bins!r} is invalid; use "
                          "target='class', or target='bins' with optional class_bins")


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
        target: ``class`` (the population classes present, named by their folder number) or
            ``bins`` (classes merged by ``class_bins``, default :data:`DEFAULT_CLASS_BINS`).
        class_bins: bin name -> population classes, in bin order (only with ``target='bins'``).

    Returns:
        PatchSet with groups ``cell:<GRD_ID>``, coords = cell centres, tabular attributes and
        splits unassigned (see :func:`assign_so2sat_splits`).

    Raises:
        DataNotFoundError: the folder, a layer folder, a cell file or the features CSV is missing.
        LabelError: the features table lacks GRD_ID or cells, or class folders disagree.
        AlignmentError: rasters on different CRS/pixel sizes or with unexpected bands.
        ConfigError: unknown season/layer/target, or ``patch_size`` above the native side.
    """
    city = Path(city_dir)
    if not city.is_dir():
        raise DataNotFoundError(f"So2Sat-POP city folder {str(city)!r} does not exist; pass e.g. "
                                "../shared/data/so2sat_pop/gdansk")
    _check_arguments(seasons, layers, target, class_bins)
    layer_dirs = [f"sen2_rgb_{s}" for s in seasons] + list(layers)
    cells = _scan_cells(city, layer_dirs)
    labels_csv = _check_labels_csv(city, cells)
    tabular, names, features_csv, excluded = _read_features(city, [c.id for c in cells])
    side, crs, res = _common_grid(cells, layer_dirs)
    if patch_size is not None and not 1 <= patch_size <= side:
        raise ConfigError(
            f"patch_size={patch_size} is outside 1..{side}, the smallest native side of these "
            f"rasters; pass patch_size <= {side} (upsampling would invent pixels)"
        )
    size = patch_size or side
    _check_s2_bands(cells[0].files[layer_dirs[0]])
    x, coords, keep, dropped, worst = _read_cells(cells, layer_dirs, side, size, crs)
    cells, tabular = [c for c, k in zip(cells, keep, strict=True) if k], tabular[keep]
    raw = np.array([c.label for c in cells])
    present = sorted(set(raw.tolist()))
    modalities = {f"s2_{s}": [f"{s}_{b}" for b in S2_BANDS] for s in seasons}
    modalities |= {layer: [EXTRA_LAYERS[layer]] for layer in layers}
    provenance = {
        "dataset": "so2sat_pop", "city": city.name, "city_dir": str(city.resolve()),
        "file_pattern": FILE_PATTERN, "layer_dirs": layer_dirs, "cells": len(cells),
        "features_csv": str(features_csv.resolve()),
        "labels_csv": str(labels_csv.resolve()) if labels_csv else None,
        "tabular_excluded": excluded, "native_side_px": side, "patch_size": size,
        "pixel_size_m": res * side / size, "resampling": "average" if size < side else None,
        "s2_scale": S2_SCALE, "max_centre_offset_m": worst, "dropped_cells": dropped,
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
    return bin_classes(patches, class_bins or DEFAULT_CLASS_BINS) if target == "bins" else patches


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
