"""The ablation grid: sensor subsets x models (fusion strategies) x seeds x folds.

Every cell is one training run, named by a readable, stable ``config_id`` such as
``s2+dem/late_fusion`` plus its seed and fold. A cell carries the config overrides (dotted
keys -> values) that turn the study config into the cell's config, so the same runner serves
ablation grids and hyperparameter-search trials.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from geofuse.config import AblationModelConfig, ModelConfig, StudyConfig, parse_config
from geofuse.errors import ConfigError

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclass(frozen=True)
class ModelSpec:
    """A model of the grid: registry name, ``train.model`` options and its label."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.label:
            settings = {**self.options, **{f"train.{k}": v for k, v in self.train.items()}}
            opts = ",".join(f"{k}={_short(v)}" for k, v in sorted(settings.items()))
            object.__setattr__(self, "label", f"{self.name}[{opts}]" if opts else self.name)


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class Cell:
    """One training run of a study.

    Attributes:
        config_id: readable configuration name, e.g. ``s2+dem/late_fusion``.
        seed: training seed.
        fold: validation fold index.
        overrides: dotted config keys -> values applied to the study config.
        modalities: modalities used (``None``: all / as configured).
        model: ``train.model.name`` of the cell.
        options: the cell's ``train.model`` options beyond the study config.
    """

    config_id: str
    seed: int
    fold: int
    overrides: dict[str, Any] = field(default_factory=dict)
    modalities: tuple[str, ...] | None = None
    model: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """File-system safe, unique name: ``<config_id>__seed<seed>__fold<fold>``."""
        safe = _UNSAFE.sub("_", self.config_id.replace("/", "__"))
        if safe != self.config_id.replace("/", "__"):  # keep distinct ids distinct
            safe += "-" + hashlib.sha1(self.config_id.encode()).hexdigest()[:6]
        return f"{safe}__seed{self.seed}__fold{self.fold}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (as stored in study.json and cell results)."""
        return {
            "slug": self.slug, "config_id": self.config_id, "seed": self.seed,
            "fold": self.fold, "modalities": list(self.modalities or []), "model": self.model,
            "options": dict(self.options), "overrides": copy.deepcopy(self.overrides),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        return cls(
            config_id=data["config_id"], seed=int(data["seed"]), fold=int(data["fold"]),
            overrides=dict(data.get("overrides") or {}),
            modalities=tuple(data["modalities"]) if data.get("modalities") else None,
            model=data.get("model", ""), options=dict(data.get("options") or {}),
        )


def sensor_subsets(
    modalities: list[str], primary: str | None = None, explicit: list[list[str]] | None = None
) -> list[list[str]]:
    """Default subsets: the primary alone, primary + each other modality, then all of them.

    ``explicit`` subsets are validated and returned as given (cells use channel order).

    Raises:
        ConfigError: an unknown or repeated modality, an empty subset, or a repeated subset.
    """
    primary = primary or modalities[0]
    if primary not in modalities:
        raise ConfigError(
            f"ablation.primary {primary!r} is not a modality; use one of {modalities}"
        )
    if explicit is None:
        others = [m for m in modalities if m != primary]
        subsets = [[primary], *[[primary, m] for m in others]]
        if len(others) > 1:
            subsets.append([primary, *others])
        return subsets
    out: list[list[str]] = []
    for subset in explicit:
        unknown = [m for m in subset if m not in modalities]
        if not subset or unknown or len(set(subset)) != len(subset):
            raise ConfigError(
                f"ablation.sensors entry {subset} must list distinct known modalities (unknown: "
                f"{unknown}); known: {modalities}"
            )
        if subset in out:
            raise ConfigError(f"ablation.sensors lists {subset} twice; remove the duplicate")
        out.append(list(subset))
    return out


def model_specs(cfg: StudyConfig) -> list[ModelSpec]:
    """The grid's models from ``ablation.models`` (default: ``train.model`` as configured).

    Raises:
        ConfigError: invalid model options or two entries with the same label.
    """
    entries = cfg.ablation.models
    if not entries:
        return [ModelSpec(cfg.train.model.name)]
    specs = []
    for entry in entries:
        spec_cfg = AblationModelConfig(name=entry) if isinstance(entry, str) else entry
        try:
            ModelConfig(name=spec_cfg.name, **spec_cfg.options)
        except Exception as err:
            raise ConfigError(
                f"ablation.models entry {spec_cfg.name!r}: invalid options {spec_cfg.options} "
                f"({' '.join(str(err).split())[:200]}); use train.model keys"
            ) from None
        check_train_overrides(cfg, spec_cfg)
        specs.append(ModelSpec(spec_cfg.name, dict(spec_cfg.options), spec_cfg.label or "",
                               dict(spec_cfg.train)))
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"ablation.models repeats {dupes}; give the entries distinct labels")
    return specs


