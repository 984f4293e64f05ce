"""Preflight checks of the file system: inputs, labels, PatchSet and folds, outputs, free space."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from geofuse._preflight_base import Inputs, Problem, did_you_mean
from geofuse.config import StudyConfig
from geofuse.errors import GeofuseError

FIX_PATH = "fix the path (relative paths start at the config's folder)"


# -- inputs -------------------------------------------------------------------------------
def _missing_file(key: str, value: str, full: Path) -> Problem:
    hint = ""
    if full.parent.is_dir():
        siblings = [p.name for p in full.parent.iterdir()]
        close = did_you_mean(full.name, siblings)
        hint = f"{close} " if close.startswith("did you mean") else ""
    return Problem(key, value, f"file {str(full)!r} does not exist; {hint}{FIX_PATH}")


def _pattern_problem(cfg: StudyConfig, key: str, pattern: str) -> Problem | None:
    full = cfg.resolve(pattern)
    if glob.has_magic(str(full)):
        if glob.glob(str(full), recursive=True):
            return None
        return Problem(key, pattern, f"pattern {str(full)!r} matches no file; {FIX_PATH}")
    return None if full.exists() else _missing_file(key, pattern, full)


def modality_problems(cfg: StudyConfig) -> list[Problem]:
    """Every modality file or glob that matches nothing (all of them, not the first)."""
    if cfg.dataset is not None:
        return dataset_problems(cfg)
    return [p for i, m in enumerate(cfg.modalities) for j, pattern in enumerate(m.files)
            if (p := _pattern_problem(cfg, f"modalities[{i}].files[{j}]", pattern)) is not None]


def dataset_problems(cfg: StudyConfig) -> list[Problem]:
    """The dataset's city folders, and each modality's files inside the city folder."""
    ds = cfg.dataset
    if ds is None:
        return []
    out = []
    for key in ("city_dir", "test_city_dir"):
        value = getattr(ds, key)
        if value is not None and not cfg.resolve(value).is_dir():
            out.append(Problem(f"dataset.{key}", value, f"folder {str(cfg.resolve(value))!r} "
                               f"does not exist; {FIX_PATH}"))
    for key in ("root", "test_root"):
        value = getattr(ds, key)
        if value is not None and not cfg.resolve(value).exists():
            out.append(Problem(f"dataset.{key}", value, f"{str(cfg.resolve(value))!r} "
                               f"does not exist; {FIX_PATH}"))
    if out or ds.city_dir is None:  # the readers of root datasets check their own layout
        return out
    for m in cfg.modalities:
        for pattern in m.files:
            p = _pattern_problem(cfg, "dataset.city_dir", pattern)
            if p is not None:
                out.append(Problem("dataset.city_dir", ds.city_dir, f"no {m.name} files "
                                   f"({pattern!r} matches nothing); fix dataset.city_dir or drop "
                                   f"{m.name} from dataset.seasons / dataset.layers"))
    return out


def stack_pixels(cfg: StudyConfig) -> tuple[int | None, list[Problem]]:
    """Reference-grid pixels of the stack ``prepare`` would write (read from the headers)."""
    from geofuse.raster.prepare import plan_stack

    try:
        _, grid = plan_stack(cfg)
    except GeofuseError as err:
        return None, [Problem("modalities", None, err.one_line(), plain=True)]
    return int(grid.width) * int(grid.height), []


@dataclass(frozen=True)
class LabelCount:
    """What the disk estimate needs from a label file: its features, whether they are points
    (one patch each) and its distinct class values (None when unknown)."""

    features: int
    points: bool = False
    classes: int | None = None


def _distinct_classes(path: Path, field: str) -> int | None:
    import pyogrio

    try:
        frame = pyogrio.read_dataframe(path, columns=[field], read_geometry=False)
        return int(frame[field].nunique())
    except Exception:  # an estimate only: extract itself reports unreadable attributes
        return None


def labels_problems(cfg: StudyConfig) -> tuple[LabelCount | None, list[Problem]]:
    """The label file: exists, has features and the class/id attributes; its features,
    whether they are points and its classes (:class:`LabelCount`, None when unreadable)."""
    if cfg.labels is None:
        return None, [Problem("labels", None, "extract needs label polygons; add a labels "
                              "section with labels.path and labels.class_field")]
    lab = cfg.labels
    for key in ("raster", "value_raster"):
        given = getattr(lab, key)
        if given is not None:
            problem = _pattern_problem(cfg, f"labels.{key}", given)
            return None, [] if problem is None else [problem]
    path = cfg.resolve(lab.path or "")
    if not path.exists():
        return None, [_missing_file("labels.path", lab.path, path)]
    import pyogrio

    try:
        info = pyogrio.read_info(path)
    except Exception as err:  # pyogrio raises several types for unreadable files
        return None, [Problem("labels.path", lab.path, f"cannot read {str(path)!r} "
                              f"({' '.join(str(err).split())[:160]}); give a GeoJSON, "
                              "GeoPackage or Shapefile")]
    fields = [str(f) for f in info.get("fields", [])]
    n = int(info.get("features") or 0)
    out = []
    if n == 0:
        out.append(Problem("labels.path", lab.path, "holds no features (an empty layer); "
                           "point it to the file with your label polygons or points"))
    kind = str(info.get("geometry_type") or "")
    if "Line" in kind:
        out.append(Problem("labels.path", lab.path, f"holds lines ({kind}), which label no "
                           "area and no pixel; give polygons or points"))
    elif "Point" in kind and cfg.extract.target == "mask":
        out.append(Problem("labels.path", lab.path, f"holds points ({kind}), and "
                           "extract.target: mask needs a class per pixel from polygons; use "
                           "extract.target: class (one patch per point) or label polygons"))
    for key in ("value_field" if lab.value_field else "class_field", "id_field"):
        name = getattr(lab, key)
        if name is not None and fields and name not in fields:
            out.append(Problem(f"labels.{key}", name, f"not an attribute of {path.name}; "
                               f"{did_you_mean(name, fields, 'attributes')}"))
    if not n:
        return None, out
    classes = None if lab.value_field or lab.classes else \
        _distinct_classes(path, lab.class_field)
    return LabelCount(n, points="Point" in kind,
                      classes=len(lab.classes) if lab.classes else classes), out


# -- PatchSet and folds -------------------------------------------------------------------
@dataclass
class PatchMeta:
    """What the checks need from a PatchSet file, read without its patches."""

    path: Path
    band_names: list[str]
    modalities: dict[str, list[str]]
    class_names: list[str]
    groups: np.ndarray
    coords: np.ndarray
    y: np.ndarray
    has_tabular: bool
    provenance: dict[str, Any]
    multilabel: bool = False
    segmentation: bool = False
    regression: bool = False

    def inputs(self) -> Inputs:
        return Inputs(list(self.band_names), dict(self.modalities), f"PatchSet {str(self.path)!r}",
                      has_tabular=self.has_tabular, from_config=False,
                      multilabel=self.multilabel, segmentation=self.segmentation,
                      regression=self.regression)


def read_patch_meta(path: Path) -> PatchMeta:
    """Names, groups, labels and coordinates of a PatchSet file (not its patches).

    Raises:
        OSError, KeyError: not a readable PatchSet.
    """
    import h5py

    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != "geofuse.PatchSet":
            raise KeyError("format")
        return PatchMeta(
            path=path, band_names=json.loads(f.attrs["band_names"]),
            modalities=json.loads(f.attrs["modalities"]),
            class_names=json.loads(f.attrs["class_names"]),
            groups=np.char.decode(f["groups"][()], "utf-8").astype(str),
            coords=f["coords"][()], y=f["y"][()].astype(np.int64),
            has_tabular="tabular" in f, provenance=json.loads(f.attrs.get("provenance", "{}")),
            multilabel="multi_hot" in f, regression="values" in f,
            segmentation="masks" in f or ("values" in f and f["values"].ndim == 3),
        )


def fold_problems(cfg: StudyConfig, meta: PatchMeta) -> list[Problem]:
    """``ablation.folds`` against the PatchSet's groups: in all, and per class (single-label
    sets)."""
    from geofuse.data.patchset import PatchSet
    from geofuse.experiments.folds import fold_units

    a = cfg.ablation
    light = cast(PatchSet, SimpleNamespace(groups=meta.groups, coords=meta.coords))
    try:
        units = fold_units(light, a.group_by, a.block_size, a.tile_regex)
    except GeofuseError as err:
        return [Problem("ablation.group_by", a.group_by, err.one_line(), plain=True)]
    y = meta.y
    external = meta.provenance.get("external_test")
    if external:
        pool = ~np.char.startswith(meta.groups, str(external.get("group_prefix", "")))
        units, y = units[pool], y[pool]
    uniq, inverse = np.unique(units, return_inverse=True)
    where = f"the PatchSet {str(meta.path)!r}"
    if a.folds > len(uniq):
        return [Problem("ablation.folds", a.folds, f"{where} has only {len(uniq)} "
                        f"{a.group_by} groups; set ablation.folds to at most {len(uniq)} or add "
                        "labelled polygons")]
    # label sets: a rare label cannot be in every fold, and need not (metrics average over the
    # classes present); the folds are stratified over the label sets (make_folds)
    if a.stratify != "class" or not len(y) or meta.multilabel:
        return []
    need = a.folds + (1 if a.test_fraction > 0 else 0)
    present = np.zeros((len(uniq), int(y.max()) + 1), dtype=bool)
    present[inverse, y] = True
    per_class = present.sum(axis=0)
    names = [*meta.class_names, *map(str, range(len(meta.class_names), len(per_class)))]
    short = [f"{names[k]!r} has {n}" for k, n in enumerate(per_class) if 0 < n < need]
    if not short:
        return []
    test = " + test" if a.test_fraction > 0 else ""
    fix = "lower ablation.folds or add labelled polygons or points" + (
        " or set ablation.test_fraction to 0" if test else "")
    return [Problem("ablation.folds", a.folds, f"every class needs at least {need} {a.group_by} "
                    f"groups ({a.folds} folds{test}) in {where}, but {'; '.join(short)}; {fix}")]


# -- outputs and free space ---------------------------------------------------------------
def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def write_problem(folder: Path) -> str | None:
    """Why nothing can be written in ``folder`` (created on demand), or ``None``.

    Writability is tested by creating a temporary file in the nearest existing folder, since
    ``os.access`` says yes to root even on read-only mounts.
    """
    found = nearest_existing(folder)
    if not found.is_dir():
        return f"{str(found)!r} is a file, not a folder; point it to a folder"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".geofuse-write-test-", dir=found)
    except OSError as err:
        return (f"folder {str(found)!r} is not writable ({err.strerror}); pick a writable "
                "folder or fix its permissions")
    os.close(fd)
    os.unlink(tmp)
    return None


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds ``folder``; ``GEOFUSE_FREE_BYTES`` overrides (tests)."""
    forced = os.environ.get("GEOFUSE_FREE_BYTES")
    if forced:
        return int(float(forced))
    return shutil.disk_usage(nearest_existing(folder)).free


def human(n: float) -> str:
    """Bytes as a short human-readable size."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover
