"""The robustness table: every bad input and fault a user can hit, one row each, via the CLI.

A small synthetic scene is generated, prepared and extracted once per module. Each row copies
it (inputs and outputs), breaks the copy in one way (a config edit, a damaged input file, or a
fault injected into the code that writes the outputs), runs one ``geofuse`` command in-process
and asserts:

- the exit code (2 for bad input and write faults, 130/143 for Ctrl+C/SIGTERM, 0 for a QC
  warning);
- exactly one ``error:`` line (for exit 0: no ``error:`` line and exactly one ``warning:`` line
  about the problem), no traceback, and that line names the file or key, the value and the fix;
- every file and folder of the copy that the command had no business rewriting is byte for
  byte as before (the stack and PatchSet of the good run included), nothing new appeared and no
  temporary file (``.NAME.XXXX`` from :func:`geofuse.io_utils.atomic_path`, ``*.tmp``) is left.

``ISSUE_ROWS`` are the bad inputs and faults of issue 10's table (and its "What to build");
``HANDLED_ROWS`` the ones that were handled before it. Signals sent to real processes and the
study locks are in ``test_interrupt.py``; the real disk-full subprocess and the error mapping
in ``test_no_traceback.py``. ``len(ROWS)`` is the count the README quotes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio._err import CPLE_AppDefinedError
from rasterio.errors import RasterioIOError
from shapely.geometry import Polygon
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.data.patchset import PatchSet
from geofuse.errors import StopRequested
from geofuse.raster.io import write_raster
from scene_faults import build_scene, set_nodata_rows

#: Faults sent to real processes (tests/test_interrupt.py, tests/test_no_traceback.py); the
#: README states ``len(ROWS) + REAL_PROCESS_FAULTS`` and the table size.
REAL_PROCESS_FAULTS = 9

Break = Callable[[Path, pytest.MonkeyPatch], None]
Check = Callable[[Path], None]

CHECK = ("config", "--check", "{cfg}")
PREPARE = ("prepare", "-c", "{cfg}")
EXTRACT = ("extract", "-c", "{cfg}")
TRAIN = ("train", "-c", "{cfg}")
ABLATE = ("ablate", "-c", "{cfg}")
SEARCH = ("search", "-c", "{cfg}")
#: What a successful command rewrites (only allowed to change for rows exiting 0).
OUTPUTS = {
    "prepare": ("work/stack.tif", "work/stack.json", "work/stack_qc.json", "work/stack_qc.md"),
    "extract": ("work/patches.h5", "work/patches_qc.json", "work/patches_qc.md"),
}
STACK_QC = ("work/stack_qc.json", "work/stack_qc.md")  # rewritten first: they say why it failed


@dataclass(frozen=True)
class Row:
    """One bad input or fault: how to break the scene, the command, and what it must say.

    ``where``, ``value`` and ``fix`` are fragments of the one ``error:`` (or ``warning:``) line:
    the file or key named, the bad value or the problem, and the fix proposed; ``{cfg}`` stands
    for the study config and ``{scene}`` for its folder.
    """

    id: str
    breaks: Break
    args: tuple[str, ...]
    exit_code: int
    where: str
    value: str
    fix: str
    also: tuple[str, ...] = ()  # more fragments the line must hold
    never: tuple[str, ...] = ()  # fragments the line must not hold
    rewrites: tuple[str, ...] = ()  # files (relative to the scene) the command may rewrite
    then: Check | None = None  # further checks on the scene folder afterwards
    xfail: str | None = None  # a known bug in src (the reason), strict


# -- ways to break a copy of the scene ---------------------------------------------------------


def _at(node: Any, part: str) -> Any:
    return node[int(part)] if part.isdigit() else node.setdefault(part, {})


def cfg_set(dotted: str, value: Any) -> Break:
    """Set a dotted key of study.yaml (``modalities.2.files``); ``value`` may be f(folder)."""
    def edit(folder: Path, mp: pytest.MonkeyPatch) -> None:
        path = folder / "study.yaml"
        data = yaml.safe_load(path.read_text())
        *parents, key = dotted.split(".")
        node = data
        for part in parents:
            node = _at(node, part)
        node[int(key) if key.isdigit() else key] = value(folder) if callable(value) else value
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return edit


def first_modality(name: str) -> Break:
    """Reorder the modalities so that ``name`` defines the reference grid."""
    def edit(folder: Path, mp: pytest.MonkeyPatch) -> None:
        data = yaml.safe_load((folder / "study.yaml").read_text())
        cfg_set("modalities", sorted(data["modalities"], key=lambda m: m["name"] != name))(
            folder, mp)
    return edit


def fault(target: str, exc: BaseException) -> Break:
    """While the command runs, ``target`` (a dotted name) raises ``exc``."""
    def raiser(*args: object, **kwargs: object) -> None:
        raise exc

    def inject(folder: Path, mp: pytest.MonkeyPatch) -> None:
        mp.setattr(target, raiser, raising=not target.endswith(".open"))  # builtin open
    return inject


def env(name: str, value: str) -> Break:
    def setenv(folder: Path, mp: pytest.MonkeyPatch) -> None:
        mp.setenv(name, value)
    return setenv


def write(relpath: str, content: bytes) -> Break:
    def overwrite(folder: Path, mp: pytest.MonkeyPatch) -> None:
        (folder / relpath).write_bytes(content)
    return overwrite


def nothing(folder: Path, mp: pytest.MonkeyPatch) -> None:
    """Leave the scene as it is (the row breaks the command line)."""


def truncate(relpath: str) -> Break:
    """Cut a file in half, as an interrupted copy or download leaves it."""
    def cut(folder: Path, mp: pytest.MonkeyPatch) -> None:
        data = (folder / relpath).read_bytes()
        (folder / relpath).write_bytes(data[: len(data) // 2])
    return cut


def shift(raster: str, **origin: float) -> Break:
    """Move a raster's origin (``x0``, ``y0``) to other coordinates."""
    def move(folder: Path, mp: pytest.MonkeyPatch) -> None:
        with rasterio.open(folder / raster, "r+") as ds:
            t = ds.transform
            ds.transform = Affine(t.a, t.b, origin.get("x0", t.c), t.d, t.e, origin.get("y0", t.f))
    return move


