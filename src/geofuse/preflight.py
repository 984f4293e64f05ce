"""One validation pass before any work: every problem of a config that can be known up front.

``geofuse config --check`` runs every check; ``prepare``, ``extract``, ``train``, ``ablate`` and
``search`` run the checks of what they need first, so that a typo or a missing file is reported
in seconds, not after minutes of work. All problems are listed together, one per line-item,
each naming the config key, the value and the fix::

    2 problems in study.yaml: 1) train.model.name = 'late_fusoin': unknown model; did you mean
    'late_fusion'? ...; 2) labels.path = 'labls.geojson': file '...' does not exist; ...

What is checked (per command, see :func:`check_config`): model names and options (including
every ``ablation.models`` entry on every sensor subset and every search trial), band and
modality names against the PatchSet, the stack manifest or the config (whichever exists, most
real first), every input file and glob, the label file and its attributes, the folds against
the PatchSet's groups, that the output folders can be written and that the disk has room for
the expected outputs (:func:`free_bytes`; ``GEOFUSE_FREE_BYTES`` overrides it for tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from geofuse._preflight_base import Inputs, Problem, dedupe
from geofuse._preflight_files import (
    LabelCount,
    PatchMeta,
    human,
    labels_problems,
    modality_problems,
    nearest_existing,
    read_patch_meta,
    stack_pixels,
    write_problem,
)
from geofuse._preflight_files import fold_problems as _fold_problems
from geofuse._preflight_files import free_bytes as _free_bytes
from geofuse._preflight_models import (
    device_problems,
    grid_problems,
    loss_problems,
    search_problems,
    train_problems,
)
from geofuse.config import StudyConfig
from geofuse.config_dataset import MULTILABEL_DATASETS
from geofuse.data.patchset import PatchSet
from geofuse.errors import ConfigError

__all__ = ["COMMANDS", "Problem", "check_config", "check_grid", "format_problems", "free_bytes",
           "preflight"]

COMMANDS = ("check", "prepare", "extract", "train", "ablate", "search", "demo")
_ALL_OUTPUTS = ("prepare.output", "extract.output", "train.output", "ablation.output")
_OUTPUTS: dict[str, tuple[str, ...]] = {
    "check": _ALL_OUTPUTS, "demo": _ALL_OUTPUTS, "prepare": ("prepare.output",),
    "extract": ("extract.output",), "train": ("train.output",),
    "ablate": ("ablation.output",), "search": ("ablation.output",),
}
_NEEDS_PATCHES = ("train", "ablate", "search")
Estimate = tuple[str, int, str]  # output key, bytes, what


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk of ``folder``; monkeypatch this or set ``GEOFUSE_FREE_BYTES``."""
    return _free_bytes(folder)


