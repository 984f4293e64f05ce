"""BigEarthNet patch folders: find them, read their metadata, read their bands onto 10 m.

A patch is a folder ``<name>/`` holding ``<name>_labels_metadata.json`` and one GeoTIFF per
band, ``<name>_<band>.tif``. A JSON with ``corresponding_s2_patch`` marks a Sentinel-1 patch
(bands VV, VH), any other a Sentinel-2 patch (bands B01 ... B12, B8A).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from geofuse.errors import DataNotFoundError, LabelError, RasterError

META_SUFFIX = "_labels_metadata.json"
#: Side in pixels of a patch on the 10 m grid (1.2 km).
SIDE = 120


@dataclass(frozen=True)
class Patch:
    """One patch folder.

    Attributes:
        name: the patch name (folder name, prefix of its files).
        folder: the folder holding the band files.
        meta: its ``*_labels_metadata.json``.
        labels: the JSON's 43-class CORINE label names.
        s2_partner: for a Sentinel-1 patch, ``corresponding_s2_patch``; None for Sentinel-2.
    """

    name: str
    folder: Path
    meta: Path
    labels: tuple[str, ...]
    s2_partner: str | None

    def band_file(self, band: str) -> Path:
        """The GeoTIFF of ``band`` (it may not exist)."""
        return self.folder / f"{self.name}_{band}.tif"


def _load_meta(path: Path) -> Patch:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelError(f"{str(path)!r} is not readable JSON ({exc}); restore the BigEarthNet "
                         "metadata file or remove its patch folder") from None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise LabelError(f"{str(path)!r} has no 'labels' list of class names; BigEarthNet "
                         "metadata holds labels: [<43-class CORINE names>]; restore the file "
                         "or remove its patch folder")
    partner = meta.get("corresponding_s2_patch")
    return Patch(name=path.name[: -len(META_SUFFIX)], folder=path.parent, meta=path,
                 labels=tuple(labels), s2_partner=str(partner) if partner else None)


def _metadata_files(root: Path) -> list[Path]:
    """Every ``*_labels_metadata.json`` under ``root``, following folder symlinks."""
    return [Path(d) / f for d, _, files in os.walk(root, followlinks=True)
            for f in files if f.endswith(META_SUFFIX)]


def find_patches(root: Path, key: str = "dataset.root"
                 ) -> tuple[dict[str, Patch], dict[str, Patch]]:
    """Sentinel-2 and Sentinel-1 patches under ``root`` (recursive), each by name, sorted.

    Raises:
        DataNotFoundError: ``root`` is not a folder or holds no ``*_labels_metadata.json``.
        LabelError: a metadata file is not JSON or lacks ``labels``.
    """
    if not root.is_dir():
        raise DataNotFoundError(f"{key} {str(root)!r} is not a folder; point {key} at a "
                                "folder of BigEarthNet patch folders (relative to the config)")
    metas = sorted(_metadata_files(root), key=lambda p: (p.name, str(p)))
    if not metas:
        raise DataNotFoundError(f"{key} {str(root)!r} holds no *{META_SUFFIX} file; point "
                                f"{key} at a folder of BigEarthNet-S2/-S1 patch folders "
                                "(<patch>/<patch>_labels_metadata.json)")
    s2: dict[str, Patch] = {}
    s1: dict[str, Patch] = {}
    for path in metas:
        patch = _load_meta(path)
        into = s2 if patch.s2_partner is None else s1
        if patch.name in into:
            warnings.warn(f"{key}: patch {patch.name!r} found twice ({str(patch.folder)!r} and "
                          f"{str(into[patch.name].folder)!r}); the first is used", stacklevel=2)
            continue
        into[patch.name] = patch
    return s2, s1


def s1_partners(s1: dict[str, Patch], key: str = "dataset.root") -> dict[str, Patch]:
    """S2 name -> its Sentinel-1 patch (the first by S1 name when several claim one)."""
    out: dict[str, Patch] = {}
    for patch in s1.values():
        partner = str(patch.s2_partner)
        if partner in out:
            warnings.warn(f"{key}: S1 patches {out[partner].name!r} and {patch.name!r} both "
                          f"pair with S2 patch {partner!r}; the first is used", stacklevel=2)
            continue
        out[partner] = patch
    return out


@dataclass(frozen=True)
class Footprint:
    """CRS and centre (in that CRS) of a patch, from one of its GeoTIFFs."""

    crs: str
    centre: tuple[float, float]


def read_band(patch: Patch, band: str, native_side: int, method: str, out: np.ndarray
              ) -> Footprint:
    """Read ``band`` onto the ``SIDE`` x ``SIDE`` grid into ``out`` (float32, as stored).

    Args:
        patch: the patch folder.
        band: the band name (file suffix).
        native_side: the side in pixels the file must have (120, 60 or 20).
        method: rasterio resampling name, used when ``native_side`` is not ``SIDE``.
        out: float32 (SIDE, SIDE) destination.

    Raises:
        DataNotFoundError: the band file is missing.
        RasterError: unreadable file, more than one band, other size, or no CRS.
    """
    path = patch.band_file(band)
    if not path.is_file():
        raise DataNotFoundError(f"patch folder {str(patch.folder)!r} lacks band {band} "
                                f"({path.name}); restore the file or remove the patch folder")
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise RasterError(f"{str(path)!r} is not a readable GeoTIFF ({exc}); restore the file "
                          "or remove its patch folder") from None
    with src:
        if src.count != 1 or (src.height, src.width) != (native_side, native_side):
            raise RasterError(
                f"{str(path)!r} has {src.count} band(s) of {src.height} x {src.width} px; "
                f"BigEarthNet band {band} is 1 band of {native_side} x {native_side} px; restore "
                "the original file or remove the patch folder"
            )
        if src.crs is None:
            raise RasterError(f"{str(path)!r} has no CRS; BigEarthNet patches are "
                              "georeferenced (UTM); restore the original file")
        out[...] = src.read(1, out_shape=(SIDE, SIDE), out_dtype="float32",
                            resampling=Resampling[method])
        box = src.bounds
        return Footprint(src.crs.to_string(), ((box.left + box.right) / 2,
                                               (box.bottom + box.top) / 2))
