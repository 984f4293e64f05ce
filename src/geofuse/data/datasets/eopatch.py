"""eo-learn EOPatch folders -> a temporal PatchSet of tiles with a LULC mask per pixel.

Layout (eo-learn >= 1.0; any file may be gzipped, e.g. ``NDVI.npy.gz``)::

    <patch>/data/NDVI.npy            T x H x W x 1 float (any single-channel data feature)
    <patch>/mask/IS_VALID.npy        T x H x W x 1 bool: data and no cloud (or mask/CLM, 1 =
                                     cloud, with mask/IS_DATA, 1 = data)
    <patch>/mask_timeless/LULC.npy   H x W x 1 land-use / land-cover id (0 = no data)
    <patch>/timestamps.json          T ISO datetimes
    <patch>/bbox.geojson             the patch's bounds and CRS

``dataset.root`` is one EOPatch folder or a folder of EOPatch folders (all in one CRS).

- Values: the features of ``dataset.bands.s2`` (default NDVI), one channel each, NaN where the
  cloud mask (``mask/IS_VALID``, else ``mask/CLM`` and ``mask/IS_DATA``; none: every finite
  value counts) marks a pixel invalid. ``data_timeless/DEM`` is not read: the time-major
  layout would repeat it at every step and the ConvLSTM would see it as a changing band.
- Time: ``dataset.composite`` (default ``all``) over ``dataset.periods_per_year`` periods
  (default 4): ``all`` gives one mean per period (quarterly: 10 steps for a patch of
  2015-07 to 2017-12, from the first to the last observed period); ``annual`` /
  ``bitemporal`` composite the periods per year (see
  :func:`~geofuse.data.temporal.composite_quarters`); ``dates`` keeps acquisition days
  (images of one day merged) thinned by ``dataset.date_stride``, and then every EOPatch must
  have the same days. Period-composited patches share one period grid whatever their dates.
- Tiles: ``extract.patch_size`` px squares from the top-left corner; the remainder at the
  bottom and right edges (less than a tile) is dropped, never padded. Tiles without any
  labelled pixel are skipped.
- Masks: LULC ids present (eo-learn's Slovenia nomenclature: 1 cultivated_land, 2 forest,
  3 grassland, 4 shrubland, 5 water, 6 wetland, 7 tundra, 8 artificial_surface, 9 bareland,
  10 snow_and_ice; other ids ``lulc_<id>``) become classes 0..K-1 in id order; 0 (no data) is
  :data:`~geofuse.data.patchset.MASK_IGNORE`.
- ``y``: each tile's dominant LULC class, indexing ``class_names``: the mask classes that
  dominate at least one tile (a class dominating none cannot be stratified).
- Groups: square map blocks of ``dataset.block_tiles`` tiles a side (``block:<bx>_<by>`` by
  tile centre), so neighbouring tiles, also of adjacent EOPatches, share a split or fold.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from geofuse._config_base import ModalityConfig
from geofuse.config import StudyConfig
from geofuse.config_dataset import DatasetConfig
from geofuse.data.patchset import MASK_IGNORE, PatchSet, temporal_band_names
from geofuse.data.temporal import (
    PERIOD_LABELS,
    Strategy,
    composite_quarters,
    group_by_period,
    merge_same_day,
    parse_date,
)
from geofuse.errors import AlignmentError, BandError, ConfigError, DataNotFoundError, RasterError

MODALITY = "s2"
DEFAULT_FEATURES = ("NDVI",)
LULC_NAMES = {1: "cultivated_land", 2: "forest", 3: "grassland", 4: "shrubland", 5: "water",
              6: "wetland", 7: "tundra", 8: "artificial_surface", 9: "bareland",
              10: "snow_and_ice"}
_FIX_ROOT = "point dataset.root at an EOPatch folder or a folder of EOPatch folders"


@dataclass
class EOPatchData:
    """One EOPatch as read: ``values`` float32 (T, C, H, W), NaN where invalid; ``lulc``
    (H, W) ids (0 = no data); T ISO ``dates``; ``crs`` (``EPSG:<code>``) and ``bounds`` (min
    x, min y, max x, max y) of its bbox; the ``cloud_mask`` applied."""

    path: Path
    values: np.ndarray
    lulc: np.ndarray
    dates: list[str]
    crs: str
    bounds: tuple[float, float, float, float]
    cloud_mask: str


def _find(patch: Path, rel: str, suffix: str) -> Path | None:
    for name in (f"{rel}{suffix}", f"{rel}{suffix}.gz"):
        if (patch / name).is_file():
            return patch / name
    return None


def _require(patch: Path, rel: str, suffix: str) -> Path:
    found = _find(patch, rel, suffix)
    if found is None:
        raise DataNotFoundError(f"EOPatch {str(patch)!r} has no {rel}{suffix} (nor "
                                f"{rel}{suffix}.gz); add it (eo-learn >= 1.0 layout) or "
                                f"{_FIX_ROOT}")
    return found


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    try:
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError) as err:
        raise RasterError(f"{str(path)!r} is not a valid gzip file ({err}); re-save the "
                          "EOPatch") from None


def load_array(path: Path) -> np.ndarray:
    """A ``.npy`` or gzipped ``.npy.gz`` array (never unpickled).

    Raises:
        RasterError: the file is not a readable numpy array.
    """
    try:
        return np.load(io.BytesIO(_read_bytes(path)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise RasterError(f"{str(path)!r} is not a readable .npy array ({err}); re-save the "
                          "EOPatch with eo-learn") from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_read_bytes(path))
    except ValueError as err:
        raise RasterError(f"{str(path)!r} is not valid JSON ({err}); re-save the EOPatch") \
            from None


def find_eopatches(root: Path, key: str = "dataset.root") -> list[Path]:
    """``root`` itself when it is an EOPatch (it has ``data/``), else its EOPatch sub-folders.

    Raises:
        DataNotFoundError: ``root`` is missing or holds no EOPatch.
    """
    if not root.is_dir():
        raise DataNotFoundError(f"{key} {str(root)!r} is not a folder; {_FIX_ROOT} "
                                "(relative to the config)")
    if (root / "data").is_dir():
        return [root]
    found = sorted(p for p in root.iterdir() if (p / "data").is_dir())
    if not found:
        raise DataNotFoundError(f"{key} {str(root)!r} holds no EOPatch (a folder with data/, "
                                f"mask_timeless/, timestamps.json, bbox.geojson); {_FIX_ROOT}")
    return found


def read_timestamps(patch: Path) -> list[str]:
    """The ISO datetimes of ``timestamps.json`` (checked to parse).

    Raises:
        DataNotFoundError: no timestamps.json (an old eo-learn timestamp.pkl is not read).
        RasterError: not a list of dates; the message names the file and the value.
    """
    path = _require(patch, "timestamps", ".json")
    stamps = _load_json(path)
    if not isinstance(stamps, list) or not stamps:
        raise RasterError(f"{str(path)!r} holds {type(stamps).__name__}; it must list the ISO "
                          "dates of the time axis, e.g. [\"2017-01-01T10:00:00\", ...]")
    for value in stamps:
        parse_date(value, source=str(path))
    return [str(v) for v in stamps]


def read_bbox(patch: Path) -> tuple[str, tuple[float, float, float, float]]:
    """CRS (``EPSG:<code>``) and bounds of ``bbox.geojson``.

    Raises:
        DataNotFoundError: no bbox.geojson.
        RasterError: no EPSG CRS or no polygon coordinates.
    """
    path = _require(patch, "bbox", ".geojson")
    geo = _load_json(path)
    name = str(((geo.get("crs") or {}).get("properties") or {}).get("name", ""))
    match = re.search(r"EPSG:+(\d+)", name)
    try:
        pts = np.asarray(geo["coordinates"][0], dtype=np.float64)[:, :2]
    except (KeyError, IndexError, TypeError, ValueError):
        pts = np.empty((0, 2))
    if match is None or not len(pts):
        raise RasterError(f"{str(path)!r} needs a polygon with crs.properties.name "
                          f"'urn:ogc:def:crs:EPSG::<code>' (got crs {name!r}); re-save the "
                          "EOPatch with eo-learn")
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    return f"EPSG:{match.group(1)}", (float(x0), float(y0), float(x1), float(y1))


def _mask(patch: Path, rel: str, shape: tuple[int, int, int]) -> np.ndarray | None:
    """The bool (T, H, W) mask ``rel`` (nonzero = set), or None when the EOPatch lacks it."""
    path = _find(patch, rel, ".npy")
    if path is None:
        return None
    arr = load_array(path)
    if arr.shape[:3] != shape:
        raise AlignmentError(f"{str(path)!r} is {arr.shape[:3]} (T, H, W) but the data is "
                             f"{shape}; the masks must have the data's dates and size: "
                             "re-export the EOPatch")
    return arr.reshape(shape) > 0


def _valid_mask(patch: Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    """Valid pixels (T, H, W) from IS_VALID, else CLM and IS_DATA; and the masks used."""
    is_valid = _mask(patch, "mask/IS_VALID", shape)
    if is_valid is not None:
        return is_valid, "mask/IS_VALID"
    valid, used = np.ones(shape, dtype=bool), []
    for rel, cloud in (("mask/CLM", True), ("mask/IS_DATA", False)):
        arr = _mask(patch, rel, shape)
        if arr is not None:
            valid &= ~arr if cloud else arr
            used.append(rel)
    return valid, " + ".join(used) or "none"


def read_patch(patch: Path, features: list[str]) -> EOPatchData:
    """Read one EOPatch (see the module docstring).

    Raises:
        DataNotFoundError: a missing feature, LULC, timestamps.json or bbox.geojson.
        AlignmentError: features, masks or LULC whose size or dates differ from the data.
        RasterError: unreadable files, a multi-channel feature, unparseable dates.
    """
    dates = read_timestamps(patch)
    crs, bounds = read_bbox(patch)
    channels = []
    for name in features:
        path = _require(patch, f"data/{name}", ".npy")
        arr = load_array(path)
        if arr.ndim != 4 or arr.shape[-1] != 1:
            raise RasterError(f"{str(path)!r} has shape {arr.shape}; features must be T x H x "
                              "W x 1: list single-channel features (e.g. NDVI) in "
                              "dataset.bands.s2")
        if arr.shape[0] != len(dates) or (channels and arr.shape != channels[0].shape):
            want = (len(dates), *(channels[0].shape[1:3] if channels else arr.shape[1:3]))
            raise AlignmentError(f"{str(path)!r} has {arr.shape[0]} dates of {arr.shape[1]} x "
                                 f"{arr.shape[2]} px but timestamps.json and the other features "
                                 f"give {want[0]} of {want[1]} x {want[2]}; re-export the EOPatch")
        channels.append(arr)
    values = np.concatenate(channels, axis=-1).transpose(0, 3, 1, 2).astype(np.float32)
    valid, used = _valid_mask(patch, values.shape[:1] + values.shape[2:])
    values[~np.broadcast_to(valid[:, None], values.shape)] = np.nan
    lulc_path = _require(patch, "mask_timeless/LULC", ".npy")
    lulc = load_array(lulc_path)
    if lulc.shape[:2] != values.shape[2:]:
        raise AlignmentError(f"{str(lulc_path)!r} is {lulc.shape[0]} x {lulc.shape[1]} px but "
                             f"the data is {values.shape[2]} x {values.shape[3]} px; the mask "
                             "must cover the data pixel for pixel: re-export the EOPatch")
    return EOPatchData(patch, values, lulc.reshape(lulc.shape[:2]).astype(np.int64), dates, crs,
                       bounds, used)


def _steps(p: EOPatchData, d: DatasetConfig, first: Any, last: Any
           ) -> tuple[np.ndarray, list[str]]:
    """The patch's time steps (S, C, H, W) and labels on the grid shared by all patches."""
    composite = d.composite or "all"
    source = str(p.path / "timestamps.json")
    if composite == "dates":
        days, labels = merge_same_day(p.values, p.dates, source=source)
        return days[::d.date_stride], labels[::d.date_stride]
    periods = d.periods_per_year or 4
    stack = group_by_period(p.values, p.dates, periods, year_range=(first.year, last.year),
                            source=source)
    if composite == "all":
        months = 12 // periods
        i0, i1 = (first.month - 1) // months, (last.year - first.year) * periods + (
            last.month - 1) // months
        steps, labels = composite_quarters(stack.values, strategy="all", years=stack.years,
                                           periods=stack.periods)
        return steps[i0:i1 + 1], labels[i0:i1 + 1]
    # annual / bitemporal: periods of the year the patch never observes (no acquisition in
    # any year) would count as 100% missing and make the cleanest-period rule fire
    seen = stack.counts.sum(axis=0) > 0
    return composite_quarters(stack.values[:, seen], None, cast(Strategy, composite),
                              d.max_missing, d.min_clean, stack.years,
                              [p for p, keep in zip(stack.periods, seen, strict=True) if keep])


