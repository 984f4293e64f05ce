"""The demo flow (what `make demo` runs), on a smaller scene and few epochs; and `--full`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import pytest
from matplotlib import image as mpimg

from geofuse.config import StudyConfig
from geofuse.pipeline import FULL_MODELS, demo_workers, run_demo


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


def test_demo_runs_the_sensor_ablation_and_writes_the_study_report(demo_dir: Path) -> None:
    report = run_demo(demo_dir, seed=2, epochs=2, size_m=6000.0)
    assert report.is_file() and report.name == "report.html"
    study = report.parent
    assert (study / "report.md").is_file() and (study / "results.csv").is_file()
    cells = [json.loads(p.read_text()) for p in (study / "cells").glob("*.json")]
    ids = {c["config_id"] for c in cells}
    expected = {f"{s}/simple_cnn" for s in ("s2", "s2+modis", "s2+dem", "s2+modis+dem")}
    assert ids == expected
    assert sorted({c["fold"] for c in cells}) == [0, 1, 2]
    assert len(cells) == 12
    html = report.read_text()
    assert "data:image/png;base64," in html and "s2+modis+dem/simple_cnn" in html
    # the data section shows the class balance per fold and random patches per class
    md = (study / "report.md").read_text()
    for name, title in (("class_balance", "Class balance per fold"),
                        ("samples", "Random patches per class")):
        assert f"plots/{name}.png" in md and title in html
        image = mpimg.imread(study / "plots" / f"{name}.png")
        assert image.shape[0] > 100 and image[..., :3].std() > 0.05
    # the best configuration's fold models mapped the scene; the map is assessed on the
    # polygons held out of every fold
    assessment = json.loads((study / "map" / "assessment.json").read_text())
    assert 0.3 < assessment["overall_accuracy"] <= 1
    assert assessment["reference"]["n_reference_pixels"] > 100
    assert (study / "map" / "classes.tif").is_file() and "Map of the scene" in md
    assert "map/quicklook.png" in md
    # and published with a minimum mapping unit, as polygons
    vector = json.loads((study / "map" / "classes_vectorize.json").read_text())
    assert vector["mmu_ha"] == pytest.approx(0.5, rel=0.05) and vector["polygons"] > 0
    polygons = gpd.read_file(study / "map" / "classes_mmu.gpkg")
    assert len(polygons) == vector["polygons"] and polygons["area_ha"].min() >= 0.5 - 1e-6
    assert "minimum mapping unit" in md and "mean_entropy" in polygons.columns
    # and where to label next: places away from the study's polygons
    places = gpd.read_file(study / "map" / "label_suggestions.gpkg")
    assert 20 <= len(places) <= 40 and places["class"].isna().all()
    labels = gpd.read_file(demo_dir / "scene" / "labels.geojson").to_crs(places.crs)
    assert not places.geometry.within(labels.geometry.make_valid().union_all()).any()
    assert "Where to label next:" in md
    # and where the map extrapolates: its area of applicability
    aoa = json.loads((study / "map" / "predict.json").read_text())["aoa"]
    assert len(aoa["members"]) == 3 and 0 <= aoa["outside_share"] < 0.5
    assert {m["exclusion"] for m in aoa["members"]} == {"fold"}  # CAST's CV-fold threshold
    assert (study / "map" / "aoa.tif").is_file() and "Area of applicability" in md
    # Re-running in the same folder reuses the finished cells and writes the same report.
    mtimes = {p: p.stat().st_mtime for p in (study / "cells").glob("*.json")}
    assert run_demo(demo_dir, seed=2, epochs=2, size_m=6000.0) == report
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes


def test_demo_study_tests_every_configuration_against_sentinel2_alone(demo_dir: Path) -> None:
    report = run_demo(demo_dir, seed=2, epochs=2, size_m=6000.0)  # finished cells are reused
    study = json.loads((report.parent / "study.json").read_text())
    assert study["baseline_config_id"] == "s2/simple_cnn"
    stats = json.loads((report.parent / "stats.json").read_text())
    text = json.dumps(stats)
    assert "s2+modis+dem/simple_cnn" in text and "p_holm" in text
    assert "Significance against the baseline" in (report.parent / "report.md").read_text()


def test_full_demo_runs_the_24_cell_study_in_its_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_ablation(cfg: StudyConfig, study_name: str, workers: int) -> Path:
        seen.update(cfg=cfg, name=study_name, workers=workers)
        return tmp_path / "study"

    monkeypatch.setattr("geofuse.experiments.ablation.run_ablation", fake_ablation)
    report = run_demo(tmp_path, seed=2, size_m=6000.0, full=True)
    assert report == tmp_path / "study" / "report.html"
    cfg = seen["cfg"]
    assert [m if isinstance(m, str) else m.name for m in cfg.ablation.models] == FULL_MODELS
    assert cfg.ablation.folds == 3 and cfg.ablation.epochs == 30
    assert seen["name"] == f"{cfg.name}_full" and seen["workers"] == demo_workers()
