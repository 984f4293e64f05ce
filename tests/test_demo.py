"""The demo flow (what `make demo` runs), on a smaller scene and few epochs."""

from __future__ import annotations

import json
from pathlib import Path

from geofuse.pipeline import run_demo


def test_demo_runs_the_sensor_ablation_and_writes_the_study_report(tmp_path: Path) -> None:
    report = run_demo(tmp_path / "demo", seed=2, epochs=2, size_m=6000.0)
    assert report.is_file() and report.name == "report.html"
    study = report.parent
    assert (study / "report.md").is_file() and (study / "results.csv").is_file()
    cells = [json.loads(p.read_text()) for p in (study / "cells").glob("*.json")]
    ids = {c["config_id"] for c in cells}
    expected = {f"{s}/{m}" for s in ("s2", "s2+modis", "s2+dem", "s2+modis+dem")
                for m in ("simple_cnn", "late_fusion")}
    assert ids == expected
    assert sorted({c["fold"] for c in cells}) == [0, 1, 2]
    assert len(cells) == 24
    html = report.read_text()
    assert "data:image/png;base64," in html and "s2+modis+dem/late_fusion" in html
    # Re-running in the same folder reuses the finished cells and writes the same report.
    mtimes = {p: p.stat().st_mtime for p in (study / "cells").glob("*.json")}
    assert run_demo(tmp_path / "demo", seed=2, epochs=2, size_m=6000.0) == report
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
