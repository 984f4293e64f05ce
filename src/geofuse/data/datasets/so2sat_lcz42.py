"""So2Sat LCZ42 HDF5 file (training/validation/testing or a subset) -> a PatchSet.

Layout (Zhu et al. 2020, So2Sat LCZ42): ``sen1`` (N, 32, 32, 8) and ``sen2`` (N, 32, 32, 10)
float64 patches, channels last, and ``label`` (N, 17) one-hot over LCZ 1-10 and A-G. Sentinel-1
and Sentinel-2 become the modalities ``s1`` and ``s2`` with the band names of :data:`MODALITIES`;
values are kept as stored (S2 is already reflectance, S1 the complex/intensity values).

- Streaming: the file is read in chunks of contiguous patches (one hyperslab per key), converted
  to float32 channels-first and written into the output array, so no more than one chunk of raw
  float64 values is held at a time (the real training file is ~50 GB). ``dataset.max_memory_mb``
  bounds the chunk buffer plus the kept patches; more patches than that raises and asks for
  ``dataset.max_patches`` (a seeded class-stratified choice, kept in file order).
- Groups: the file is ordered by city, so groups are contiguous index blocks,
  ``block:<index // dataset.block_size>`` (neighbouring patches never straddle splits or folds).
- ``coords`` holds (index in the file, 0); ``crs`` is empty (the file has no georeference).
- Only classes present among the kept patches are listed, named as in
  :data:`geofuse.data.datasets.so2sat_lcz.LCZ_NAMES`; provenance lists their LCZ codes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from geofuse._config_base import ModalityConfig
from geofuse.data.datasets.so2sat_lcz import LCZ_NAMES
from geofuse.data.patchset import PatchSet
from geofuse.errors import ConfigError, DataNotFoundError, LabelError, RasterError

if TYPE_CHECKING:
    from geofuse.config import StudyConfig
    from geofuse.config_dataset import DatasetConfig

#: Channels of ``sen1`` as documented with the dataset (1-8), then of ``sen2``.
S1_BANDS = ["VH_real", "VH_imag", "VV_real", "VV_imag", "VH_lee", "VV_lee",
            "VHVV_cov_real", "VHVV_cov_imag"]
S2_BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
#: Modality -> its band names in the file's channel order.
MODALITIES: dict[str, list[str]] = {"s1": S1_BANDS, "s2": S2_BANDS}
#: Modality -> (HDF5 key, sensor catalogue key).
KEYS = {"s1": ("sen1", "sentinel1"), "s2": ("sen2", "sentinel2")}
LABEL_KEY = "label"
SIDE = 32
#: The 17 LCZ classes in the one-hot column order (LCZ 1-10, then A-G as 11-17).
CLASS_NAMES = [LCZ_NAMES[k] for k in range(1, 18)]
_CHUNK_CAP = 64 * 2**20  # at most this many bytes of raw float64 read at once


def dataset_modalities(d: DatasetConfig) -> list[ModalityConfig]:
    """The ``s1`` and ``s2`` modalities after the ``dataset.bands`` selection.

    Raises:
        ConfigError: an unknown modality or band name in ``dataset.bands``, or an empty list.
    """
    bands = selected_bands(d.bands)
    return [ModalityConfig(name=m, files=[str(d.root)], bands=b, sensor=KEYS[m][1])
            for m, b in bands.items()]


def selected_bands(bands: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """Modality -> bands to read (every band of a modality ``bands`` does not name)."""
    chosen = {m: list(b) for m, b in (bands or {}).items()}
    for m, names in chosen.items():
        if m not in MODALITIES:
            raise ConfigError(f"dataset.bands names modality {m!r}, which so2sat_lcz42 lacks; "
                              f"use {list(MODALITIES)}")
        bad = [b for b in names if b not in MODALITIES[m]]
        if bad:
            raise ConfigError(f"dataset.bands.{m} names band(s) {bad} that so2sat_lcz42 lacks; "
                              f"valid {m} bands: {MODALITIES[m]}")
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"dataset.bands.{m} = {names} must list each band once and at "
                              f"least one; valid {m} bands: {MODALITIES[m]}")
    return {m: chosen.get(m, MODALITIES[m]) for m in MODALITIES}


def open_lcz42(path: Path) -> h5py.File:
    """Open an LCZ42 file read-only after checking its keys and shapes.

    Raises:
        DataNotFoundError: the file is missing, not HDF5, or lacks a key.
        RasterError: a key has the wrong shape or the keys disagree on the number of patches.
    """
    if not path.is_file():
        raise DataNotFoundError(f"dataset file {str(path)!r} does not exist; set dataset.root "
                                "(or test_root) to an So2Sat LCZ42 .h5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataNotFoundError(f"dataset file {str(path)!r} is not a readable HDF5 file "
                                f"({e}); point dataset.root to an So2Sat LCZ42 .h5 file") from None
    try:
        _check_layout(f, path)
    except Exception:
        f.close()
        raise
    return f


def _check_layout(f: h5py.File, path: Path) -> None:
    want = {"sen1": len(S1_BANDS), "sen2": len(S2_BANDS), LABEL_KEY: len(CLASS_NAMES)}
    missing = [k for k in want if not isinstance(f.get(k), h5py.Dataset)]
    if missing:
        raise DataNotFoundError(f"{str(path)!r} lacks the dataset key(s) {missing} (it has "
                                f"{sorted(f.keys())}); an So2Sat LCZ42 file holds sen1, sen2 "
                                "and label")
    n = f[LABEL_KEY].shape[0]
    for key, channels in want.items():
        shape = f[key].shape
        expected = (n, channels) if key == LABEL_KEY else (n, SIDE, SIDE, channels)
        if shape != expected:
            raise RasterError(f"{str(path)!r}: {key} has shape {shape}, expected {expected} "
                              "(So2Sat LCZ42 layout: sen1 N x 32 x 32 x 8, sen2 N x 32 x 32 x "
                              "10, label N x 17 one-hot); use a file in that layout")
    if n == 0:
        raise RasterError(f"{str(path)!r} holds no patch (label has 0 rows); use a non-empty "
                          "So2Sat LCZ42 file")


def chunk_patches(max_memory_mb: float, channels: int = max(len(S1_BANDS), len(S2_BANDS))
                  ) -> int:
    """Patches per read: raw float64 of one key within min(64 MiB, a sixth of the budget)."""
    budget = min(_CHUNK_CAP, int(max_memory_mb * 2**20) // 6)
    return max(1, budget // (SIDE * SIDE * channels * 8))


def read_labels(f: h5py.File, path: Path, chunk: int) -> np.ndarray:
    """Class index (0-16) of every patch, read in chunks; checks that labels are one-hot.

    Raises:
        LabelError: a row is not one-hot (values other than 0/1 or a sum other than 1).
    """
    ds = f[LABEL_KEY]
    out = np.empty(ds.shape[0], dtype=np.int64)
    step = chunk * 256  # 17 float64 a row: ~a third of a chunk of patches
    for a in range(0, len(out), step):
        rows = np.asarray(ds[a:a + step], dtype=np.float64)
        bad = ~(np.isin(rows, (0.0, 1.0)).all(axis=1) & (rows.sum(axis=1) == 1))
        if bad.any():
            i = a + int(np.argmax(bad))
            raise LabelError(f"{str(path)!r}: label row {i} is not one-hot ({rows[i - a]}, sum "
                             f"{rows[i - a].sum():g}); {int(bad.sum())} such row(s) in this "
                             "chunk. label must be N x 17 with a single 1 per row")
        out[a:a + len(rows)] = rows.argmax(axis=1)
    return out


def choose(y: np.ndarray, max_patches: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the kept patches: all, or a seeded class-stratified random choice.

    Each class keeps about its share of ``max_patches`` (at least one patch)."""
    n = len(y)
    if max_patches is None or max_patches >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = np.maximum(1, np.floor(counts * max_patches / n)).astype(int)
    rest = max_patches - int(quota.sum())
    if rest > 0:  # largest remainders first
        frac = counts * max_patches / n - np.floor(counts * max_patches / n)
        for k in np.argsort(-frac)[:rest]:
            quota[k] = min(counts[k], quota[k] + 1)
    picks = [rng.choice(np.flatnonzero(y == c), q, replace=False)
             for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(picks))


