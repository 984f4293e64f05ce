"""So2Sat-POP city folders: find the 1 km cells and read their co-registered layers.

Layout of a city folder: ``<layer>/Class_<k>/<cell>_<layer>.tif`` (layer: sen2_rgb_<season>,
dem, viirs, lcz), where k is the cell's population class.

The layers of one cell sit on slightly different 10 m grids (origins a few metres apart,
112-114 px; cells on the city edge are clipped, down to ~96 px). Every layer is read in one
square window of ``side`` native pixels centred on the centre of the cell's first S2 raster
(offsets rounded to whole pixels and moved inwards where a clipped raster is too small).
``side`` is the smallest width/height over all rasters read: a centre crop, never padded. A cell
whose layer lies more than :data:`MAX_OFFSET_M` away is dropped with a warning: in Gdansk the
``dem`` and ``lcz`` rasters of cells 39, 50 and 99 lie 12-19 km from their S2 and VIIRS rasters.

Values: S2 RGB files hold reflectance x 10000 (uint16), scaled by :data:`S2_SCALE`; DEM (metres)
and VIIRS (radiance) are kept as they are. Each raster is a UTM box around the rotated 1 km
LAEA cell, and outside the cell every S2 band is 0: those pixels become NaN. DEM and VIIRS have
no nodata value and 0 is valid for them, so they are masked with the footprint of the first S2
season. A label layer (``lcz``) is returned unscaled and unmasked (0 = unlabelled).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from geofuse.errors import AlignmentError, ConfigError, DataNotFoundError, LabelError

SEASONS = ("spring", "summer", "autumn", "winter")
EXTRA_LAYERS = {"dem": "dem_elevation", "viirs": "viirs_radiance"}
S2_DESCRIPTIONS = ("B4", "B3", "B2")
S2_BANDS = ("R", "G", "B")
S2_SCALE = 1e-4
FILE_PATTERN = "<layer>/Class_<k>/<cell>_<layer>.tif"
MAX_OFFSET_M = 30.0  # 3 pixels; co-located layers are within ~9 m of the S2 centre


@dataclass(frozen=True)
class Cell:
    """One 1 km cell: its id, population class and a file per layer folder."""

    id: str
    label: int
    files: dict[str, Path]


@dataclass
class CellRead:
    """A cell's layers read on one window (see the module docstring)."""

    planes: np.ndarray  # (C, side, side) float32 physical values, NaN outside the cell
    label: np.ndarray | None  # (side, side) label layer, or None
    centre: tuple[float, float]
    offsets: dict[str, float] = field(default_factory=dict)
    transform: Affine = field(default_factory=Affine.identity)


def layer_dirs_for(seasons: Sequence[str], layers: Sequence[str]) -> list[str]:
    """Folder names of the S2 seasons and extra layers, in channel order."""
    return [f"sen2_rgb_{s}" for s in seasons] + list(layers)


def modalities_for(seasons: Sequence[str], layers: Sequence[str]) -> dict[str, list[str]]:
    """Modality name -> band names: ``s2_<season>`` (``<season>_R/_G/_B``), ``dem``, ``viirs``."""
    out = {f"s2_{s}": [f"{s}_{b}" for b in S2_BANDS] for s in seasons}
    return out | {layer: [EXTRA_LAYERS[layer]] for layer in layers}


def check_seasons_layers(seasons: Sequence[str], layers: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for unknown, repeated or missing seasons/layers."""
    for name, values, valid in [("seasons", seasons, SEASONS), ("layers", layers, EXTRA_LAYERS)]:
        if any(v not in valid for v in values) or len(set(values)) != len(values):
            raise ConfigError(f"{name}={list(values)} is invalid; pick distinct values from "
                              f"{list(valid)}")
    if not seasons:
        raise ConfigError(f"seasons is empty; pick at least one of {list(SEASONS)} (the S2 "
                          "raster defines each cell's centre and footprint)")


def city_folder(city_dir: str | Path) -> Path:
    """The city folder, or :class:`DataNotFoundError`."""
    city = Path(city_dir)
    if not city.is_dir():
        raise DataNotFoundError(f"So2Sat-POP city folder {str(city)!r} does not exist; pass e.g. "
                                "../shared/data/so2sat_pop/gdansk")
    return city


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


def scan_cells(city: Path, layer_dirs: list[str]) -> list[Cell]:
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
        cells.append(Cell(cell_id, labels[layer_dirs[0]], files))
    return sorted(cells, key=lambda c: (c.label, c.id))


def _grid_of(path: Path) -> tuple[int, str, tuple[float, float]]:
    with rasterio.open(path) as src:
        return min(src.width, src.height), src.crs.to_string() if src.crs else "", src.res


def common_grid(cells: list[Cell], layer_dirs: list[str]) -> tuple[int, str, float]:
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


def check_s2_bands(path: Path) -> None:
    """Raise :class:`AlignmentError` unless ``path`` holds the 3 bands B4, B3, B2."""
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


def downsample(stack: np.ndarray, transform: Affine, crs: str, size: int) -> np.ndarray:
    """Average ``stack`` (C, S, S) onto a ``size`` x ``size`` grid over the same extent."""
    side = stack.shape[-1]
    if size == side:
        return stack
    out = np.full((len(stack), size, size), np.nan, dtype=np.float32)
    reproject(stack, out, src_transform=transform, src_crs=crs, src_nodata=np.nan,
              dst_transform=transform @ Affine.scale(side / size), dst_crs=crs,
              dst_nodata=np.nan, resampling=Resampling.average)
    return out


def read_cell(cell: Cell, layer_dirs: list[str], side: int, label_layer: str | None = None
              ) -> CellRead:
    """Read ``layer_dirs`` (and ``label_layer``) of one cell on the window around its centre."""
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
    label = None
    if label_layer is not None:
        with rasterio.open(cell.files[label_layer]) as src:
            window, offsets[label_layer] = _window(src, centre, side)
            label = src.read(1, window=window).astype(np.int64)
    return CellRead(np.concatenate(planes), label, centre, offsets, transform)


def read_cells(cells: list[Cell], layer_dirs: list[str], side: int,
               label_layer: str | None = None) -> tuple[list[CellRead], np.ndarray, dict[str, str]]:
    """Read every cell; drop those with a layer over :data:`MAX_OFFSET_M` from the S2 centre.

    Returns:
        The reads of the kept cells, the kept-mask over ``cells`` and the dropped cells
        (id -> why).
    """
    read = [read_cell(c, layer_dirs, side, label_layer) for c in cells]
    dropped: dict[str, str] = {}
    for cell, r in zip(cells, read, strict=True):
        layer, metres = max(r.offsets.items(), key=lambda kv: kv[1])
        if metres > MAX_OFFSET_M:
            dropped[cell.id] = f"{cell.files[layer].name} lies {metres:.0f} m from the S2 centre"
    if len(dropped) == len(cells):
        raise AlignmentError("every cell has a layer far from its S2 raster; check the files")
    if dropped:
        warnings.warn(f"So2Sat-POP: dropped {len(dropped)} cell(s) with misplaced rasters: "
                      f"{'; '.join(dropped.values())}", stacklevel=3)
    keep = np.array([c.id not in dropped for c in cells])
    return [r for r, k in zip(read, keep, strict=True) if k], keep, dropped


def max_offset(reads: list[CellRead]) -> float:
    """Largest window offset (m) over the kept cells' layers."""
    return round(max(max(r.offsets.values()) for r in reads), 3)
