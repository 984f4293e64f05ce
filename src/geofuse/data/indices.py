"""Spectral and radar indices as extra bands of a PatchSet.

A modality ``s2`` with ``indices: [NDVI, NDBI]`` gets a companion modality ``s2_idx`` with the
bands ``s2_NDVI`` and ``s2_NDBI``, computed at extract time from the PatchSet's physical values
(reflectance 0-1 for Sentinel-2 after ``scale``). "Does NDVI add anything over the raw bands?"
is then a sensor ablation: ``ablation.sensors: [[s2], [s2, s2_idx]]``.

Every index is a ratio: a zero or non-finite denominator gives NaN, a NaN input (nodata) gives
NaN, and the result is float32. Bands are found by name (case-insensitive):

============  =============================================================
role          names
============  =============================================================
blue          B2, B02, ``*_B2``, ``*_B02``, ``*_B`` (So2Sat-POP ``summer_B``)
green         B3, B03, ``*_B3``, ``*_B03``, ``*_G``
red           B4, B04, ``*_B4``, ``*_B04``, ``*_R``
nir           B8, B08, ``*_B8``, ``*_B08`` (not B8A)
swir1         B11, ``*_B11``
swir2         B12, ``*_B12``
vv, vh        a name with a VV / VH token (``VV``, ``s1_VV``, ``VV_lee``); the Lee-filtered
              intensities of So2Sat LCZ42 (``VV_lee``, ``VH_lee``) are preferred, real and
              imaginary parts (``*_real``, ``*_imag``) are never used
============  =============================================================

Sentinel-1 indices need linear power. When any finite VV/VH value of a modality is negative
(impossible for power), the modality is taken to be in dB and converted with 10^(dB/10) first;
the provenance records it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from geofuse.errors import ConfigError

#: Index name -> (roles in formula order, formula as text).
FORMULAS: dict[str, tuple[tuple[str, ...], str]] = {
    "NDVI": (("nir", "red"), "(NIR - RED) / (NIR + RED)"),
    "NDWI": (("green", "nir"), "(GREEN - NIR) / (GREEN + NIR)  (McFeeters 1996)"),
    "NDBI": (("swir1", "nir"), "(SWIR1 - NIR) / (SWIR1 + NIR)"),
    "SAVI": (("nir", "red"), "1.5 * (NIR - RED) / (NIR + RED + 0.5)  (L = 0.5)"),
    "EVI": (("nir", "red", "blue"),
            "2.5 * (NIR - RED) / (NIR + 6 * RED - 7.5 * BLUE + 1)  (G=2.5, C1=6, C2=7.5, L=1)"),
    "NBR": (("nir", "swir2"), "(NIR - SWIR2) / (NIR + SWIR2)"),
    "RVI": (("vv", "vh"), "4 * VH / (VV + VH)  (linear power; the So2Sat LCZ42 notebook)"),
    "VV_VH_RATIO": (("vv", "vh"), "VV / VH  (linear power)"),
}
INDEX_NAMES: tuple[str, ...] = tuple(FORMULAS)
_RADAR = {"vv", "vh"}

#: Role -> (exact names, name suffixes), lower case.
_OPTICAL: dict[str, tuple[set[str], tuple[str, ...]]] = {
    "blue": ({"b2", "b02"}, ("_b2", "_b02", "_b")),
    "green": ({"b3", "b03"}, ("_b3", "_b03", "_g")),
    "red": ({"b4", "b04"}, ("_b4", "_b04", "_r")),
    "nir": ({"b8", "b08"}, ("_b8", "_b08")),
    "swir1": ({"b11"}, ("_b11",)),
    "swir2": ({"b12"}, ("_b12",)),
}
_HINTS = {
    "blue": "B2, B02 or *_B", "green": "B3, B03 or *_G", "red": "B4, B04 or *_R",
    "nir": "B8 or B08", "swir1": "B11", "swir2": "B12",
    "vv": "a name with VV, e.g. VV or VV_lee", "vh": "a name with VH, e.g. VH or VH_lee",
}
_COMPLEX_PARTS = {"real", "imag", "re", "im"}
#: Sensors whose band numbers mean other wavelengths than Sentinel-2's: role -> band number
#: (Landsat 8/9 OLI: the near infrared is B5, B8 is panchromatic; Landsat 4/5 TM and 7 ETM+:
#: red B3, near infrared B4, B6 thermal).
_NUMBERED: dict[str, dict[str, int]] = {
    "landsat8": {"blue": 2, "green": 3, "red": 4, "nir": 5, "swir1": 6, "swir2": 7},
    "landsat57": {"blue": 1, "green": 2, "red": 3, "nir": 4, "swir1": 5, "swir2": 7},
}


def find_band(bands: Sequence[str], role: str, sensor: str | None = None) -> str | None:
    """The band of ``bands`` that plays ``role`` (see the module table), or ``None``; with a
    ``sensor`` of :data:`_NUMBERED`, optical roles follow its band numbers (B5, SR_B5)."""
    lower = [b.lower() for b in bands]
    if sensor in _NUMBERED and role in _NUMBERED[sensor]:
        n = _NUMBERED[sensor][role]
        return next((bands[i] for i, name in enumerate(lower)
                     if name in (f"b{n}", f"b{n:02d}") or name.endswith((f"_b{n}", f"_b{n:02d}"))),
                    None)
    if role in _RADAR:
        tokens = [set(re.split(r"[_\-\s.]+", b)) for b in lower]
        found = [i for i, t in enumerate(tokens) if role in t and not t & _COMPLEX_PARTS]
        lee = [i for i in found if "lee" in tokens[i]]
        pick = (lee or found)[:1]
        return bands[pick[0]] if pick else None
    exact, suffixes = _OPTICAL[role]
    for i, name in enumerate(lower):
        if name in exact:
            return bands[i]
    for i, name in enumerate(lower):
        if name.endswith(suffixes):
            return bands[i]
    return None


def index_bands(modality: str, bands: Sequence[str], index: str, sensor: str | None = None
                ) -> dict[str, str]:
    """Role -> band name for one index of one modality (band numbers of ``sensor``, see
    :func:`find_band`).

    Raises:
        ConfigError: an unknown index, or a band the index needs is missing.
    """
    if index not in FORMULAS:
        raise ConfigError(f"modality {modality!r}: unknown index {index!r}; use one of "
                          f"{', '.join(INDEX_NAMES)}")
    out = {}
    for role in FORMULAS[index][0]:
        band = find_band(bands, role, sensor)
        if band is None:
            hint = _HINTS[role]
            if sensor in _NUMBERED and role in _NUMBERED[sensor]:
                n = _NUMBERED[sensor][role]
                hint = f"B{n} or *_B{n} for sensor {sensor}"
            elif role in _OPTICAL:
                hint += ("; Landsat bands: set the modality's sensor: landsat8 (8/9) or "
                         "landsat57 (4/5 TM, 7 ETM+)")
            raise ConfigError(
                f"modality {modality!r}: index {index} needs a {role} band ({hint}); "
                f"bands available: {list(bands)}; remove {index} from its indices or add the band"
            )
        out[role] = band
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.asarray(num / den, dtype=np.float64)
    out[(den == 0) | ~np.isfinite(den) | ~np.isfinite(out)] = np.nan
    return out


_COMPUTE: dict[str, Callable[..., np.ndarray]] = {
    "NDVI": lambda nir, red: _ratio(nir - red, nir + red),
    "NDWI": lambda green, nir: _ratio(green - nir, green + nir),
    "NDBI": lambda swir1, nir: _ratio(swir1 - nir, swir1 + nir),
    "SAVI": lambda nir, red: _ratio(1.5 * (nir - red), nir + red + 0.5),
    "EVI": lambda nir, red, blue: _ratio(2.5 * (nir - red), nir + 6 * red - 7.5 * blue + 1),
    "NBR": lambda nir, swir2: _ratio(nir - swir2, nir + swir2),
    "RVI": lambda vv, vh: _ratio(4 * vh, vv + vh),
    "VV_VH_RATIO": lambda vv, vh: _ratio(vv, vh),
}


def compute_index(index: str, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """One index from physical values per role (e.g. ``{"nir": ..., "red": ...}``), float32.

    Radar roles must already be linear power. NaN in any input gives NaN; a zero or
    non-finite denominator gives NaN.
    """
    roles = FORMULAS[index][0]
    args = [np.asarray(values[r], dtype=np.float64) for r in roles]
    return _COMPUTE[index](*args).astype(np.float32)


def index_modality(modality: str) -> str:
    """Name of the companion modality holding ``modality``'s indices."""
    return f"{modality}_idx"


