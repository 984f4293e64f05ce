"""No traceback reaches the user: faults while writing, GDAL/HDF5 errors, Ctrl+C.

The faults injected through the CLI in-process (disk full, read-only, GDAL/HDF5 errors, Ctrl+C,
SIGTERM, invalid coordinates) are rows of the table in ``test_robustness.py``. Here: disk full
produced for real in a subprocess with a file-size limit (``RLIMIT_FSIZE``: writes fail with
EFBIG, like ENOSPC), a real SIGINT during ``prepare``, unexpected errors and ``--debug``, and the
mapping of exceptions to one-line errors.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import rasterio
from rasterio._err import CPLE_AppDefinedError
from typer.testing import Result

from geofuse.cli import app
from geofuse.errors import (
    DiskFullError,
    GeofuseError,
    StopRequested,
    WriteAccessError,
    friendly_error,
)
from geofuse.io_utils import atomic_write_json
from scene_faults import (
    build_scene,
    copy_scene,
    invoke,
    one_line_error,
    runner,
    snapshot,
    variant,
)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Config of a 4 km scene with stack and PatchSet written."""
    return build_scene(tmp_path_factory.mktemp("faults") / "base")


@pytest.fixture
def study(scene: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared scene (outputs included)."""
    return copy_scene(scene, tmp_path / "scene")


def invoke_debug(*args: str) -> Result:
    """Run ``geofuse --debug ARGS`` in-process; the exception stays in ``result.exception``."""
    return runner.invoke(app, ["--debug", *args])


def _raise(exc: BaseException) -> Callable[..., None]:
    def raiser(*args: object, **kwargs: object) -> None:
        raise exc
    return raiser


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize(
    ("command", "limit", "needles"),
    [
        ("extract", 64 * 1024, ["disk full writing", "patches.h5", "File too large"]),
        ("prepare", 1_000_000, ["writing", "stack.tif", "free space"]),
    ],
)
def test_real_disk_full_in_subprocess(
    study: Path, command: str, limit: int, needles: list[str]
) -> None:
    """A write that really fails (file-size limit): no crash, no traceback, outputs intact."""
    work = study.parent / "work"
    before = snapshot(work)
    proc = subprocess.run(
        [sys.executable, "-m", "geofuse.cli", command, "-c", str(study)],
        preexec_fn=_limit_file_size(limit), capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "400"},
    )
    one_line_error(proc.returncode, proc.stdout + proc.stderr, *needles)
    assert snapshot(work) == before


def test_unexpected_error_is_one_line_and_debug_shows_traceback(
    study: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("geofuse.data.extract.assign_splits", _raise(TypeError("boom")))
    line = one_line_error(*invoke("extract", "-c", str(study)), "TypeError: boom", "--debug",
                          exit_code=1)
    assert "bug" in line
    result = invoke_debug("extract", "-c", str(study))
    assert isinstance(result.exception, TypeError) and str(result.exception) == "boom"


def test_debug_lets_geofuse_errors_through(study: Path) -> None:
    cfg = variant(study, "nolabels", labels={"path": "missing.geojson"})
    assert invoke("extract", "-c", str(cfg))[0] == 2
    result = invoke_debug("extract", "-c", str(cfg))
    assert isinstance(result.exception, GeofuseError)
    assert invoke("extract", "-c", str(cfg))[0] == 2  # --debug does not stick


@pytest.mark.parametrize(
    ("exc", "kind", "needles"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/x.h5"), "DiskFullError",
         ["'/data/x.h5'", "free space"]),
        (OSError(errno.EFBIG, "File too large"), "DiskFullError", ["disk full"]),
        (OSError(errno.EROFS, "Read-only file system", "/ro/out"), "WriteAccessError",
         ["'/ro/out'", "read-only"]),
        (RuntimeError("Can't close dataset (file write failed: errno = 28, error message = "
                      "'No space left on device')"), "DiskFullError", ["disk full"]),
        (CPLE_AppDefinedError(1, 1, "PROJ: utm: Invalid longitude"), "ExternalLibraryError",
         ["GDAL (rasterio) error", "Invalid longitude"]),
        (OSError(errno.EIO, "Input/output error", "/mnt/a.tif"), "ExternalLibraryError",
         ["'/mnt/a.tif'", "Input/output error"]),
        (KeyboardInterrupt(), "InterruptedByUserError", ["interrupted (Ctrl+C)"]),
        (StopRequested(signal.SIGTERM, resume="geofuse ablate -c s.yaml"),
         "InterruptedByUserError", ["SIGTERM", "geofuse ablate -c s.yaml"]),
    ],
)
def test_friendly_error_mapping(exc: BaseException, kind: str, needles: list[str]) -> None:
    err = friendly_error(exc)
    assert err is not None and type(err).__name__ == kind
    for needle in needles:
        assert needle in err.one_line()


@pytest.mark.parametrize(
    ("exc", "kind"),
    [(OSError(errno.EROFS, "Read-only file system"), WriteAccessError),
     (OSError(errno.ENOSPC, "No space left on device"), DiskFullError)],
)
def test_atomic_path_names_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: OSError, kind: type
) -> None:
    monkeypatch.setattr("geofuse.io_utils.os.open", _raise(exc))
    with pytest.raises(kind, match=r"out\.json"):
        atomic_write_json(tmp_path / "out.json", {"a": 1})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_bugs_are_not_mapped() -> None:
    assert friendly_error(TypeError("x")) is None and friendly_error(KeyError("k")) is None


def test_real_ctrl_c_during_prepare(study: Path) -> None:
    """SIGINT while the stack is being written: exit 130, one line, old stack intact."""
    work = study.parent / "work"
    before = snapshot(work)
    proc = subprocess.Popen(
        [sys.executable, "-m", "geofuse.cli", "prepare", "-c", str(study)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".stack.tif.") for p in work.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "prepare never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode == 0:  # a loaded machine: the last window was written before the signal
        pytest.skip("prepare finished before SIGINT arrived")
    one_line_error(proc.returncode, out, "interrupted", exit_code=130)
    after = snapshot(work)
    assert sorted(after) == sorted(before)  # no temporary file or folder left
    assert after["patches.h5"] == before["patches.h5"]
    if after["stack.tif"] != before["stack.tif"]:  # stopped just after the stack's rename
        with rasterio.open(work / "stack.tif") as src:
            assert src.count == 8 and src.read().shape[0] == 8


def test_an_error_of_a_training_process_is_printed_as_its_own_one_line_error() -> None:
    from torch.multiprocessing.spawn import ProcessRaisedException

    from geofuse.errors import SplitError, child_error, friendly_error

    text = ("\n\n-- Process 1 terminated with the following error:\nTraceback (most recent "
            "call last):\n  File \"x.py\", line 1, in <module>\ngeofuse.errors.SplitError: "
            "class 'Water' has 1 polygon; add polygons\n")
    wrapped = ProcessRaisedException(text, 1, 4242)
    err = friendly_error(wrapped)
    assert isinstance(err, SplitError) and str(err) == "class 'Water' has 1 polygon; add polygons"
    other = child_error(ProcessRaisedException(text.replace(
        "geofuse.errors.SplitError", "ZeroDivisionError"), 0, 1))
    assert isinstance(other, RuntimeError) and "ZeroDivisionError: class 'Water'" in str(other)
    assert friendly_error(other) is None  # still a bug, now named by its own last line
    plain = ValueError("x")
    assert child_error(plain) is plain
