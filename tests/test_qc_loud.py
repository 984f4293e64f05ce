"""QC that fails loudly: empty or mostly-nodata modalities, empty label files, patches that lie
mostly outside their (too small) polygons say so on the console and in the QC report, with a
status that is not "passed". Those bad inputs are rows of the table in ``test_robustness.py``
(with the QC report checks, and the check that the good scene passes); here: the thresholds
of the valid share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geofuse.config import ModalityConfig
from geofuse.raster.io import Grid
from geofuse.raster.qc import QCAccumulator


@pytest.mark.parametrize(
    ("valid_share", "status", "where"),
    [(1.0, "passed", None), (0.7, "passed", None), (0.3, "warning", "warnings"),
     (0.005, "failed", "failures"), (0.0, "failed", "failures")],
)
def test_valid_share_thresholds(valid_share: float, status: str, where: str | None) -> None:
    grid = Grid(CRS.from_epsg(32718), Affine(10, 0, 0, 0, -10, 0), 100, 100)
    mod = ModalityConfig(name="dem", files=["dem.tif"], bands=["elevation"])
    qc = QCAccumulator(grid, [mod], {"dem": 1})
    values = np.full((1, 100, 100), np.nan, dtype="float32")
    values.reshape(-1)[: round(valid_share * 10_000)] = 1.0
    qc.update("dem", values, np.ones((100, 100), bool), Window(0, 0, 100, 100))
    report = qc.report(Path("stack.tif"), max_nan_fraction=1.0)
    assert report["status"] == status and report["passed"] == (status != "failed")
    if where is not None:
        assert any("'elevation'" in m and "'dem'" in m for m in report[where])
