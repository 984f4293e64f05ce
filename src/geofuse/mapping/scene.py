"""Where a map's pixels come from: a fused stack, or a study config's sensor rasters aligned
on the fly; index bands a run was trained on are computed on the fly from their inputs.

- ``--stack STACK``: windows of the fused stack (:class:`~geofuse.mapping.stack.StackSource`).
- ``-c STUDY.yaml``: every modality of the config is resampled window by window onto the
  config's reference grid (its ``grid`` section, else the first modality's grid) with the
  modality's own resampling, scale, offset and nodata, exactly as ``geofuse prepare`` would
  write them (:class:`~geofuse.raster.align.ModalityPlan`; GDAL's exact transformer makes the
  values independent of the window layout), without writing a stack.
- Index bands (``<modality>_<INDEX>``, e.g. ``s2_NDVI``, added at extract time by a modality's
  ``indices``) that the scene lacks are computed from the physical values of their input bands
  with the formulas of :mod:`geofuse.data.indices`; radar inputs the run's PatchSet recorded
  as dB are converted to linear power first (when that PatchSet is gone, the whole scene's
  radar inputs decide once, as extract did: any negative value means dB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
from rasterio.windows import Window

from geofuse.errors import ConfigError
from geofuse.mapping.stack import StackInfo, StackSource, read_stack_info

_RADAR_ROLES = ("vv", "vh")


@dataclass(frozen=True)
class SceneSpec:
    """A scene to map: ``kind`` ``stack`` (a fused GeoTIFF) or ``config`` (a study YAML whose
    modalities are aligned on the fly)."""

    kind: str
    path: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class DerivedBand:
    """An index band computed from other bands: ``index`` over ``inputs`` (role -> band);
    ``db_to_linear``: radar inputs hold dB (None: unknown until :func:`resolve_db`)."""

    name: str
    index: str
    inputs: dict[str, str]
    db_to_linear: bool | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class WindowReader(Protocol):
    """Reads windows (C, h, w) of fixed bands, NaN for nodata and outside the scene."""

    info: StackInfo

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray: ...

    def close(self) -> None: ...


def _load_config(path: str | Path) -> Any:
    from geofuse.config import load_config

    cfg = load_config(Path(path))
    if cfg.dataset is not None or not cfg.modalities:
        raise ConfigError(f"{str(path)!r} reads dataset {cfg.dataset.name if cfg.dataset else ''}"
                          " patches, not sensor rasters; map a fused stack with --stack, or "
                          "pass a config whose modalities list the scene's files")
    return cfg


def scene_info(spec: SceneSpec) -> StackInfo:
    """Grid and band names of a scene (a config: its reference grid and modality bands).

    Raises:
        DataNotFoundError, RasterError, AlignmentError, ConfigError: as ``geofuse prepare``
            for the config's files; as :func:`read_stack_info` for a stack.
    """
    if spec.kind == "stack":
        return read_stack_info(spec.path)
    from geofuse.raster.prepare import plan_stack

    cfg = _load_config(spec.path)
    _, grid = plan_stack(cfg)
    return StackInfo(path=Path(spec.path), grid=grid, bands=list(cfg.band_names), nodata=None)


def scene_files(spec: SceneSpec) -> list[Path]:
    """The files whose content the map depends on (the stack; the config and its rasters)."""
    if spec.kind == "stack":
        return [Path(spec.path)]
    cfg = _load_config(spec.path)
    files = [Path(spec.path)]
    for m in cfg.modalities:
        files += cfg.modality_files(m) + (cfg.mask_files(m) or [])
    return files


class AlignedSource:
    """Windows of some bands of a config's modalities, resampled onto its reference grid."""

    def __init__(self, info: StackInfo, bands: Sequence[str]) -> None:
        from geofuse.raster.prepare import plan_stack

        self.info = info
        plans, self._grid = plan_stack(_load_config(info.path))
        where = {b: i for i, b in enumerate(bands)}
        # per modality plan: (plan, its band positions to keep, their output rows)
        self._parts = []
        for plan in plans:
            keep = [(j, where[b]) for j, b in enumerate(plan.config.bands) if b in where]
            if keep:
                self._parts.append((plan, [j for j, _ in keep], [i for _, i in keep]))
        self._count = len(bands)

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Bands (C, height, width) of the window at ``(row, col)``; NaN outside the scene."""
        out = np.full((self._count, height, width), np.nan, dtype=np.float32)
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, self._grid.height), min(col + width, self._grid.width)
        if r1 <= r0 or c1 <= c0:
            return out
        window = Window(c0, r0, c1 - c0, r1 - r0)
        for plan, take, rows in self._parts:
            data = plan.read(self._grid, window)
            out[rows, r0 - row:r1 - row, c0 - col:c1 - col] = data[take]
        return out

    def close(self) -> None:
        """Nothing stays open: every window opens its files."""


def _open_reader(spec: SceneSpec, info: StackInfo, bands: list[str]) -> WindowReader:
    if spec.kind == "stack":
        return StackSource(info, bands)
    return AlignedSource(info, bands)


def base_bands(bands: Sequence[str], derived: Sequence[DerivedBand], available: Sequence[str]
               ) -> list[str]:
    """The bands to read: every requested band the scene has, plus the inputs of the derived
    bands it lacks (a band neither in the scene nor derivable stays, for the band check)."""
    by_name = {d.name: d for d in derived}
    have = set(available)
    out: list[str] = []
    for b in bands:
        if b in have or b not in by_name:
            out.append(b)
        else:
            out.extend(by_name[b].inputs.values())
    return list(dict.fromkeys(out))


class SceneSource:
    """Windows of the bands a map needs, in their order: read from the scene, or computed
    from their inputs (:class:`DerivedBand`)."""

    def __init__(self, spec: SceneSpec, info: StackInfo, bands: Sequence[str],
                 derived: Sequence[DerivedBand] = ()) -> None:
        self.info = info
        self.bands = list(bands)
        have = set(info.bands)
        self._derived = {d.name: d for d in derived if d.name in self.bands
                         and d.name not in have}
        self._read_bands = base_bands(self.bands, list(self._derived.values()), info.bands)
        self._reader = _open_reader(spec, info, self._read_bands)

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Bands (C, height, width) of the window at ``(row, col)``; NaN = nodata/outside."""
        raw = self._reader.read(row, col, height, width)
        if not self._derived:
            return raw
        where = {b: i for i, b in enumerate(self._read_bands)}
        out = np.empty((len(self.bands), height, width), dtype=np.float32)
        for i, band in enumerate(self.bands):
            d = self._derived.get(band)
            out[i] = raw[where[band]] if d is None else _compute(d, raw, where)
        return out

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> SceneSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _compute(d: DerivedBand, raw: np.ndarray, where: dict[str, int]) -> np.ndarray:
    from geofuse.data.indices import compute_index

    values = {role: raw[where[band]].astype(np.float64) for role, band in d.inputs.items()}
    if d.db_to_linear:  # decided for the whole scene (resolve_db), never per window
        for r in (r for r in values if r in _RADAR_ROLES):
            values[r] = 10.0 ** (values[r] / 10.0)
    return compute_index(d.index, values)


