"""Pydantic models for a geofuse study, loaded from and dumped to YAML.

One YAML file describes a whole study; every command takes it. Unknown keys are errors
(``extra='forbid'``), and relative paths are resolved against the config file's directory.
"""

from __future__ import annotations

import difflib
import glob
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from geofuse._config_base import ModalityConfig, _Model
from geofuse.config_dataset import DatasetConfig
from geofuse.config_experiments import AblationConfig, GuardConfig, MappingConfig
from geofuse.config_experiments import AblationModelConfig as AblationModelConfig  # re-export
from geofuse.config_experiments import RayConfig as RayConfig  # re-export
from geofuse.config_train import BaselineConfig as BaselineConfig  # re-export
from geofuse.config_train import LossConfig as LossConfig  # re-export
from geofuse.config_train import ModelConfig as ModelConfig  # re-export
from geofuse.config_train import PretrainConfig, TrainConfig
from geofuse.errors import ConfigError, DataNotFoundError


class GridConfig(_Model):
    """An explicit reference grid; when absent, the first modality's grid is used."""

    crs: str = Field(description="Any CRS string rasterio understands, e.g. EPSG:32718.")
    resolution: float = Field(gt=0, description="Pixel size in CRS units.")
    bounds: tuple[float, float, float, float] = Field(
        description="left, bottom, right, top in CRS units."
    )


class PrepareConfig(_Model):
    """Where and how the fused stack is written."""

    output: str = Field("stack.tif", description="Fused GeoTIFF, relative to workdir.")
    block_size: int = Field(512, ge=64, description="Window size; bounds memory use.")
    max_nan_fraction: float = Field(
        1.0, ge=0, le=1, description="Fail if any band has more invalid pixels than this."
    )