#: train keys an ablation entry cannot change (the grid sets them itself).
_GRID_KEYS = ("model", "modalities", "bands")


def check_train_overrides(cfg: StudyConfig, entry: AblationModelConfig) -> None:
    """Validate an entry's ``train`` overrides against the train section.

    Raises:
        ConfigError: a key the grid sets itself, or an invalid train setting.
    """
    fixed = sorted(set(entry.train) & set(_GRID_KEYS))
    if fixed:
        raise ConfigError(f"ablation.models entry {entry.name!r}: train keys {fixed} are set by "
                          "the grid; use options (model) or ablation.sensors (inputs)")
    if not entry.train:
        return
    from geofuse.config import TrainConfig

    try:
        TrainConfig.model_validate({**cfg.train.model_dump(mode="json"), **entry.train})
    except Exception as err:
        raise ConfigError(
            f"ablation.models entry {entry.name!r}: invalid train settings {entry.train} "
            f"({' '.join(str(err).split())[:200]}); use keys of the train section"
        ) from None


def build_grid(cfg: StudyConfig, folds: list[int] | None = None) -> list[Cell]:
    """All cells of the ablation: subsets x models x seeds x folds (config-major order)."""
    names = cfg.all_modality_names  # the sensor inputs, then their index modalities
    subsets = sensor_subsets(names, cfg.ablation.primary, cfg.ablation.sensors)
    seeds = list(cfg.ablation.seeds or [cfg.seed])
    fold_ids = list(range(cfg.ablation.folds)) if folds is None else list(folds)
    # learning curve: the largest share first, so that the default baseline has all of them
    shares = sorted(cfg.ablation.label_fractions or [], reverse=True) or [None]
    cells = []
    for subset in subsets:
        ordered = [m for m in names if m in subset]
        for spec in model_specs(cfg):
            model = {**cfg.train.model.model_dump(mode="json"), "name": spec.name,
                     **spec.options}
            base = {"train.modalities": ordered, "train.bands": None, "train.model": model,
                    **{f"train.{k}": v for k, v in spec.train.items()}}
            for share in shares:
                config_id = f"{'+'.join(ordered)}/{spec.label}" + share_suffix(share)
                overrides = base if share is None else {**base, "train.label_fraction": share}
                for seed in seeds:
                    for fold in fold_ids:
                        cells.append(Cell(config_id, seed, fold, overrides, tuple(ordered),
                                          spec.name, dict(spec.options)))
    return cells


def share_suffix(share: float | None) -> str:
    """``@25%`` for a label share of 0.25 (nothing without a learning curve)."""
    return "" if share is None else f"@{100 * share:g}%"


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key = "a.b"`` (creating mappings on the way)."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = copy.deepcopy(value)


def cell_config(cfg: StudyConfig, cell: Cell) -> StudyConfig:
    """The study config with the cell's seed and overrides applied (validated)."""
    data = cfg.model_dump(mode="json")
    for key, value in cell.overrides.items():
        set_dotted(data, key, value)
    data["seed"] = cell.seed
    out = parse_config(data, cfg.base_dir, source=f"cell {cell.config_id}")
    out._source = cfg.source
    return out
