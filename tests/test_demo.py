"""The demo flow (what `make demo` runs), on a smaller scene and few epochs."""

from __future__ import annotations

import json
from pathlib import Path

from geofuse.pipeline import run_demo


def test_demo_trains_s2_and_fusion_runs_and_reports(tmp_path: Path) -> None:
    report = run_demo(tmp_path / "demo", seed=2, epochs=3, size_m=6000.0)
    assert report.is_file() and report.name == "report.md"
    runs = sorted(p.name for p in report.parent.parent.iterdir())
    assert len(runs) == 2 and any(name.endswith("-s2-seed2") for name in runs)
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert 0.0 <= metrics["val"]["accuracy"] <= 1.0
    assert "guard" in metrics
    # Re-running in the same folder works (outputs are replaced, not refused).
    assert run_demo(tmp_path / "demo", seed=2, epochs=1, size_m=6000.0) == report
