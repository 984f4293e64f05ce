"""``geofuse change``: the from-to matrix of two class maps, change.tif as a class map of the
transitions that assess and vectorize read, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from class_maps import ORIGIN, write_class_map
from geofuse.cli import app
from geofuse.mapping.assess_io import open_class_map
from geofuse.mapping.outputs import CLASS_NODATA
from geofuse.mapping.vectorize import vectorize_map

NAMES = ["water", "forest", "urban"]
WATER, FOREST, URBAN = 0, 1, 2


def _write(folder: Path, name: str, data: np.ndarray, x0: float = ORIGIN[0]) -> Path:
    return write_class_map(folder, name, data, NAMES, x0=x0)


def _years() -> tuple[np.ndarray, np.ndarray]:
    a = np.full((40, 50), FOREST, np.uint8)
    a[:, :10] = WATER
    b = a.copy()
    b[10:20, 20:30] = URBAN    # 100 px (1 ha) of forest became urban
    b[0:5, 0:4] = FOREST       # 20 px of water became forest
    a[35:, 45:] = CLASS_NODATA  # unmapped in the first year: not compared
    return a, b


def test_from_to_matrix_gains_losses_and_a_change_map(tmp_path: Path) -> None:
    a, b = _years()
    pa, pb = _write(tmp_path, "y2018", a), _write(tmp_path, "y2023", b)
    out = tmp_path / "change"
    result = CliRunner().invoke(app, ["change", str(pa), str(pb), "-o", str(out),
                                      "--labels", "2018,2023"])
    assert result.exit_code == 0, result.output
    assert "1.2 ha of 19.8 ha (6.1%) changed class" in result.output
    record = json.loads((out / "change.json").read_text())
    matrix = np.array(record["matrix_pixels"])
    compared = a != CLASS_NODATA
    for i in range(3):
        for j in range(3):
            assert matrix[i, j] == ((a == i) & (b == j) & compared).sum()
    forest = next(c for c in record["per_class"] if c["class"] == "forest")
    assert forest["loss_ha"] == pytest.approx(1.0) and forest["gain_ha"] == pytest.approx(0.2)
    assert forest["net_ha"] == pytest.approx(-0.8)
    with rasterio.open(out / "change.tif") as src:
        codes = src.read(1)
        names = json.loads(src.tags()["class_names"])
    assert names == ["water (no change)", "forest (no change)", "water -> forest",
                     "forest -> urban"]
    assert (codes[10:20, 20:30] == names.index("forest -> urban")).all()
    assert (codes[0:5, 0:4] == names.index("water -> forest")).all()
    assert (codes[35:, 45:] == CLASS_NODATA).all()
    md = (out / "change.md").read_text()
    assert "| forest | 0.00 | 14.75 | 1.00 | 15.75 |" in md and "--sample-design" in md
    assert (out / "change_quicklook.png").is_file()
    with rasterio.open(out / "change.tif") as src, rasterio.open(pa) as year:
        table, land = src.colormap(1), year.colormap(1)
    assert table[names.index("forest -> urban")] == land[URBAN]  # what it became
    pale = table[names.index("forest (no change)")]
    assert all(p > c for p, c in zip(pale[:3], land[FOREST][:3], strict=True))
    # change.tif is a class map: it can be published with an MMU and sampled for assessment
    cmap = open_class_map(out / "change.tif")
    assert cmap.class_names == names and cmap.counts[names.index("forest -> urban")] == 100
    vectors = vectorize_map(out / "change.tif", out / "vectors", min_pixels=50)
    assert vectors.record["classes"][names.index("water -> forest")]["polygons"] == 0
    sample = CliRunner().invoke(app, ["assess", str(out / "change.tif"), "--sample-design",
                                      "60", "--min-per-class", "10", "-o", str(out / "s")])
    assert sample.exit_code == 0, sample.output


def test_merged_stable_class_and_mistakes(tmp_path: Path) -> None:
    a, b = _years()
    pa, pb = _write(tmp_path, "a", a), _write(tmp_path, "b", b)
    result = CliRunner().invoke(app, ["change", str(pa), str(pb), "-o", str(tmp_path / "m"),
                                      "--merge-stable"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "m" / "change.json").read_text())
    assert record["change_classes"] == ["no change", "water -> forest", "forest -> urban"]
    # a shift far below a pixel (another tool's rounding) is the same grid
    nudged = _write(tmp_path / "nudged", "b", b, x0=ORIGIN[0] + 1e-7)
    assert CliRunner().invoke(app, ["change", str(pa), str(nudged), "-o",
                                    str(tmp_path / "n")]).exit_code == 0
    # maps that share no class name would count every pixel as change
    other_names = write_class_map(tmp_path / "names", "b", b, ["a", "b", "c"])
    res = CliRunner().invoke(app, ["change", str(pa), str(other_names), "-o",
                                   str(tmp_path / "x")])
    assert res.exit_code == 2 and "share no class name" in " ".join(res.output.split())
    shifted = _write(tmp_path / "other", "b", b, x0=500_010.0)
    for args, words in [
        (["change", str(pa), str(shifted), "-o", str(tmp_path / "x")],
         ["are on different grids", "origin (500000.0, 5100000.0) vs (500010.0",
          "gdalwarp -r near"]),
        (["change", str(pa), str(tmp_path / "none.tif"), "-o", str(tmp_path / "x")],
         ["none.tif", "does not exist"]),
        (["change", str(pa), str(pb), "-o", str(tmp_path / "x"), "--labels", "2018"],
         ["--labels", "two names"]),
    ]:
        res = CliRunner().invoke(app, args)
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and all(w in out for w in words), (words, out)
    assert not (tmp_path / "x" / "change.tif").exists()