class LabelsConfig(_Model):
    """Label polygons and the attribute that holds their class, or a label raster."""

    path: str | None = Field(
        None, description="GeoJSON, GeoPackage or Shapefile with label polygons, or label "
        "points (one patch centred on each point's pixel)."
    )
    raster: str | None = Field(
        None, description="Instead of path: GeoTIFF of class codes per pixel (any CRS/res)."
    )
    value_raster: str | None = Field(
        None, description="Instead of path or raster: GeoTIFF of a continuous quantity per "
        "pixel (canopy height, impervious share, biomass; any CRS/res), or a glob pattern of "
        "tiles mosaicked on the fly (first valid value wins), for dense regression "
        "with extract.target: mask. Its nodata (or value_nodata) and NaN are unlabelled; "
        "tiles are stratified by value_strata quantile ranges of their mean value."
    )
    value_name: str | None = Field(
        None, description="labels.value_raster: what the values measure, in reports and maps "
        "(default: the file's stem, or the folder of a glob pattern)."
    )
    value_resampling: Literal["average", "bilinear", "cubic", "nearest"] = Field(
        "average", description="labels.value_raster: how values are resampled onto the stack "
        "grid (average: the mean of the source pixels under a finer stack pixel)."
    )
    value_nodata: float | None = Field(
        None, description="labels.value_raster: a value that marks unlabelled pixels besides "
        "the raster's own nodata (e.g. -9999)."
    )
    unlabelled: int = Field(0, description="labels.raster: the code of unlabelled pixels.")
    class_codes: dict[str, int] | None = Field(
        None, description="labels.raster: class name -> code; default: every code found, "
        "named class_<code>."
    )
    class_field: str = "class"
    classes: list[str] | None = Field(
        None, description="Class names in index order; default: sorted names found in the file."
    )
    id_field: str | None = Field(None, description="Feature id attribute; default: row number.")
    value_field: str | None = Field(
        None, description="Regression from polygons: the numeric attribute each polygon's "
        "patches learn (e.g. biomass of a field plot, people in a census block) instead of a "
        "class; polygons without a number are dropped with a warning, and class_field is not "
        "read. Splits and folds are stratified by value_strata quantile ranges of the values."
    )
    value_strata: int = Field(
        4, ge=2, le=20, description="labels.value_field / value_raster: quantile ranges of the "
        "polygons' values (the tiles' mean values) that stratify splits and folds (fewer when "
        "the values have fewer distinct numbers)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> LabelsConfig:
        given = [k for k in ("path", "raster", "value_raster") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of labels.path (polygons), labels.raster (a "
                             "GeoTIFF of class codes) and labels.value_raster (a GeoTIFF of "
                             f"values); got {given or 'none'}")
        if self.value_field is not None and self.path is None:
            raise ValueError("labels.value_field reads a number per polygon of labels.path; "
                             f"labels.{given[0]} is a raster: remove one of them")
        return self


class ExtractConfig(_Model):
    """How patches are sampled from the polygons and read from the fused stack."""

    output: str = Field("patches.h5", description="PatchSet file, relative to workdir.")
    patch_size: int = Field(8, ge=1)
    per_polygon: int | None = Field(
        10, ge=1, description="Patch centres per polygon (label points: one patch each)."
    )
    per_class: int | None = Field(
        None, ge=1, description="Patch centres per class, spread over its polygons "
        "(labels.raster: the cap per class, default 200; label points: at most this many "
        "points of a class, a seeded random subset)."
    )
    group_distance: float | None = Field(
        None, gt=0, description="Label points: points at most this far apart (map units, "
        "e.g. metres; measured between the points) form one group that no split divides "
        "(single linkage), e.g. the points of one field or village; points whose patches "
        "share a pixel and the parts of one MultiPoint are always one group."
    )
    jitter: float = Field(0.0, ge=0, description="Random shift of centres, in pixels.")
    min_distance: float = Field(0.0, ge=0, description="Minimum centre spacing, in pixels.")
    max_nodata_fraction: float = Field(0.0, ge=0, le=1)
    on_nodata: Literal["drop", "flag"] = "drop"
    block_size: int | None = Field(
        None, ge=1, description="labels.raster and target mask: side of the spatial blocks "
        "(stack pixels) that group patches for the splits; default 8 x patch_size (target "
        "mask: rounded up to a multiple of patch_size, so no tile straddles two blocks)."
    )
    target: Literal["class", "mask"] = Field(
        "class", description="class: one class per patch (the class at its centre or of its "
        "polygon); mask: semantic segmentation, a class per pixel: the stack is cut into "
        "non-overlapping tiles of patch_size px, each with its mask from labels.raster or the "
        "burnt-in labels.path polygons (unlabelled pixels ignored); tiles are grouped by "
        "spatial block for the splits and capped per dominant class by per_class (default 200)."
    )
    min_labelled: float = Field(
        0.05, gt=0, le=1, description="target mask: the least share of a tile's pixels that "
        "must carry a class for the tile to be kept."
    )
    memory_limit_mb: int = Field(
        2048, ge=0, description="Stacks up to this size are read into memory for fast patch "
        "reads; larger ones (all, with 0) are read window by window."
    )


class SplitConfig(_Model):
    """Stratified, grouped train/validation/test split."""

    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.0, ge=0, lt=1)


class SearchConfig(_Model):
    """Pilot-fold hyperparameter search, then CV of winner and baseline (geofuse search)."""

    space: dict[str, list[Any]] = Field(
        default_factory=dict, description="Dotted config keys -> values to try, e.g. "
        "{train.lr: [0.001, 0.0003], train.optimizer: [adam, sgd]}."
    )
    method: Literal["grid", "random"] = Field(
        "grid", description="grid: every combination; random: n_trials sampled combinations."
    )
    n_trials: int | None = Field(
        None, ge=1, description="random: trials to sample; grid: cap on combinations."
    )
    fold: int = Field(0, ge=0, description="Pilot fold (index into ablation.folds).")
    epochs: int | None = Field(None, ge=1, description="Override train.epochs in trials.")
    cross_validate: bool = Field(
        True, description="Then run full CV of the winner and the baseline config."
    )

    @model_validator(mode="after")
    def _check_space(self) -> SearchConfig:
        for key, values in self.space.items():
            parts = key.split(".")
            model = _model_at(tuple(parts[:-1])) if len(parts) > 1 else None
            if model is None or parts[-1] not in model.model_fields:
                raise ValueError(
                    f"search.space key {key!r} is not a config key; use dotted keys such as "
                    "train.lr, train.optimizer, train.model.hidden"
                )
            if not values:
                raise ValueError(f"search.space[{key!r}] is empty; list at least one value")
        return self


class StudyConfig(_Model):
    """A complete study: inputs, grid, labels, patches, splits and training."""

    name: str = Field("study", description="Study name; used in run names and reports.")
    workdir: str = Field("work", description="Outputs go here, relative to the config file.")
    seed: int = Field(42, description="Seed for sampling, splits and training.")
    modalities: list[ModalityConfig] = Field(
        default_factory=list, description="Sensor inputs; the first defines the reference grid. "
        "Required unless a dataset section provides them."
    )
    dataset: DatasetConfig | None = Field(
        None, description="Read a published dataset layout (So2Sat-POP) instead of prepare + "
        "labels; its modalities fill 'modalities'."
    )
    grid: GridConfig | None = Field(None, description="Explicit reference grid (optional).")
    prepare: PrepareConfig = PrepareConfig()
    labels: LabelsConfig | None = Field(
        None, description="Label polygons or a label raster (needed by extract)."
    )
    extract: ExtractConfig = ExtractConfig()
    splits: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    pretrain: PretrainConfig = PretrainConfig()
    guards: GuardConfig = GuardConfig()
    ablation: AblationConfig = AblationConfig()
    search: SearchConfig = SearchConfig()
    mapping: MappingConfig = MappingConfig()

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_names(self) -> StudyConfig:
        if self.dataset is not None and self.extract.target == "mask":
            raise ValueError(
                "extract.target mask cuts tiles from a prepared stack with labels; a dataset "
                "brings its own targets (its time series carry masks): remove extract.target"
            )
        if (self.labels is not None and self.labels.value_raster is not None
                and self.extract.target != "mask"):
            raise ValueError(
                "labels.value_raster gives a value per pixel, for dense regression on tiles: "
                "set extract.target: mask (or give labels.path with value_field for one value "
                "per patch)"
            )
        self._fill_dataset_modalities()
        names = [m.name for m in self.modalities]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"modality names must be unique; repeated: {dupes}")
        bands = [b for m in self.modalities for b in m.bands]
        dup_bands = sorted({b for b in bands if bands.count(b) > 1})
        if dup_bands:
            raise ValueError(
                f"band names must be unique across modalities; repeated: {dup_bands} "
                "(prefix them, e.g. dem_elevation)"
            )
        self._check_indices(names, bands)
        names = self.all_modality_names
        for sub in self.train.modalities or []:
            if sub not in names:
                raise ValueError(f"train.modalities names unknown modality {sub!r}; known: {names}")
        return self

    def _check_indices(self, names: list[str], bands: list[str]) -> None:
        """Index modalities must not clash with real names, and their bands must exist."""
        from geofuse.data.indices import index_bands
        from geofuse.errors import ConfigError as _ConfigError

        for m in self.modalities:
            if not m.indices:
                continue
            if m.index_modality in names:
                raise ValueError(f"modality {m.name!r} has indices, whose modality "
                                 f"{m.index_modality!r} clashes with a modality of that name; "
                                 "rename it")
            clash = [b for b in m.index_bands if b in bands]
            if clash:
                raise ValueError(f"index bands {clash} of modality {m.name!r} clash with bands "
                                 "of that name; rename them")
            for ix in m.indices:
                try:
                    index_bands(m.name, m.bands, ix, m.sensor)
                except _ConfigError as err:
                    raise ValueError(str(err)) from None

    def _fill_dataset_modalities(self) -> None:
        if self.dataset is None:
            if not self.modalities:
                raise ValueError("'modalities' is empty; list at least one sensor input (or add "
                                 "a dataset section)")
            return
        derived = self.dataset.modality_configs()
        if not self.modalities:
            self.__dict__["modalities"] = derived  # bypass validate_assignment (no re-entry)
            return
        given = [(m.name, m.bands) for m in self.modalities]
        if given != [(m.name, m.bands) for m in derived]:
            raise ValueError(
                f"modalities {[n for n, _ in given]} differ from what dataset "
                f"{self.dataset.name!r} produces {[m.name for m in derived]}; remove "
                "'modalities' (the dataset section defines them)"
            )
        for m, d in zip(self.modalities, derived, strict=True):
            if d.indices and not m.indices:
                m.__dict__["indices"] = list(d.indices)

    # -- paths -----------------------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        """Directory that relative paths are resolved against."""
        return self._base_dir

    @property
    def source(self) -> Path | None:
        """The YAML file this config was loaded from, if any."""
        return self._source

    def resolve(self, path: str | Path) -> Path:
        """Resolve ``path`` against the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    @property
    def workdir_path(self) -> Path:
        return self.resolve(self.workdir)

    def in_workdir(self, path: str | Path) -> Path:
        """Resolve an output path against the work directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.workdir_path / p)

    @property
    def stack_path(self) -> Path:
        return self.in_workdir(self.prepare.output)

    @property
    def patches_path(self) -> Path:
        return self.in_workdir(self.extract.output)

    @property
    def runs_path(self) -> Path:
        return self.in_workdir(self.train.output)

    def modality_files(self, modality: ModalityConfig) -> list[Path]:
        """Expand a modality's file patterns; raise if any pattern matches nothing."""
        return self._expand(modality.files, f"modality {modality.name!r}", "'files'")

    def mask_files(self, modality: ModalityConfig) -> list[Path] | None:
        """Expand a modality's ``mask.files`` (``None`` when the flags are a band of the data)."""
        if modality.mask is None or not modality.mask.files:
            return None
        return self._expand(modality.mask.files, f"modality {modality.name!r}", "'mask.files'")

    def _expand(self, patterns: list[str], owner: str, key: str) -> list[Path]:
        out: list[Path] = []
        for pattern in patterns:
            full = self.resolve(pattern)
            if glob.has_magic(str(full)):
                matches = sorted(Path(p) for p in glob.glob(str(full), recursive=True))
                if not matches:
                    raise DataNotFoundError(
                        f"{owner}: pattern {str(full)!r} matches no file; "
                        f"fix the path in {key} (relative paths start at the config's folder)"
                    )
                out.extend(matches)
            else:
                if not full.exists():
                    raise DataNotFoundError(
                        f"{owner}: file {str(full)!r} does not exist; "
                        f"fix the path in {key} (relative paths start at the config's folder)"
                    )
                out.append(full)
        return out

    def modality(self, name: str) -> ModalityConfig:
        for m in self.modalities:
            if m.name == name:
                return m
        raise ConfigError(
            f"unknown modality {name!r}; known: {[m.name for m in self.modalities]}"
        )

    @property
    def band_names(self) -> list[str]:
        """Bands of the sensor inputs (the fused stack); see :attr:`all_band_names`."""
        return [b for m in self.modalities for b in m.bands]

    def derived_modalities(self) -> list[tuple[str, list[str]]]:
        """(name, bands) of the index modalities extract adds, e.g. ``("s2_idx", ["s2_NDVI"])``."""
        return [(m.index_modality, m.index_bands) for m in self.modalities if m.indices]

    def index_requests(self) -> dict[str, list[str]]:
        """Modality -> indices to compute at extract time."""
        return {m.name: list(m.indices) for m in self.modalities if m.indices}

    def index_sensors(self) -> dict[str, str | None]:
        """Modality -> its sensor key, for the band numbers of its indices."""
        return {m.name: m.sensor for m in self.modalities}

    @property
    def all_modality_names(self) -> list[str]:
        """Modalities of the PatchSet: the sensor inputs, then their index modalities."""
        return [m.name for m in self.modalities] + [n for n, _ in self.derived_modalities()]

    @property
    def all_band_names(self) -> list[str]:
        """Bands of the PatchSet: the sensor inputs' bands, then the index bands."""
        return self.band_names + [b for _, bands in self.derived_modalities() for b in bands]