def index_band(modality: str, index: str) -> str:
    """Band name of ``index`` computed from ``modality``."""
    return f"{modality}_{index}"


def _is_db(x: np.ndarray, channels: list[int]) -> bool:
    """Whether radar channels hold dB (any finite negative value; linear power is >= 0)."""
    for c in channels:
        band = x[:, c]
        if bool(np.any(band[np.isfinite(band)] < 0)):
            return True
    return False


def add_index_modalities(patches: Any, requests: Mapping[str, Sequence[str]],
                         sensors: Mapping[str, str | None] | None = None) -> Any:
    """``patches`` (a PatchSet) with one ``<modality>_idx`` modality per entry of ``requests``.

    Args:
        patches: the PatchSet (physical values, NaN = nodata).
        requests: modality name -> index names, e.g. ``{"s2": ["NDVI", "NDBI"]}``; empty lists
            are skipped.
        sensors: modality name -> its ``sensor`` (band numbers differ between sensors).

    Returns:
        A new PatchSet whose bands ``<modality>_<INDEX>`` are appended after the existing
        channels; ``provenance["indices"]`` records the formulas and the bands used.

    Raises:
        ConfigError: an unknown modality or index, or a missing band (see :func:`index_bands`).
    """
    requests = {m: list(ix) for m, ix in requests.items() if ix}
    if not requests:
        return patches
    new_x: list[np.ndarray] = []
    modalities = dict(patches.modalities)
    record: dict[str, Any] = {}
    for modality, indices in requests.items():
        if modality not in patches.modalities:
            raise ConfigError(f"indices requested for modality {modality!r}, which the PatchSet "
                              f"lacks; it has {list(patches.modalities)}")
        if index_modality(modality) in modalities:
            raise ConfigError(f"the PatchSet already has modality {index_modality(modality)!r}; "
                              "indices are added once, at extract time")
        bands = patches.modalities[modality]
        sensor = (sensors or {}).get(modality)
        plans = {ix: index_bands(modality, bands, ix, sensor) for ix in indices}
        used = {b for plan in plans.values() for b in plan.values()}
        chans = {b: patches.band_names.index(b) for b in used}
        radar = sorted({chans[b] for plan in plans.values() for r, b in plan.items()
                        if r in _RADAR})
        db = bool(radar) and _is_db(patches.x, radar)
        values: dict[str, np.ndarray] = {}
        for b, c in chans.items():
            v = patches.x[:, c].astype(np.float64)
            values[b] = 10.0 ** (v / 10.0) if db and c in radar else v
        for ix, plan in plans.items():
            new_x.append(compute_index(ix, {r: values[b] for r, b in plan.items()}))
        name = index_modality(modality)
        modalities[name] = [index_band(modality, ix) for ix in indices]
        record[name] = {
            "source": modality, "db_to_linear": db,
            "indices": {ix: {"formula": FORMULAS[ix][1], "bands": plan}
                        for ix, plan in plans.items()},
        }
    x = np.concatenate([patches.x, np.stack(new_x, axis=1)], axis=1)
    band_names = [b for bands in modalities.values() for b in bands]
    provenance = {**patches.provenance,
                  "indices": {**patches.provenance.get("indices", {}), **record}}
    return patches._replace(x=x, band_names=band_names, modalities=modalities,
                            provenance=provenance)