def nodata_share(raster: str, share: float) -> Break:
    def fill(folder: Path, mp: pytest.MonkeyPatch) -> None:
        set_nodata_rows(folder / raster, share)
    return fill


def without_crs(raster: str) -> Break:
    def strip(folder: Path, mp: pytest.MonkeyPatch) -> None:
        path = folder / raster
        with rasterio.open(path) as src:
            data, profile = src.read(), src.profile
        profile.pop("crs")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return strip


def stack_band_nodata(band: int) -> Break:
    """Make one band of the prepared stack all NaN (``extract`` reads it)."""
    def blank(folder: Path, mp: pytest.MonkeyPatch) -> None:
        stack = folder / "work" / "stack.tif"
        with rasterio.open(stack) as src:
            data, names, crs, transform = src.read(), src.descriptions, src.crs, src.transform
        data[band] = np.nan
        write_raster(stack, data, crs, transform, nodata=float("nan"), descriptions=names)
    return blank


def read_only(folder_name: str) -> Break:
    """An empty folder that cannot be written (chmod; as root, where chmod does not stop
    writes, a read-only mount is simulated)."""
    def lock(folder: Path, mp: pytest.MonkeyPatch) -> None:
        (folder / folder_name).mkdir()
        if os.geteuid() != 0:
            (folder / folder_name).chmod(0o555)
        else:
            fault("geofuse._preflight_files.tempfile.mkstemp",
                  OSError(errno.EROFS, "Read-only file system"))(folder, mp)
    return lock


