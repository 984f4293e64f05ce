"""The ``geofuse`` command line: one thin function per command, no logic."""

from __future__ import annotations

import functools
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from typer.exceptions import TyperException

from geofuse._signals import install_stop_handlers
from geofuse.errors import ConfigError, friendly_error

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="geofuse: multi-sensor fusion deep learning for Earth-observation imagery.",
)
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = typer.Option(..., "--config", "-c", help="Study YAML file.", show_default=False)
ClassesOpt = typer.Option(None, "--classes", help="Comma-separated class names, for a class "
                          "map without a class_names tag (default: class_0, class_1, ...).")


def _class_names(classes: str | None) -> list[str] | None:
    """``--classes a, b,c`` as a list of names."""
    return [c.strip() for c in classes.split(",")] if classes else None


#: Set by ``geofuse --debug``: let tracebacks through for bug reports.
_DEBUG = False


def _friendly(func: F) -> F:
    """Print errors on one line and exit instead of showing a traceback.

    GeofuseError, a full disk, read-only outputs, GDAL and HDF5 errors exit 2; Ctrl+C exits
    130 (128 + the signal); anything else is a bug: exit 1 with a hint to re-run with --debug.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except (Exception, KeyboardInterrupt) as err:
            if _DEBUG or type(err).__module__.startswith(("click", "typer")):
                raise
            known = friendly_error(err)
            text = known.one_line() if known is not None else (
                f"unexpected {type(err).__name__}: {' '.join(str(err).split())}; this is a bug "
                "in geofuse: re-run with 'geofuse --debug ...' and report the traceback"
            )
            console.print(f"[bold red]error:[/] {text}", soft_wrap=True, highlight=False)
            raise typer.Exit(code=known.exit_code if known is not None else 1) from None

    return wrapper  # type: ignore[return-value]


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kw: Any) -> None:
    """Print a warning on one line, without the source line Python shows by default."""
    text = " ".join(str(message).split())
    console.print(f"[yellow]warning:[/] {text}", soft_wrap=True, highlight=False)


def _print_version(value: bool) -> None:
    """``--version``: print geofuse's version and exit."""
    if value:
        import geofuse

        sys.stdout.write(f"geofuse {geofuse.__version__}\n")
        raise typer.Exit()


@app.callback()
def _setup(
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks instead of one-line errors (for bug reports)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True,
        help="Print the geofuse version and exit.",
    ),
) -> None:
    """geofuse: multi-sensor fusion deep learning for Earth-observation imagery."""
    global _DEBUG
    _DEBUG = debug
    warnings.showwarning = _show_warning
    install_stop_handlers()  # SIGTERM stops as cleanly as Ctrl+C, with the command to go on


