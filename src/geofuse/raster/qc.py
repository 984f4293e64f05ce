"""Quality control of a fused stack, accumulated window by window.

Per band: valid fraction, NaN count (split into nodata inside the sources and pixels no
source covers), min/max/mean/std and values outside the expected physical range. Per
modality: covered fraction and the bounding box of the uncovered area. Written as
``<stack>_qc.json`` plus a short ``<stack>_qc.md`` beside the stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.windows import Window

from geofuse.config import ModalityConfig
from geofuse.errors import RasterError
from geofuse.io_utils import atomic_write_json, atomic_write_text
from geofuse.raster.io import Grid
from geofuse.raster.qc_observations import ObservationStats, mask_warnings, observation_lines
from geofuse.sensors import get_sensor

if TYPE_CHECKING:
    from geofuse.raster.align import WindowObservations

#: A band with a smaller valid share over the reference grid fails QC (it carries no data).
FAIL_VALID_FRACTION = 0.01
#: A band with a smaller valid share is reported as a QC warning (mostly nodata).
WARN_VALID_FRACTION = 0.5


def qc_paths(stack_path: str | Path) -> tuple[Path, Path]:
    """(JSON, Markdown) QC report paths that belong to ``stack_path``."""
    stack_path = Path(stack_path)
    stem = stack_path.with_suffix("").name
    return (stack_path.with_name(f"{stem}_qc.json"), stack_path.with_name(f"{stem}_qc.md"))


def expected_range(modality: ModalityConfig) -> tuple[float, float] | None:
    """The modality's ``valid_range``, else its sensor's, else None."""
    if modality.valid_range is not None:
        return (float(modality.valid_range[0]), float(modality.valid_range[1]))
    if modality.sensor is not None:
        return get_sensor(modality.sensor).valid_range
    return None


@dataclass
class BandStats:
    """Running statistics of one band (Chan et al. merge of per-window moments)."""

    name: str
    modality: str
    valid_range: tuple[float, float] | None
    total: int = 0
    valid: int = 0
    uncovered: int = 0
    out_of_range: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def update(self, values: np.ndarray, covered: np.ndarray) -> None:
        """Add one window of values; ``covered`` marks pixels inside the modality's sources."""
        ok = np.isfinite(values)
        self.total += values.size
        self.uncovered += int(np.count_nonzero(~ok & ~covered))
        v = values[ok].astype(np.float64)
        if v.size == 0:
            return
        if self.valid_range is not None:
            lo, hi = self.valid_range
            self.out_of_range += int(np.count_nonzero((v < lo) | (v > hi)))
        n_b, mean_b = v.size, float(v.mean())
        m2_b = float(np.square(v - mean_b).sum())
        n = self.valid + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.valid * n_b / n
        self.valid = n
        self.min, self.max = min(self.min, float(v.min())), max(self.max, float(v.max()))

    @property
    def invalid_fraction(self) -> float:
        return 1.0 - self.valid / self.total if self.total else 0.0

    @property
    def valid_fraction(self) -> float:
        return self.valid / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        has = self.valid > 0
        invalid = self.total - self.valid
        return {
            "modality": self.modality,
            "valid_fraction": self.valid / self.total if self.total else 0.0,
            "valid_count": self.valid,
            "nan_count": invalid,
            "nodata_count": invalid - self.uncovered,
            "uncovered_count": self.uncovered,
            "min": self.min if has else None,
            "max": self.max if has else None,
            "mean": self.mean if has else None,
            "std": math.sqrt(self.m2 / self.valid) if has else None,
            "valid_range": list(self.valid_range) if self.valid_range else None,
            "out_of_range_count": self.out_of_range if self.valid_range else None,
            "out_of_range_fraction": (
                self.out_of_range / self.valid if self.valid_range and has else None
            ),
        }


@dataclass
class CoverageStats:
    """Which pixels of the reference grid a modality's source files cover."""

    modality: str
    n_files: int
    total: int = 0
    covered: int = 0
    rows: tuple[int, int] | None = None  # inclusive row range of uncovered pixels
    cols: tuple[int, int] | None = None

    def update(self, covered: np.ndarray, window: Window) -> None:
        self.total += covered.size
        n_cov = int(np.count_nonzero(covered))
        self.covered += n_cov
        if n_cov == covered.size:
            return
        unc = ~covered
        r = np.flatnonzero(unc.any(axis=1)) + int(window.row_off)
        c = np.flatnonzero(unc.any(axis=0)) + int(window.col_off)
        self.rows = _extend(self.rows, int(r[0]), int(r[-1]))
        self.cols = _extend(self.cols, int(c[0]), int(c[-1]))

    def to_dict(self, grid: Grid) -> dict[str, Any]:
        bounds = None
        if self.rows is not None and self.cols is not None:
            bounds = _pixel_range_bounds(grid, self.rows, self.cols)
        return {
            "files": self.n_files,
            "covered_fraction": self.covered / self.total if self.total else 0.0,
            "uncovered_pixels": self.total - self.covered,
            "uncovered_bounds": bounds,
        }


