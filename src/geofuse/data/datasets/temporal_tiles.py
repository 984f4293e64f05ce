"""Per-date GeoTIFF tile folders (the land-take layout as exported from Earth Engine)::

    <root>/<tile>/2018-06-15.tif    one multi-band GeoTIFF per date, dated by its name
    <root>/<tile>/S2_20180815.tif   (2018-06-15, 20180615, 2018_06_15, 2018-Q2, 2018-H1,
    <root>/<tile>/2019-Q2.tif       2018-06; other names: dataset.date_pattern)
    <root>/<tile>/mask.tif          one band, class id per pixel (dataset.mask_file)
    <root>/<tile>/dates.json        optional: [{"file": "a.tif", "date": "2018-06-15"}, ...]
                                    or {"a.tif": "2018-06-15"}: only these files are read

- Values as stored; the files' nodata (and masked) pixels become NaN. Bands: the band
  descriptions when every band has a distinct one (``dataset.bands: {s2: [B04, B08]}`` then
  picks some), else ``dataset.bands`` names every band in file order, else ``B1`` .. ``Bn``;
  one modality, the key of ``dataset.bands`` (default ``s2``).
- Time: a tile's dates are binned into ``dataset.periods_per_year`` periods (default 4) and
  composited by ``dataset.composite`` (default ``annual``, as ``composite_quarters``). Periods
  a tile never observes are left out (Q2 + Q3 exports: the quarters are averaged unless one is
  mostly missing, as in the experiment), and so are steps without any observation. Every
  tile must end with the same steps, at least ``dataset.min_steps``.
- Masks: the file's nodata, ``dataset.mask_nodata`` and 255 are unlabelled. Values within
  {0, 1} are binary (``no_change``, ``change``), ``y`` the change level (``change_levels``,
  ``dataset.change_thresholds``); other ids become classes 0..K-1 in id order (``class_<id>``),
  ``y`` a tile's dominant class. ``class_names``: the strata present. Unlabelled tiles: skipped.
- Size: the tile size (tiles square and of one size), unless the config sets a smaller
  ``extract.patch_size``: every tile and mask is then centre-cropped to it (sizes may differ).
  One CRS for all tiles, a tile's images and mask on one grid; ``coords``: patch centres.
- Groups: ``tile:<folder>``; overlapping tiles (sharing pixels) share the group of the first
  of them (name order), so no pixel is in two splits; tiles that only touch keep their own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from geofuse._config_base import ModalityConfig
from geofuse.config import StudyConfig
from geofuse.config_dataset import DatasetConfig
from geofuse.data.patchset import MASK_IGNORE, PatchSet, temporal_band_names
from geofuse.data.temporal import (
    CHANGE_LEVEL_NAMES,
    Strategy,
    change_levels,
    cleanest_choice,
    composite_quarters,
    date_in_name,
    group_by_period,
    missing_share,
    parse_date,
)
from geofuse.errors import AlignmentError, BandError, ConfigError, DataNotFoundError, RasterError
from geofuse.raster.io import crs_to_string, open_raster

MODALITY = "s2"
DATES_FILE = "dates.json"
SUFFIXES = (".tif", ".tiff")
BINARY_NAMES = ["no_change", "change"]
_FIX_DATES = ("rename it (e.g. 2018-06-15.tif), set dataset.date_pattern, or list the files and "
              f"their dates in {DATES_FILE}")
_ONE_GRID = "export every date and the mask of a tile on one grid (same region, scale and crs)"


@dataclass
class Tile:
    """A tile: ``values`` (T, C, H, W), an ISO date per image, ``mask`` ids (NaN: none)."""

    path: Path
    values: np.ndarray
    dates: list[str]
    mask: np.ndarray
    crs: str
    transform: Any
    date_source: str


def _find_tiles(root: Path, mask_file: str) -> list[Path]:
    """The tile folders of ``root`` in name order (hidden ones skipped); DataNotFoundError
    when ``root`` is not a folder or holds none."""
    tiles = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   ) if root.is_dir() else []
    if not tiles:
        what = "is not a folder" if not root.is_dir() else "holds no tile folders" + (
            " (it looks like one tile)" if (root / mask_file).is_file() else "")
        raise DataNotFoundError(f"dataset.root {str(root)!r} {what}; point it at the folder of "
                                f"tile folders (<root>/<tile>/<date>.tif and <root>/<tile>/"
                                f"{mask_file}), relative to the config")
    return tiles


def date_from_name(path: Path, pattern: re.Pattern[str] | None = None) -> str:
    """The ISO date in a file name (:func:`~geofuse.data.temporal.date_in_name`).

    Raises:
        RasterError: no date, or not a calendar date; the message names the tile and file.
    """
    where = f"tile folder {str(path.parent)!r}: file {path.name!r}"
    text = date_in_name(path.stem, pattern)
    if text is None:
        what = (f"dataset.date_pattern {pattern.pattern!r}" if pattern else
                "2018-06-15, 20180615, 2018_06_15, 2018-Q2, 2018-H1 or 2018-06")
        raise RasterError(f"{where} has no date in its name (expected {what}); {_FIX_DATES}")
    try:
        return parse_date(text, where).isoformat()
    except RasterError:
        raise RasterError(f"{where}: {text!r} is not a date; {_FIX_DATES}") from None


def _listed(tile: Path, path: Path) -> list[tuple[Path, str]]:
    """(image, ISO date) of a tile's ``dates.json``."""
    fix = 'write [{"file": "a.tif", "date": "2018-06-15"}, ...] or {"a.tif": "2018-06-15", ...}'
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RasterError(f"{str(path)!r} is not readable JSON ({err}); {fix}") from None
    listed = isinstance(data, list) and all(isinstance(e, dict) and {"file", "date"} <= set(e)
                                            for e in data)
    pairs = [(e["file"], e["date"]) for e in data] if listed else (
        list(data.items()) if isinstance(data, dict) else [])
    if not pairs:
        raise RasterError(f"{str(path)!r} lists no images with dates; {fix}")
    missing = [str(n) for n, _ in pairs if not (tile / str(n)).is_file()]
    if missing:
        raise DataNotFoundError(f"{str(path)!r} names {missing[0]!r}, which is not a file in "
                                f"tile folder {str(tile)!r}; fix the name or drop the entry")
    return [(tile / str(n), parse_date(v, f"{path} ({n})").isoformat()) for n, v in pairs]