@app.command()
@_friendly
def synth(
    out: Path = typer.Option(Path("synthetic"), "--out", "-o", help="Folder for the scene."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same files."),
) -> None:
    """Generate the built-in synthetic Los Lagos-like scene and a ready study config."""
    from geofuse.data.synthetic import generate_scene

    cfg_path = generate_scene(out, seed=seed)
    console.print(f"synthetic scene written; study config: [bold]{cfg_path}[/]")


@app.command()
@_friendly
def prepare(config: Path = ConfigOpt) -> None:
    """Align every modality onto the reference grid and write the fused stack + QC report."""
    from geofuse.config import load_config
    from geofuse.preflight import preflight
    from geofuse.raster.prepare import prepare_stack

    cfg = load_config(config)
    preflight(cfg, "prepare")
    result = prepare_stack(cfg)
    console.print(f"fused stack: [bold]{result.stack_path}[/]; QC report: {result.qc_path}")


@app.command()
@_friendly
def extract(config: Path = ConfigOpt) -> None:
    """Sample patches in label polygons (or a dataset folder) into a PatchSet with splits."""
    from geofuse.config import load_config
    from geofuse.data.extract import extract_patches
    from geofuse.preflight import preflight

    cfg = load_config(config)
    preflight(cfg, "extract")
    patches = extract_patches(cfg)
    what = "tiles" if patches.segmentation or patches.dense_values else "patches"
    console.print(f"{len(patches)} {what} written to [bold]{cfg.patches_path}[/]")


@app.command()
@_friendly
def train(
    config: Path = ConfigOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    run_name: str | None = typer.Option(None, "--run-name", help="Run directory name."),
    optimizer: str | None = typer.Option(None, "--optimizer", help="Override train.optimizer."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Override train.scheduler."),
    lr: float | None = typer.Option(None, "--lr", help="Override train.lr."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override train.epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size",
                                          help="Override train.batch_size."),
    lstm_hidden_dim: int | None = typer.Option(
        None, "--lstm-hidden-dim", help="Override train.model.lstm_hidden_dim (lstm_unet)."),
    devices: int | None = typer.Option(
        None, "--devices", min=1, help="Override train.devices (data-parallel DDP)."),
    precision: str | None = typer.Option(
        None, "--precision", help="Override train.precision (32-true, bf16-mixed, 16-mixed)."),
) -> None:
    """Train a network or baseline on the PatchSet; writes a self-describing run directory.
    The options override the config's train section (recorded in the run's config.yaml)."""
    from geofuse.config import load_config, with_overrides
    from geofuse.preflight import preflight
    from geofuse.training.train import train_model

    cfg = with_overrides(load_config(config), {
        "train.optimizer": optimizer, "train.scheduler": scheduler, "train.lr": lr,
        "train.epochs": epochs, "train.batch_size": batch_size,
        "train.model.lstm_hidden_dim": lstm_hidden_dim, "train.devices": devices,
        "train.precision": precision})
    preflight(cfg, "train")
    run_dir = train_model(cfg, resume=resume, run_name=run_name)
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        _print_scores(json.loads(metrics_file.read_text()))
    console.print(f"run directory: [bold]{run_dir}[/]")


@app.command()
@_friendly
def pretrain(
    config: Path = ConfigOpt,
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override pretrain.epochs."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Weight file (default: pretrain.output, else "
        "<workdir>/pretrained/<model>_simclr.pt)."),
    include_test: bool = typer.Option(
        False, "--include-test", help="Also learn from the test split's images (never its "
        "labels; transductive: the test set is then less independent)."),
) -> None:
    """Self-supervised SimCLR pretraining of train.model's encoder on the study's patches
    (labels unused); writes a weight file for train.model.pretrained_path."""
    from geofuse.config import load_config
    from geofuse.training.ssl import pretrain as run_pretrain

    cfg = load_config(config)
    result = run_pretrain(cfg, epochs=epochs, out=out, include_test=include_test or None)
    console.print(f"contrastive loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f} over "
                  f"{len(result.losses)} epoch(s), {result.n_patches} patches "
                  f"({' + '.join(result.splits)})"
                  + (f" + {result.n_stack_windows} unlabelled windows of the stack"
                     if result.n_stack_windows else ""))
    console.print(f"pretrained weights: [bold]{result.path}[/]")
    console.print(f"to use them, set in {config}:  {result.config_line}", soft_wrap=True,
                  highlight=False)


def _print_scores(metrics: dict[str, Any]) -> None:
    """One line per evaluated split: accuracy and macro F1 (multi-label: subset accuracy,
    macro and micro F1, mAP)."""
    for split in ("val", "test"):
        m = metrics.get(split)
        if isinstance(m, dict) and m.get("regression"):
            console.print(f"{split}: R2 {m['r2']:.3f}, RMSE {m['rmse']:.4g}, MAE {m['mae']:.4g} "
                          + (f"({m['n']} labelled pixels of {m['n_tiles']} tiles)"
                             if m.get("dense") else f"({m['n']} patches)"))
            continue
        if not isinstance(m, dict) or "accuracy" not in m:
            continue
        if m.get("segmentation"):
            console.print(f"{split}: IoU {m['iou']:.3f}, F1 {m['f1']:.3f}, precision "
                          f"{m['precision']:.3f}, recall {m['recall']:.3f} ({m['n']} tiles)")
        elif m.get("multilabel"):
            console.print(f"{split}: subset accuracy {m['accuracy']:.3f}, macro F1 "
                          f"{m['f1_macro']:.3f}, micro F1 {m['f1_micro']:.3f}, mAP {m['map']:.3f}")
        else:
            console.print(f"{split}: accuracy {m['accuracy']:.3f}, macro F1 {m['f1_macro']:.3f}")
    if (line := _calibration_line(metrics.get("calibration"))) is not None:
        console.print(line)


def _calibration_line(cal: dict[str, Any] | None) -> str | None:
    """'calibration: T = ..., ECE val a -> b, test c -> d' (or why T stayed 1)."""
    if not cal or cal.get("method") != "temperature":
        return None
    if cal.get("skipped"):
        return f"calibration: {cal['skipped']}"
    eces = ", ".join(f"{split} {s['ece_before']:.3f} -> {s['ece']:.3f}"
                     for split, s in cal["splits"].items()
                     if s.get("ece") is not None and s.get("ece_before") is not None)
    return (f"calibration: T = {cal['temperature']:.3f} (fitted on {cal['fit_samples']} "
            f"validation samples); ECE {eces}")


@app.command()
@_friendly
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by 'geofuse train'."),
) -> None:
    """Evaluate the best checkpoint of a run on its validation (and test) split."""
    from geofuse.evaluation.evaluate import evaluate_run

    _print_scores(evaluate_run(run_dir))


