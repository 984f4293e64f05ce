"""Interruption and one writer: SIGKILL loses at most one epoch, SIGTERM stops cleanly with the
command that continues, a study's workers stop with their parent, a second writer is refused.

These tests run ``geofuse`` in subprocesses and send real signals to them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from factories import make_config, make_patchset
from geofuse.cli import app
from geofuse.config import StudyConfig, dump_config
from geofuse.errors import LockedError
from geofuse.experiments.ablation import run_ablation
from geofuse.experiments.runner import load_cells
from geofuse.locks import is_locked
from geofuse.rundir import RunDir, read_history
from geofuse.training.train import train_model

pytestmark = pytest.mark.slow

GEOFUSE = [sys.executable, "-m", "geofuse.cli"]
RUN = "toy-s2+dem-seed7"


def _study(root: Path, epochs: int, n: int = 600) -> tuple[StudyConfig, Path]:
    """A config (written as YAML) and its PatchSet: epochs of ~0.2-0.5 s on 2 cores."""
    cfg = make_config(root, epochs=epochs, early_stopping_patience=100, model={"hidden": 32})
    cfg.ablation.folds = 2
    cfg.ablation.epochs = epochs
    cfg.ablation.sensors = [["s2"], ["s2", "dem"]]
    make_patchset(n=n, patch_size=16).save(cfg.patches_path)
    path = root / "study.yaml"
    dump_config(cfg, path)
    cfg._source = path
    return cfg, path


def _start(*args: str, root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*GEOFUSE, *args], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(what: str, check: Callable[[], Any], proc: subprocess.Popen[str],
              timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"geofuse ended (exit {proc.returncode}) before {what}:\n"
                        f"{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _children(pid: int) -> list[int]:
    """Pids of the live worker processes of ``pid`` (multiprocessing's resource tracker, a
    helper that ends after its parent, left out)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_text()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and "resource_tracker" not in cmdline:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _outliving(pids: list[int], grace_s: float = 15.0) -> list[str]:
    """Command lines of ``pids`` still alive after ``grace_s`` seconds."""
    deadline = time.monotonic() + grace_s
    while [p for p in pids if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    return [Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")
            for p in pids if _alive(p)]


def test_sigkill_loses_at_most_one_epoch_and_a_second_writer_is_refused(tmp_path: Path) -> None:
    cfg, path = _study(tmp_path, epochs=40, n=1200)
    run = RunDir(cfg.runs_path / RUN)
    proc = _start("train", "-c", str(path), root=tmp_path)
    _wait_for("3 epochs", lambda: len(read_history(run.history)) >= 3, proc)

    with pytest.raises(LockedError, match=rf"process {proc.pid} .*kill {proc.pid}"):
        train_model(cfg, resume=True, progress=False, run_name=RUN)
    result = CliRunner().invoke(app, ["train", "-c", str(path), "--resume", "--run-name", RUN])
    assert result.exit_code == 2 and f"process {proc.pid}" in result.output

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done = len(read_history(run.history))  # epochs finished when the process died
    assert json.loads(run.run_json.read_text())["status"] == "running"  # it could not say
    checkpointed = torch.load(run.last_ckpt, map_location="cpu", weights_only=False)["epoch"]
    assert checkpointed >= done - 2, f"{done} epochs done, last.ckpt after epoch {checkpointed}"

    train_model(cfg, resume=True, progress=False, run_name=RUN, epochs=checkpointed + 3)
    info = json.loads(run.run_json.read_text())
    assert info["status"] == "finished"
    assert info["sessions"][0]["killed"] is True and info["sessions"][1]["resumed"] is True
    assert [r["epoch"] for r in read_history(run.history)] == list(range(checkpointed + 3))


def test_sigterm_stops_train_cleanly_with_the_resume_command(tmp_path: Path) -> None:
    cfg, path = _study(tmp_path, epochs=40)
    run = RunDir(cfg.runs_path / RUN)
    proc = _start("train", "-c", str(path), root=tmp_path)
    _wait_for("an epoch", lambda: len(read_history(run.history)) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "Traceback" not in out
    assert f"geofuse train -c {path} --resume --run-name {RUN}" in out.replace("\n", "")
    info = json.loads(run.run_json.read_text())
    assert info["status"] == "interrupted" and "interrupted_at" in info["sessions"][-1]
    last = torch.load(run.last_ckpt, map_location="cpu", weights_only=False)
    assert last["epoch"] >= len(read_history(run.history)) - 2
    assert not is_locked(run.path)


def _training_cells(study: Path) -> list[Path]:
    runs = study / "runs"
    return [p for p in runs.glob("*") if read_history(p / "history.csv")] if runs.is_dir() else []


def test_study_workers_stop_with_their_parent_and_the_study_resumes(tmp_path: Path) -> None:
    cfg, path = _study(tmp_path, epochs=12, n=400)
    study = cfg.workdir_path / "studies" / "toy"

    # SIGTERM to the parent: workers stop their cells cleanly, exit 143, no half cell.
    proc = _start("ablate", "-c", str(path), "-w", "2", root=tmp_path)
    _wait_for("cells training", lambda: _training_cells(study), proc)
    workers = _children(proc.pid)
    assert workers, "ablate -w 2 should run cells in worker processes"
    refused = CliRunner().invoke(app, ["ablate", "-c", str(path)])
    assert refused.exit_code == 2 and f"process {proc.pid}" in refused.output
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    assert time.monotonic() - sent < 30, "workers should stop at once, not after the grace"
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "Traceback" not in out and "geofuse ablate -c" in out.replace("\n", "")
    assert not _outliving(workers), "workers outlived their parent"
    histories = {p.name: read_history(p / "history.csv") for p in _training_cells(study)}
    time.sleep(2)
    assert {p.name: read_history(p / "history.csv") for p in _training_cells(study)} == \
        histories, "a cell went on training after the stop"
    finished = load_cells(study)
    assert sorted(p.name for p in (study / "cells").glob("*")) == sorted(
        f"{c['slug']}.json" for c in finished)  # no partial or temporary cell files
    statuses = [json.loads((p / "run.json").read_text())["status"]
                for p in _training_cells(study) if p.name not in {c["slug"] for c in finished}]
    # a cell stopped while evaluating its finished training says "finished" but has no result
    assert "interrupted" in statuses and set(statuses) <= {"interrupted", "finished"}, statuses

    # SIGKILL to the parent: the workers notice and stop on their own.
    proc = _start("ablate", "-c", str(path), "-w", "2", root=tmp_path)
    _wait_for("workers", lambda: len(_children(proc.pid)) >= 2, proc)
    workers = _children(proc.pid)
    time.sleep(3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not _outliving(workers, grace_s=60), "workers outlived a killed parent"

    # Re-running finishes the study; interrupted cells continue from their checkpoint.
    run_ablation(cfg, progress=False)
    cells = load_cells(study)
    assert len(cells) == 4
    sessions = [json.loads((study / c["run_dir"] / "run.json").read_text())["sessions"]
                for c in cells]
    assert any(s[-1]["resumed"] for s in sessions)
