"""Preflight checks of names: models and their options, bands, modalities, ablation and search.

Everything here is resolved from the config and the input names (:class:`Inputs`) alone, so
that a typo is reported before any cell of a grid is trained.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from geofuse._preflight_base import Inputs, Problem, dedupe, did_you_mean, suggest
from geofuse.config import AblationModelConfig, ModelConfig, StudyConfig, parse_config
from geofuse.config_train import MULTILABEL_LOSSES, REGRESSION_LOSSES
from geofuse.errors import ConfigError, GeofuseError

KeyOf = Callable[[str], str]
_MODEL_FIELDS = set(ModelConfig.model_fields)


def _model_names() -> list[str]:
    from geofuse.models.forest import BASELINES
    from geofuse.models.registry import list_models

    return [*list_models(), *BASELINES]


def unknown_model(key: str, name: str) -> Problem:
    """The problem of an unregistered model name, with a suggestion."""
    return Problem(key, name, f"unknown model; {did_you_mean(name, _model_names(), 'valid names')}"
                   " (list them with 'geofuse models')")


def model_problems(
    cfg: StudyConfig, model: ModelConfig, modalities: Sequence[str], inputs: Inputs,
    key_of: KeyOf, where: str = "", in_grid: bool = False, bands: Sequence[str] | None = None,
) -> list[Problem]:
    """Problems of one model config: unknown name, options it does not take, bad encoders.

    Args:
        cfg: the study config (resolves ``pretrained_path``).
        model: the model config as the run will see it.
        modalities: modalities of the run (encoder and weight keys must be among them).
        inputs: band names of the run's data.
        key_of: config key of a ``train.model`` field (``name``, ``merge``, ...).
        where: text naming the model's entry in messages, e.g. `` (ablation.models[1])``.
        in_grid: ``modalities`` is one sensor subset of the ablation grid.
        bands: ``train.bands`` of the run (None: every band of its modalities).
    """
    from geofuse.models.forest import is_baseline
    from geofuse.models.registry import MODELS, is_segmentation_model, model_options

    name = model.name
    if inputs.regression and name == "logistic_regression":
        return [Problem(key_of("name"), name, f"{inputs.origin} carries continuous targets "
                        "(regression) and logistic_regression is a classifier; use "
                        "random_forest (a regression forest on these targets)")]
    if is_baseline(name):  # per patch or, on masks, per pixel
        return []
    if name not in MODELS:
        return [unknown_model(key_of("name"), name)]
    if inputs.regression and not inputs.segmentation and is_segmentation_model(name):
        return [Problem(key_of("name"), name, f"{name!r} is a segmentation model (pixel masks) "
                        f"but {inputs.origin} carries one value per patch (regression); pick a "
                        "patch model (see 'geofuse models')")]
    if inputs.segmentation is not None and is_segmentation_model(name) != inputs.segmentation:
        target = "a value per pixel" if inputs.regression else "pixel masks (segmentation)"
        return [Problem(key_of("name"), name, (
            f"{inputs.origin} carries {target} and {name!r} classifies whole patches; pick a "
            "segmentation model (lstm_unet, unet_early, unet_late, siamese_unet, unet_single) "
            "or random_forest" if inputs.segmentation else
            f"{name!r} is a segmentation model (pixel masks) but {inputs.origin} carries one "
            "label per patch; pick a patch classifier (see 'geofuse models')"))]
    accepted = model_options(name)
    takes = sorted(_MODEL_FIELDS & set(accepted))
    defaults = ModelConfig().model_dump()
    out = [
        Problem(key_of(k), v, f"model {name!r}{where} does not take option {k!r} (it takes "
                f"{', '.join(takes) or 'none'}); remove it or pick a model that takes it")
        for k, v in model.model_dump(exclude={"name"}).items()
        if k not in accepted and v != defaults.get(k)
    ]
    if "encoders" in accepted:
        out += _encoder_problems(model.encoders or {}, key_of("encoders"), name)
    for option in ("encoders", "weights"):
        given = getattr(model, option) if option in accepted else None
        unknown = sorted(set(given or {}) - set(modalities))
        if unknown:
            out.append(Problem(key_of(option), given, (
                f"names {unknown}, missing from some ablation.sensors subsets; name only "
                "modalities that every subset has" if in_grid else
                f"names {unknown} but the run uses only {list(modalities)}; name only those")))
    if "time_series" in accepted:
        out += _time_series_problems(model.time_series, modalities, bands,
                                     key_of("time_series"), inputs, in_grid)
    if "rgb_bands" in accepted and model.rgb_bands:
        dateless = {b.rsplit("@", 1)[0] for b in inputs.band_names}  # time series: band@date
        missing = [b for b in model.rgb_bands if b not in dateless]
        if missing:
            out.append(Problem(key_of("rgb_bands"), model.rgb_bands,
                               f"band(s) {missing} are not in {inputs.origin}; "
                               f"{did_you_mean(missing[0], inputs.band_names, 'bands')}"))
    if "pretrained_path" in accepted and model.pretrained_path:
        path = cfg.resolve(model.pretrained_path)
        if not path.is_file():
            out.append(Problem(key_of("pretrained_path"), model.pretrained_path,
                               f"file {str(path)!r} does not exist; fix the path (relative to "
                               "the config's folder) or remove it to train from scratch"))
        else:
            out += _pretrained_band_problems(cfg, path, model, modalities, inputs, key_of,
                                             in_grid)
    if "num_tabular" in accepted and inputs.has_tabular is False:
        out.append(Problem(key_of("name"), name, f"needs tabular attributes per patch but "
                           f"{inputs.origin} has none; pick an image-only model"))
    return out


def _pretrained_band_problems(
    cfg: StudyConfig, path: Any, model: ModelConfig, modalities: Sequence[str], inputs: Inputs,
    key_of: KeyOf, in_grid: bool,
) -> list[Problem]:
    """Bands of a weight file against the run's: a ``geofuse pretrain`` file made for other
    bands (refused unless a timm backbone matches them by name), ``pretrained_bands`` that
    match none of the run's bands (a single run; a grid cell warns instead) or that would give
    another sensor's bands Sentinel-2 kernels."""
    from geofuse.models.adapt import PRETRAINED_BAND_SETS, resolve_pretrained_bands
    from geofuse.models.backbones import BACKBONES, read_file_metadata
    from geofuse.models.registry import model_options

    made_for = read_file_metadata(path).get("band_names")
    own = {m: list(inputs.modalities.get(m, [])) for m in modalities}
    run_bands = [b for bands in own.values() for b in bands]
    where = f"the sensor subset {list(modalities)}" if in_grid else "the run"
    if not model.pretrained_bands and (not made_for or not run_bands
                                       or list(made_for) == run_bands):
        return []
    if not model.pretrained_bands and model.name not in BACKBONES:
        return [Problem(key_of("pretrained_path"), model.pretrained_path,
                        f"was pretrained on bands {list(made_for or [])} but {where} uses "
                        f"{run_bands}; run 'geofuse pretrain' with the same train.modalities, "
                        "or list only that subset in ablation.sensors")]
    source = resolve_pretrained_bands(model.pretrained_bands) or list(made_for or [])
    key = key_of("pretrained_bands") if model.pretrained_bands else key_of("pretrained_path")
    given = model.pretrained_bands or model.pretrained_path
    preset = isinstance(model.pretrained_bands, str) and \
        model.pretrained_bands in PRETRAINED_BAND_SETS
    sensors = {m.name: m.sensor for m in cfg.modalities}
    per_modality = "modalities" in model_options(model.name)  # unet_late: each on its own
    try:
        other = [m for m in own if preset and sensors.get(m) not in (None, "sentinel2")
                 and _matched(own[m], source)]
        matched = any(_matched(b, source) for b in (own.values() if per_modality
                                                     else [run_bands]))
    except ConfigError as err:
        return [Problem(key, given, str(err))]
    if other:
        return [Problem(key, given, (
            f"names Sentinel-2 bands, but modality {other[0]!r} (sensor "
            f"{sensors[other[0]]}) has bands of the same names {own[other[0]]} that would "
            "take Sentinel-2 kernels; list the file's bands with their modality prefix "
            "instead (e.g. s2_B1, s2_B2, ...)"))]
    if matched or in_grid:
        return []
    return [Problem(key, given, f"none of the run's bands {run_bands} is among the weight "
                    f"file's bands {list(source)}; name the file's bands as yours are named "
                    "(a modality prefix on your bands is ignored, B04 = B4) or train from "
                    "scratch")]