@app.command()
@_friendly
def report(
    run_dir: Path = typer.Argument(
        ..., help="A run directory ('geofuse train') or a study directory (has study.json)."),
    metric: str | None = typer.Option(
        None, help="Study: the metric the statistics compare (f1_macro, accuracy; for "
        "multi-label studies also f1_micro, f1_samples, map; for segmentation iou, f1, "
        "precision, recall). Default: iou for segmentation studies, else f1_macro."),
) -> None:
    """Write report.md (with plots) for a run, or report.md + report.html for a study."""
    if (run_dir / "study.json").is_file():
        from geofuse.reporting.study_report import write_study_report

        path = write_study_report(run_dir, metric=metric)
        console.print(f"study report: [bold]{path}[/] and {path.with_suffix('.html')}")
        return
    from geofuse.reporting.report import write_report

    path = write_report(run_dir)
    console.print(f"report: [bold]{path}[/]")


@app.command()
@_friendly
def show(
    path: Path | None = typer.Argument(
        None, help="A PatchSet (.h5, 'geofuse extract'), a stack (.tif, 'geofuse prepare') or "
        "a study directory ('geofuse ablate': its data and class balance per fold)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for the PNGs "
                                    "(default: 'show' beside the input)."),
    config: Path | None = typer.Option(None, "--config", "-c",
                                       help="Study YAML: show its stack and PatchSet instead."),
    seed: int = typer.Option(0, help="Seed of the random patches in the sample grids."),
) -> None:
    """Write paper-ready PNGs: true colour, S1 false colour, index maps, samples per class,
    per-class band distributions and the class balance per split (and per fold of a study)."""
    from geofuse.reporting.show import show as show_figures

    for png in show_figures(path, out_dir=out, config=config, seed=seed):
        sys.stdout.write(f"{png}\n")