def iter_chunks(f: h5py.File, bands: dict[str, list[str]], index: np.ndarray, chunk: int,
                crop: slice = slice(None)) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(offset into index, float32 (n, C, P, P))`` for the patches ``index`` (sorted).

    Each step reads one contiguous hyperslab of at most ``chunk`` file patches per key and
    casts it into the block, so memory stays at about one chunk of raw values (plus its subset
    copy and the float32 block) whatever the file size."""
    channels = sum(map(len, bands.values()))
    side = len(range(SIDE)[crop])
    start = 0
    while start < len(index):
        lo = int(index[start])
        stop = int(np.searchsorted(index, lo + chunk, side="left"))
        hi = int(index[stop - 1]) + 1
        rel = index[start:stop] - lo
        block = np.empty((stop - start, channels, side, side), dtype=np.float32)
        c = 0
        for m, names in bands.items():
            raw = f[KEYS[m][0]][lo:hi]  # (span, 32, 32, C) float64
            if len(rel) != len(raw):
                raw = raw[rel]
            chans = [MODALITIES[m].index(b) for b in names]
            run = chans == list(range(chans[0], chans[0] + len(chans)))
            sel = raw[:, crop, crop, chans[0]:chans[0] + len(chans)] if run else raw[
                :, crop, crop][..., chans]
            block[:, c:c + len(chans)] = sel.transpose(0, 3, 1, 2)  # one strided cast
            c += len(chans)
            del raw, sel
        yield start, block
        start = stop


def _patch_size(cfg: StudyConfig) -> int:
    """extract.patch_size when the config sets it, else the file's 32."""
    return cfg.extract.patch_size if "patch_size" in cfg.extract.model_fields_set else SIDE