def _tile_images(tile: Path, d: DatasetConfig) -> tuple[list[tuple[Path, str]], str]:
    """(image, ISO date) of a tile from its ``dates.json`` or the file names, and which;
    DataNotFoundError without images, RasterError for a date that cannot be read."""
    if (tile / DATES_FILE).is_file():
        return _listed(tile, tile / DATES_FILE), DATES_FILE
    files = sorted(p for p in tile.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES
                   and p.name != d.mask_file and not p.name.startswith("."))
    if not files:
        raise DataNotFoundError(f"tile folder {str(tile)!r} holds no GeoTIFF besides "
                                f"{d.mask_file}; add its images (<date>.tif) or remove it")
    pattern = re.compile(d.date_pattern) if d.date_pattern else None
    return [(p, date_from_name(p, pattern)) for p in files], "file names"


def _modality(d: DatasetConfig) -> tuple[str, list[str] | None]:
    """The modality name and the band names of ``dataset.bands`` (None: not given)."""
    if not d.bands:
        return MODALITY, None
    name, bands = next(iter(d.bands.items()))
    if len(d.bands) != 1 or not name.isidentifier() or len(set(bands)) != len(bands) or not bands:
        raise BandError(f"dataset.bands = {d.bands}: temporal_tiles has one modality; write e.g. "
                        "dataset.bands: {s2: [B02, B03, B04, B08]}, each band once")
    return name, list(bands)


def _band_plan(path: Path, descriptions: tuple[str | None, ...], d: DatasetConfig
               ) -> tuple[list[str], list[int], str]:
    """Band names kept, their 1-based indexes in the files, and where the names come from;
    BandError when ``dataset.bands`` names unknown bands or the wrong number of them."""
    modality, wanted = _modality(d)
    every = list(range(1, len(descriptions) + 1))
    named = [str(s) for s in descriptions if s]
    if len(set(named)) == len(every):
        unknown = [b for b in wanted or [] if b not in named]
        if unknown:
            raise BandError(f"dataset.bands.{modality}: {unknown} not among the band "
                            f"descriptions {named} of {str(path)!r}; list names from them")
        return (wanted or named), [named.index(b) + 1 for b in wanted or named], "descriptions"
    if wanted is None:
        return [f"B{i}" for i in every], every, "B1..Bn"
    if len(wanted) != len(every):
        raise BandError(f"{str(path)!r} has {len(every)} bands without descriptions but "
                        f"dataset.bands.{modality} lists {len(wanted)} ({wanted}); list one "
                        "name per band in file order")
    return wanted, every, "dataset.bands"


