"""The docs match the program: --version, baselines in `geofuse models`, every command in README."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import geofuse
from geofuse.cli import app
from geofuse.experiments._parallel import available_cores, threads_per_worker

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()


def _commands() -> list[str]:
    """Command names as `geofuse --help` lists them."""
    result = runner.invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    block = result.output.split("Commands")[1]
    return re.findall(r"^[│|]\s+([a-z][a-z-]*)\s{2,}", block, flags=re.MULTILINE)


def test_version_prints_the_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"geofuse {geofuse.__version__}"


def test_models_lists_the_scikit_learn_baselines_with_their_options() -> None:
    result = runner.invoke(app, ["models"], terminal_width=250)
    assert result.exit_code == 0, result.output
    for name in ("random_forest", "logistic_regression", "simple_cnn", "late_fusion"):
        assert name in result.stdout
    assert "train.baseline.n_estimators" in result.stdout


def test_every_command_is_in_the_readme_table() -> None:
    commands = _commands()
    assert {"demo", "ablate", "models", "train"} <= set(commands)
    table = {m for line in README.read_text().splitlines() if line.startswith("| `geofuse")
             for m in re.findall(r"`geofuse ([a-z-]+)", line)}
    assert sorted(set(commands) - table) == [], "commands missing from the README table"


@pytest.mark.parametrize("command", ["demo", "ablate", "models", "train", "search"])
def test_every_command_has_help_that_describes_it(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert len(result.output.split("Usage:")[1].split("Options")[0].split()) > 8


def test_demo_help_says_it_runs_an_ablation_study() -> None:
    result = runner.invoke(app, ["demo", "--help"], terminal_width=200)
    assert "ablation" in result.output and "--full" in result.output


def test_threads_per_worker_never_oversubscribes_the_cores() -> None:
    cores = available_cores()
    assert 1 <= cores <= (os.cpu_count() or cores)
    for workers in (1, 2, 3, 8, 64):
        threads = threads_per_worker(workers)
        assert threads >= 1
        assert workers * threads <= max(cores, workers)
    assert threads_per_worker(1) == cores
