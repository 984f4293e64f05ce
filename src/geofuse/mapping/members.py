"""The model(s) behind a map: one run directory, or a study's best configuration as an ensemble.

Everything comes from the run directory (``run.json``, ``config.yaml``, ``normalization.json``,
``checkpoints/best.ckpt`` or ``model.joblib``), never from a live training object. A study
directory (``study.json``) maps with the fold models of its best configuration (the one its
report names: highest mean validation score of the study's primary metric among complete
configurations); their spread is an uncertainty output. A finished study deletes checkpoints
unless ``ablation.keep_checkpoints: true``: without them its networks cannot map.

Four kinds of member:

- ``patch``: a network that classifies a patch (simple_cnn, backbones, fusion models);
- ``dense``: a segmentation network (lstm_unet, unet_*) giving a class per pixel;
- ``patch_forest``: a scikit-learn baseline on per-patch features;
- ``pixel_forest``: a scikit-learn baseline of a segmentation run, one sample per pixel.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geofuse.errors import ConfigError, RunDirError
from geofuse.mapping.stack import GridReference

#: Files a run needs to map, besides its model file.
RUN_FILES = ("run.json", "config.yaml", "normalization.json")
KINDS = ("patch", "dense", "patch_forest", "pixel_forest")


@dataclass(frozen=True)
class MemberSpec:
    """What a worker needs to load one model (plain data, picklable).

    Attributes:
        run_dir: the run directory.
        kind: one of :data:`KINDS`.
        model: registry name (``train.model.name``).
        bands: input bands in channel order.
        class_names: output classes (the mask classes of a segmentation run).
        patch_size: training patch (or tile) side in pixels.
        time_steps: dates stacked time-major in the channels.
        normalization: ``train.normalization`` (train, test_area, per_patch).
        max_nodata: largest nodata share of a patch that still gets a class (the run's
            ``extract.max_nodata_fraction``; 1 when extract only flagged such patches).
        features: feature kind of a scikit-learn baseline (``stats`` or ``pixels``).
        model_file: checkpoint or joblib file.
        derived: index bands among ``bands`` (:class:`~geofuse.mapping.scene.DerivedBand`
            as dicts), computed on the fly when the scene lacks them.
        label_codes: label-raster code of each class (runs trained from ``labels.raster``).
        label_unlabelled: the label raster's unlabelled code.
        value_name: what a regression run estimates (e.g. ``population``); "" for classes.
        target_scaler: a regression run's
            :class:`~geofuse.training._regression.TargetScaler` (its ``to_dict``).
    """

    run_dir: str
    kind: str
    model: str
    bands: list[str]
    class_names: list[str]
    patch_size: int
    time_steps: int
    normalization: str
    max_nodata: float
    features: str
    model_file: str
    derived: list[dict[str, Any]] = field(default_factory=list)
    label_codes: dict[str, int] = field(default_factory=dict)
    label_unlabelled: int | None = None
    value_name: str = ""
    target_scaler: dict[str, Any] = field(default_factory=dict)

    @property
    def regression(self) -> bool:
        """Whether the model estimates a continuous value (named ``value_name``)."""
        return bool(self.value_name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MapSource:
    """The run or study a map comes from and its member specs."""

    kind: str  # run | study
    path: Path
    config_id: str | None
    members: list[MemberSpec]

    @property
    def first(self) -> MemberSpec:
        return self.members[0]

    @property
    def bands(self) -> list[str]:
        """Every band any member reads, in first-seen order."""
        return list(dict.fromkeys(b for m in self.members for b in m.bands))

    def describe(self) -> str:
        """``run 'path'`` or ``study 'path' (configuration 'id', n fold models)``."""
        if self.kind == "run":
            return f"run {str(self.path)!r}"
        return (f"study {str(self.path)!r} (configuration {self.config_id!r}, "
                f"{len(self.members)} fold models)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as err:
        raise RunDirError(f"{str(path)!r} cannot be read ({err}); re-run 'geofuse train'"
                          ) from None


def _require(run: Path, files: tuple[str, ...]) -> None:
    if not run.is_dir():
        raise RunDirError(f"run directory {str(run)!r} does not exist; pass a folder written "
                          "by 'geofuse train' or a study folder (with study.json)")
    for name in files:
        if not (run / name).exists():
            raise RunDirError(f"{str(run / name)!r} is missing from run directory "
                              f"{str(run)!r}; re-run 'geofuse train' for it")


def _kind(model: str, segmentation: bool) -> str:
    from geofuse.models.forest import is_baseline
    from geofuse.models.registry import is_segmentation_model

    if is_baseline(model):
        return "pixel_forest" if segmentation else "patch_forest"
    return "dense" if is_segmentation_model(model) else "patch"


def _takes_tabular(info: dict[str, Any]) -> bool:
    """Whether the run's network reads tabular attributes (a PatchSet may carry them for
    models that do not, e.g. So2Sat-POP cells)."""
    from geofuse.models.registry import MODELS, model_options

    name = str((info.get("model") or {}).get("name") or "")
    return name in MODELS and "num_tabular" in model_options(name)


def _refuse_unsupported(run: Path, info: dict[str, Any]) -> None:
    """Multi-label and image + table runs cannot map a scene: one-line ConfigError."""
    metrics = run / "metrics.json"
    if metrics.is_file() and (_read_json(metrics).get("val") or {}).get("multilabel"):
        raise ConfigError(f"run {str(run)!r} is multi-label (label sets per patch); "
                          "'geofuse predict' maps single-label and segmentation runs only")
    if (run / "tabular_normalization.json").is_file() and _takes_tabular(info):
        raise ConfigError(f"run {str(run)!r} uses tabular attributes per patch "
                          f"({info.get('model', {}).get('name')}), which a scene does not "
                          "have; map a run of an image-only model")


def read_member_spec(run_dir: str | Path) -> MemberSpec:
    """The :class:`MemberSpec` of a run directory (reads its JSON and YAML files and the
    attributes of its PatchSet, never model weights).

    Raises:
        RunDirError: a file the map needs is missing (the message names it).
        ConfigError: a multi-label run or one with tabular inputs.
    """
    from geofuse.config import load_config
    from geofuse.models.forest import MODEL_FILE, is_baseline

    run = Path(run_dir).resolve()
    _require(run, RUN_FILES)
    info = _read_json(run / "run.json")
    name = str((info.get("model") or {}).get("name") or "")
    if not name or "bands" not in info:
        raise RunDirError(f"{str(run / 'run.json')!r} has no model name or bands (written by "
                          "an older geofuse?); re-run 'geofuse train' for this run")
    _refuse_unsupported(run, info)
    segmentation = info.get("task") == "segmentation"
    kind = _kind(name, segmentation or bool(info.get("dense")))  # per pixel: masks or values
    model_file = run / (MODEL_FILE if is_baseline(name) else "checkpoints/best.ckpt")
    if not model_file.is_file():
        raise RunDirError(f"{str(model_file)!r} is missing from run directory {str(run)!r}; "
                          "re-run 'geofuse train' for it")
    cfg = load_config(run / "config.yaml")
    ex = cfg.extract
    classes = info.get("mask_names") if segmentation else info.get("class_names")
    return MemberSpec(
        run_dir=str(run), kind=kind, model=name, bands=[str(b) for b in info["bands"]],
        class_names=[str(c) for c in classes or []], patch_size=int(info["patch_size"]),
        time_steps=int(info.get("time_steps") or 1),
        normalization=str(cfg.train.normalization),
        max_nodata=float(ex.max_nodata_fraction) if ex.on_nodata == "drop" else 1.0,
        features=str(cfg.train.baseline.features), model_file=str(model_file),
        derived=_derived_bands(cfg, info),
        **_label_codes(cfg, [str(c) for c in classes or []]),
        **({"value_name": str(info.get("value_name") or "value"),
            "target_scaler": dict(info.get("target_scaler") or {})}
           if info.get("task") == "regression" else {}),
    )


def _label_codes(cfg: Any, classes: list[str]) -> dict[str, Any]:
    """Label-raster code of each class of a run trained from ``labels.raster`` (its
    ``class_codes``, or the code in a default ``class_<code>`` name) and the unlabelled code;
    nothing for other runs. ``geofuse assess --labels`` reads them from the map."""
    lab = cfg.labels
    if lab is None or lab.raster is None:
        return {}
    if lab.class_codes:
        codes = {n: int(c) for n, c in lab.class_codes.items() if n in classes}
    else:
        codes = {n: int(n[6:]) for n in classes if n.startswith("class_") and n[6:].isdigit()}
    return {"label_codes": codes, "label_unlabelled": int(lab.unlabelled)} if codes else {}


def _derived_bands(cfg: Any, info: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's index bands (``<modality>_<INDEX>``) with their inputs; whether radar inputs
    were dB comes from the run's PatchSet (unknown when it is gone)."""
    from geofuse.data.indices import index_band, index_bands

    bands = set(info["bands"])
    record = _patchset_attrs(Path(info.get("patches_path") or "")).get("provenance") or "{}"
    indices = json.loads(record).get("indices") or {}
    out = []
    for m in cfg.modalities:
        db = (indices.get(m.index_modality) or {}).get("db_to_linear")
        for ix in m.indices:
            if index_band(m.name, ix) in bands:
                out.append({"name": index_band(m.name, ix), "index": ix,
                            "inputs": index_bands(m.name, m.bands, ix, m.sensor),
                            "db_to_linear": None if db is None else bool(db)})
    return out