def _check_grid(path: Path, ref: tuple[Any, ...], shape: tuple[int, int], transform: Any,
                crs: Any, what: str) -> None:
    """``path`` on the grid of ``ref`` = (first image, shape, transform, crs) of its tile."""
    if shape != ref[1]:
        raise AlignmentError(f"{what} {str(path)!r} is {shape[0]} x {shape[1]} px but "
                             f"{ref[0].name!r} of its tile is {ref[1][0]} x {ref[1][1]} px; "
                             f"{_ONE_GRID}")
    tol = 0.5 * abs(ref[2].a)  # half a pixel
    if crs != ref[3] or not np.allclose(tuple(transform)[:6], tuple(ref[2])[:6], 0, tol):
        raise AlignmentError(f"{what} {str(path)!r} is not on the grid of {ref[0].name!r} of "
                             f"its tile (CRS, origin or pixel size differ); {_ONE_GRID}")


def _read_mask(path: Path, nodata: float | None, ref: tuple[Any, ...]) -> np.ndarray:
    """A tile's mask: class ids, NaN = unlabelled."""
    if not path.is_file():
        raise DataNotFoundError(f"tile folder {str(path.parent)!r} has no mask {path.name!r}; "
                                "add the mask raster (class per pixel) or set dataset.mask_file")
    with open_raster(path) as src:
        if src.count != 1:
            raise RasterError(f"mask {str(path)!r} has {src.count} bands; a mask is one band of "
                              "class ids per pixel: export only the label band")
        _check_grid(path, ref, (src.height, src.width), src.transform, src.crs or ref[3], "mask")
        mask = src.read(1, masked=True).astype(np.float64).filled(np.nan)
    mask[(mask == MASK_IGNORE) | ((mask == nodata) if nodata is not None else False)] = np.nan
    bad = mask[np.isfinite(mask) & ((mask < 0) | (mask != np.round(mask)))]
    if bad.size:
        raise RasterError(f"mask {str(path)!r} holds value {bad[0]:g}; masks hold class ids 0, "
                          "1, ...: set dataset.mask_nodata to the value of unlabelled pixels")
    return mask


def _read_tile(tile: Path, d: DatasetConfig, bands: dict[str, Any]) -> Tile:
    """Read one tile folder; ``bands`` holds the band plan, set from the first image read.
    Raises the errors of :func:`read_temporal_tiles` that concern one tile."""
    images, source = _tile_images(tile, d)
    layers, ref = [], cast("tuple[Any, ...] | None", None)
    for path, _ in images:
        with open_raster(path) as src:
            if src.crs is None:
                raise RasterError(f"{str(path)!r} has no CRS; export the tiles with a crs")
            if not bands:
                bands["names"], bands["indexes"], bands["origin"] = _band_plan(
                    path, src.descriptions, d)
                bands.update(count=src.count, first=str(path))
            if src.count != bands["count"]:
                raise RasterError(f"{str(path)!r} has {src.count} bands but {bands['first']!r}"
                                  f" has {bands['count']}; export every date with the same bands")
            ref = ref or (path, (src.height, src.width), src.transform, src.crs)
            _check_grid(path, ref, (src.height, src.width), src.transform, src.crs, "image")
            layers.append(src.read(bands["indexes"], masked=True).astype(np.float32)
                          .filled(np.nan))
    assert ref is not None  # tile_images returns at least one image
    mask = _read_mask(tile / d.mask_file, d.mask_nodata, ref)
    return Tile(tile, np.stack(layers), [s for _, s in images], mask, crs_to_string(ref[3]),
                ref[2], source)


def _tile_steps(t: Tile, d: DatasetConfig) -> tuple[np.ndarray, list[str], int]:
    """The tile's steps (S, C, H, W), their labels and the years composited from one period;
    RasterError for fewer steps than ``dataset.min_steps`` (or one year for bitemporal)."""
    composite = cast(Strategy, d.composite or "annual")
    stack = group_by_period(t.values, t.dates, d.periods_per_year or 4, source=str(t.path))
    seen = stack.counts.sum(axis=0) > 0  # periods the tile ever observes
    values, counts = stack.values[:, seen], stack.counts[:, seen]
    periods = [p for p, s in zip(stack.periods, seen, strict=True) if s]
    years = np.flatnonzero(counts.sum(axis=1) > 0)
    steps, labels, alone = values[:0, 0], [stack.years[y] for y in years], 0  # too few
    if composite == "all":
        steps, labels = composite_quarters(values, strategy="all", years=stack.years,
                                           periods=periods)
        keep = np.flatnonzero(counts.ravel() > 0)
        steps, labels = steps[keep], [labels[k] for k in keep]
    elif composite == "annual" or len(years) >= 2:
        steps, labels = composite_quarters(values[years], None, composite, d.max_missing,
                                           d.min_clean, [stack.years[y] for y in years], periods)
        alone = int((cleanest_choice(missing_share(values[years]), d.max_missing, d.min_clean)
                     >= 0).sum())
    need = max(d.min_steps, 2 if composite == "bitemporal" else 1)
    if len(labels) < need:
        raise RasterError(f"tile folder {str(t.path)!r} gives {len(labels)} time step(s) {labels} "
                          f"with dataset.composite {composite} but {need} are needed (dataset."
                          f"min_steps = {d.min_steps}); export more dates (years), use "
                          "dataset.composite all, or lower dataset.min_steps")
    return steps, labels, alone


def _check_tile(cfg: StudyConfig, d: DatasetConfig, t: Tile, labels: list[str], ref: Tile,
                ref_labels: list[str]) -> int:
    """The patch size, after checking that ``t`` shares the CRS and time steps of the first
    tile ``ref``: extract.patch_size when the config sets it (a centre crop), else the one
    tile size."""
    if t.crs != ref.crs:
        raise ConfigError(f"tile folder {str(t.path)!r} is in {t.crs} but {str(ref.path)!r} in "
                          f"{ref.crs}; all tiles must share a CRS: re-export it in {ref.crs} or "
                          "read one CRS per dataset.root")
    if labels != ref_labels:
        lacks = [s for s in ref_labels if s not in labels][:4]
        adds = [s for s in labels if s not in ref_labels][:4]
        diff = ", ".join([f"it lacks {lacks}"] * bool(lacks) + [f"adds {adds}"] * bool(adds))
        raise AlignmentError(
            f"tile folder {str(t.path)!r} has {len(labels)} time steps after dataset.composite "
            f"{d.composite or 'annual'} but {str(ref.path)!r} has {len(ref_labels)} ({diff}); "
            "every tile needs the same steps: export the missing dates or drop the tile (annual "
            "composites tolerate a missing quarter)")
    (height, width), (rh, rw) = t.mask.shape, ref.mask.shape
    if "patch_size" in cfg.extract.model_fields_set:
        size = cfg.extract.patch_size
        if min(height, width) < size:
            raise ConfigError(f"tile folder {str(t.path)!r} is {height} x {width} px, smaller "
                              f"than extract.patch_size = {size}; set extract.patch_size to at "
                              f"most {min(height, width)} (tiles are centre-cropped to it)")
        return size
    if (height, width) != (rh, rw) or height != width:
        other = "" if t is ref else f" but {str(ref.path)!r} is {rh} x {rw} px"
        raise AlignmentError(
            f"tile folder {str(t.path)!r} is {height} x {width} px{other}; tiles must be square "
            "and of one size: re-export it, or set extract.patch_size to at most "
            f"{min(height, width, rh, rw)} to centre-crop all tiles")
    return height


def neighbour_groups(names: list[str], bounds: np.ndarray, tol: float) -> list[str]:
    """``tile:<name>`` per tile; tiles whose (left, bottom, right, top) ``bounds`` are closer
    than ``tol`` (negative: overlap by more than ``-tol``) join the first one's group."""
    centre, half = (bounds[:, :2] + bounds[:, 2:]) / 2, (bounds[:, 2:] - bounds[:, :2]) / 2
    pairs = cKDTree(centre).query_pairs(2 * half.max() + max(tol, 0), p=np.inf,
                                        output_type="ndarray")
    i, j = pairs[:, 0], pairs[:, 1]
    near = (np.abs(centre[i] - centre[j]) <= half[i] + half[j] + tol).all(axis=1)
    graph = coo_matrix((np.ones(near.sum()), (i[near], j[near])), shape=(len(names),) * 2)
    component = connected_components(graph, directed=False)[1]
    first: dict[int, str] = {}
    return [f"tile:{first.setdefault(int(c), n)}" for c, n in zip(component, names, strict=True)]


