"""Ablation cells on a Ray cluster started on its own (``ray start --head``), reached by address,
and the one-line error when nothing answers at the address."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from factories import make_config, make_patchset
from geofuse.cli import app
from geofuse.config import StudyConfig
from geofuse.errors import ConfigError
from geofuse.experiments._parallel import check_ray_address
from geofuse.experiments.ablation import run_ablation
from geofuse.experiments.runner import load_cells

ray = pytest.importorskip("ray")  # the only reason to skip: CI installs Ray, so these run there

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).parent / "ray"
START_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _cfg(root: Path) -> StudyConfig:
    """1 sensor subset x 1 model x 1 seed x 2 folds, 1 epoch: two quick cells."""
    cfg = make_config(root, epochs=1, batch_size=16, model={"hidden": 16})
    cfg.ablation.folds = 2
    cfg.ablation.sensors = [["s2"]]
    return cfg


def _val(study: Path) -> dict[str, dict[str, Any]]:
    return {c["slug"]: c["val"] for c in load_cells(study)}


def _stop_cluster(temp_dir: Path, grace_s: float = 3.0) -> None:
    """End the processes of the cluster living in ``temp_dir`` and their children, by pid.

    ``ray stop --force`` would end every Ray process on the machine, other sessions' clusters
    included; every daemon of ``ray start`` names its (unique) temp dir on its command line,
    and workers and agents are children of the raylet. SIGTERM first, SIGKILL after
    ``grace_s`` (gcs_server does not stop on SIGTERM in a useful time).
    """
    try:
        import psutil  # Ray ships it (ray/thirdparty_files) when it is not installed
    except ImportError:  # pragma: no cover - no way to find the pids: stop all of Ray
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=60)
        return
    procs: dict[int, Any] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != os.getpid() and any(str(temp_dir) in arg
                                               for arg in proc.info["cmdline"] or []):
                procs[proc.pid] = proc
                procs.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.Error:
            continue
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    left = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:  # a zombie has ended: not reaped yet
                left.append(proc)
    assert not left, f"Ray processes of {temp_dir} still running: {left}"


@pytest.fixture
def cluster() -> Iterator[tuple[str, Path]]:
    """A one-node cluster (2 CPUs) from ``ray start --head`` in its own temp dir.

    Yields its address and temp dir. The temp dir is short (``/tmp/gfray...``): Ray puts
    unix sockets under it, whose paths may not exceed ~107 characters.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="gfray", dir="/tmp" if Path("/tmp").is_dir()
                                     else None))
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # The head authenticates like this driver: with a token only when RAY_AUTH_MODE=token
    # here (a driver given an explicit address never turns token authentication on itself).
    env.setdefault("RAY_AUTH_MODE", "disabled")
    cmd = [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
           "--object-store-memory=100000000"]
    try:
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`ray start --head` did not return within {START_TIMEOUT_S} s")
        if done.returncode != 0:
            pytest.fail(f"`ray start --head` failed ({done.returncode}): "
                        f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        if ray.is_initialized():  # a failed test may leave the driver connected
            ray.shutdown()
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _task_logs(temp_dir: Path, wait_s: float = 10.0) -> list[str]:
    """The worker stdout logs of the cluster that ran an ``execute_cell`` task."""
    deadline = time.monotonic() + wait_s
    while True:
        logs = [p.read_text(errors="replace")
                for p in temp_dir.glob("session_*/logs/worker-*.out")]
        hits = [text for text in logs if ":task_name:execute_cell" in text]
        if hits or time.monotonic() > deadline:
            return hits
        time.sleep(0.2)


def test_cells_on_a_cluster_by_address_match_the_serial_run(
    cluster: tuple[str, Path], tmp_path: Path
) -> None:
    address, temp_dir = cluster
    cfg = _cfg(tmp_path)
    serial = run_ablation(cfg, study_name="serial", progress=False, patchset=make_patchset(n=48))
    expected = _val(serial)
    assert len(expected) == 2
    assert _task_logs(temp_dir, wait_s=0) == []
    remote = run_ablation(cfg, study_name="cluster", ray_address=address, progress=False,
                          patchset=make_patchset(n=48))
    assert _val(remote) == expected
    for cell in load_cells(remote):
        assert (remote / cell["run_dir"] / "metrics.json").is_file()
    # The cells ran in worker processes of that cluster: its own logs name the task ...
    hits = _task_logs(temp_dir)
    assert hits and all(":job_id:" in text for text in hits)
    # ... and the driver disconnected again while the cluster keeps running.
    assert not ray.is_initialized()
    check_ray_address(address)


def test_cli_names_an_unreachable_cluster_and_the_fix_quickly(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    make_patchset(n=48).save(cfg.patches_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["ablate", "-c", str(path), "--ray", address])
    assert time.perf_counter() - started < 30  # ray.init alone retries for minutes
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert f"cannot connect to the Ray cluster at '{address}'" in lines[0]
    assert "start the cluster with `ray start --head`" in lines[0]
    assert "check ablation.ray.address" in lines[0]
    assert not ray.is_initialized() and not load_cells(cfg.workdir_path / "studies" / "toy")


@pytest.mark.parametrize(("address", "message"), [
    ("headnode", "is not HOST:PORT"),
    ("headnode:port", "is not HOST:PORT"),
    ("ray://127.0.0.1:{port}", "cannot connect to the Ray cluster at 'ray://127.0.0.1:"),
    ("no-such-host.invalid:6379", "cannot connect to the Ray cluster at 'no-such-host"),
])
def test_bad_addresses_fail_fast_with_the_fix(tmp_path: Path, address: str, message: str) -> None:
    address = address.format(port=_free_port())
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=message) as err:
        check_ray_address(address, timeout=5)
    assert time.perf_counter() - started < 10
    assert "ablation.ray.address" in err.value.one_line()
    cfg = _cfg(tmp_path)
    cfg.ablation.ray.address = address  # the same through the config, not the flag
    with pytest.raises(ConfigError, match=message):
        run_ablation(cfg, progress=False, patchset=make_patchset(n=48))


def test_more_gpus_per_cell_than_the_cluster_has_is_refused(
    cluster: tuple[str, Path], tmp_path: Path
) -> None:
    address, _ = cluster
    cfg = _cfg(tmp_path)
    cfg.ablation.ray.num_gpus_per_cell = 64  # the cells would wait for GPUs forever
    with pytest.raises(ConfigError, match=r"num_gpus_per_cell = 64, but the Ray cluster at "
                                          r".* has \d+ GPU\(s\): no cell could start"):
        run_ablation(cfg, study_name="gpus", ray_address=address, progress=False,
                     patchset=make_patchset(n=48))
    assert not ray.is_initialized()
    assert not load_cells(cfg.workdir_path / "studies" / "gpus")