def grid_reference(run_dir: str | Path) -> GridReference | None:
    """CRS and pixel size the run was trained on: from its training stack's manifest, else
    the config's ``grid`` section, else the CRS of its PatchSet (None when nothing says)."""
    from geofuse.config import load_config
    from geofuse.raster.manifest import StackManifest, manifest_path

    run = Path(run_dir)
    cfg = load_config(run / "config.yaml")
    man = manifest_path(cfg.stack_path)
    if cfg.dataset is None and man.is_file():
        m = StackManifest.load(man)
        a, b, _, d, e, _ = m.transform[:6]
        return GridReference(m.crs, (math.hypot(a, d), math.hypot(b, e)),
                             f"its training stack {str(cfg.stack_path)!r}")
    if cfg.grid is not None:
        return GridReference(cfg.grid.crs, (cfg.grid.resolution, cfg.grid.resolution),
                             "the grid section of its config.yaml")
    patches = Path(_read_json(run / "run.json").get("patches_path") or "")
    crs = str(_patchset_attrs(patches).get("crs") or "")
    return GridReference(crs, None, "its PatchSet") if crs else None


def _patchset_attrs(path: Path) -> dict[str, Any]:
    """The ``crs`` and ``provenance`` attributes of a PatchSet file (empty when it is gone),
    without reading its arrays."""
    import h5py

    if not path.is_file():
        return {}
    try:
        with h5py.File(path, "r") as f:
            return {k: str(f.attrs[k]) for k in ("crs", "provenance") if k in f.attrs}
    except OSError:
        return {}