def _check_budget(path: Path, n: int, channels: int, size: int, chunk: int,
                  max_memory_mb: int) -> None:
    raw = chunk * SIDE * SIDE * max(map(len, MODALITIES.values())) * 8
    need = n * channels * size * size * 4 + 3 * raw  # kept + raw, its subset, the block
    if need > max_memory_mb * 2**20:
        fit = max(1, (max_memory_mb * 2**20 // 2) // (channels * size * size * 4))
        raise ConfigError(
            f"{str(path)!r}: {n} patches of {channels} x {size} x {size} float32 need "
            f"{need / 2**20:,.0f} MB, over dataset.max_memory_mb = {max_memory_mb}; set "
            f"dataset.max_patches (e.g. {fit}) or raise dataset.max_memory_mb"
        )


def load_so2sat_lcz42(
    path: str | Path,
    bands: dict[str, list[str]] | None = None,
    *,
    max_patches: int | None = None,
    block_size: int = 1000,
    max_memory_mb: int = 4096,
    seed: int = 42,
    patch_size: int = SIDE,
) -> PatchSet:
    """Read an So2Sat LCZ42 file into a PatchSet (see the module docstring).

    Args:
        path: the ``.h5`` file.
        bands: band subset per modality (default every band of ``s1`` and ``s2``).
        max_patches: keep at most this many patches (seeded, class-stratified, file order).
        block_size: patches per group (``block:<index // block_size>``).
        max_memory_mb: budget of the kept float32 patches plus one chunk of raw values.
        seed: seed of the ``max_patches`` choice.
        patch_size: side of the kept patch (a centre crop of the 32 x 32 patch).

    Raises:
        DataNotFoundError: missing or unreadable file, missing key.
        RasterError: wrong shapes.
        LabelError: labels that are not one-hot.
        ConfigError: unknown bands, patch_size over 32, or over the memory budget.
    """
    path = Path(path)
    chosen = selected_bands(bands)
    if not 1 <= patch_size <= SIDE:
        raise ConfigError(f"extract.patch_size = {patch_size} is outside 1..{SIDE}, the side of "
                          f"the patches of {str(path)!r}; set it to {SIDE} or less (smaller "
                          "sizes keep the patch centre)")
    a = (SIDE - patch_size) // 2
    crop = slice(a, a + patch_size)
    chunk = chunk_patches(max_memory_mb)
    with open_lcz42(path) as f:
        y_all = read_labels(f, path, chunk)
        index = choose(y_all, max_patches, seed)
        channels = sum(map(len, chosen.values()))
        _check_budget(path, len(index), channels, patch_size, chunk, max_memory_mb)
        x = np.empty((len(index), channels, patch_size, patch_size), dtype=np.float32)
        nodata = np.empty(len(index), dtype=np.float32)
        for start, block in iter_chunks(f, chosen, index, chunk, crop):
            x[start:start + len(block)] = block
            nodata[start:start + len(block)] = np.isnan(block).any(axis=1).mean(axis=(1, 2))
    codes = y_all[index]
    present = np.unique(codes)
    return PatchSet(
        x=x, y=np.searchsorted(present, codes),
        band_names=[b for names in chosen.values() for b in names], modalities=chosen,
        class_names=[CLASS_NAMES[k] for k in present],
        groups=np.char.add("block:", (index // block_size).astype(str)),
        coords=np.stack([index, np.zeros(len(index))], axis=1),
        nodata_fraction=nodata,
        provenance=_provenance(path, len(y_all), index, present, chosen, block_size,
                               max_patches, patch_size, chunk),
    )


def _provenance(path: Path, n_file: int, index: np.ndarray, present: np.ndarray,
                bands: dict[str, list[str]], block_size: int, max_patches: int | None,
                patch_size: int, chunk: int) -> dict[str, Any]:
    return {
        "dataset": "so2sat_lcz42", "file": str(path.resolve()), "patches_in_file": n_file,
        "patches": len(index), "max_patches": max_patches,
        "selection": "all" if len(index) == n_file else "class-stratified random (seeded)",
        "coords": "(index of the patch in the file, 0)", "block_size": block_size,
        "lcz_codes": {CLASS_NAMES[k]: int(k) + 1 for k in present}, "bands": bands,
        "hdf5_keys": {m: KEYS[m][0] for m in bands} | {"label": LABEL_KEY},
        "patch_size": patch_size, "chunk_patches": chunk,
    }


def read_so2sat_lcz42(d: DatasetConfig, root: Path, cfg: StudyConfig, external: bool
                      ) -> PatchSet:
    """The :data:`geofuse.data.datasets.build.Reader` of ``so2sat_lcz42``: ``root`` (or the
    test file when ``external``) with the dataset section's bands, cap, blocks and budget."""
    return load_so2sat_lcz42(root, d.bands, max_patches=d.max_patches, block_size=d.block_size,
                             max_memory_mb=d.max_memory_mb, seed=cfg.seed,
                             patch_size=_patch_size(cfg))


def write_synthetic_lcz42(path: str | Path, n: int, classes: Sequence[int] = (0, 3, 10, 16),
                          seed: int = 0, chunk: int = 2048) -> Path:
    """Write an LCZ42-layout file of ``n`` patches (for tests and benchmarks), in chunks.

    Same keys, shapes and dtypes as the real files (float64, no HDF5 chunking). Labels cycle
    through ``classes`` (0-based one-hot columns) in runs of 50 patches, like cities of a few
    zones; every band carries a class-dependent offset plus noise, so the classes are learnable.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        ds = {k: f.create_dataset(k, (n, SIDE, SIDE, len(MODALITIES[m])), dtype="f8")
              for m, (k, _) in KEYS.items()}
        label = f.create_dataset(LABEL_KEY, (n, len(CLASS_NAMES)), dtype="f8")
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            y = np.asarray(classes)[(np.arange(a, b) // 50) % len(classes)]
            label[a:b] = np.eye(len(CLASS_NAMES))[y]
            for m, (k, _) in KEYS.items():
                c = len(MODALITIES[m])
                signal = (y[:, None] + 1) * (np.arange(c) + 1)[None] / (20.0 * len(CLASS_NAMES))
                noise = rng.normal(0.0, 0.02, (b - a, SIDE, SIDE, c))
                ds[k][a:b] = signal[:, None, None, :] + noise
    return path


__all__: Sequence[str] = ["CLASS_NAMES", "MODALITIES", "dataset_modalities", "iter_chunks",
                          "load_so2sat_lcz42", "read_so2sat_lcz42", "write_synthetic_lcz42"]
