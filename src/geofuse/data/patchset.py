"""PatchSet: patches with labels, band names, groups, coordinates, splits and provenance.

One compressed HDF5 file holds everything a training run needs; it loads back identically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from geofuse.errors import BandError, DataNotFoundError, write_error
from geofuse.io_utils import atomic_path

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
UNASSIGNED = 255
MASK_IGNORE = 255  #: mask value of unlabelled pixels (no loss, no metric)
FORMAT_VERSION = 1
_WRITE_CHUNK = 16 * 2**20  # bytes per write() call when saving


def class_totals(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Patches per class: a bincount of class indices (N,) or column sums of multi-hot (N, K)."""
    t = np.asarray(targets)
    if t.ndim == 2:
        return t.sum(axis=0, dtype=np.int64)
    return np.bincount(t.astype(np.int64), minlength=num_classes)


def temporal_band_names(bands: list[str], timestamps: list[str]) -> list[str]:
    """Channel names of a time series stacked time-major: ``B02@2018``, ``B03@2018``, ..."""
    return [f"{band}@{stamp}" for stamp in timestamps for band in bands]


def primary_labels(multi_hot: np.ndarray) -> np.ndarray:
    """Each patch's rarest present label (ties: the lower index); -1 for a patch without any.

    Rarity is the label's frequency over all rows, so that grids and per-class views show
    the rare classes of multi-label patches and not only the ubiquitous ones.
    """
    m = np.asarray(multi_hot, dtype=bool)
    if m.size == 0:
        return np.zeros(len(m), dtype=np.int64)
    freq = m.sum(axis=0).astype(np.float64)
    score = np.where(m, freq[None, :], np.inf)
    out = score.argmin(axis=1).astype(np.int64)
    out[~m.any(axis=1)] = -1
    return out