def _format_validation_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1])
            model = _model_at(e["loc"][:-1])
            valid = sorted(model.model_fields) if model is not None else []
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
            parts.append(f"unknown key {loc!r}; {hint}")
        elif e["type"] == "missing":
            parts.append(f"missing required key {loc!r}; add it")
        elif e["type"] == "value_error" and isinstance(e.get("input"), dict):
            # a model validator: the input is the whole section, the message names the key
            reason = e["msg"].removeprefix("Value error, ")
            parts.append(reason if not e["loc"] else f"{loc}: {reason}")
        else:
            value = e.get("input")
            parts.append(f"{loc} = {value!r}: {e['msg']}")
    return f"{source}: invalid config: " + "; ".join(parts)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Walk the StudyConfig schema along an error location (ignoring list indices)."""
    model: Any = StudyConfig
    for key in loc:
        if isinstance(key, int):
            continue
        field = model.model_fields.get(key) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        ann = field.annotation
        model = _first_model(ann)
        if model is None:
            return None
    return model


def _first_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def parse_config(data: dict[str, Any], base_dir: Path, source: str = "config") -> StudyConfig:
    """Validate a config mapping; relative paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level, got {type(data)}")
    try:
        cfg = StudyConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    cfg._base_dir = base_dir.resolve()
    return cfg