def _extend(span: tuple[int, int] | None, lo: int, hi: int) -> tuple[int, int]:
    return (lo, hi) if span is None else (min(span[0], lo), max(span[1], hi))


def _pixel_range_bounds(grid: Grid, rows: tuple[int, int], cols: tuple[int, int]) -> list[float]:
    """CRS (left, bottom, right, top) of an inclusive pixel row/column range."""
    window = Window(cols[0], rows[0], cols[1] - cols[0] + 1, rows[1] - rows[0] + 1)
    return [float(v) for v in grid.window_bounds(window)]


class QCAccumulator:
    """Collects band statistics and coverage for every window of a stack."""

    def __init__(self, grid: Grid, modalities: list[ModalityConfig], n_files: dict[str, int]):
        self.grid = grid
        self.bands: dict[str, list[BandStats]] = {
            m.name: [BandStats(b, m.name, expected_range(m)) for b in m.bands] for m in modalities
        }
        self.coverage = {m.name: CoverageStats(m.name, n_files[m.name]) for m in modalities}
        self.observations: dict[str, ObservationStats] = {}

    def update(self, modality: str, data: np.ndarray, covered: np.ndarray, window: Window,
               observed: WindowObservations | None = None) -> None:
        """Add one window of one modality: ``data`` is ``(bands, h, w)``; ``observed``: what
        its masks removed and, for a composite, its clear acquisitions per pixel."""
        self.coverage[modality].update(covered, window)
        if observed is not None and (observed.seen or observed.clear is not None):
            self.observations.setdefault(modality, ObservationStats()).update(observed, covered)
        for stats, values in zip(self.bands[modality], data, strict=True):
            stats.update(values, covered)

    def report(self, stack_path: Path, max_nan_fraction: float) -> dict[str, Any]:
        """The QC report as a JSON-ready dict.

        ``status`` is ``failed`` when a band has more invalid pixels than ``max_nan_fraction``
        or (almost) no valid pixel (below :data:`FAIL_VALID_FRACTION`), ``warning`` when a band
        is mostly nodata (below :data:`WARN_VALID_FRACTION`), a modality does not cover the
        whole grid or values fall outside the expected range, else ``passed``. ``passed`` is
        False only on failures.
        """
        all_bands = [s for stats in self.bands.values() for s in stats]
        coverage = {name: c.to_dict(self.grid) for name, c in self.coverage.items()}
        for name, obs in self.observations.items():
            coverage[name]["observations"] = obs.to_dict()
        failures = [
            f"band {s.name!r} (modality {s.modality!r}) has {s.invalid_fraction:.1%} invalid "
            f"pixels, above prepare.max_nan_fraction = {max_nan_fraction:g}; fix the sources' "
            "coverage/nodata or raise prepare.max_nan_fraction"
            for s in all_bands
            if s.invalid_fraction > max_nan_fraction
        ]
        empty, sparse = _valid_share_findings(self.bands, coverage, failures)
        failures += empty
        masks = mask_warnings(coverage)
        failed = {s.modality for s in all_bands if s.invalid_fraction > max_nan_fraction
                  or s.valid_fraction < FAIL_VALID_FRACTION}
        # a failing modality whose mask removed most pixels: the mask is the likely cause
        failures = [m for name, m in masks if name in failed and "its mask flags" in m] + failures
        warnings = (sparse + _coverage_warnings(coverage) + _range_warnings(all_bands)
                    + [m for name, m in masks if not (name in failed and "its mask flags" in m)])
        status = "failed" if failures else "warning" if warnings else "passed"
        return {
            "stack": str(stack_path),
            "grid": {
                "crs": self.grid.crs_string(),
                "transform": list(self.grid.transform)[:6],
                "width": self.grid.width,
                "height": self.grid.height,
                "bounds": list(self.grid.bounds),
            },
            "max_nan_fraction": max_nan_fraction,
            "status": status,
            "passed": not failures,
            "failures": failures,
            "warnings": warnings,
            "bands": {s.name: s.to_dict() for s in all_bands},
            "modalities": coverage,
        }