def check_config(cfg: StudyConfig, command: str = "check") -> list[Problem]:
    """Every problem of ``cfg`` that ``command`` would run into, without doing any work.

    Args:
        cfg: the loaded study config.
        command: one of :data:`COMMANDS`; ``check`` runs every check.

    Returns:
        The problems, in config order, each line once (empty: all clear).
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; use one of {COMMANDS}")
    problems, estimates = _input_problems(cfg, command)
    meta, found = _patchset(cfg, command)
    problems += found
    inputs = meta.inputs() if meta is not None else _inputs(cfg)
    if command in ("check", "train", "search", "demo"):
        problems += train_problems(cfg, inputs)
    if command in ("check", "ablate", "demo"):
        problems += grid_problems(cfg, inputs)
    if command in ("check", "train", "search", "demo", "ablate"):
        problems += loss_problems(cfg, inputs) + device_problems(cfg)
    if command == "search" or (command == "check" and cfg.search.space):
        problems += search_problems(cfg, inputs)
    if meta is not None and command in ("check", "ablate", "search"):
        problems += _fold_problems(cfg, meta)
        study = cfg.in_workdir(cfg.ablation.output) / (
            f"{cfg.name}-search" if command == "search" else cfg.name)
        written = sum(f.stat().st_size for f in study.glob("**/folds/fold*.h5"))  # resuming
        estimates.append(("ablation.output",
                          max(0, meta.path.stat().st_size * cfg.ablation.folds - written),
                          f"{cfg.ablation.folds} fold copies of the PatchSet"))
    problems += _output_problems(cfg, command, estimates)
    return dedupe(problems)


def format_problems(problems: list[Problem], source: Path | str | None) -> str:
    """``N problems in FILE: 1) ...; 2) ...`` on one line."""
    n = len(problems)
    items = "; ".join(f"{i}) {p}" for i, p in enumerate(problems, start=1))
    return f"{n} problem{'' if n == 1 else 's'} in {source or 'config'}: {items}"


def preflight(cfg: StudyConfig, command: str) -> None:
    """Run :func:`check_config` and raise listing every problem.

    Raises:
        ConfigError: one or more problems (all of them in one message).
    """
    problems = check_config(cfg, command)
    if problems:
        raise ConfigError(format_problems(problems, cfg.source))


def check_grid(cfg: StudyConfig, patches: PatchSet, command: Literal["ablate", "search"]) -> None:
    """Check the models, options and names of every cell of a study before training any.

    Raises:
        ConfigError: listing every problem, each under its own config key.
    """
    inputs = Inputs(list(patches.band_names), dict(patches.modalities), "the PatchSet",
                    has_tabular=patches.tabular is not None, from_config=False,
                    multilabel=patches.multilabel,
                    segmentation=patches.segmentation or patches.dense_values,
                    regression=patches.regression)
    if command == "ablate":
        problems = grid_problems(cfg, inputs)
    else:
        problems = dedupe([*train_problems(cfg, inputs), *search_problems(cfg, inputs)])
    if problems:
        raise ConfigError(format_problems(problems, cfg.source))


# -- parts ----------------------------------------------------------------------------------
def _input_problems(cfg: StudyConfig, command: str) -> tuple[list[Problem], list[Estimate]]:
    """Input files of prepare / extract, and the size of what they write."""
    problems: list[Problem] = []
    estimates: list[Estimate] = []
    if cfg.dataset is not None:
        if command == "prepare":
            problems.append(Problem("dataset.name", cfg.dataset.name, "a dataset is read "
                                    "directly into patches; skip prepare and run 'geofuse "
                                    "extract -c CONFIG'"))
        if command in ("check", "extract"):
            problems += modality_problems(cfg)
        return problems, estimates
    if command in ("check", "prepare"):
        missing = modality_problems(cfg)
        problems += missing
        if not missing:
            pixels, found = stack_pixels(cfg)
            problems += found
            if pixels is not None:
                estimates.append(("prepare.output", pixels * len(cfg.band_names) * 4,
                                  "the fused stack"))
    if command in ("check", "extract"):
        counted, found = labels_problems(cfg)
        problems += found
        bands = _inputs(cfg).band_names
        if command == "extract" and not _manifest(cfg).is_file():
            problems.append(Problem("prepare.output", cfg.prepare.output, f"extract needs the "
                                    f"fused stack {str(cfg.stack_path)!r} and its manifest; run "
                                    "'geofuse prepare -c CONFIG' first"))
        if counted:
            estimates.append(("extract.output", _patch_count(cfg, counted) * len(bands)
                              * cfg.extract.patch_size ** 2 * 4, "the PatchSet"))
    return problems, estimates


def _patch_count(cfg: StudyConfig, labels: LabelCount) -> int:
    """Patches ``extract`` would write at most (0 when patches cannot fit the stack): one per
    label point, else ``per_polygon`` per polygon or ``per_class`` per class."""
    from geofuse.raster.manifest import StackManifest

    ex, n_features = cfg.extract, labels.features
    if _manifest(cfg).is_file():
        try:
            man = StackManifest.load(_manifest(cfg))
            if ex.patch_size > min(man.width, man.height):
                return 0  # extract says why no patch fits; no disk estimate for that
        except (OSError, ValueError, TypeError):
            pass
    by_class = (ex.per_class or 0) * (labels.classes or n_features)
    if labels.points:
        return min(n_features, by_class) if ex.per_class else n_features
    return max(n_features * (ex.per_polygon or 0), by_class)


def _manifest(cfg: StudyConfig) -> Path:
    from geofuse.raster.manifest import manifest_path

    return manifest_path(cfg.stack_path)


def _inputs(cfg: StudyConfig) -> Inputs:
    """Band names from the stack manifest when it exists, else from the config."""
    from geofuse.raster.manifest import StackManifest

    path = _manifest(cfg)
    if path.is_file():
        try:
            man = StackManifest.load(path)
            mods = {k: list(v) for k, v in man.modalities.items()}
            derived = {m.index_modality: m.index_bands for m in cfg.modalities
                       if m.indices and m.name in mods}  # added by extract
            masks = cfg.extract.target == "mask"
            numbers = cfg.labels is not None and (cfg.labels.value_field is not None
                                                  or cfg.labels.value_raster is not None)
            return Inputs([*man.bands, *(b for v in derived.values() for b in v)],
                          {**mods, **derived}, _origin(masks, numbers, str(path)),
                          from_config=False, segmentation=masks, regression=numbers)
        except (OSError, ValueError, TypeError):
            pass  # an unreadable manifest: prepare rewrites it, extract reports it
    mods = {m.name: list(m.bands) for m in cfg.modalities}
    multilabel = cfg.dataset is not None and cfg.dataset.name in MULTILABEL_DATASETS
    dense = cfg.dataset is not None and cfg.dataset.segmentation
    masks = cfg.dataset is None and cfg.extract.target == "mask"
    values = (cfg.dataset.regression if cfg.dataset is not None else
              cfg.labels is not None and (cfg.labels.value_field is not None
                                          or cfg.labels.value_raster is not None))
    origin = (f"dataset {cfg.dataset.name!r}" if (multilabel or dense or values) and cfg.dataset
              else _origin(masks, values, None))
    return Inputs(list(cfg.all_band_names), {**mods, **dict(cfg.derived_modalities())},
                  origin, multilabel=multilabel, segmentation=dense or masks,
                  regression=values)


def _origin(masks: bool, values: bool, manifest: str | None) -> str:
    """Where the targets come from, for messages."""
    if masks and values:
        return "labels.value_raster (a value per pixel)"
    if masks:
        return "extract.target mask"
    if values:
        return "labels.value_field"
    return f"stack manifest {manifest!r}" if manifest else "the config's modalities"


def _patchset(cfg: StudyConfig, command: str) -> tuple[PatchMeta | None, list[Problem]]:
    path = cfg.patches_path
    if command in ("prepare", "extract"):
        return None, []
    if not path.is_file():
        if command in _NEEDS_PATCHES:
            return None, [Problem("extract.output", cfg.extract.output, f"{command} needs the "
                                  f"PatchSet {str(path)!r}; run 'geofuse extract -c CONFIG' "
                                  "first")]
        return None, []
    try:
        return read_patch_meta(path), []
    except (OSError, KeyError, ValueError) as err:
        return None, [Problem("extract.output", cfg.extract.output, f"{str(path)!r} is not a "
                              f"readable geofuse PatchSet ({type(err).__name__}); re-run "
                              "'geofuse extract -c CONFIG'")]


def _folder(cfg: StudyConfig, key: str) -> tuple[str, Path]:
    """The configured value of an output key and the folder it writes into."""
    return {
        "prepare.output": (cfg.prepare.output, cfg.stack_path.parent),
        "extract.output": (cfg.extract.output, cfg.patches_path.parent),
        "train.output": (cfg.train.output, cfg.runs_path),
        "ablation.output": (cfg.ablation.output, cfg.in_workdir(cfg.ablation.output)),
    }[key]


def _output_problems(cfg: StudyConfig, command: str, estimates: list[Estimate]) -> list[Problem]:
    """Output folders that cannot be written, and disks without room for the outputs."""
    workdir = cfg.workdir_path.absolute()
    folders = {key: _folder(cfg, key) for key in _OUTPUTS[command]}
    inside = {k for k, (_, f) in folders.items() if f.absolute().is_relative_to(workdir)}
    out: list[Problem] = []
    blocked: set[str] = set()
    reason = write_problem(workdir) if inside else None
    if reason:
        out.append(Problem("workdir", cfg.workdir, reason))
        blocked |= inside
    for key, (value, folder) in folders.items():
        if key not in blocked and (reason := write_problem(folder)):
            out.append(Problem(key, value, reason))
            blocked.add(key)
    for key, needed, what in estimates:
        value, folder = _folder(cfg, key)
        free = free_bytes(folder)
        if key not in blocked and free < needed:
            out.append(Problem(key, value, f"{what} needs about {human(needed)} but only "
                               f"{human(free)} is free on {str(nearest_existing(folder))!r}; "
                               "free disk space or set workdir to a larger disk"))
    return out
