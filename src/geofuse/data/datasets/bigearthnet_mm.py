"""BigEarthNet-MM: Sentinel-2 and Sentinel-1 patch folders with multi-label CORINE targets.

Layout (Sumbul et al. 2021, BigEarthNet-MM): ``BigEarthNet-S2*/<S2 name>/<S2 name>_<band>.tif``
(L2A uint16 digital numbers = surface reflectance x 10000; 10 m bands 120 x 120 px, 20 m bands
60 x 60, 60 m bands 20 x 20; no B10) and ``BigEarthNet-S1*/<S1 name>/<S1 name>_VV.tif, _VH.tif``
(float32 backscatter in dB, 120 x 120 px), each folder with ``<name>_labels_metadata.json``
(``labels``: 43-class CORINE names; S1 also ``corresponding_s2_patch``). ``dataset.root`` is
searched recursively for the JSON files.

- Modalities ``s2`` (bands :data:`S2_BANDS`, the official BigEarthNet order: by wavelength,
  B8A after B08; physical value = DN x 1e-4) and ``s1`` (``VV``, ``VH`` in dB, as stored).
  ``dataset.bands`` picks bands by name (``B2`` = ``B02``) and modalities: one left out is
  not read.
- Rows: with ``s2`` requested, one row per S2 patch (sorted by name); if ``s1`` is requested
  too, S2 patches without an S1 partner are skipped (a warning names how many). With only
  ``s1``, one row per S1 patch, paired or not. Labels come from the S2 JSON when S2 is read.
- The 20 m and 60 m bands are resampled onto the 10 m grid while reading, with
  ``dataset.resampling`` per band (default bilinear). ``extract.patch_size`` (default 120)
  below 120 centre-crops; above 120 raises.
- Targets: ``multi_hot`` over all classes of ``dataset.nomenclature`` (19 or 43, official
  order, so that a training and a test root agree); ``y`` is each patch's rarest label
  (:func:`geofuse.data.patchset.primary_labels`). Patches without any label of the
  nomenclature (possible with 19 classes) are dropped with a warning and counted in the
  provenance.
- Groups: patch centres reprojected to EPSG:3035 (``coords``) and binned into square blocks of
  ``dataset.block_size_m`` (``block:<bx>_<by>``); blocks of overlapping patches are merged.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from geofuse._config_base import ModalityConfig
from geofuse.data.datasets._bigearthnet_files import (
    SIDE,
    Footprint,
    Patch,
    find_patches,
    read_band,
    s1_partners,
)
from geofuse.data.datasets._bigearthnet_labels import class_names, multi_hot
from geofuse.data.datasets.eurosat_ms import COMMON_CRS, block_groups, to_common
from geofuse.data.patchset import PatchSet, primary_labels
from geofuse.errors import BandError, ConfigError, DataNotFoundError

if TYPE_CHECKING:
    from geofuse.config import StudyConfig
    from geofuse.config_dataset import DatasetConfig

#: Sentinel-2 bands in the order of the PatchSet (BigEarthNet's official channel order).
S2_BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                             "B09", "B11", "B12")
S1_BANDS: tuple[str, ...] = ("VV", "VH")
MODALITIES: dict[str, tuple[str, ...]] = {"s2": S2_BANDS, "s1": S1_BANDS}
#: Ground resolution (m) of each band as stored.
RESOLUTION_M: dict[str, int] = {"B01": 60, "B09": 60, "B05": 20, "B06": 20, "B07": 20,
                                "B8A": 20, "B11": 20, "B12": 20, "B02": 10, "B03": 10, "B04": 10,
                                "B08": 10, "VV": 10, "VH": 10}
SCALE: dict[str, float] = {"s2": 1e-4, "s1": 1.0}
SENSOR: dict[str, str] = {"s2": "sentinel2", "s1": "sentinel1"}
DEFAULT_RESAMPLING = "bilinear"
#: Patch side in metres (footprints closer than this overlap).
FOOTPRINT_M = 1200.0


def _canonical(name: str) -> str:
    """``B2`` -> ``B02``; other names unchanged."""
    if len(name) == 2 and name[0] == "B" and name[1].isdigit():
        return f"B0{name[1]}"
    return name


def selected_bands(d: DatasetConfig) -> dict[str, list[str]]:
    """Modality -> bands to read, in the order given (default: both, every band).

    Raises:
        BandError: an unknown modality or band, a repeated band, or an empty list.
    """
    if not d.bands:
        return {m: list(b) for m, b in MODALITIES.items()}
    out: dict[str, list[str]] = {}
    for m in MODALITIES:  # fixed modality order: s2, then s1
        if m in d.bands:
            out[m] = [_canonical(b) for b in d.bands[m]]
    for m, wanted in d.bands.items():
        if m not in MODALITIES:
            raise BandError(f"dataset.bands names modality {m!r}; bigearthnet_mm has "
                            f"{list(MODALITIES)}: write e.g. dataset.bands: {{s2: [B02, B03, "
                            "B04, B08], s1: [VV, VH]}")
        valid = MODALITIES[m]
        for given, name in zip(wanted, out[m], strict=True):
            if name not in valid:
                raise BandError(f"dataset.bands.{m}: unknown band {given!r}; bigearthnet_mm "
                                f"{m} bands are {', '.join(valid)}; fix dataset.bands")
        if not wanted or len(set(out[m])) != len(out[m]):
            raise BandError(f"dataset.bands.{m} = {wanted} must list each band once and at "
                            f"least one (or leave {m} out); {m} bands: {', '.join(valid)}")
    return out


def resampling_methods(d: DatasetConfig) -> dict[str, str]:
    """Band -> resampling method for every 20 m and 60 m band (``dataset.resampling``).

    Raises:
        BandError: ``dataset.resampling`` names an unknown band or a 10 m band.
    """
    given = {_canonical(b): m for b, m in d.resampling.items()}
    for raw in d.resampling:
        band = _canonical(raw)
        if band not in RESOLUTION_M:
            raise BandError(f"dataset.resampling names unknown band {raw!r}; bands resampled "
                            f"onto 10 m: {', '.join(b for b in S2_BANDS if RESOLUTION_M[b] > 10)}")
        if RESOLUTION_M[band] == 10:
            raise BandError(f"dataset.resampling names {raw!r}, a 10 m band that is read as "
                            "stored (never resampled); remove it from dataset.resampling")
    return {b: given.get(b, DEFAULT_RESAMPLING) for b in S2_BANDS if RESOLUTION_M[b] > 10}


def dataset_modalities(d: DatasetConfig) -> list[ModalityConfig]:
    """``s2`` and/or ``s1`` after ``dataset.bands`` (see :data:`build.Modalities`)."""
    root = str(d.root).rstrip("/")
    suffix = {"s2": "B*", "s1": "V[VH]"}
    return [ModalityConfig(name=m, files=[f"{root}/**/*_{suffix[m]}.tif"], bands=bands,
                           sensor=SENSOR[m], scale=SCALE[m])
            for m, bands in selected_bands(d).items()]


def _patch_size(cfg: StudyConfig) -> slice:
    """Centre crop of ``extract.patch_size`` (default: the whole 120 px patch)."""
    size = cfg.extract.patch_size if "patch_size" in cfg.extract.model_fields_set else SIDE
    if not 1 <= size <= SIDE:
        raise ConfigError(f"extract.patch_size = {size}: BigEarthNet patches are {SIDE} x "
                          f"{SIDE} px at 10 m; set extract.patch_size to {SIDE} or less "
                          "(centre crop)")
    start = (SIDE - size) // 2
    return slice(start, start + size)


def _rows(root: Path, key: str, modalities: list[str]
          ) -> tuple[list[tuple[Patch | None, Patch | None]], dict[str, int]]:
    """(S2 patch or None, S1 patch or None) per row, and counts for the provenance."""
    s2, s1 = find_patches(root, key)
    counts = {"s2_patches_found": len(s2), "s1_patches_found": len(s1), "skipped_without_s1": 0}
    if "s2" not in modalities:
        rows: list[tuple[Patch | None, Patch | None]] = [(None, p) for p in s1.values()]
        if not rows:
            raise DataNotFoundError(f"{key} {str(root)!r} holds no Sentinel-1 patch (JSON with "
                                    "corresponding_s2_patch); add the BigEarthNet-S1 folders or "
                                    "request s2 in dataset.bands")
        return rows, counts
    if not s2:
        raise DataNotFoundError(f"{key} {str(root)!r} holds no Sentinel-2 patch (only S1 "
                                "metadata); add the BigEarthNet-S2 folders or read only s1 "
                                "(dataset.bands: {s1: [VV, VH]})")
    partners = s1_partners(s1, key) if "s1" in modalities else {}
    rows = [(p, partners.get(name)) for name, p in s2.items()]
    if "s1" in modalities:
        counts["skipped_without_s1"] = sum(r[1] is None for r in rows)
        rows = [r for r in rows if r[1] is not None]
        if not rows:
            raise DataNotFoundError(f"{key} {str(root)!r}: none of its {len(s2)} S2 patches has "
                                    "an S1 partner (corresponding_s2_patch); add the "
                                    "BigEarthNet-S1 folders or read only s2 (dataset.bands: "
                                    "{s2: [...]})")
        if counts["skipped_without_s1"]:
            warnings.warn(f"{key} {str(root)!r}: skipped {counts['skipped_without_s1']} S2 "
                          "patch(es) without an S1 partner", stacklevel=3)
    return rows, counts


def _targets(rows: list[tuple[Patch | None, Patch | None]], nomenclature: int, key: str
             ) -> tuple[np.ndarray, np.ndarray]:
    """(multi-hot of every row, rows that keep at least one label)."""
    hot = np.stack([multi_hot(p.labels, nomenclature, p.meta)
                    for p in (a if a is not None else b for a, b in rows) if p is not None])
    keep = hot.any(axis=1)
    if not keep.any():
        raise DataNotFoundError(f"{key}: none of its {len(rows)} patches has a label of the "
                                f"{nomenclature}-class nomenclature; set dataset.nomenclature: 43")
    if not keep.all():
        warnings.warn(f"{key}: dropped {int((~keep).sum())} patch(es) without a label of the "
                      f"{nomenclature}-class nomenclature", stacklevel=3)
    return hot, keep


def _read_rows(rows: list[tuple[Patch | None, Patch | None]], bands: dict[str, list[str]],
               methods: dict[str, str], crop: slice) -> tuple[np.ndarray, list[Footprint]]:
    """float32 (N, C, P, P) physical values and one footprint per row."""
    size = len(range(SIDE)[crop])
    channels = sum(map(len, bands.values()))
    x = np.empty((len(rows), channels, size, size), dtype=np.float32)
    buf = np.empty((SIDE, SIDE), dtype=np.float32)
    feet: list[Footprint] = []
    for i, (p2, p1) in enumerate(rows):
        c, foot = 0, []
        for m, names in bands.items():
            patch = cast(Patch, p2 if m == "s2" else p1)  # _rows pairs every requested one
            for band in names:
                native = SIDE * 10 // RESOLUTION_M[band]
                foot.append(read_band(patch, band, native,
                                      methods.get(band, DEFAULT_RESAMPLING), buf))
                x[i, c] = buf[crop, crop] * np.float32(SCALE[m])
                c += 1
        feet.append(foot[0])
    return x, feet


def _choose(n: int, d: DatasetConfig, seed: int, channels: int, size: int, key: str
            ) -> np.ndarray:
    """Rows to read: all, or ``dataset.max_patches`` of them (seeded, in name order), within
    ``dataset.max_memory_mb`` of float32 patches.

    Raises:
        ConfigError: the patches to read exceed the memory budget.
    """
    chosen = np.arange(n)
    if d.max_patches is not None and d.max_patches < n:
        rng = np.random.default_rng([seed % 2**63, 31])
        chosen = np.sort(rng.choice(n, d.max_patches, replace=False))
    need_mb = len(chosen) * channels * size * size * 4 / 2**20
    if need_mb > d.max_memory_mb:
        fit = max(1, int(d.max_memory_mb * 2**20 // (channels * size * size * 4)))
        raise ConfigError(
            f"{key}: {len(chosen)} patches x {channels} bands x {size}^2 px take "
            f"{need_mb:,.0f} MB of float32, above dataset.max_memory_mb = {d.max_memory_mb}; "
            f"set dataset.max_patches to at most {fit} (or raise dataset.max_memory_mb)"
        )
    return chosen


def read_bigearthnet_mm(d: DatasetConfig, root: Path, cfg: StudyConfig, external: bool
                        ) -> PatchSet:
    """Read BigEarthNet patch folders (see the module docstring and :data:`build.Reader`).

    Raises:
        DataNotFoundError: no folder, no metadata, a missing band file, or no usable patch.
        LabelError: metadata without ``labels`` or with an unknown class name.
        RasterError: a band file of another size, unreadable or without CRS.
        BandError: an unknown name in ``dataset.bands`` or ``dataset.resampling``.
        ConfigError: ``extract.patch_size`` above 120.
    """
    key = "dataset.test_root" if external else "dataset.root"
    bands = selected_bands(d)
    methods = resampling_methods(d)
    crop = _patch_size(cfg)
    rows, counts = _rows(root, key, list(bands))
    hot, keep = _targets(rows, d.nomenclature, key)
    rows = [r for r, k in zip(rows, keep, strict=True) if k]
    hot = hot[keep]
    chosen = _choose(len(rows), d, cfg.seed, sum(map(len, bands.values())),
                     len(range(SIDE)[crop]), key)
    counts["available"] = len(rows)
    rows, hot = [rows[i] for i in chosen], hot[chosen]
    x, feet = _read_rows(rows, bands, methods, crop)
    crss = [f.crs for f in feet]
    coords = to_common(crss, np.array([f.centre for f in feet], dtype=np.float64))
    groups = block_groups(coords, d.block_size_m, FOOTPRINT_M)
    names = class_names(d.nomenclature)
    used = {b: m for b, m in methods.items() if b in bands.get("s2", [])}
    provenance: dict[str, Any] = {
        "dataset": "bigearthnet_mm", "root": str(root.resolve()),
        "nomenclature": d.nomenclature, "patches": len(rows), **counts,
        "dropped_without_label": int((~keep).sum()),
        "rows": "S2 patches" + (" with an S1 partner" if "s1" in bands else "")
        if "s2" in bands else "S1 patches",
        "labels_from": "S2 metadata" if "s2" in bands else "S1 metadata",
        "band_order": {m: list(MODALITIES[m]) for m in bands}, "bands": bands,
        "resolution_m": {b: RESOLUTION_M[b] for names_ in bands.values() for b in names_},
        "resampling": used, "scale": {m: SCALE[m] for m in bands},
        "patch_size": len(range(SIDE)[crop]), "native_side_px": SIDE,
        "common_crs": COMMON_CRS, "block_size_m": d.block_size_m,
        "blocks": len(set(groups.tolist())), "source_crs": sorted(set(crss)),
        "per_class": {c: int(n) for c, n in zip(names, hot.sum(axis=0), strict=True)},
    }
    return PatchSet(
        x=x, y=primary_labels(hot), band_names=[b for v in bands.values() for b in v],
        modalities=bands, class_names=names, groups=groups, coords=coords, crs=COMMON_CRS,
        provenance=provenance, multi_hot=hot,
    )