def _matched(bands: Sequence[str], source: Sequence[str]) -> bool:
    """Whether any of ``bands`` is among ``source`` (see :func:`~geofuse.models.adapt.
    match_bands`, which raises on ambiguous names)."""
    from geofuse.models.adapt import match_bands

    return any(i is not None for i in match_bands(list(bands), list(source)))


def _time_series_problems(given: list[str] | None, modalities: Sequence[str],
                          bands: Sequence[str] | None, key: str, inputs: Inputs,
                          in_grid: bool) -> list[Problem]:
    """``train.model.time_series`` against the run's modalities and bands: the layout
    :func:`~geofuse.models.temporal.date_layout` builds the model from."""
    from geofuse.models.temporal import date_layout

    unknown = [m for m in given or [] if m not in inputs.modalities]
    if unknown:
        return [Problem(key, given, f"names {unknown}, not modalities of {inputs.origin}; "
                        f"{did_you_mean(unknown[0], list(inputs.modalities), 'modalities')}")]
    kept = {m: [b for b in inputs.modalities[m] if not bands or b in bands]
            for m in modalities if m in inputs.modalities}
    kept = {m: b for m, b in kept.items() if b}
    try:
        date_layout({m: len(b) for m, b in kept.items()}, given,
                    [b for v in kept.values() for b in v])
    except ConfigError as err:
        where = f" (sensor subset {list(modalities)})" if in_grid else ""
        return [Problem(key, given, f"{err}{where}".removeprefix("temporal_cnn: "))]
    return []