@dataclass
class PatchSet:
    """A set of ``N`` patches of ``C`` bands, ``patch_size`` x ``patch_size`` pixels.

    Attributes:
        x: float32 array (N, C, P, P) of physical values; NaN marks nodata.
        y: int64 class indices (N,).
        band_names: one name per channel.
        modalities: modality name -> its band names, in channel order.
        class_names: class names in index order.
        groups: provenance group of each patch (e.g. ``polygon:17``), used for leakage-free splits.
        coords: float64 (N, 2) centre x, y in ``crs`` units.
        split: uint8 (N,) codes from :data:`SPLIT_CODES` (255 = unassigned).
        nodata_fraction: float32 (N,) share of invalid pixels in each patch.
        crs: CRS of ``coords`` (WKT or EPSG string).
        provenance: free-form JSON-able record (sources, config, versions).
        tabular: optional float32 (N, F) attributes per patch (NaN = missing), e.g. census
            or metadata columns; ``None`` when the set has none.
        tabular_names: one name per ``tabular`` column.
        multi_hot: optional uint8 (N, K) targets of a multi-label set (1 = the class is
            present in the patch, e.g. BigEarthNet's CORINE labels); ``None`` for single-label
            sets. ``y`` then holds each patch's rarest label (:func:`primary_labels`), used
            where one class per patch is needed (sample grids).
        masks: optional uint8 (N, P, P) class index per pixel (:data:`MASK_IGNORE` =
            unlabelled) of a segmentation set; ``y`` then holds each tile's stratum (e.g. its
            change level, named by ``class_names``) used for stratified splits and folds.
        mask_names: the mask's class names in index order (e.g. ``no_change``, ``land_take``).
        timestamps: the dates of a time series (T); ``x`` then stacks the T steps time-major
            ((N, T * C, P, P), channel ``t * C + c``) with band names ``band@date``
            (:func:`temporal_band_names`); ``None`` for a single date.
        values: optional float32 continuous target of a regression set, in its physical
            unit: (N,) one value per patch (e.g. the population of a 1 km cell), or (N, P, P)
            one value per pixel (dense regression, e.g. canopy height; NaN = unlabelled);
            ``y`` then holds each patch's stratum (a range of values, named by
            ``class_names``) used for stratified splits and folds. ``None`` for
            classification sets.
        value_name: what ``values`` measure (e.g. ``population``).
    """

    x: np.ndarray
    y: np.ndarray
    band_names: list[str]
    modalities: dict[str, list[str]]
    class_names: list[str]
    groups: np.ndarray
    coords: np.ndarray
    split: np.ndarray | None = None
    nodata_fraction: np.ndarray | None = None
    crs: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    tabular: np.ndarray | None = None
    tabular_names: list[str] = field(default_factory=list)
    multi_hot: np.ndarray | None = None
    masks: np.ndarray | None = None
    mask_names: list[str] = field(default_factory=list)
    timestamps: list[str] | None = None
    values: np.ndarray | None = None
    value_name: str = ""

    def __post_init__(self) -> None:
        n = len(self.x)
        self.x = np.asarray(self.x, dtype=np.float32)
        self.y = np.asarray(self.y, dtype=np.int64)
        self.groups = np.asarray(self.groups).astype(str)
        self.coords = np.asarray(self.coords, dtype=np.float64).reshape(n, 2)
        if self.split is None:
            self.split = np.full(n, UNASSIGNED, dtype=np.uint8)
        self.split = np.asarray(self.split, dtype=np.uint8)
        if self.nodata_fraction is None:
            self.nodata_fraction = np.zeros(n, dtype=np.float32)
        self.nodata_fraction = np.asarray(self.nodata_fraction, dtype=np.float32)
        if self.x.ndim != 4 or self.x.shape[2] != self.x.shape[3]:
            raise ValueError(f"x must be (N, C, P, P); got {self.x.shape}")
        if self.x.shape[1] != len(self.band_names):
            raise ValueError(f"{self.x.shape[1]} channels but {len(self.band_names)} band names")
        flat = [b for bands in self.modalities.values() for b in bands]
        if flat != list(self.band_names):
            raise ValueError("modalities must list band_names in channel order")
        for name, arr in [("y", self.y), ("groups", self.groups), ("split", self.split),
                          ("nodata_fraction", self.nodata_fraction)]:
            if len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} entries for {n} patches")
        self._check_tabular()
        self._check_multi_hot()
        self._check_masks()
        self._check_timestamps()
        self._check_values()

    def _check_values(self) -> None:
        if self.values is None:
            if self.value_name:
                raise ValueError("value_name given without values")
            return
        self.values = np.asarray(self.values, dtype=np.float32)
        n, size = len(self.x), self.x.shape[-1]
        if self.values.shape not in ((n,), (n, size, size)):
            raise ValueError(f"values must be (N,) = ({n},) or (N, P, P) = ({n}, {size}, {size});"
                             f" got {self.values.shape}")
        if self.values.ndim == 3:  # per pixel: NaN = unlabelled, never +-inf
            if np.isinf(self.values).any():
                raise ValueError("pixel values hold +-inf; mark unlabelled pixels with NaN")
            if n and not np.isfinite(self.values).reshape(n, -1).any(axis=1).all():
                raise ValueError("every tile of a dense regression set needs a labelled pixel")
        elif not np.isfinite(self.values).all():
            raise ValueError(f"values hold {int((~np.isfinite(self.values)).sum())} NaN or "
                             "infinite target(s)")
        if self.multi_hot is not None or self.masks is not None:
            raise ValueError("a regression set (values) cannot also hold label sets or masks")
        self.value_name = self.value_name or "value"

    def _check_masks(self) -> None:
        self.mask_names = list(self.mask_names)
        if self.masks is None:
            if self.mask_names:
                raise ValueError("mask_names given without masks")
            return
        self.masks = np.asarray(self.masks, dtype=np.uint8)
        want = (len(self.x), *self.x.shape[2:])
        if self.masks.shape != want:
            raise ValueError(f"masks must be (N, P, P) = {want}; got {self.masks.shape}")
        labelled = self.masks[self.masks != MASK_IGNORE]
        if len(self.mask_names) < 2 or (labelled.size and labelled.max() >= len(self.mask_names)):
            raise ValueError(f"mask values {sorted(np.unique(labelled).tolist())[:10]} need "
                             f"one name each in mask_names (got {self.mask_names})")

    def _check_timestamps(self) -> None:
        if self.timestamps is None:
            return
        self.timestamps = [str(t) for t in self.timestamps]
        steps = len(self.timestamps)
        if steps == 0 or len(self.band_names) % steps:
            raise ValueError(f"{len(self.band_names)} channels do not split into "
                             f"{steps} time steps")
        per_step = len(self.band_names) // steps
        bands = [b.rsplit("@", 1)[0] for b in self.band_names[:per_step]]
        if list(self.band_names) != temporal_band_names(bands, self.timestamps):
            raise ValueError("a time series needs band names band@date, time-major; got "
                             f"{self.band_names[:per_step + 1]}...")

    def _check_multi_hot(self) -> None:
        if self.multi_hot is None:
            return
        self.multi_hot = np.asarray(self.multi_hot, dtype=np.uint8)
        want = (len(self.x), len(self.class_names))
        if self.multi_hot.shape != want:
            raise ValueError(f"multi_hot must be (N, K) = {want}; got {self.multi_hot.shape}")
        if (self.multi_hot > 1).any():
            raise ValueError("multi_hot must hold 0 and 1 only")

    def _check_tabular(self) -> None:
        self.tabular_names = list(self.tabular_names)
        if self.tabular is None:
            if self.tabular_names:
                raise ValueError("tabular_names given without a tabular array")
            return
        self.tabular = np.asarray(self.tabular, dtype=np.float32)
        if self.tabular.ndim != 2 or len(self.tabular) != len(self.x):
            raise ValueError(f"tabular must be (N={len(self.x)}, F); got {self.tabular.shape}")
        if len(self.tabular_names) != self.tabular.shape[1]:
            raise ValueError(
                f"{self.tabular.shape[1]} tabular columns but {len(self.tabular_names)} names"
            )

    # -- basic views ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.x)

    @property
    def patch_size(self) -> int:
        return int(self.x.shape[-1])

    @property
    def segmentation(self) -> bool:
        """Whether each patch carries a per-pixel ``mask`` (a dense task) instead of labels."""
        return self.masks is not None

    @property
    def time_steps(self) -> int:
        """Dates of the time series (1 for a single date)."""
        return len(self.timestamps) if self.timestamps else 1

    @property
    def step_bands(self) -> list[str]:
        """The band names of one time step (all band names for a single date)."""
        per_step = len(self.band_names) // self.time_steps
        return [b.rsplit("@", 1)[0] if self.timestamps else b
                for b in self.band_names[:per_step]]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def multilabel(self) -> bool:
        """Whether each patch carries a set of labels (``multi_hot``) instead of one class."""
        return self.multi_hot is not None

    @property
    def regression(self) -> bool:
        """Whether each patch carries a continuous target (``values``) instead of a class."""
        return self.values is not None

    @property
    def dense_values(self) -> bool:
        """Whether the continuous target is given per pixel (``values`` (N, P, P))."""
        return self.values is not None and self.values.ndim == 3

    def targets(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Class targets: ``multi_hot`` rows (N, K) of a multi-label set, else ``y`` (N,) (of
        a regression set its strata; the regression targets are ``values``)."""
        t = self.multi_hot if self.multi_hot is not None else self.y
        return t if indices is None else t[indices]

    def band_indices(self, names: list[str]) -> list[int]:
        """Channel indices of ``names``; raises :class:`BandError` naming unknown bands."""
        missing = [b for b in names if b not in self.band_names]
        if missing:
            raise BandError(
                f"unknown band(s) {missing}; this PatchSet has {self.band_names}; "
                "fix train.bands in the config"
            )
        return [self.band_names.index(b) for b in names]

    def modality_bands(self, modalities: list[str]) -> list[str]:
        """Band names of the given modalities, in channel order."""
        unknown = [m for m in modalities if m not in self.modalities]
        if unknown:
            raise BandError(
                f"unknown modality {unknown}; this PatchSet has {list(self.modalities)}; "
                "fix train.modalities in the config"
            )
        return [b for m, bands in self.modalities.items() if m in modalities for b in bands]

    def select_bands(self, names: list[str]) -> PatchSet:
        """A PatchSet with only ``names`` (order of the original channels kept per modality)."""
        self.band_indices(names)  # validates the names
        keep = set(names)
        mods = {m: [b for b in bands if b in keep] for m, bands in self.modalities.items()}
        mods = {m: bands for m, bands in mods.items() if bands}
        ordered = [b for bands in mods.values() for b in bands]
        idx = [self.band_names.index(b) for b in ordered]
        return self._replace(x=self.x[:, idx], band_names=ordered, modalities=mods)

    def subset(self, mask_or_index: np.ndarray) -> PatchSet:
        """A PatchSet with the selected patches."""
        sel = np.asarray(mask_or_index)
        return self._replace(
            x=self.x[sel], y=self.y[sel], groups=self.groups[sel], coords=self.coords[sel],
            split=self.split[sel], nodata_fraction=self.nodata_fraction[sel],
            tabular=None if self.tabular is None else self.tabular[sel],
            multi_hot=None if self.multi_hot is None else self.multi_hot[sel],
            masks=None if self.masks is None else self.masks[sel],
            values=None if self.values is None else self.values[sel],
        )

    def split_indices(self, name: str) -> np.ndarray:
        """Indices of the patches in split ``name`` (train, val or test)."""
        return np.flatnonzero(self.split == SPLIT_CODES[name])

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        """Patches per class name (of a multi-label set: patches holding the class), over all
        patches or one split."""
        idx = None if split is None else self.split_indices(split)
        counts = class_totals(self.targets(idx), self.num_classes)
        return {c: int(n) for c, n in zip(self.class_names, counts, strict=True)}

    def _replace(self, **changes: Any) -> PatchSet:
        fields = dict(
            x=self.x, y=self.y, band_names=list(self.band_names), modalities=dict(self.modalities),
            class_names=list(self.class_names), groups=self.groups, coords=self.coords,
            split=self.split, nodata_fraction=self.nodata_fraction, crs=self.crs,
            provenance=dict(self.provenance), tabular=self.tabular,
            tabular_names=list(self.tabular_names), multi_hot=self.multi_hot,
            masks=self.masks, mask_names=list(self.mask_names),
            timestamps=None if self.timestamps is None else list(self.timestamps),
            values=self.values, value_name=self.value_name,
        )
        fields.update(changes)
        return PatchSet(**fields)

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write to one compressed HDF5 file, atomically.

        The HDF5 file is built in memory (h5py's ``core`` driver without a backing store) and
        its bytes are written with plain Python file I/O. HDF5 can crash the process when the
        disk fills up under it; this way a full disk or a read-only folder is an ``OSError``
        that becomes a one-line :class:`~geofuse.errors.DiskFullError` or
        :class:`~geofuse.errors.WriteAccessError`, and the previous file stays intact. The
        cost is memory: besides ``x`` (already in memory), the compressed file is held twice
        for a moment (HDF5's buffer and its copy as bytes), at most about twice the size of
        ``x``; checking free space first instead would not catch other writers or quotas.

        Raises:
            DiskFullError: the disk, quota or file-size limit filled up.
            WriteAccessError: the folder is read-only or not writable.
        """
        path = Path(path)
        image = self.to_bytes()
        try:
            with atomic_path(path, suffix=".h5") as tmp, open(tmp, "wb") as fh:
                view = memoryview(image)
                for start in range(0, len(view), _WRITE_CHUNK):
                    fh.write(view[start:start + _WRITE_CHUNK])
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            mapped = write_error(err, path)
            if mapped is None:
                raise
            raise mapped from None
        return path

    def to_bytes(self) -> bytes:
        """The complete HDF5 file image, built in memory."""
        name = f"geofuse-patchset-{os.getpid()}-{id(self)}.h5"  # never touches the disk
        with h5py.File(name, "w", driver="core", backing_store=False) as f:
            self._write_h5(f)
            f.flush()
            return f.id.get_file_image()

    def _write_h5(self, f: h5py.File) -> None:
        f.attrs["format"] = "geofuse.PatchSet"
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["crs"] = self.crs
        f.attrs["band_names"] = json.dumps(self.band_names)
        f.attrs["modalities"] = json.dumps(self.modalities)
        f.attrs["class_names"] = json.dumps(self.class_names)
        f.attrs["provenance"] = json.dumps(self.provenance, default=str)
        chunk = (min(len(self), 256), *self.x.shape[1:]) if len(self) else None
        f.create_dataset("x", data=self.x, compression="gzip", compression_opts=4,
                         shuffle=True, chunks=chunk)
        f.create_dataset("y", data=self.y)
        f.create_dataset("groups", data=np.char.encode(self.groups, "utf-8"))
        f.create_dataset("coords", data=self.coords)
        f.create_dataset("split", data=self.split)
        f.create_dataset("nodata_fraction", data=self.nodata_fraction)
        if self.tabular is not None:  # optional: files without it still load
            f.attrs["tabular_names"] = json.dumps(self.tabular_names)
            f.create_dataset("tabular", data=self.tabular)
        if self.multi_hot is not None:
            f.create_dataset("multi_hot", data=self.multi_hot)
        if self.masks is not None:
            f.attrs["mask_names"] = json.dumps(self.mask_names)
            f.create_dataset("masks", data=self.masks, compression="gzip", compression_opts=4,
                             chunks=(min(len(self), 256), *self.masks.shape[1:]) if len(self)
                             else None)
        if self.timestamps is not None:
            f.attrs["timestamps"] = json.dumps(self.timestamps)
        if self.values is not None:
            f.attrs["value_name"] = self.value_name
            dense = self.values.ndim == 3 and len(self)
            f.create_dataset("values", data=self.values,
                             **({"compression": "gzip", "compression_opts": 4,
                                 "chunks": (min(len(self), 256), *self.values.shape[1:])}
                                if dense else {}))

    @classmethod
    def load(cls, path: str | Path) -> PatchSet:
        """Read a PatchSet written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise DataNotFoundError(
                f"PatchSet {str(path)!r} does not exist; run 'geofuse extract -c CONFIG' first"
            )
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != "geofuse.PatchSet":
                    raise DataNotFoundError(
                        f"{str(path)!r} is not a geofuse PatchSet; pass the file written by "
                        "'geofuse extract'"
                    )
                return cls(
                    x=f["x"][()], y=f["y"][()],
                    band_names=json.loads(f.attrs["band_names"]),
                    modalities=json.loads(f.attrs["modalities"]),
                    class_names=json.loads(f.attrs["class_names"]),
                    groups=np.char.decode(f["groups"][()], "utf-8"), coords=f["coords"][()],
                    split=f["split"][()], nodata_fraction=f["nodata_fraction"][()],
                    crs=str(f.attrs["crs"]), provenance=json.loads(f.attrs["provenance"]),
                    tabular=f["tabular"][()] if "tabular" in f else None,
                    tabular_names=json.loads(f.attrs.get("tabular_names", "[]")),
                    multi_hot=f["multi_hot"][()] if "multi_hot" in f else None,
                    masks=f["masks"][()] if "masks" in f else None,
                    mask_names=json.loads(f.attrs.get("mask_names", "[]")),
                    timestamps=json.loads(f.attrs["timestamps"]) if "timestamps" in f.attrs
                    else None,
                    values=f["values"][()] if "values" in f else None,
                    value_name=str(f.attrs.get("value_name", "")) if "values" in f else "",
                )
        except OSError as err:
            raise DataNotFoundError(
                f"cannot read PatchSet {str(path)!r} ({err}); re-run 'geofuse extract'"
            ) from None
