"""No traceback reaches the user: faults while writing, GDAL/HDF5 errors, Ctrl+C, bad coordinates.

Each row injects one fault into ``prepare`` or ``extract`` on a small prepared scene and asserts
the exit code, one ``error:`` line naming the path and the fix, and that the outputs written
before are byte-identical with no temporary files left. Disk full is also produced for real in a
subprocess with a file-size limit (``RLIMIT_FSIZE``: writes fail with EFBIG, like ENOSPC).
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
import yaml
from affine import Affine
from rasterio._err import CPLE_AppDefinedError
from rasterio.errors import RasterioIOError
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


# (command, function replaced, exception it raises, exit code, words of the one error line)
FAULTS = {
    "extract-disk-full": ("extract", "geofuse.data.patchset.os.fsync",
                          OSError(errno.ENOSPC, "No space left on device"), 2,
                          ["disk full writing", "patches.h5", "free space", "workdir"]),
    "extract-quota": ("extract", "geofuse.data.patchset.os.fsync",
                      OSError(errno.EDQUOT, "Disk quota exceeded"), 2,
                      ["disk full writing", "patches.h5"]),
    "extract-read-only": ("extract", "geofuse.data.patchset.open",
                          OSError(errno.EROFS, "Read-only file system"), 2,
                          ["cannot write", "patches.h5", "read-only", "workdir"]),
    "extract-permission": ("extract", "geofuse.data.patchset.open",
                           PermissionError(errno.EACCES, "Permission denied"), 2,
                           ["cannot write", "patches.h5", "permission", "writable folder"]),
    "extract-ctrl-c-while-writing": ("extract", "geofuse.data.patchset.os.fsync",
                                     KeyboardInterrupt(), 130, ["interrupted", "intact"]),
    "extract-sigterm": ("extract", "geofuse.data.extract.assign_splits",
                        StopRequested(signal.SIGTERM), 143, ["stopped by signal 15"]),
    "extract-gdal-read": ("extract", "geofuse.data.extract.StackPatchReader",
                          CPLE_AppDefinedError(1, 4, "stack.tif: TIFFReadEncodedTile() failed"),
                          2, ["GDAL (rasterio) error", "stack.tif", "re-create"]),
    "prepare-ctrl-c": ("prepare", "geofuse.raster.prepare.write_cog", KeyboardInterrupt(), 130,
                       ["interrupted", "intact"]),
    "prepare-gdal-write-failed": ("prepare", "geofuse.raster.prepare.write_cog",
                                  RasterioIOError("Write failed"), 2,
                                  ["writing", "stack.tif", "free space", "workdir"]),
    "prepare-disk-full-manifest": ("prepare", "geofuse.io_utils.os.replace",
                                   OSError(errno.ENOSPC, "No space left on device"), 2,
                                   ["disk full writing", "stack_qc.json"]),
}


@pytest.mark.parametrize("case", list(FAULTS))
def test_fault_is_one_line_and_keeps_outputs(
    case: str, study: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command, target, exc, exit_code, needles = FAULTS[case]
    work = study.parent / "work"
    before = snapshot(work)
    monkeypatch.setattr(target, _raise(exc), raising=not target.endswith(".open"))
    one_line_error(*invoke(command, "-c", str(study)), *needles, exit_code=exit_code)
    monkeypatch.undo()
    after = snapshot(work)
    if command == "prepare":  # the QC report is rewritten before the stack (it says why)
        for name in ("stack_qc.json", "stack_qc.md"):
            after[name] = before[name]
    assert after == before  # nothing changed, no temporary file left


def test_output_folder_under_a_regular_file(study: Path) -> None:
    (study.parent / "blocker").write_text("a file, not a folder\n")
    cfg = variant(study, "blocked", workdir="blocker/work")
    one_line_error(*invoke("prepare", "-c", str(cfg)), "blocker", "file", "folder")
    cfg = variant(study, "blocked_patches", extract={"output": "../blocker/patches.h5"})
    one_line_error(*invoke("extract", "-c", str(cfg)), "blocker", "file", "folder")


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


def _shift(path: Path, x0: float | None = None, y0: float | None = None) -> None:
    with rasterio.open(path, "r+") as ds:
        t = ds.transform
        ds.transform = Affine(t.a, t.b, t.c if x0 is None else x0, t.d, t.e,
                              t.f if y0 is None else y0)


@pytest.mark.parametrize(
    ("raster", "shift", "first", "needles"),
    [
        ("dem.tif", {"y0": 95.0}, None, ["dem.tif", "latitude must be within -90..90"]),
        ("dem.tif", {"x0": 1e12}, None, ["dem.tif", "outside the valid coordinates"]),
        ("s2.tif", {"x0": 1e12}, "dem", ["s2.tif", "cannot be reprojected", "geotransform"]),
    ],
)
def test_invalid_coordinates_are_an_alignment_error(
    study: Path, raster: str, shift: dict[str, float], first: str | None, needles: list[str]
) -> None:
    _shift(study.parent / raster, **shift)
    cfg = study
    if first is not None:  # make another modality define the reference grid
        data = yaml.safe_load(study.read_text())
        data["modalities"].sort(key=lambda m: m["name"] != first)
        cfg = variant(study, "reordered", modalities=data["modalities"])
    work = study.parent / "work"
    before = snapshot(work)
    one_line_error(*invoke("prepare", "-c", str(cfg)), *needles)
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
         "InterruptedByUserError", ["signal 15", "geofuse ablate -c s.yaml"]),
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
    monkeypatch.setattr("geofuse.io_utils.tempfile.mkstemp", _raise(exc))
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