def _encoder_problems(encoders: dict[str, str], key: str, model: str) -> list[Problem]:
    from geofuse.models.encoders import DEFAULT_ENCODER
    from geofuse.models.registry import MODELS

    valid = sorted({DEFAULT_ENCODER, *MODELS})
    return [Problem(f"{key}.{m}", enc, f"unknown encoder of {model!r}; "
                    f"{did_you_mean(enc, valid, 'valid encoders')}")
            for m, enc in encoders.items() if enc not in valid]


def run_modalities(train_bands: list[str] | None, train_modalities: list[str] | None,
                   inputs: Inputs) -> list[str]:
    """The modalities a run uses: those of ``train.bands``, else ``train.modalities``, else all."""
    if train_bands:
        return inputs.modalities_of(train_bands)
    if train_modalities:
        return [m for m in inputs.modalities if m in train_modalities]
    return list(inputs.modalities)


def band_problems(
    bands: list[str] | None, modalities: list[str] | None, inputs: Inputs,
    bands_key: str = "train.bands", modalities_key: str = "train.modalities",
) -> list[Problem]:
    """Unknown names in ``train.bands`` / ``train.modalities`` against the real inputs."""
    rerun = "" if inputs.from_config else (
        " (if the config lists it, re-run 'geofuse prepare' and 'geofuse extract')")
    out = []
    for band in bands or []:
        if band not in inputs.band_names:
            out.append(Problem(bands_key, band, f"unknown band; {suggest(band, inputs.band_names)}"
                               f"{inputs.origin} has {', '.join(inputs.band_names)}; "
                               f"fix {bands_key}{rerun}"))
    for mod in modalities or []:
        if mod not in inputs.modalities:
            out.append(Problem(modalities_key, mod, f"unknown modality; "
                               f"{suggest(mod, inputs.modalities)}{inputs.origin} has "
                               f"{', '.join(inputs.modalities)}; "
                               f"fix {modalities_key}{rerun}"))
    return out


def train_problems(cfg: StudyConfig, inputs: Inputs) -> list[Problem]:
    """``train.bands``, ``train.modalities`` and ``train.model`` against the inputs."""
    t = cfg.train
    out = band_problems(t.bands, t.modalities, inputs)
    mods = run_modalities(t.bands, t.modalities, inputs)
    out += model_problems(cfg, t.model, mods, inputs, lambda k: f"train.model.{k}",
                          bands=t.bands)
    return out