def _valid_share_findings(
    bands: dict[str, list[BandStats]], coverage: dict[str, dict[str, Any]], failures: list[str]
) -> tuple[list[str], list[str]]:
    """(failures, warnings) for modalities whose bands are (almost) all or mostly nodata.

    Bands already named in ``failures`` (the max_nan_fraction rule) are not repeated.
    """
    empty, sparse = [], []
    for modality, stats in bands.items():
        todo = [s for s in stats if not any(f"band {s.name!r} " in f for f in failures)]
        low = [s for s in todo if s.valid_fraction < WARN_VALID_FRACTION]
        if not low:
            continue
        worst = min(s.valid_fraction for s in low)
        names = ", ".join(repr(s.name) for s in low)
        covered = coverage[modality]["covered_fraction"]
        where = (f"its files cover {covered:.1%} of the reference grid" if covered < 1
                 else "its files cover the whole reference grid, so the pixels are nodata")
        if worst < FAIL_VALID_FRACTION:
            empty.append(
                f"modality {modality!r}: band(s) {names} have {worst:.1%} valid pixels over the "
                f"reference grid ({where}); fix the modality's 'nodata' value, scale/offset or "
                "'files' (or the grid), or remove the modality from the config"
            )
        else:
            sparse.append(
                f"modality {modality!r}: band(s) {names} are mostly nodata, only {worst:.1%} "
                f"valid over the reference grid ({where}); patches there will be NaN or "
                "dropped: check its 'nodata' value and files, or set a 'grid' that it covers"
            )
    return empty, sparse


def _coverage_warnings(coverage: dict[str, dict[str, Any]]) -> list[str]:
    return [
        f"modality {name!r} covers {c['covered_fraction']:.1%} of the reference grid; "
        f"uncovered area (left, bottom, right, top) = {c['uncovered_bounds']}"
        for name, c in coverage.items()
        if c["uncovered_pixels"]
    ]


def _range_warnings(bands: list[BandStats]) -> list[str]:
    return [
        f"band {s.name!r}: {s.out_of_range} values ({s.out_of_range / s.valid:.2%}) outside the "
        f"expected range {list(s.valid_range or ())}; check scale/offset/nodata"
        for s in bands
        if s.out_of_range
    ]


def render_markdown(report: dict[str, Any]) -> str:
    """Short human-readable version of the QC report."""
    grid = report["grid"]
    lines = [
        f"# QC report: {Path(report['stack']).name}",
        "",
        f"Grid: {grid['width']} x {grid['height']} px, {grid['crs'][:60]}, "
        f"bounds {[round(v, 3) for v in grid['bounds']]}",
        f"Status: **{_status(report)}** (max_nan_fraction = {report['max_nan_fraction']:g})",
        "",
        "| band | modality | valid | NaN | min | max | mean | std | out of range |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, b in report["bands"].items():
        oor = "n/a" if b["out_of_range_count"] is None else str(b["out_of_range_count"])
        stats = " | ".join(_fmt(b[k]) for k in ("min", "max", "mean", "std"))
        lines.append(
            f"| {name} | {b['modality']} | {b['valid_fraction']:.1%} | {b['nan_count']} | "
            f"{stats} | {oor} |"
        )
    lines += ["", "| modality | files | covered | uncovered bounds |", "|---|---|---|---|"]
    for name, c in report["modalities"].items():
        unc = _fmt_box(c["uncovered_bounds"])
        lines.append(f"| {name} | {c['files']} | {c['covered_fraction']:.1%} | {unc} |")
    lines += observation_lines(report["modalities"])
    for title, key in (("Failures", "failures"), ("Warnings", "warnings")):
        if report[key]:
            lines += ["", f"## {title}", "", *[f"- {msg}" for msg in report[key]]]
    return "\n".join(lines) + "\n"


def _status(report: dict[str, Any]) -> str:
    status = report.get("status", "passed" if report["passed"] else "failed")
    return {"passed": "passed", "warning": "WARNING", "failed": "FAILED"}[status]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _fmt_box(bounds: list[float] | None) -> str:
    return "-" if bounds is None else "(" + ", ".join(f"{v:.2f}" for v in bounds) + ")"


def write_qc(report: dict[str, Any], stack_path: Path) -> Path:
    """Write the JSON and Markdown QC reports atomically; return the JSON path."""
    json_path, md_path = qc_paths(stack_path)
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_markdown(report))
    return json_path


def raise_if_failed(report: dict[str, Any], qc_path: Path) -> None:
    """Raise RasterError naming the failing bands if the report did not pass."""
    if report["passed"]:
        return
    raise RasterError(
        f"QC failed: {'; '.join(report['failures'])}; the stack was not written (see the QC "
        f"report {qc_path})"
    )
