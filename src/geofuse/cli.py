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

from geofuse.errors import GeofuseError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="geofuse: multi-sensor fusion deep learning for Earth-observation imagery.",
)
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = typer.Option(..., "--config", "-c", help="Study YAML file.", show_default=False)


def _friendly(func: F) -> F:
    """Print GeofuseError on one line and exit 2 instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GeofuseError as err:
            console.print(f"[bold red]error:[/] {err.one_line()}", soft_wrap=True, highlight=False)
            raise typer.Exit(code=err.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kw: Any) -> None:
    """Print a warning on one line, without the source line Python shows by default."""
    text = " ".join(str(message).split())
    console.print(f"[yellow]warning:[/] {text}", soft_wrap=True, highlight=False)


@app.callback()
def _setup() -> None:
    """geofuse: multi-sensor fusion deep learning for Earth-observation imagery."""
    warnings.showwarning = _show_warning


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
    from geofuse.raster.prepare import prepare_stack

    result = prepare_stack(load_config(config))
    console.print(f"fused stack: [bold]{result.stack_path}[/]; QC report: {result.qc_path}")


@app.command()
@_friendly
def extract(config: Path = ConfigOpt) -> None:
    """Sample patches inside label polygons and write a PatchSet with grouped splits."""
    from geofuse.config import load_config
    from geofuse.data.extract import extract_patches

    cfg = load_config(config)
    patches = extract_patches(cfg)
    console.print(f"{len(patches)} patches written to [bold]{cfg.patches_path}[/]")


@app.command()
@_friendly
def train(
    config: Path = ConfigOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    run_name: str | None = typer.Option(None, "--run-name", help="Run directory name."),
) -> None:
    """Train a model on the PatchSet; writes a self-describing run directory."""
    from geofuse.config import load_config
    from geofuse.training.train import train_model

    run_dir = train_model(load_config(config), resume=resume, run_name=run_name)
    console.print(f"run directory: [bold]{run_dir}[/]")


@app.command()
@_friendly
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by 'geofuse train'."),
) -> None:
    """Evaluate the best checkpoint of a run on its validation (and test) split."""
    from geofuse.evaluation.evaluate import evaluate_run

    metrics = evaluate_run(run_dir)
    summary = {k: v for k, v in metrics.items() if isinstance(v, dict) and "accuracy" in v}
    for split, m in summary.items():
        console.print(f"{split}: accuracy {m['accuracy']:.3f}, macro F1 {m['f1_macro']:.3f}")


@app.command()
@_friendly
def report(
    run_dir: Path = typer.Argument(
        ..., help="A run directory ('geofuse train') or a study directory (has study.json)."),
) -> None:
    """Write report.md (with plots) for a run, or report.md + report.html for a study."""
    if (run_dir / "study.json").is_file():
        from geofuse.reporting.study_report import write_study_report

        path = write_study_report(run_dir)
        console.print(f"study report: [bold]{path}[/] and {path.with_suffix('.html')}")
        return
    from geofuse.reporting.report import write_report

    path = write_report(run_dir)
    console.print(f"report: [bold]{path}[/]")


@app.command()
@_friendly
def demo(
    workdir: Path = typer.Option(Path("demo_output"), help="Where the demo writes everything."),
    seed: int = typer.Option(0, help="Scene and training seed."),
    epochs: int | None = typer.Option(None, help="Override the number of training epochs."),
) -> None:
    """Run the whole flow on the synthetic scene: synth, prepare, extract, train, report."""
    from geofuse.pipeline import run_demo

    report_path = run_demo(workdir, seed=seed, epochs=epochs)
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
    """Cross-validate the sensor-subset x model x seed grid (resumable: re-run to continue)."""
    from geofuse.config import load_config
    from geofuse.experiments.ablation import run_ablation

    study_dir = run_ablation(load_config(config), study_name=name, workers=workers,
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

    out = run_search(load_config(config), study_name=name, workers=workers, ray_address=ray)
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
        sys.stdout.write(dump_config(load_config(check)))
        console.print(f"[green]{check} is valid[/]")
    else:
        raise typer.BadParameter("give --schema, --reference or --check FILE")


@app.command("models")
@_friendly
def models_cmd() -> None:
    """List the registered models and the train.model options each takes (with defaults)."""
    from rich.table import Table

    from geofuse.models.registry import describe_models

    table = Table("train.model.name", "options (default)")
    for name, options in describe_models().items():
        table.add_row(name, ", ".join(f"{k}={v!r}" for k, v in options.items()) or "-")
    Console().print(table)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
