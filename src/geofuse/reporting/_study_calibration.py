"""Calibration across a study: each configuration's temperature and ECE, before and after."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from geofuse.reporting import html as doc
from geofuse.reporting._study_test_blocks import _f


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def calibration_stats(by_config: Mapping[str, Sequence[Mapping[str, Any]]]
                      ) -> dict[str, dict[str, Any]]:
    """Per configuration, means over its cells: temperature, and the val and test ECE after
    and before scaling; configurations without calibration figures are left out."""
    out = {}
    for cid, cells in by_config.items():
        cals = [c["calibration"] for c in cells if c.get("calibration")]
        if not cals:
            continue
        scaled = [c for c in cals if c["method"] == "temperature" and not c.get("skipped")]
        out[cid] = {
            "method": "temperature" if scaled else cals[0]["method"],
            "cells": len(cals), "fitted": len(scaled),
            "temperature": _mean([c["temperature"] for c in scaled]),
            **{f"{split}_ece": _mean([c["ece"].get(split) for c in cals])
               for split in ("val", "test")},
            **{f"{split}_ece_before": _mean([c["ece_before"].get(split) for c in scaled])
               for split in ("val", "test")},
        }
    return out


def calibration_blocks(stats: Mapping[str, Mapping[str, Any]]) -> list[doc.Block]:
    """The study report's calibration table (nothing when no cell has calibration figures)."""
    if not stats:
        return []
    rows = [[cid, f"{s['fitted']}/{s['cells']}", _f(s["temperature"]), _f(s["val_ece"]),
             _f(s["test_ece"]), _f(s["val_ece_before"]), _f(s["test_ece_before"])]
            for cid, s in stats.items()]
    return [doc.Heading("Calibration of the probabilities"),
            doc.Para("Expected calibration error (ECE, 15 confidence bins; 0 = a probability "
                     "of p is right a fraction p of the time), means over cells. Networks are "
                     "temperature-scaled on their validation fold (`train.calibration`); "
                     "'before' is the raw softmax. The validation ECE after scaling is fitted "
                     "on that same fold; the test ECE is the honest check. Baselines report "
                     "their vote fractions unscaled."),
            doc.Table(["configuration", "cells scaled", "mean T", "val ECE", "test ECE",
                       "val ECE before", "test ECE before"], rows)]