@app.command()
@_friendly
def predict(
    run_dir: Path = typer.Argument(
        ..., help="A run directory ('geofuse train'), or a study directory (study.json): the "
        "fold models of its best configuration map as an ensemble."),
    stack: Path | None = typer.Option(None, "--stack", help="Fused stack holding the run's "
                                      "bands ('geofuse prepare')."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Instead of --stack: a "
                                       "study YAML whose sensor rasters are aligned onto its "
                                       "reference grid on the fly."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the map products."),
    stride: int = typer.Option(1, "--stride", min=1, help="Patch classifiers: classify every "
                               "S-th pixel; the class fills its S x S cell (1 = every pixel)."),
    tile_size: int = typer.Option(256, "--tile-size", min=16, help="Dense models: model tile "
                                  "side (half-overlapping, blended); others: window side."),
    tta: bool = typer.Option(False, "--tta", help="Average over the 8 flips and rotations."),
    probabilities: bool = typer.Option(False, "--probabilities",
                                       help="Also write probabilities.tif (one band a class)."),
    workers: int = typer.Option(1, "--workers", "-w", min=1,
                                help="Windows mapped in parallel processes."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1,
                                          help="Patches (dense models: tiles) per forward pass."),
    ray: str | None = typer.Option(None, "--ray", help="Ray address, or 'local' to start one."),
    mc_dropout: int = typer.Option(0, "--mc-dropout", min=0, help="Networks: N passes with "
                                   "dropout active (Monte Carlo dropout); their spread is an "
                                   "uncertainty band."),
    device: str = typer.Option("auto", "--device", help="Torch device of the networks: auto "
                               "(CUDA when visible), cpu, cuda, cuda:N."),
    aoa: bool = typer.Option(False, "--aoa", help="Patch classifiers: also write aoa.tif, the "
                             "area of applicability (Meyer & Pebesma 2021): how far each patch "
                             "lies from the training data in the model's feature space."),
) -> None:
    """Map a stack (or a study config's sensor rasters, aligned on the fly) with a run or a
    study: classes.tif (colour table), uncertainty.tif, optional probabilities.tif (COGs on the
    scene's grid), quicklook.png and predict.json. An interrupted map resumes from its
    finished windows when run again."""
    from geofuse.mapping.predict import PredictOptions, predict_map
    from geofuse.mapping.scene import SceneSpec

    if (stack is None) == (config is None):
        raise ConfigError("geofuse predict needs the scene: either --stack STACK (a fused "
                          "stack) or -c STUDY.yaml (its sensor rasters), not both")
    scene = SceneSpec("stack", str(stack)) if stack else SceneSpec("config", str(config))
    record = predict_map(run_dir, scene, out, PredictOptions(
        stride=stride, tile_size=tile_size, tta=tta, probabilities=probabilities,
        workers=workers, batch_size=batch_size, ray_address=ray, mc_dropout=mc_dropout,
        device=device, aoa=aoa))
    windows = record["windows"]
    console.print(f"map of {record['grid']['width']}x{record['grid']['height']} px (windows: "
                  f"{windows['computed']} mapped, {windows['resumed']} resumed): [bold]{out}[/] "
                  f"({', '.join(record['products'].values())}, predict.json)", soft_wrap=True)
    if "aoa" in record:
        share = record["aoa"]["outside_share"]
        console.print(f"area of applicability: {share:.1%} of the mapped pixels lie outside "
                      "it (aoa.tif, aoa.png)" if share is not None else
                      "area of applicability: no mapped pixel", soft_wrap=True)


@app.command()
@_friendly
def assess(
    map_path: Path = typer.Argument(..., metavar="MAP",
                                    help="Class map GeoTIFF ('geofuse predict': classes.tif)."),
    polygons: Path | None = typer.Option(
        None, "--polygons", help="Held-out reference polygons, or a filled --sample-design "
        "GeoPackage (points: one reference pixel each)."),
    labels: Path | None = typer.Option(
        None, "--labels", help="Reference raster of class codes (read onto the map grid, "
        "nearest neighbour); for a regression map (values.tif), a raster of the same "
        "quantity (averaged onto the map grid)."),
    sample_design: int | None = typer.Option(
        None, "--sample-design", min=0, help="Instead: draw N stratified random points for a "
        "person to label (0 = Cochran's size for --target-se)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Output folder (default: the map's folder)."),
    class_field: str = typer.Option("class", "--class-field",
                                    help="--polygons: attribute holding the reference class."),
    value_field: str | None = typer.Option(
        None, "--value-field", help="A regression map (values.tif): the numeric attribute of "
        "the --polygons points or polygons to compare it with (RMSE, bias, R2)."),
    classes: str | None = ClassesOpt,
    unlabelled: int | None = typer.Option(
        None, "--unlabelled", help="--labels: code of unlabelled pixels (default: that of the "
        "label raster the map's model was trained on, else 255)."),
    target_se: float = typer.Option(
        0.01, "--target-se", help="--sample-design: target standard error of overall accuracy."),
    min_per_class: int = typer.Option(50, "--min-per-class",
                                      help="--sample-design: minimum points per class."),
    expected_ua: float = typer.Option(
        0.85, "--expected-ua", help="--sample-design: expected user's accuracy (Cochran)."),
    seed: int = typer.Option(0, "--seed", help="--sample-design: random seed."),
) -> None:
    """Accuracy (overall, user's, producer's, with standard errors) and error-adjusted class
    areas with 95% intervals of a class map (Olofsson et al. 2014): assessment.json, .md and
    .html; or, with --sample-design, a stratified random validation sample to label."""
    if sum(x is not None for x in (polygons, labels, sample_design)) != 1:
        raise typer.BadParameter("give one of --polygons FILE, --labels RASTER, --sample-design N")
    from geofuse.mapping.assess_values import is_value_map

    if value_field is not None or (labels is not None and is_value_map(map_path)):
        from geofuse.mapping.assess_value_raster import assess_value_raster
        from geofuse.mapping.assess_values import assess_value_map, value_summary_line

        if labels is not None:
            res = assess_value_raster(map_path, labels, out_dir=out)
        elif polygons is None:
            raise typer.BadParameter("--value-field compares a value map with the numbers of "
                                     "--polygons FILE; give --polygons (or --labels RASTER)")
        else:
            res = assess_value_map(map_path, polygons, value_field or "", out_dir=out)
        console.print(value_summary_line(res.result), highlight=False)
        console.print(f"assessment: [bold]{res.markdown_path}[/], {res.html_path.name} and "
                      f"{res.json_path.name}")
        return
    names = _class_names(classes)
    if sample_design is not None:
        from geofuse.mapping.sample_design import design_sample

        d = design_sample(map_path, sample_design, out_dir=out, target_se=target_se,
                          min_per_class=min_per_class, expected_ua=expected_ua, seed=seed,
                          classes=names)
        console.print(f"{d.n} points: {d.allocation} (Cochran's size for SE {target_se}: "
                      f"{d.recommended_n})", soft_wrap=True, highlight=False)
        console.print(f"validation sample: [bold]{d.gpkg_path}[/]; fill its 'reference' column, "
                      f"then run: geofuse assess {map_path} --polygons {d.gpkg_path} "
                      "--class-field reference", soft_wrap=True, highlight=False)
        return
    from geofuse.mapping.assess import assess_map, summary_line

    res = assess_map(map_path, polygons=polygons, labels=labels, out_dir=out,
                     class_field=class_field, classes=names, unlabelled=unlabelled)
    console.print(summary_line(res.result), highlight=False)
    console.print(f"assessment: [bold]{res.markdown_path}[/], {res.html_path.name} and "
                  f"{res.json_path.name}")


@app.command()
@_friendly
def change(
    map_a: Path = typer.Argument(..., metavar="MAP_A", help="Class map of the first date."),
    map_b: Path = typer.Argument(..., metavar="MAP_B", help="Class map of the second date, "
                                 "on the same grid."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    merge_stable: bool = typer.Option(False, "--merge-stable", help="One 'no change' class "
                                      "instead of one stable class per land cover."),
    labels: str = typer.Option("A,B", "--labels", help="Names of the two dates, e.g. "
                               "2018,2023."),
    classes: str | None = ClassesOpt,
) -> None:
    """Land-cover change between two class maps: the from-to matrix in hectares, gains,
    losses and net change per class (change.json, change.md) and change.tif, a class map of
    the transitions (for 'geofuse assess --sample-design' and 'geofuse vectorize')."""
    from geofuse.mapping.change import detect_change, summary

    names = _class_names(classes)
    pair = [x.strip() for x in labels.split(",")]
    if len(pair) != 2 or not all(pair):
        raise typer.BadParameter(f"--labels {labels!r} needs two names separated by a comma, "
                                 "e.g. --labels 2018,2023")
    res = detect_change(map_a, map_b, out, merge_stable=merge_stable, classes=names,
                        labels=(pair[0], pair[1]))
    console.print(summary(res.record), highlight=False)
    console.print(f"change: [bold]{res.markdown_path}[/], {res.map_path.name} and "
                  f"{res.record_path.name}", soft_wrap=True)


@app.command()
@_friendly
def vectorize(
    map_path: Path = typer.Argument(..., metavar="MAP",
                                    help="Class map GeoTIFF ('geofuse predict': classes.tif)."),
    mmu: float | None = typer.Option(None, "--mmu", min=0.0, help="Minimum mapping unit in "
                                     "hectares: smaller regions merge into their largest "
                                     "neighbour."),
    mmu_pixels: int | None = typer.Option(None, "--mmu-pixels", min=1,
                                          help="Instead of --mmu: the unit in pixels."),
    connectivity: int = typer.Option(4, "--connectivity", help="4: regions connect through "
                                     "edges; 8: through corners too."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Output folder (default: the map's folder)."),
    uncertainty: Path | None = typer.Option(
        None, "--uncertainty", help="Raster averaged per polygon (default: uncertainty.tif "
        "beside the map, band 'entropy')."),
    classes: str | None = ClassesOpt,
) -> None:
    """Apply a minimum mapping unit to a class map and write it as polygons: for MAP
    classes.tif, classes_mmu.tif (sieved, same colours), classes_mmu.gpkg (a polygon per
    region with class, area and mean uncertainty) and classes_vectorize.json (class areas
    before and after)."""
    from geofuse.mapping.vectorize import summary, vectorize_map

    names = _class_names(classes)
    res = vectorize_map(map_path, out, mmu_ha=mmu, min_pixels=mmu_pixels,
                        connectivity=connectivity, classes=names, uncertainty=uncertainty)
    console.print(summary(res.record), highlight=False)
    console.print(f"vectorized: [bold]{res.polygons_path}[/], {res.map_path.name} and "
                  f"{res.record_path.name}", soft_wrap=True)


@app.command()
@_friendly
def suggest(
    map_path: Path = typer.Argument(..., metavar="MAP",
                                    help="Class map GeoTIFF ('geofuse predict': classes.tif)."),
    n: int = typer.Option(..., "-n", help="How many places to suggest."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Output folder (default: the map's folder)."),
    min_distance: float | None = typer.Option(
        None, "--min-distance", help="Least distance between places, in map units "
        "(default: a quarter of the spacing of N points spread evenly over the map, at least "
        "10 pixels)."),
    label_distance: float | None = typer.Option(
        None, "--label-distance", help="Least distance from --labels, in map units (default: "
        "the window, so a new place's patch does not overlap a labelled point's)."),
    explore: float = typer.Option(0.2, "--explore", help="Share of the places drawn at "
                                  "random rather than by uncertainty."),
    min_per_class: int = typer.Option(2, "--min-per-class",
                                      help="Places every mapped class gets at least."),
    band: str | None = typer.Option(
        None, "--band", help="Uncertainty band: entropy (default for a class map), "
        "one_minus_max_probability, member_std (default for a value map), vote_disagreement."),
    labels: Path | None = typer.Option(None, "--labels", help="Existing label points or "
                                       "polygons: nothing is suggested near them."),
    uncertainty: Path | None = typer.Option(
        None, "--uncertainty", help="Uncertainty raster (default: uncertainty.tif beside the "
        "map)."),
    window: int | None = typer.Option(
        None, "--window", help="Side in pixels of the neighbourhood whose mean uncertainty "
        "scores a place and which must be mapped as one class (1: any pixel, class edges "
        "too; default: the patch side of the model that made the map, else 5)."),
    prefix: str | None = typer.Option(None, "--prefix", help="Start of the places' ids "
                                      "(default: s<UTC time>_, unique per run)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    classes: str | None = ClassesOpt,
) -> None:
    """Where to label next: the most uncertain places of a map, spread out and over every
    class, plus a random share (label_suggestions.gpkg with an empty 'class' column to fill,
    or 'value' for a value map, .json and .png)."""
    from geofuse.mapping.suggest import SuggestOptions, suggest_labels, summary

    opts = SuggestOptions(n=n, min_distance=min_distance, explore=explore,
                          min_per_class=min_per_class, band=band, seed=seed,
                          label_distance=label_distance, window=window, prefix=prefix)
    res = suggest_labels(map_path, opts, out_dir=out, uncertainty=uncertainty, labels=labels,
                         classes=_class_names(classes))
    console.print(summary(res.record), highlight=False, soft_wrap=True)
    console.print(f"places to label: [bold]{res.gpkg_path}[/] (fill its 'class' column, add "
                  f"the points to your label points and run extract again), {res.png_path.name}",
                  soft_wrap=True, highlight=False)


@app.command()
@_friendly
def zonal(
    map_path: Path = typer.Argument(..., metavar="MAP", help="Class map (classes.tif) or value "
                                    "map (values.tif) of 'geofuse predict'."),
    polygons: Path = typer.Option(..., "--polygons", help="Fields, parcels or districts to "
                                  "summarise the map over (any CRS)."),
    id_field: str | None = typer.Option(None, "--id-field", help="Attribute that names each "
                                        "polygon in warnings (default: row number)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Output folder (default: the map's folder)."),
    uncertainty: Path | None = typer.Option(
        None, "--uncertainty", help="Raster averaged per polygon (default: uncertainty.tif "
        "beside a class map, band 'entropy')."),
    classes: str | None = ClassesOpt,
) -> None:
    """The map per polygon: majority class, class shares and mean uncertainty (class map) or
    mean, std, min and max (value map), with pixels and area; <map>_zonal.gpkg and .json."""
    from geofuse.mapping.zonal import summary, zonal_stats

    res = zonal_stats(map_path, polygons, out_dir=out, id_field=id_field,
                      classes=_class_names(classes), uncertainty=uncertainty)
    console.print(summary(res.record), highlight=False, soft_wrap=True)
    console.print(f"per polygon: [bold]{res.gpkg_path}[/] and {res.json_path.name}",
                  soft_wrap=True)


@app.command()
@_friendly
def demo(
    workdir: Path = typer.Option(Path("demo_output"), help="Where the demo writes everything."),
    seed: int = typer.Option(0, help="Scene and training seed."),
    epochs: int | None = typer.Option(None, help="Override the number of training epochs."),
    full: bool = typer.Option(
        False, "--full", help="The full study: early and late fusion, 24 cells (~90 s)."),
) -> None:
    """Run the whole flow on a synthetic scene, ending in a sensor ablation study and its report.

    Steps: synth, prepare, extract, ablate (S2, +MODIS, +DEM, all; 3 grouped folds), a map of
    the scene by the best configuration assessed on the held-out polygons, report.

    Early fusion, 12 cells: about a minute on 2 idle cores. --full adds late fusion (24 cells).
    """
    from geofuse.pipeline import run_demo

    report_path = run_demo(workdir, seed=seed, epochs=epochs, full=full)
    console.print(f"\n[bold green]demo finished.[/] report: [bold]{report_path}[/]")


@app.command()
@_friendly
def ablate(
    config: Path = ConfigOpt,
    name: str | None = typer.Option(None, "--name", help="Study folder name (default: name)."),
    workers: int | None = typer.Option(None, "--workers", "-w", min=1,
                                       help="Cells trained in parallel (ablation.workers)."),
    ray: str | None = typer.Option(None, "--ray", help="Ray address, or 'local' to start one."),
) -> None:
    """Cross-validate the sensor x model x seed grid, then write the study report (resumable)."""
    from geofuse.config import load_config
    from geofuse.experiments.ablation import run_ablation
    from geofuse.preflight import preflight

    cfg = load_config(config)
    preflight(cfg, "ablate")
    study_dir = run_ablation(cfg, study_name=name, workers=workers,
                             ray_address=ray)
    console.print(f"study folder: [bold]{study_dir}[/]")


@app.command()
@_friendly
def search(
    config: Path = ConfigOpt,
    name: str | None = typer.Option(None, "--name", help="Folder name (default: NAME-search)."),
    workers: int | None = typer.Option(None, "--workers", "-w", min=1,
                                       help="Cells trained in parallel (ablation.workers)."),
    ray: str | None = typer.Option(None, "--ray", help="Ray address, or 'local' to start one."),
) -> None:
    """Search hyperparameters on one fold, then cross-validate the winner and the baseline."""
    from geofuse.config import load_config
    from geofuse.experiments.search import run_search
    from geofuse.preflight import preflight

    cfg = load_config(config)
    preflight(cfg, "search")
    out = run_search(cfg, study_name=name, workers=workers, ray_address=ray)
    console.print(f"search folder: [bold]{out}[/]")


@app.command("config")
@_friendly
def config_cmd(
    schema: bool = typer.Option(False, "--schema", help="Print the JSON schema of a study config."),
    reference: bool = typer.Option(False, "--reference", help="Print a Markdown key reference."),
    check: Path | None = typer.Option(None, "--check", help="Validate a study YAML and exit."),
) -> None:
    """Show the config schema or reference, or validate a config file."""
    from geofuse.config import config_schema, dump_config, load_config
    from geofuse.docs import config_reference_markdown

    if schema:
        sys.stdout.write(json.dumps(config_schema(), indent=2) + "\n")
    elif reference:
        sys.stdout.write(config_reference_markdown())
    elif check is not None:
        from geofuse.preflight import preflight

        cfg = load_config(check)
        preflight(cfg, "check")  # every check: all problems listed together, exit 2
        sys.stdout.write(dump_config(cfg))
        console.print(f"[green]{check} is valid[/]")
    else:
        raise typer.BadParameter("give --schema, --reference or --check FILE")


@app.command("models")
@_friendly
def models_cmd() -> None:
    """List every model (networks, then the random_forest and logistic_regression baselines).

    Options and their defaults: train.model.* for networks, train.baseline.* for baselines.
    """
    from rich.table import Table

    from geofuse.models.registry import BASELINE_OPTIONS, describe_models

    table = Table("train.model.name", "kind")
    table.add_column("options (default)", overflow="fold")
    for name, options in describe_models().items():
        kind = "baseline" if name in BASELINE_OPTIONS else "network"
        table.add_row(name, kind, ", ".join(f"{k}={v!r}" for k, v in options.items()) or "-")
    Console().print(table)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