def device_problems(cfg: StudyConfig) -> list[Problem]:
    """``train.devices``: no more GPUs than the machine has, and a Ray cell that reserves
    GPUs reserves enough of them."""
    t, reserved = cfg.train, cfg.ablation.ray.num_gpus_per_cell
    if t.devices > 1 and 0 < reserved < t.devices:
        return [Problem("ablation.ray.num_gpus_per_cell", reserved, f"each cell trains on "
                        f"train.devices = {t.devices} devices; reserve at least {t.devices} "
                        "GPUs per cell, or set train.devices to the GPUs reserved")]
    if t.devices <= 1 or t.accelerator not in ("gpu", "cuda") or cfg.ablation.ray.address:
        return []  # a Ray cell's GPUs are the cluster's, checked when the study starts
    import torch

    present = torch.cuda.device_count()
    if present >= t.devices:
        return []
    return [Problem("train.devices", t.devices, f"train.accelerator is {t.accelerator!r} and "
                    f"this machine has {present} GPU(s); set train.devices to at most "
                    f"{max(present, 1)}, or accelerator: cpu")]


def loss_problems(cfg: StudyConfig, inputs: Inputs) -> list[Problem]:
    """``train.loss`` and ``train.monitor`` against the targets: label sets need a sigmoid
    loss, continuous values a regression loss and a regression score."""
    name, monitor = cfg.train.loss.name, cfg.train.monitor
    out = []
    if inputs.regression and name not in ("auto", *REGRESSION_LOSSES):
        out.append(Problem("train.loss.name", name, f"{inputs.origin} carries continuous "
                           "targets (regression) and this loss is for classes; use mse, huber, "
                           "l1 or auto"))
    elif not inputs.regression and name in REGRESSION_LOSSES:
        fix = "auto, bce or focal" if inputs.multilabel else "auto, cross_entropy or focal"
        out.append(Problem("train.loss.name", name, f"is a regression loss but "
                           f"{inputs.origin} carries classes; use {fix}"))
    elif inputs.multilabel and name not in ("auto", *MULTILABEL_LOSSES):
        out.append(Problem("train.loss.name", name, f"{inputs.origin} carries multi-label "
                           "targets (label sets) and this loss treats classes as exclusive; "
                           "use bce, focal or auto"))
    if inputs.regression and cfg.train.loss.class_weights is not None:
        out.append(Problem("train.loss.class_weights", cfg.train.loss.class_weights,
                           f"weights classes, but {inputs.origin} carries continuous targets "
                           "(regression); remove class_weights"))
    if not inputs.regression and cfg.train.target_transform != "none":
        out.append(Problem("train.target_transform", cfg.train.target_transform,
                           f"transforms continuous targets, but {inputs.origin} carries "
                           "classes; remove it (or set none)"))
    if inputs.regression and monitor not in ("val_loss", "val_r2"):
        out.append(Problem("train.monitor", monitor, f"{inputs.origin} carries continuous "
                           "targets (regression); monitor val_loss or val_r2"))
    elif not inputs.regression and monitor == "val_r2":
        out.append(Problem("train.monitor", monitor, f"val_r2 scores regression, but "
                           f"{inputs.origin} carries classes; monitor val_loss, val_f1_macro "
                           "or val_accuracy"))
    return out


def _entries(cfg: StudyConfig) -> list[tuple[int | None, AblationModelConfig]]:
    if not cfg.ablation.models:
        return [(None, AblationModelConfig(name=cfg.train.model.name))]
    return [(i, AblationModelConfig(name=e) if isinstance(e, str) else e)
            for i, e in enumerate(cfg.ablation.models)]


def _subsets(cfg: StudyConfig, inputs: Inputs) -> tuple[list[list[str]], list[Problem]]:
    """The grid's sensor subsets, and the problems of ablation.primary / ablation.sensors."""
    names, a = list(inputs.modalities), cfg.ablation
    out = []
    if a.primary is not None and a.primary not in names:
        out.append(Problem("ablation.primary", a.primary, f"unknown modality; "
                           f"{did_you_mean(a.primary, names, 'modalities')}; "
                           f"use one of {names}"))
    for i, subset in enumerate(a.sensors or []):
        unknown = [m for m in subset if m not in names]
        for m in unknown:
            out.append(Problem(f"ablation.sensors[{i}]", subset, f"unknown modality {m!r}; "
                               f"{did_you_mean(m, names, 'modalities')} (known: {names})"))
        if not subset or len(set(subset)) != len(subset):
            out.append(Problem(f"ablation.sensors[{i}]", subset,
                               "list distinct modalities, at least one"))
        if subset in (a.sensors or [])[:i]:
            out.append(Problem(f"ablation.sensors[{i}]", subset, "repeats an earlier entry; "
                               "remove the duplicate"))
    if out:
        return [], out
    from geofuse.experiments.grid import sensor_subsets

    return sensor_subsets(names, a.primary, a.sensors), []