def check_derivable(info: StackInfo, derived: Sequence[DerivedBand], kind: str, what: str
                    ) -> None:
    """Raise a one-line BandError when an index band the scene lacks cannot be computed
    because the scene lacks one of its inputs."""
    from geofuse.errors import BandError

    have = set(info.bands)
    for d in derived:
        missing = [b for b in d.inputs.values() if b not in have]
        if d.name not in have and missing:
            raise BandError(
                f"{kind} {str(info.path)!r} has neither band {d.name!r} that {what} was trained "
                f"on nor its input(s) {missing} ({d.index} from {list(d.inputs.values())}); "
                f"map a scene with those bands (it has {info.bands})")


def resolve_db(spec: SceneSpec, info: StackInfo, derived: Sequence[DerivedBand]
               ) -> list[DerivedBand]:
    """``derived`` with every unknown dB flag of a radar index decided once for the whole
    scene (any finite negative value of its radar inputs: dB), so that no window decides
    alone. Reads only those inputs, strip by strip."""
    from geofuse.mapping.stack import SCAN_ROWS

    out = []
    for d in derived:
        radar = sorted({b for r, b in d.inputs.items() if r in _RADAR_ROLES})
        if d.db_to_linear is not None or not radar or d.name in info.bands:
            out.append(d)
            continue
        reader = _open_reader(spec, info, radar)
        negative = False
        try:
            for row in range(0, info.grid.height, SCAN_ROWS):
                block = reader.read(row, 0, min(SCAN_ROWS, info.grid.height - row),
                                    info.grid.width)
                if bool(np.any(block[np.isfinite(block)] < 0)):
                    negative = True
                    break
        finally:
            reader.close()
        out.append(DerivedBand(d.name, d.index, d.inputs, negative))
    return out