def labels(edit: Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame]) -> Break:
    """Rewrite labels.geojson with ``edit`` applied to it in UTM metres (EPSG:32718)."""
    def rewrite(folder: Path, mp: pytest.MonkeyPatch) -> None:
        path = folder / "labels.geojson"
        frame = gpd.read_file(path)
        edit(frame.to_crs("EPSG:32718")).to_crs(frame.crs).to_file(path, driver="GeoJSON")
    return rewrite


def _add(frame: gpd.GeoDataFrame, fid: int, cls: str, geometry: Any) -> gpd.GeoDataFrame:
    row = gpd.GeoDataFrame({"id": [fid], "class": [cls]}, geometry=[geometry], crs=frame.crs)
    return gpd.GeoDataFrame(pd.concat([frame, row], ignore_index=True), crs=frame.crs)


def _tiny(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Every polygon a 10 m square (patches are 8 px x 10 m = 80 m)."""
    usable = frame.geometry.notna() & ~frame.geometry.is_empty
    frame.loc[usable, "geometry"] = (
        frame.geometry[usable].make_valid().representative_point().buffer(5, cap_style="square")
    )
    return frame


def _one_water_polygon(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    water = frame.index[frame["class"] == "Water"]
    frame.loc[water[1:], "class"] = "Forest"
    return frame


def _repeat_an_id(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    frame.loc[3, "id"] = frame.loc[2, "id"]
    return frame


def shapefile_without_crs(folder: Path, mp: pytest.MonkeyPatch) -> None:
    """The labels as a Shapefile without its .prj, and the config pointing to it."""
    frame = gpd.read_file(folder / "labels.geojson").to_crs("EPSG:32718")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyogrio warns that the file gets no CRS: intended
        frame.set_crs(None, allow_override=True).to_file(folder / "labels.shp")
    cfg_set("labels.path", "labels.shp")(folder, mp)


def _far_away(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    frame["geometry"] = frame.geometry.translate(xoff=50_000)
    return frame


X, Y = 652_000.0, 5_402_000.0  # inside the 4 km scene (650-654 km E, 5400-5404 km N)
BOW_TIE = Polygon([(X, Y), (X + 200, Y - 200), (X + 200, Y), (X, Y - 200), (X, Y)])


def both(*breaks: Break) -> Break:
    def apply(folder: Path, mp: pytest.MonkeyPatch) -> None:
        for b in breaks:
            b(folder, mp)
    return apply


# -- checks after the command -------------------------------------------------------------------


def _qc(folder: Path, name: str) -> dict[str, Any]:
    return json.loads((folder / "work" / name).read_text())


def stack_qc_failed(folder: Path) -> None:
    qc = _qc(folder, "stack_qc.json")
    assert qc["status"] == "failed" and not qc["passed"]
    assert qc["bands"]["elevation"]["valid_fraction"] == 0.0
    assert "Status: **FAILED**" in (folder / "work" / "stack_qc.md").read_text()


def stack_qc_warns(folder: Path) -> None:
    qc = _qc(folder, "stack_qc.json")
    assert qc["status"] == "warning" and qc["passed"]
    assert 0.01 < qc["bands"]["elevation"]["valid_fraction"] < 0.5


def patches_qc_flags_small_polygons(folder: Path) -> None:
    qc = _qc(folder, "patches_qc.json")
    assert qc["status"] == "warning" and qc["warnings"]
    classes = qc["label_fit"]["classes"]
    assert classes and all(c["flagged"] and c["share_outside"] > 0.5 for c in classes.values())
    assert all(c["polygons_smaller_than_patch"] == c["polygons"] for c in classes.values())
    assert "Status: **WARNING**" in (folder / "work" / "patches_qc.md").read_text()
    assert PatchSet.load(folder / "work" / "patches.h5").provenance["qc"]["status"] == "warning"


def patchset_without(polygon_id: str) -> Check:
    def check(folder: Path) -> None:
        groups = set(PatchSet.load(folder / "work" / "patches.h5").groups.tolist())
        assert f"polygon:{polygon_id}" not in groups and len(groups) > 10, groups
    return check


def patchset_with(polygon_id: str) -> Check:
    def check(folder: Path) -> None:
        groups = set(PatchSet.load(folder / "work" / "patches.h5").groups.tolist())
        assert f"polygon:{polygon_id}" in groups, groups
    return check


# -- the table ---------------------------------------------------------------------------------

ENOSPC = OSError(errno.ENOSPC, "No space left on device")

ISSUE_ROWS: list[Row] = [
    # config --check resolves names, files and options, not just the schema
    Row("check-unknown-model", cfg_set("train.model", {"name": "late_fusoin"}), CHECK, 2,
        "train.model.name", "'late_fusoin': unknown model", "did you mean 'late_fusion'?",
        also=("{cfg}",)),
    Row("check-unknown-band", cfg_set("train.bands", ["B4", "B8A"]), CHECK, 2,
        "train.bands", "'B8A': unknown band", "fix train.bands",
        also=("did you mean 'B8'?", "PatchSet")),
    Row("check-missing-labels", cfg_set("labels.path", "labls.geojson"), CHECK, 2,
        "labels.path", "labls.geojson", "did you mean 'labels.geojson'?",
        also=("does not exist",)),
    Row("check-all-problems-together",
        both(cfg_set("train.model", {"name": "simple_cnm"}), cfg_set("train.bands", ["B4", "B99"]),
             cfg_set("labels.path", "missing.geojson"),
             cfg_set("ablation.models", ["simple_cnn", "early_fusoin"])), CHECK, 2,
        "4 problems in {cfg}", "train.bands = 'B99'", "did you mean 'early_fusion'?",
        also=("1) ", "2) ", "3) ", "4) ", "labels.path", "train.model.name = 'simple_cnm'",
              "ablation.models[1] = 'early_fusoin'")),
    # every command runs the same pass before any work
    Row("ablate-unknown-model", cfg_set("ablation.models", ["simple_cnn", "late_fusoin"]), ABLATE,
        2, "ablation.models[1]", "'late_fusoin'", "did you mean 'late_fusion'?",
        never=("train.model.name",)),
    Row("ablate-unknown-model-entry",
        cfg_set("ablation.models", [{"name": "simple_cnn"}, {"name": "resnet81"}]), ABLATE, 2,
        "ablation.models[1].name", "'resnet81'", "did you mean 'resnet18'?"),
    Row("ablate-bad-model-option",
        cfg_set("ablation.models", [{"name": "simple_cnn", "options": {"se_reduction": 4}}]),
        ABLATE, 2, "ablation.models[0].options.se_reduction", "= 4", "does not take",
        also=("'simple_cnn'",)),
    Row("ablate-unknown-sensor", cfg_set("ablation.sensors", [["s2"], ["s2", "modsi"]]), ABLATE,
        2, "ablation.sensors[1]", "unknown modality 'modsi'", "did you mean 'modis'?"),
    Row("ablate-folds-over-groups", cfg_set("ablation.folds", 500), ABLATE, 2,
        "ablation.folds", "= 500", "at most", also=("polygon groups",)),
    Row("search-unknown-model",
        cfg_set("search.space", {"train.model.name": ["simple_cnn", "late_fusoin"]}), SEARCH, 2,
        "search.space['train.model.name']", "'late_fusoin'", "did you mean 'late_fusion'?"),
    Row("search-fold-out-of-range",
        both(cfg_set("search.space", {"train.lr": [0.1]}), cfg_set("search.fold", 3)), SEARCH, 2,
        "search.fold", "= 3", "folds 0..2"),
    Row("train-unknown-modality", cfg_set("train.modalities", ["s2", "lidar"]), TRAIN, 2,
        "train.modalities", "unknown modality 'lidar'", "known: ['s2', 'modis', 'dem']",
        never=("{", "'workdir'")),
    Row("train-bad-model-option", cfg_set("train.model", {"name": "simple_cnn",
                                                          "merge": "attention"}), TRAIN, 2,
        "train.model.merge", "'attention'", "remove it", also=("does not take option",)),
    Row("train-unknown-encoder",
        cfg_set("train.model", {"name": "late_fusion", "encoders": {"dem": "smal_cnn"}}), TRAIN,
        2, "train.model.encoders.dem", "'smal_cnn'", "did you mean 'small_cnn'?"),
    Row("train-missing-pretrained",
        cfg_set("train.model", {"name": "resnet18", "pretrained_path": "nope.pth"}), TRAIN, 2,
        "train.model.pretrained_path", "'nope.pth'", "does not exist"),
    Row("train-patchset-missing", cfg_set("extract.output", "nothing.h5"), TRAIN, 2,
        "extract.output", "'nothing.h5'", "run 'geofuse extract"),
    Row("extract-unknown-class-field", cfg_set("labels.class_field", "klass"), EXTRACT, 2,
        "labels.class_field", "'klass'", "did you mean 'class'?"),
    Row("prepare-missing-modality-file", cfg_set("modalities.2.files", ["dem_missing.tif"]),
        PREPARE, 2, "modalities[2].files[0]", "dem_missing.tif", "fix the path",
        also=("does not exist",)),
    Row("prepare-glob-matches-nothing", cfg_set("modalities.1.files", ["modis_*.tiff"]),
        PREPARE, 2, "modalities[1].files[0]", "modis_*.tiff", "matches no file"),
    # output folders writable, free disk space
    Row("prepare-workdir-under-a-file", cfg_set("workdir", "s2.tif/work"), PREPARE, 2,
        "workdir", "s2.tif", "is a file, not a folder"),
    Row("extract-output-under-a-file", cfg_set("extract.output", "../s2.tif/patches.h5"),
        EXTRACT, 2, "extract.output", "s2.tif", "folder"),
    Row("prepare-workdir-read-only", both(read_only("ro"), cfg_set("workdir", "ro/work")),
        PREPARE, 2, "workdir", "ro/work", "is not writable"),
    Row("prepare-low-disk-space", env("GEOFUSE_FREE_BYTES", "1000"), PREPARE, 2,
        "prepare.output", "needs about", "free disk space", also=("1000 B is free",)),
    Row("extract-low-disk-space", env("GEOFUSE_FREE_BYTES", "1000"), EXTRACT, 2,
        "extract.output", "needs about", "free disk space", also=("1000 B is free",)),
    Row("ablate-low-disk-space", env("GEOFUSE_FREE_BYTES", "1000"), ABLATE, 2,
        "ablation.output", "needs about", "free disk space", also=("1000 B is free",)),
    # faults while writing: one line, exit 2 (130/143 for Ctrl+C/SIGTERM)
    Row("extract-disk-full", fault("geofuse.data.patchset.os.fsync", ENOSPC), EXTRACT, 2,
        "patches.h5", "disk full writing", "free space", also=("workdir",)),
    Row("extract-quota-exceeded",
        fault("geofuse.data.patchset.os.fsync", OSError(errno.EDQUOT, "Disk quota exceeded")),
        EXTRACT, 2, "patches.h5", "disk full writing", "free space"),
    Row("extract-read-only-file-system",
        fault("geofuse.data.patchset.open", OSError(errno.EROFS, "Read-only file system")),
        EXTRACT, 2, "patches.h5", "read-only", "set workdir in the config to a writable folder"),
    Row("extract-permission-denied",
        fault("geofuse.data.patchset.open", PermissionError(errno.EACCES, "Permission denied")),
        EXTRACT, 2, "patches.h5", "permission", "writable folder"),
    Row("extract-ctrl-c-while-writing", fault("geofuse.data.patchset.os.fsync",
                                              KeyboardInterrupt()), EXTRACT, 130,
        "geofuse extract -c {cfg}", "interrupted (Ctrl+C)", "to continue, run:",
        also=("outputs written before are intact",)),
    Row("extract-sigterm", fault("geofuse.data.extract.assign_splits",
                                 StopRequested(signal.SIGTERM)), EXTRACT, 143,
        "geofuse extract -c {cfg}", "SIGTERM", "to continue, run:",
        also=("outputs written before are intact",)),
    Row("prepare-ctrl-c", fault("geofuse.raster.prepare.write_cog", KeyboardInterrupt()),
        PREPARE, 130, "geofuse prepare -c {cfg}", "interrupted (Ctrl+C)", "to continue, run:",
        rewrites=STACK_QC),
    Row("prepare-gdal-write-failed",
        fault("geofuse.raster.prepare.write_cog", RasterioIOError("Write failed")), PREPARE, 2,
        "stack.tif", "Write failed", "free space", also=("workdir",), rewrites=STACK_QC),
    Row("prepare-disk-full-writing-qc", fault("geofuse.io_utils.os.replace", ENOSPC), PREPARE, 2,
        "stack_qc.json", "disk full writing", "free space"),
    # GDAL and HDF5 errors on damaged inputs
    Row("extract-gdal-read-error",
        fault("geofuse.data.extract.StackPatchReader",
              CPLE_AppDefinedError(1, 4, "stack.tif: TIFFReadEncodedTile() failed")), EXTRACT, 2,
        "stack.tif", "TIFFReadEncodedTile() failed", "re-create",
        also=("GDAL (rasterio) error",)),
    Row("extract-truncated-stack", truncate("work/stack.tif"), EXTRACT, 2,
        "stack.tif", "cannot read fused stack", "re-run 'geofuse prepare'",
        also=("damaged or incomplete",)),
    Row("train-truncated-patchset", truncate("work/patches.h5"), TRAIN, 2,
        "extract.output", "is not a readable geofuse PatchSet", "re-run 'geofuse extract",
        also=("patches.h5",)),
    # a modality shifted to invalid coordinates
    Row("prepare-dem-latitude-95", shift("dem.tif", y0=95.0), PREPARE, 2,
        "dem.tif", "latitude must be within -90..90", "fix its geotransform"),
    Row("prepare-dem-x-1e12", shift("dem.tif", x0=1e12), PREPARE, 2,
        "dem.tif", "outside the valid coordinates", "fix its geotransform"),
    Row("prepare-reference-s2-x-1e12", both(shift("s2.tif", x0=1e12), first_modality("dem")),
        PREPARE, 2, "s2.tif", "cannot be reprojected", "geotransform"),
    # QC that fails loudly
    Row("prepare-all-nodata-dem", nodata_share("dem.tif", 1.0), PREPARE, 2,
        "modality 'dem'", "0.0% valid", "stack was not written",
        also=("QC failed", "'elevation'"), rewrites=STACK_QC, then=stack_qc_failed),
    Row("prepare-mostly-nodata-dem", nodata_share("dem.tif", 0.7), PREPARE, 0,
        "'dem'", "mostly nodata", "'elevation'", then=stack_qc_warns),
    Row("extract-nodata-band", stack_band_nodata(-1), EXTRACT, 2,
        "modality 'dem'", "elevation 100%", "max_nodata_fraction"),
    Row("extract-empty-labels", write("labels.geojson", b'{"type": "FeatureCollection", '
                                                        b'"features": []}\n'), EXTRACT, 2,
        "labels.geojson", "holds no features", "labels.path"),
    Row("extract-polygons-smaller-than-patch", labels(_tiny), EXTRACT, 0,
        "patches_qc.md", "outside their label polygon", "patch_size",
        then=patches_qc_flags_small_polygons),
]

HANDLED_ROWS: list[Row] = [
    Row("config-typo", cfg_set("extract.patch_sise", 8), EXTRACT, 2,
        "{cfg}", "unknown key 'extract.patch_sise'", "did you mean 'patch_size'?"),
    Row("config-wrong-type", cfg_set("extract.patch_size", "eight"), EXTRACT, 2,
        "extract.patch_size", "'eight'", "valid integer", also=("{cfg}",)),
    Row("config-invalid-value", cfg_set("extract.patch_size", 0), EXTRACT, 2,
        "extract.patch_size", "= 0", "greater than", also=("{cfg}",)),
    Row("config-file-missing", nothing,
        ("prepare", "-c", "{scene}/nope.yaml"), 2,
        "nope.yaml", "does not exist", "pass the path of your study YAML"),
    Row("prepare-raster-without-crs", without_crs("dem.tif"), PREPARE, 2,
        "dem.tif", "has no CRS", "gdal_edit.py -a_srs"),
    Row("prepare-unreadable-raster", write("dem.tif", b"not a tiff"), PREPARE, 2,
        "dem.tif", "cannot be read", "complete GeoTIFF"),
    Row("prepare-sensors-do-not-overlap", shift("modis_ndvi.tif", x0=-60.0), PREPARE, 2,
        "modis_ndvi.tif", "does not overlap the reference grid", "check the files' CRS",
        also=("modality 'modis'",)),
    Row("prepare-band-count-mismatch", cfg_set("modalities.2.bands", ["elevation", "slope"]),
        PREPARE, 2, "dem.tif", "has 1 band(s) but 'bands' lists 2", "fix 'bands' or 'files'",
        also=("modality 'dem'",)),
    Row("prepare-nodata-out-of-range", cfg_set("modalities.2.nodata", -1e6), PREPARE, 2,
        "dem.tif", "nodata = -1000000.0 is outside the range of int16",
        "set 'nodata' to a value the file can hold"),
    Row("extract-labels-without-crs", shapefile_without_crs, EXTRACT, 2,
        "labels.shp", "has no CRS", "write it with one"),
    Row("extract-repeated-ids", labels(_repeat_an_id), EXTRACT, 2,
        "labels.geojson", "id attribute 'id' has repeated values 3", "choose another"),
    Row("extract-unreadable-labels", write("labels.geojson", b"{ not json"), EXTRACT, 2,
        "labels.geojson", "cannot read", "labels.path"),
    Row("extract-class-not-listed",
        cfg_set("labels.classes", ["Agriculture", "Forest", "Urban", "Water"]), EXTRACT, 2,
        "labels.geojson", "{'Parcels': 8}", "add them to labels.classes"),
    Row("extract-null-geometry", labels(lambda f: _add(f, 999, "Forest", None)), EXTRACT, 0,
        "labels.geojson", "null or empty geometry", "999", then=patchset_without("999")),
    Row("extract-bow-tie-polygon", labels(lambda f: _add(f, 998, "Forest", BOW_TIE)), EXTRACT,
        0, "labels.geojson", "repaired", "make_valid", also=("998",),
        then=patchset_with("998")),
    Row("extract-labels-elsewhere", labels(_far_away), EXTRACT, 2,
        "labels.geojson", "no patch centres could be sampled", "check the polygons overlap",
        also=("outside the stack",)),
    Row("extract-patch-too-large", cfg_set("extract.patch_size", 4000), EXTRACT, 2,
        "labels.geojson", "no patch centres could be sampled",
        "smaller extract.patch_size (now 4000)"),
    Row("extract-class-in-one-polygon", labels(_one_water_polygon), EXTRACT, 2,
        "'Water' has 1", "cannot split without leakage", "drop the class from labels.classes"),
]

ROWS = ISSUE_ROWS + HANDLED_ROWS

# -- running a row -----------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture(scope="module")
def good_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a prepared and extracted 4 km scene (study.yaml, inputs, work/)."""
    return build_scene(tmp_path_factory.mktemp("robust") / "scene").parent


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 (files) or "folder", for everything under ``folder``."""
    return {str(p.relative_to(folder)):
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def _fill(text: str, folder: Path) -> str:
    return text.replace("{cfg}", str(folder / "study.yaml")).replace("{scene}", str(folder))


def _the_line(row: Row, code: int, out: str) -> str:
    """The one line about the problem: ``error:``, or ``warning:`` for a row exiting 0."""
    assert code == row.exit_code, out
    assert "Traceback" not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    if row.exit_code != 0:
        assert len(errors) == 1, out
        return errors[0]
    assert errors == [], out
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning:") and row.value in ln]
    assert len(warnings) == 1, out
    return warnings[0]


def _assert_outputs_intact(row: Row, before: dict[str, str], after: dict[str, str]) -> None:
    command = row.args[0]
    may_change = set(row.rewrites) | set(OUTPUTS.get(command, ()) if row.exit_code == 0 else ())
    changed = sorted(k for k in before.keys() & after.keys()
                     if before[k] != after[k] and k not in may_change)
    assert changed == [], f"written before and changed: {changed}"
    gone = sorted(before.keys() - after.keys())
    assert gone == [], f"written before and removed: {gone}"
    new = sorted(after.keys() - before.keys() - may_change)
    assert new == [], f"left behind: {new}"  # temporary files (.NAME.XXXX), folders, ...
    leftovers = [k for k in after if any(part.startswith(".") for part in Path(k).parts)
                 or k.endswith((".tmp", ".aux.xml"))]
    assert leftovers == []


def _writable_again(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir() and not os.access(path, os.W_OK):
            path.chmod(0o755)


def _param(row: Row) -> Any:
    if row.xfail is None:
        return pytest.param(row, id=row.id)
    bug = pytest.mark.xfail(reason=row.xfail, raises=AssertionError, strict=True)
    return pytest.param(row, id=row.id, marks=bug)


@pytest.mark.parametrize("row", [_param(r) for r in ROWS])
def test_bad_input_or_fault(
    row: Row, good_scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "scene"
    shutil.copytree(good_scene, folder)
    row.breaks(folder, monkeypatch)
    before = _snapshot(folder)
    args = [_fill(a, folder) for a in row.args]
    monkeypatch.setattr(sys, "argv", ["geofuse", *args])  # as the console script sees them
    try:
        result = runner.invoke(app, args)
    finally:
        monkeypatch.undo()  # injected faults end with the command
        _writable_again(folder)
    line = _the_line(row, result.exit_code, result.output)
    for fragment in (row.where, row.value, row.fix, *row.also):
        assert _fill(fragment, folder) in line, (fragment, line)
    for fragment in row.never:
        assert fragment not in line, (fragment, line)
    _assert_outputs_intact(row, before, _snapshot(folder))
    if row.then is not None:
        row.then(folder)


def test_the_good_scene_passes_qc(good_scene: Path) -> None:
    """The scene every row breaks is clean: both QC reports pass (so each row's is its own)."""
    work = good_scene / "work"
    assert _qc(good_scene, "stack_qc.json")["status"] == "passed"
    assert "Status: **passed**" in (work / "stack_qc.md").read_text()
    qc = _qc(good_scene, "patches_qc.json")
    assert qc["status"] == "passed" and not qc["warnings"]
    assert all(c["median_inside"] > 0.5 for c in qc["label_fit"]["classes"].values())
    assert PatchSet.load(work / "patches.h5").provenance["qc"]["status"] == "passed"


def test_the_table_is_whole() -> None:
    """Unique ids, every row names a place, a value and a fix; the README count holds."""
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))
    assert all(r.where and r.value and r.fix for r in ROWS)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    total = len(ROWS) + REAL_PROCESS_FAULTS
    assert f"**{total} bad inputs and faults**" in readme, "README: update the fault count"
    assert f"the {len(ROWS)} rows of" in readme, "README: update the table size"
    assert {r.exit_code for r in ROWS} == {0, 2, 130, 143}
