"""Shared helpers of the fault tests: a small prepared scene, copies of it, CLI calls."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import rasterio
import yaml
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.data.synthetic import generate_scene

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    """Run the CLI in-process; return (exit code, output)."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def one_line_error(code: int, out: str, *needles: str, exit_code: int = 2) -> str:
    """Assert exit ``exit_code``, exactly one ``error:`` line holding ``needles``, no traceback."""
    assert code == exit_code, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def build_scene(folder: Path, steps: tuple[str, ...] = ("prepare", "extract")) -> Path:
    """A 4 km synthetic scene taken through ``steps``; returns its study config."""
    cfg = generate_scene(folder, seed=3, size_m=4000.0, n_polygons=30)
    for step in steps:
        code, out = invoke(step, "-c", str(cfg))
        assert code == 0, f"geofuse {step} failed:\n{out}"
    return cfg


def copy_scene(cfg: Path, dest: Path) -> Path:
    """A copy of the scene folder (outputs included); returns the copied config."""
    shutil.copytree(cfg.parent, dest)
    return dest / cfg.name


def variant(cfg: Path, name: str, **sections: dict | str) -> Path:
    """A copy of the config beside it (same relative paths) with sections updated."""
    data = yaml.safe_load(cfg.read_text())
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    path = cfg.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def snapshot(work: Path) -> dict[str, str]:
    """Name -> sha256 of every entry in ``work`` (hidden temporary files and folders too)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(work.iterdir())}


def set_nodata_rows(path: Path, share: float) -> None:
    """Overwrite the top ``share`` of the raster's rows with its nodata value."""
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    rows = round(share * data.shape[1])
    data[:, :rows] = np.asarray(profile["nodata"], dtype=data.dtype)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