def _check_same_dates(patches: list[EOPatchData], labels: list[list[str]]) -> None:
    for p, lab in zip(patches[1:], labels[1:], strict=True):
        if lab != labels[0]:
            raise AlignmentError(
                f"EOPatch {str(p.path)!r} has {len(lab)} acquisition days "
                f"({lab[0]} .. {lab[-1]}) but {str(patches[0].path)!r} has {len(labels[0])} "
                f"({labels[0][0]} .. {labels[0][-1]}); with dataset.composite dates all EOPatches "
                "need the same days: set dataset.composite to all (period means) or annual"
            )


def _cut(p: EOPatchData, steps: np.ndarray, tile: int, lut: np.ndarray, block_tiles: int,
         out: tuple[list[Any], list[Any], list[str], list[Any]]) -> int:
    """Append the labelled tiles of ``p`` (values, mask, group, centre) to ``out``; return
    the number of tiles without a labelled pixel (skipped)."""
    height, width = p.lulc.shape
    if height < tile or width < tile:
        raise ConfigError(f"EOPatch {str(p.path)!r} is {height} x {width} px, smaller than "
                          f"extract.patch_size = {tile}; set extract.patch_size to at most "
                          f"{min(height, width)}")
    x0, _, _, y1 = p.bounds
    res_x = (p.bounds[2] - x0) / p.lulc.shape[1]
    res_y = (y1 - p.bounds[1]) / p.lulc.shape[0]
    side = block_tiles * tile * res_x
    mask = lut[np.clip(p.lulc, 0, len(lut) - 1)]
    skipped = 0
    for i in range(height // tile):
        for j in range(width // tile):
            rows, cols = slice(i * tile, (i + 1) * tile), slice(j * tile, (j + 1) * tile)
            if (mask[rows, cols] == MASK_IGNORE).all():
                skipped += 1
                continue
            cx, cy = x0 + (j + 0.5) * tile * res_x, y1 - (i + 0.5) * tile * res_y
            out[0].append(steps[:, :, rows, cols].reshape(-1, tile, tile))
            out[1].append(mask[rows, cols])
            out[2].append(f"block:{int(np.floor(cx / side))}_{int(np.floor(cy / side))}")
            out[3].append((cx, cy))
    return skipped


def selected_features(d: DatasetConfig) -> list[str]:
    """The data features of ``dataset.bands.s2`` (default NDVI).

    Raises:
        BandError: another modality named, or a feature repeated.
    """
    if not d.bands:
        return list(DEFAULT_FEATURES)
    if set(d.bands) != {MODALITY}:
        raise BandError(f"dataset.bands names modality {sorted(d.bands)}; eopatch has only "
                        f"{MODALITY!r}: write dataset.bands: {{{MODALITY}: [NDVI]}}")
    wanted = list(d.bands[MODALITY])
    if not wanted or len(set(wanted)) != len(wanted):
        raise BandError(f"dataset.bands.{MODALITY} = {wanted}: list each data feature once, "
                        "e.g. [NDVI]")
    return wanted


def dataset_modalities(d: DatasetConfig) -> list[ModalityConfig]:
    """The one modality ``s2`` (per-step feature names; see :data:`build.Modalities`)."""
    root = str(d.root).rstrip("/")
    return [ModalityConfig(name=MODALITY, files=[f"{root}/**/data/*.npy*"],
                           bands=selected_features(d))]


def read_eopatch(d: DatasetConfig, root: Path, cfg: StudyConfig, external: bool) -> PatchSet:
    """Read EOPatch tiles (see the module docstring and :data:`build.Reader`).

    Raises:
        DataNotFoundError: a missing folder or file.
        AlignmentError: sizes or dates that do not match (within or across EOPatches).
        RasterError: unreadable files or dates.
        ConfigError: an EOPatch smaller than extract.patch_size, or several CRSs.
    """
    tile = cfg.extract.patch_size
    features = selected_features(d)
    patches = [read_patch(p, features) for p in find_eopatches(root)]
    crss = sorted({p.crs for p in patches})
    if len(crss) > 1:
        raise ConfigError(f"dataset.root {str(root)!r} mixes EOPatches in {crss}; read one CRS "
                          "at a time (one root per UTM zone)")
    every = [parse_date(s) for p in patches for s in p.dates]
    series = [_steps(p, d, min(every), max(every)) for p in patches]
    _check_same_dates(patches, [lab for _, lab in series])
    labels = series[0][1]
    ids = sorted({int(v) for p in patches for v in np.unique(p.lulc)} - {0})
    mask_names = [LULC_NAMES.get(i, f"lulc_{i}") for i in ids]
    if len(ids) < 2:
        raise RasterError(f"mask_timeless/LULC of {str(root)!r} holds class ids {ids} only; "
                          "a segmentation mask needs at least two classes besides 0 (no data)")
    lut = np.full(max(ids, default=0) + 1, MASK_IGNORE, dtype=np.uint8)
    lut[ids] = np.arange(len(ids))
    xs, ms, groups, centres, dropped = [], [], [], [], 0
    for p, (steps, _) in zip(patches, series, strict=True):
        dropped += _cut(p, steps, tile, lut, d.block_tiles, (xs, ms, groups, centres))
    if not xs:
        raise DataNotFoundError(f"dataset.root {str(root)!r}: no tile of {tile} px holds a "
                                "labelled LULC pixel; check mask_timeless/LULC or use a smaller "
                                "extract.patch_size")
    masks = np.stack(ms)
    dominant = np.array([np.bincount(m[m != MASK_IGNORE], minlength=len(ids)).argmax()
                         for m in masks])
    strata = sorted(set(dominant.tolist()))
    band_names = temporal_band_names(features, labels)
    x = np.stack(xs)
    provenance: dict[str, Any] = {
        "dataset": "eopatch", "root": str(root.resolve()),
        "eopatches": [str(p.path.relative_to(root)) if p.path != root else "." for p in patches],
        "features": features, "cloud_mask": sorted({p.cloud_mask for p in patches}),
        "composite": d.composite or "all", "periods_per_year": d.periods_per_year or 4,
        "period_labels": PERIOD_LABELS[d.periods_per_year or 4], "date_stride": d.date_stride,
        "max_missing": d.max_missing, "min_clean": d.min_clean, "tile_size": tile,
        "edges": "dropped", "tiles_without_labels": dropped, "block_tiles": d.block_tiles,
        "blocks": len(set(groups)), "lulc_ids": dict(zip(mask_names, ids, strict=True)),
        "dates": {"first": min(every).isoformat(), "last": max(every).isoformat(),
                  "acquisitions": len(every)},
    }
    return PatchSet(
        x=x, y=np.searchsorted(strata, dominant), band_names=band_names,
        modalities={MODALITY: band_names}, class_names=[mask_names[k] for k in strata],
        groups=np.array(groups), coords=np.array(centres), crs=crss[0],
        nodata_fraction=np.isnan(x).mean(axis=(1, 2, 3)), provenance=provenance, masks=masks,
        mask_names=mask_names, timestamps=labels,
    )