def load_config(path: str | Path) -> StudyConfig:
    """Load and validate a study config from YAML."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(
            f"config file {str(path)!r} does not exist; pass the path of your study YAML "
            "(see configs/ for examples)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    cfg = parse_config(data or {}, path.parent, source=str(path))
    cfg._source = path.resolve()
    return cfg


def with_overrides(cfg: StudyConfig, overrides: dict[str, Any]) -> StudyConfig:
    """A copy of ``cfg`` with dotted keys replaced (``train.lr``, ``train.model.encoder``),
    validated as the YAML would be: a bad value is a one-line ConfigError naming the key."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return cfg
    data = cfg.model_dump(mode="json")
    for dotted, value in given.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    source = f"{cfg.source or 'config'} with {', '.join(f'{k}={v}' for k, v in given.items())}"
    out = parse_config(data, cfg.base_dir, source=source)
    out._source = cfg.source
    return out


def dump_config(cfg: StudyConfig, path: str | Path | None = None) -> str:
    """Serialise a config to YAML (optionally writing it); paths are kept as written."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    if path is not None:
        from geofuse.io_utils import atomic_write_text

        atomic_write_text(Path(path), text)
    return text


def config_schema() -> dict[str, Any]:
    """JSON schema of the study config, for docs and editors."""
    return StudyConfig.model_json_schema()
