"""geofuse assess on the command line: outputs, and one-line errors with exit 2 on bad input."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box
from typer.testing import CliRunner, Result

from geofuse.cli import app
from test_assess import truth_and_map, write_map

runner = CliRunner()


def _run(*args: str | Path) -> Result:
    return runner.invoke(app, ["assess", *map(str, args)], terminal_width=400)


def _error_line(result: Result) -> str:
    """The one error line (the CLI prints 'error: ...' on a single line, no traceback)."""
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture()
def scene(tmp_path: Path) -> Path:
    """classes.tif (A, B, C; 10 % of A mapped as B) and held-out polygons of all classes."""
    _, mapped = truth_and_map()
    write_map(tmp_path / "classes.tif", mapped, ["A", "B", "C"])
    gpd.GeoDataFrame({"class": ["A", "B", "C"]},
                     geometry=[box(500_100, 5_998_500, 500_600, 5_999_800),
                               box(501_200, 5_999_400, 501_800, 5_999_900),
                               box(501_200, 5_998_500, 501_800, 5_999_100)],
                     crs="EPSG:32633").to_file(tmp_path / "held_out.gpkg")
    return tmp_path


def test_assess_polygons_writes_the_report(scene: Path) -> None:
    result = _run(scene / "classes.tif", "--polygons", scene / "held_out.gpkg", "-o",
                  scene / "out")
    assert result.exit_code == 0, result.output
    assert "overall accuracy" in result.output
    for name in ("assessment.json", "assessment.md", "assessment.html",
                 "assessment_legend.png", "assessment_areas.png"):
        assert (scene / "out" / name).is_file(), name


def test_sample_design_then_assess_the_filled_sample(scene: Path) -> None:
    result = _run(scene / "classes.tif", "--sample-design", "120", "--min-per-class", "30",
                  "--seed", "2")
    assert result.exit_code == 0, result.output
    pts = gpd.read_file(scene / "validation_sample.gpkg")
    assert len(pts) == 120
    pts["reference"] = pts["map_class_name"]
    pts.to_file(scene / "validation_sample.gpkg")
    result = _run(scene / "classes.tif", "--polygons", scene / "validation_sample.gpkg",
                  "--class-field", "reference")
    assert result.exit_code == 0, result.output
    assert "overall accuracy 1.000" in result.output


def test_missing_inputs_exit_2_naming_the_file(scene: Path) -> None:
    result = _run(scene / "nope.tif", "--polygons", scene / "held_out.gpkg")
    assert result.exit_code == 2 and "nope.tif" in _error_line(result)
    result = _run(scene / "classes.tif", "--polygons", scene / "missing.gpkg")
    assert result.exit_code == 2 and "missing.gpkg" in _error_line(result)
    result = _run(scene / "classes.tif", "--labels", scene / "missing.tif")
    assert result.exit_code == 2 and "missing.tif" in _error_line(result)


def test_reference_source_options_are_exclusive(scene: Path) -> None:
    assert _run(scene / "classes.tif").exit_code == 2
    both = _run(scene / "classes.tif", "--polygons", scene / "held_out.gpkg",
                "--sample-design", "10")
    assert both.exit_code == 2 and "--polygons" in both.output


def test_polygons_elsewhere_do_not_overlap(scene: Path) -> None:
    gpd.GeoDataFrame({"class": ["A"]}, geometry=[box(700_000, 5_000_000, 701_000, 5_001_000)],
                     crs="EPSG:32633").to_file(scene / "far.gpkg")
    result = _run(scene / "classes.tif", "--polygons", scene / "far.gpkg")
    line = _error_line(result)
    assert result.exit_code == 2 and "does not overlap" in line and "far.gpkg" in line


def test_reference_class_the_map_lacks(scene: Path) -> None:
    gpd.GeoDataFrame({"class": ["A", "wetland"]},
                     geometry=[box(500_100, 5_998_500, 500_600, 5_999_800),
                               box(501_200, 5_999_400, 501_800, 5_999_900)],
                     crs="EPSG:32633").to_file(scene / "odd.gpkg")
    result = _run(scene / "classes.tif", "--polygons", scene / "odd.gpkg")
    line = _error_line(result)
    assert result.exit_code == 2 and "wetland" in line and "['A', 'B', 'C']" in line
    missing_field = _run(scene / "classes.tif", "--polygons", scene / "odd.gpkg",
                         "--class-field", "label")
    assert missing_field.exit_code == 2 and "'label'" in _error_line(missing_field)


def test_label_raster_code_the_map_lacks(scene: Path) -> None:
    truth, _ = truth_and_map()
    labels = truth.copy()
    labels[:10, :10] = 7
    write_map(scene / "labels.tif", labels, None, nodata=None)
    result = _run(scene / "classes.tif", "--labels", scene / "labels.tif")
    line = _error_line(result)
    assert result.exit_code == 2 and "{7: 100}" in line and "--unlabelled" in line
    ok = _run(scene / "classes.tif", "--labels", scene / "labels.tif", "--unlabelled", "7",
              "-o", scene / "lab")
    assert ok.exit_code == 0, ok.output


def test_map_class_without_reference_warns_and_keeps_the_others(scene: Path) -> None:
    gpd.read_file(scene / "held_out.gpkg").iloc[:2].to_file(scene / "ab.gpkg")
    result = _run(scene / "classes.tif", "--polygons", scene / "ab.gpkg")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "['C']" in result.output


def test_geographic_map_and_small_sample_are_refused(scene: Path) -> None:
    _, mapped = truth_and_map()
    write_map(scene / "geo.tif", mapped, ["A", "B", "C"], pixel=0.001, crs="EPSG:4326")
    result = _run(scene / "geo.tif", "--sample-design", "100")
    line = _error_line(result)
    assert result.exit_code == 2 and "geographic" in line and "gdalwarp" in line
    small = _run(scene / "classes.tif", "--sample-design", "100", "--min-per-class", "50")
    assert small.exit_code == 2 and "--min-per-class" in _error_line(small)


def test_map_without_names_uses_classes_option(scene: Path) -> None:
    _, mapped = truth_and_map()
    write_map(scene / "plain.tif", mapped, None)
    result = _run(scene / "plain.tif", "--polygons", scene / "held_out.gpkg",
                  "--classes", "A,B,C", "-o", scene / "plain")
    assert result.exit_code == 0, result.output
    too_few = _run(scene / "plain.tif", "--polygons", scene / "held_out.gpkg",
                   "--classes", "A,B")
    assert too_few.exit_code == 2 and "[2]" in _error_line(too_few)
    assert np.isin(mapped, [0, 1, 2]).all()
