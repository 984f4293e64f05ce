"""EuroSAT-MS: class-named folders of 13-band Sentinel-2 L1C GeoTIFFs -> a PatchSet.

Layout: ``<root>/<ClassName>/<ClassName>_<k>.tif``, each 64 x 64 px at 10 m, uint16 digital
numbers (L1C top-of-atmosphere reflectance x 10000), georeferenced in the image's UTM zone.

- Band order: the files carry no band descriptions; EuroSAT stores B01-B12 then B8A (the
  red-edge band 8A comes last, not after B08). The order is checked against spectral
  signatures by ``tests/test_eurosat_ms.py`` (water: NIR B08 below green B03; forest and
  pasture: B08 several times red B04; B8A tracks B08; cirrus B10 near zero over land).
- One modality ``s2`` with bands ``B01`` ... ``B12``, ``B8A`` (``dataset.bands: {s2: [...]}``
  picks a subset by name; unpadded names such as ``B2`` are accepted), physical value = DN x 1e-4.
- ``extract.patch_size`` below 64 centre-crops every image; above 64 raises.
- Groups: each image centre is reprojected into one equal-area CRS (EPSG:3035, LAEA Europe;
  ``coords`` are these centres) and binned into square blocks of ``dataset.block_size_m``
  (group ``block:<bx>_<by>``); blocks holding images whose footprints overlap are merged, so
  overlapping or neighbouring images never straddle a split or fold.
- A ``test_root`` in the same layout is the external test set; its class folders must be
  class folders of ``root`` (classes it lacks are simply absent from the test set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.warp import transform as warp_transform
from scipy.spatial import cKDTree

from geofuse._config_base import ModalityConfig
from geofuse.config import StudyConfig
from geofuse.config_dataset import DatasetConfig
from geofuse.data.patchset import PatchSet
from geofuse.errors import BandError, ConfigError, DataNotFoundError, RasterError

MODALITY = "s2"
#: Band order as stored in the EuroSAT-MS GeoTIFFs (B8A last).
BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10",
                          "B11", "B12", "B8A")
SCALE = 1e-4
SIDE = 64
COMMON_CRS = "EPSG:3035"
SUFFIXES = (".tif", ".tiff")


def _canonical(name: str) -> str:
    """``B2`` -> ``B02`` (EuroSAT spelling); other names unchanged."""
    if len(name) == 2 and name[0] == "B" and name[1].isdigit():
        return f"B0{name[1]}"
    return name


def selected_bands(d: DatasetConfig) -> list[str]:
    """The ``s2`` bands after ``dataset.bands`` (default all 13, stored order).

    Raises:
        BandError: an unknown modality or band name in ``dataset.bands``.
    """
    if not d.bands:
        return list(BANDS)
    unknown_mod = [m for m in d.bands if m != MODALITY]
    if unknown_mod:
        raise BandError(f"dataset.bands names modality {unknown_mod[0]!r}; eurosat_ms has only "
                        f"{MODALITY!r}: write dataset.bands: {{{MODALITY}: [B02, B03, B04, B08]}}")
    wanted = d.bands.get(MODALITY) or list(BANDS)
    out = [_canonical(b) for b in wanted]
    for given, name in zip(wanted, out, strict=True):
        if name not in BANDS:
            raise BandError(f"dataset.bands.{MODALITY}: unknown band {given!r}; eurosat_ms "
                            f"bands are {', '.join(BANDS)}; fix dataset.bands")
    if len(set(out)) != len(out):
        raise BandError(f"dataset.bands.{MODALITY} repeats a band: {wanted}; list each once")
    return out


def dataset_modalities(d: DatasetConfig) -> list[ModalityConfig]:
    """The one modality ``s2`` (see :data:`geofuse.data.datasets.build.Modalities`)."""
    root = str(d.root).rstrip("/")
    return [ModalityConfig(name=MODALITY, files=[f"{root}/*/*.tif"], bands=selected_bands(d),
                           sensor="sentinel2", scale=SCALE)]


def class_folders(root: Path, key: str = "dataset.root") -> dict[str, list[Path]]:
    """Class name -> its sorted GeoTIFFs, for every sub-folder that holds any.

    Raises:
        DataNotFoundError: ``root`` missing, not a folder, or without class folders of tifs.
    """
    if not root.is_dir():
        raise DataNotFoundError(f"{key} {str(root)!r} is not a folder; point {key} at the "
                                "EuroSAT-MS folder of class folders (relative to the config)")
    out = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        tifs = sorted(p for p in sub.iterdir() if p.suffix.lower() in SUFFIXES)
        if tifs:
            out[sub.name] = tifs
    if not out:
        raise DataNotFoundError(f"{key} {str(root)!r} has no class folders with .tif files; "
                                "expected <root>/<ClassName>/*.tif (e.g. .../eurosat_ms/train)")
    return out


def _crop(patch_size: int) -> slice:
    if not 1 <= patch_size <= SIDE:
        raise ConfigError(f"extract.patch_size = {patch_size}: EuroSAT-MS images are {SIDE} x "
                          f"{SIDE} px; set extract.patch_size to {SIDE} or less (centre crop)")
    start = (SIDE - patch_size) // 2
    return slice(start, start + patch_size)


def _read_one(path: Path, indexes: list[int], crop: slice
              ) -> tuple[np.ndarray, str, tuple[float, float], float]:
    """Selected bands (DN, cropped), CRS, centre (native CRS) and pixel size of one image."""
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise RasterError(f"{str(path)!r} is not a readable GeoTIFF ({exc}); remove or "
                          "replace it") from exc
    with src:
        if src.count != len(BANDS) or (src.height, src.width) != (SIDE, SIDE):
            raise RasterError(
                f"{str(path)!r} has {src.count} band(s) of {src.height} x {src.width} px; "
                f"EuroSAT-MS images have {len(BANDS)} bands ({', '.join(BANDS)}) of {SIDE} x "
                f"{SIDE} px; remove the file or replace it with a EuroSAT-MS tif"
            )
        if src.crs is None:
            raise RasterError(f"{str(path)!r} has no CRS; EuroSAT-MS images are georeferenced "
                              "(UTM); replace the file with the original")
        data = src.read(indexes)[:, crop, crop]
        centre = src.transform * (src.width / 2, src.height / 2)
        return data, src.crs.to_string(), (float(centre[0]), float(centre[1])), abs(src.res[0])


def to_common(crss: list[str], centres: np.ndarray) -> np.ndarray:
    """Centres (N, 2) in their own CRS -> (N, 2) in :data:`COMMON_CRS`."""
    out = np.empty_like(centres)
    arr = np.array(crss)
    for crs in sorted(set(crss)):
        sel = arr == crs
        xs, ys = warp_transform(crs, COMMON_CRS, centres[sel, 0].tolist(),
                                centres[sel, 1].tolist())
        out[sel, 0], out[sel, 1] = xs, ys
    return out


def block_groups(xy: np.ndarray, block_size: float, footprint: float) -> np.ndarray:
    """``block:<bx>_<by>`` per centre; blocks with overlapping footprints are merged.

    Args:
        xy: (N, 2) centres in a metric CRS.
        block_size: block side in metres.
        footprint: image side in metres; two images whose centres are closer than this (in
            x and y) overlap, and their blocks join (the name of the first block is kept).
    """
    keys = [f"{int(bx)}_{int(by)}" for bx, by in np.floor(xy / block_size).astype(np.int64)]
    parent = {k: k for k in keys}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, j in sorted(cKDTree(xy).query_pairs(footprint, p=np.inf)):
        a, b = find(keys[i]), find(keys[j])
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([f"block:{find(k)}" for k in keys])


def _check_test_classes(d: DatasetConfig, root: Path, cfg: StudyConfig,
                        classes: list[str]) -> None:
    train_root = cfg.resolve(str(d.root))
    known = sorted(p.name for p in train_root.iterdir() if p.is_dir()) if (
        train_root.is_dir()) else []
    extra = [c for c in classes if c not in known]
    if extra:
        raise DataNotFoundError(
            f"dataset.test_root {str(root)!r} has class folder(s) {extra} that dataset.root "
            f"lacks (its classes: {known}); rename or remove them (classes match by name)"
        )


def read_eurosat_ms(d: DatasetConfig, root: Path, cfg: StudyConfig, external: bool
                    ) -> PatchSet:
    """Read a EuroSAT-MS folder (see the module docstring and :data:`build.Reader`).

    Raises:
        DataNotFoundError: the folder is missing, has no class folders of tifs, or (as a test
            root) has classes the training root lacks.
        RasterError: an unreadable tif, or one with another band count, size or no CRS.
        BandError: an unknown name in ``dataset.bands``.
        ConfigError: ``extract.patch_size`` above 64.
    """
    key = "dataset.test_root" if external else "dataset.root"
    bands = selected_bands(d)
    crop = _crop(cfg.extract.patch_size)
    folders = class_folders(root, key)
    classes = list(folders)
    if external:
        _check_test_classes(d, root, cfg, classes)
    indexes = [BANDS.index(b) + 1 for b in bands]
    xs, ys, crss, centres, files = [], [], [], [], []
    res = 0.0
    for k, name in enumerate(classes):
        for path in folders[name]:
            data, crs, centre, res = _read_one(path, indexes, crop)
            xs.append(data)
            ys.append(k)
            crss.append(crs)
            centres.append(centre)
            files.append(str(path.relative_to(root)))
    x = np.stack(xs).astype(np.float32) * np.float32(SCALE)
    coords = to_common(crss, np.array(centres, dtype=np.float64))
    groups = block_groups(coords, d.block_size_m, SIDE * res)
    provenance: dict[str, Any] = {
        "dataset": "eurosat_ms", "root": str(root.resolve()), "band_order": list(BANDS),
        "bands": bands, "scale": SCALE, "patch_size": cfg.extract.patch_size,
        "native_side_px": SIDE, "common_crs": COMMON_CRS, "block_size_m": d.block_size_m,
        "blocks": len(set(groups.tolist())), "source_crs": sorted(set(crss)),
        "per_class": {c: len(folders[c]) for c in classes}, "files": files,
    }
    return PatchSet(
        x=x, y=np.array(ys), band_names=bands, modalities={MODALITY: bands},
        class_names=classes, groups=groups, coords=coords, crs=COMMON_CRS,
        provenance=provenance,
    )