def _best_config(study_dir: Path) -> str:
    """The configuration a study's report names best (primary metric, validation folds)."""
    from geofuse.reporting._study_load import cell_scores, load_study
    from geofuse.reporting.study_report import compute_study_stats

    study = load_study(study_dir)
    try:
        return str(compute_study_stats(study, study.primary_metric)["best"])
    except ValueError:  # no complete configuration: the highest mean over its cells
        scores = cell_scores(study, study.primary_metric)
        return max(scores, key=lambda c: float(np.mean(list(scores[c].values()))))


def _study_members(study_dir: Path) -> tuple[str, list[MemberSpec]]:
    from geofuse.experiments.runner import load_cells

    best = _best_config(study_dir)
    cells = [c for c in load_cells(study_dir) if c.get("config_id") == best]
    runs = [study_dir / (c.get("run_dir") or f"runs/{c['slug']}") for c in cells]
    missing = [r for r in runs if not (r / "checkpoints" / "best.ckpt").is_file()
               and not (r / "model.joblib").is_file()]
    if missing:
        raise RunDirError(
            f"study {str(study_dir)!r}: {len(missing)} of the {len(runs)} fold models of its "
            f"best configuration {best!r} have no checkpoint (a finished study deletes them "
            "unless ablation.keep_checkpoints: true); re-run the study with "
            "ablation.keep_checkpoints: true, or map one run directory from 'geofuse train'")
    return best, [read_member_spec(r) for r in runs]


def _check_members(source: Path, members: list[MemberSpec]) -> None:
    first = members[0]
    for m in members[1:]:
        if (m.kind, m.class_names, m.patch_size) != (first.kind, first.class_names,
                                                     first.patch_size):
            raise ConfigError(
                f"{str(source)!r}: the fold models differ in kind, classes or patch size "
                f"({m.run_dir!r} vs {first.run_dir!r}); map one run directory instead")
    if not first.class_names or len(first.class_names) > 254:
        raise ConfigError(f"run {first.run_dir!r} has {len(first.class_names)} classes; a "
                          "class map holds 1 to 254 classes (255 is nodata)")


def resolve_source(path: str | Path) -> MapSource:
    """The run directory or study directory ``path`` as a :class:`MapSource`.

    Raises:
        RunDirError: not a run or study directory, files missing, or a study's fold models
            without checkpoints (the message says how to keep them).
        ConfigError: an unsupported run (multi-label, tabular inputs) or disagreeing members.
    """
    path = Path(path).resolve()
    if (path / "study.json").is_file():
        best, members = _study_members(path)
        source = MapSource("study", path, best, members)
    else:
        source = MapSource("run", path, None, [read_member_spec(path)])
    _check_members(path, source.members)
    return source