def _train_override_problems(cfg: StudyConfig, entry: AblationModelConfig, i: int | None
                             ) -> list[Problem]:
    """An entry's ``train`` overrides (see :func:`geofuse.experiments.grid.model_specs`)."""
    from geofuse.experiments.grid import check_train_overrides

    try:
        check_train_overrides(cfg, entry)
    except ConfigError as err:
        return [Problem(f"ablation.models[{i}].train", entry.train, err.one_line(), plain=True)]
    return []


def grid_problems(cfg: StudyConfig, inputs: Inputs) -> list[Problem]:
    """The ablation grid: sensors, every model entry on every subset, labels and baseline."""
    subsets, out = _subsets(cfg, inputs)
    base = cfg.train.model.model_dump(mode="json")
    for i, entry in _entries(cfg):
        where = "" if i is None else f" (ablation.models[{i}])"
        name_key = "train.model.name" if i is None else (
            f"ablation.models[{i}]" if isinstance((cfg.ablation.models or [])[i], str)
            else f"ablation.models[{i}].name")

        def key_of(k: str, i: int | None = i, entry: AblationModelConfig = entry,
                   name_key: str = name_key) -> str:
            if k == "name":
                return name_key
            return f"ablation.models[{i}].options.{k}" if k in entry.options else f"train.model.{k}"

        try:
            model = ModelConfig(**{**base, "name": entry.name, **entry.options})
        except (ValueError, TypeError) as err:
            out.append(Problem(f"ablation.models[{i}].options", entry.options,
                               f"invalid train.model options ({' '.join(str(err).split())[:200]})"))
            continue
        if entry.train:
            out += _train_override_problems(cfg, entry, i)
        for subset in subsets:
            ordered = [m for m in inputs.modalities if m in subset]
            out += model_problems(cfg, model, ordered, inputs, key_of, where, in_grid=True)
    if not out and cfg.ablation.baseline is not None:
        out += _baseline_problems(cfg)
    return dedupe(out)


def _baseline_problems(cfg: StudyConfig) -> list[Problem]:
    from geofuse.experiments.ablation import baseline_config_id
    from geofuse.experiments.grid import build_grid

    try:
        baseline_config_id(cfg, build_grid(cfg, folds=[0]))
    except GeofuseError as err:
        return [Problem("ablation.baseline", cfg.ablation.baseline, err.one_line(), plain=True)]
    return []


def search_problems(cfg: StudyConfig, inputs: Inputs) -> list[Problem]:
    """``search``: pilot fold, and every trial's config, model and bands."""
    from geofuse.experiments.grid import set_dotted
    from geofuse.experiments.search import search_trials

    s = cfg.search
    out: list[Problem] = []
    if s.fold >= cfg.ablation.folds:
        out.append(Problem("search.fold", s.fold, f"ablation.folds = {cfg.ablation.folds} gives "
                           f"folds 0..{cfg.ablation.folds - 1}; pick one of them"))
    try:
        trials = search_trials(s, cfg.seed)
    except ConfigError as err:
        return [*out, Problem("search.space", s.space, err.one_line(), plain=True)]
    data = cfg.model_dump(mode="json")
    for i, params in enumerate(trials):
        trial = copy.deepcopy(data)
        for key, value in params.items():
            set_dotted(trial, key, value)
        try:
            tcfg = parse_config(trial, cfg.base_dir, source=f"search trial-{i:02d} {params}")
        except ConfigError as err:
            out.append(Problem("search.space", params, err.one_line(), plain=True))
            continue

        def key_of(k: str, params: dict[str, Any] = params) -> str:
            full = f"train.model.{k}"
            return f"search.space[{full!r}]" if full in params else full

        t = tcfg.train
        bands_key, mods_key = (f"search.space[{k!r}]" if k in params else k
                               for k in ("train.bands", "train.modalities"))
        out += band_problems(t.bands, t.modalities, inputs, bands_key, mods_key)
        mods = run_modalities(t.bands, t.modalities, inputs)
        out += model_problems(tcfg, t.model, mods, inputs, key_of, bands=t.bands)
    return dedupe(out)