def _classes(raw: np.ndarray, d: DatasetConfig, root: Path
             ) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Masks uint8 (255 = unlabelled), their class names, ``y`` and ``class_names``: change
    levels (binary masks) or dominant classes, only the strata present (each stratifiable)."""
    ids = sorted({int(v) for v in np.unique(raw[np.isfinite(raw)])})
    binary = set(ids) <= {0, 1}
    if not binary and len(ids) < 2:
        raise RasterError(f"the masks ({d.mask_file}) of {str(root)!r} hold class ids {ids} "
                          "only; a mask needs two classes: check dataset.mask_nodata")
    lut = np.arange(2) if binary else np.array(ids)
    masks = np.where(np.isfinite(raw), np.searchsorted(lut, np.nan_to_num(raw)),
                     MASK_IGNORE).astype(np.uint8)
    names = BINARY_NAMES if binary else [f"class_{i}" for i in ids]
    strata = change_levels(masks, d.change_thresholds) if binary else np.array(
        [np.bincount(m[m != MASK_IGNORE], minlength=len(ids)).argmax() for m in masks])
    present = sorted(set(strata.tolist()))
    return masks, names, np.searchsorted(present, strata), [
        (CHANGE_LEVEL_NAMES if binary else names)[k] for k in present]


def dataset_modalities(d: DatasetConfig) -> list[ModalityConfig]:
    """The one modality (see :data:`build.Modalities`); without ``dataset.bands`` the band
    names are known only from the files, and the config lists ``from_geotiffs``."""
    name, bands = _modality(d)
    return [ModalityConfig(name=name, files=[f"{str(d.root).rstrip('/')}/*/*.tif"],
                           bands=bands or ["from_geotiffs"])]


def read_temporal_tiles(d: DatasetConfig, root: Path, cfg: StudyConfig, external: bool
                        ) -> PatchSet:
    """Read tile folders (see the module docstring and :data:`build.Reader`).

    Raises:
        DataNotFoundError: a missing root, image, mask or dates.json entry; no (labelled) tile.
        RasterError: unreadable files or dates, other band counts, a series too short.
        AlignmentError: an image or mask off its tile's grid; tiles of other sizes or steps.
        ConfigError: several CRSs, or tiles smaller than extract.patch_size.
        BandError: ``dataset.bands`` that do not fit the files.
    """
    bands: dict[str, Any] = {}
    xs, raw, centres, bounds, names, info = [], [], [], [], [], {}
    ref: tuple[Tile, list[str]] | None = None
    for path in _find_tiles(root, d.mask_file):
        t = _read_tile(path, d, bands)
        steps, labels, alone = _tile_steps(t, d)
        ref = ref or (t, labels)
        size = _check_tile(cfg, d, t, labels, ref[0], ref[1])
        r0, c0 = (t.mask.shape[0] - size) // 2, (t.mask.shape[1] - size) // 2
        xs.append(steps[:, :, r0:r0 + size, c0:c0 + size].reshape(-1, size, size))
        raw.append(t.mask[r0:r0 + size, c0:c0 + size])
        centres.append(t.transform * (c0 + size / 2, r0 + size / 2))
        (x0, y0), (x1, y1) = t.transform * (0, 0), t.transform * t.mask.shape[::-1]
        bounds.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        names.append(t.path.name)
        info[t.path.name] = {"images": len(t.dates), "dates": t.date_source, "first":
                             min(t.dates), "last": max(t.dates), "years_one_period_alone": alone}
    assert ref is not None  # find_tiles returns at least one folder
    keep = np.flatnonzero(np.isfinite(np.stack(raw)).any(axis=(1, 2)))
    if not len(keep):
        raise DataNotFoundError(f"no mask ({d.mask_file}) under {str(root)!r} holds a labelled "
                                "pixel; check the masks and dataset.mask_nodata")
    masks, mask_names, y, class_names = _classes(np.stack([raw[k] for k in keep]), d, root)
    x = np.stack([xs[k] for k in keep])
    groups = neighbour_groups(names, np.array(bounds), -0.5 * abs(ref[0].transform.a))
    band_names = temporal_band_names(bands["names"], ref[1])
    provenance: dict[str, Any] = {
        "dataset": "temporal_tiles", "root": str(root.resolve()), "tiles": info,
        "bands": bands["names"], "band_names_from": bands["origin"],
        "date_pattern": d.date_pattern or "default", "composite": d.composite or "annual",
        "periods_per_year": d.periods_per_year or 4, "max_missing": d.max_missing,
        "min_clean": d.min_clean, "min_steps": d.min_steps, "mask_file": d.mask_file,
        "mask_nodata": d.mask_nodata, "mask_names": mask_names, "patch_size": size,
        "tiles_without_labels": sorted(set(names) - {names[k] for k in keep}),
        "groups": len(set(groups)), "change_thresholds": list(d.change_thresholds),
    }
    return PatchSet(
        x=x, y=y, band_names=band_names, modalities={_modality(d)[0]: band_names},
        class_names=class_names, groups=np.array(groups)[keep],
        coords=np.array(centres, dtype=np.float64)[keep], crs=ref[0].crs,
        nodata_fraction=np.isnan(x).mean(axis=(1, 2, 3)), provenance=provenance,
        masks=masks, mask_names=mask_names, timestamps=ref[1],
    )
