"""``geofuse assess``: accuracy and error-adjusted class areas of a class map.

The map's classes are the strata; the reference pixels (held-out polygons rasterised onto the
map grid, a label raster, or the points of a filled ``--sample-design`` sample) form the
sample, and :func:`~geofuse.mapping.assess_stats.stratified_estimate` turns their error matrix
into overall, user's and producer's accuracy with standard errors and the area of each class
with a 95 % confidence interval (Olofsson et al. 2014). Error matrices have **map classes in
rows and reference classes in columns**.

Polygons and label rasters give clustered reference pixels, not an independent random sample:
their standard errors are too small, which the report says. A stratified random sample of
points (``geofuse assess MAP --sample-design N``, then labelled by a person) is the design the
estimators assume.

Outputs (in ``out_dir``, default: the map's folder): ``assessment.json`` (every figure),
``assessment.md`` and ``assessment.html`` (see :mod:`geofuse.mapping.assess_report`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from geofuse.errors import LabelError
from geofuse.mapping.assess_io import ClassMap, open_class_map, strip_windows, uncertainty_summary
from geofuse.mapping.assess_reference import RasterReference, ReferenceSummary, VectorReference
from geofuse.mapping.assess_stats import Z95, StratifiedEstimate, stratified_estimate

M2_PER_HA = 1e4
M2_PER_KM2 = 1e6
CONVENTION = "rows: map class, columns: reference class"
_KIND_TEXT = {"raster": "a label raster", "polygons+points": "polygons (and points)"}


@dataclass(frozen=True)
class AssessmentOutputs:
    """Files written by :func:`assess_map` and the figures they hold."""

    json_path: Path
    markdown_path: Path
    html_path: Path
    result: dict[str, Any]


def confusion_counts(cmap: ClassMap, source: VectorReference | RasterReference,
                     aoa: Path | None = None) -> np.ndarray:
    """The (K, K) error matrix of reference pixels (rows map, columns reference), by strips;
    with ``aoa`` (an ``aoa.tif`` on the map's grid) the (2, K, K) matrices of the reference
    pixels inside and outside the area of applicability."""
    k = cmap.n_classes
    parts = 2 if aoa is not None else 1
    flat = np.zeros(parts * k * k, dtype=np.int64)
    with rasterio.open(cmap.path) as src:
        inside = rasterio.open(aoa) if aoa is not None else None
        try:
            for win in strip_windows(cmap.grid):
                if not source.needs(win):
                    continue
                block = src.read(1, window=win).astype(np.int64)
                if inside is not None:  # outside pixels carry class + K (nodata kept)
                    out = inside.read(2, window=win) == 0
                    block = np.where(out & (block != cmap.nodata), block + k, block)
                mapped, ref = source.pairs(win, block)
                if mapped.size:
                    flat += np.bincount(mapped * k + ref, minlength=parts * k * k)
        finally:
            if inside is not None:
                inside.close()
    source.finish()
    return flat.reshape(parts, k, k).sum(axis=0) if aoa is None else flat.reshape(2, k, k)


def _aoa_beside(cmap: ClassMap) -> Path | None:
    """The ``aoa.tif`` beside a map with at most 127 classes (classes + K stay below the
    nodata code), on the map's grid; None otherwise."""
    path = cmap.path.parent / "aoa.tif"
    if not path.is_file() or 2 * cmap.n_classes > cmap.nodata:
        return None
    with rasterio.open(path) as a:
        same = (a.width, a.height) == (cmap.grid.width, cmap.grid.height) and \
            a.transform.almost_equals(cmap.grid.transform)
    return path if same else None


def aoa_accuracy(matrices: np.ndarray) -> dict[str, Any]:
    """Share of reference pixels mapped right inside and outside the area of applicability
    (pixel counts, not area-weighted: Meyer & Pebesma's check that the map is less accurate
    where it extrapolates)."""
    out = {}
    for name, m in zip(("inside", "outside"), matrices, strict=True):
        n = int(m.sum())
        out[name] = {"n_reference_pixels": n,
                     "overall_accuracy": float(np.trace(m) / n) if n else None}
    return out


def _num(value: float) -> float | None:
    """A JSON number; NaN (not estimable) becomes null."""
    return float(value) if math.isfinite(float(value)) else None


def _ci(est: float, se: float, scale: float = 1.0) -> list[float | None]:
    if not (math.isfinite(est) and math.isfinite(se)):
        return [None, None]
    return [(est - Z95 * se) * scale, (est + Z95 * se) * scale]


def _class_rows(cmap: ClassMap, est: StratifiedEstimate) -> list[dict[str, Any]]:
    total_m2 = cmap.total_area_m2
    rows = []
    for i, name in enumerate(cmap.class_names):
        a, se = float(est.area[i]), float(est.area_se[i])
        mapped_m2 = float(cmap.counts[i]) * cmap.pixel_area_m2
        rows.append({
            "index": i, "name": name, "colour": cmap.colours[i],
            "mapped_pixels": int(cmap.counts[i]), "mapped_share": _num(est.weights[i]),
            "mapped_area_ha": mapped_m2 / M2_PER_HA, "mapped_area_km2": mapped_m2 / M2_PER_KM2,
            "samples_in_stratum": int(est.counts[i].sum()),
            "samples_of_reference_class": int(est.counts[:, i].sum()),
            "users_accuracy": _num(est.users[i]), "users_accuracy_se": _num(est.users_se[i]),
            "producers_accuracy": _num(est.producers[i]),
            "producers_accuracy_se": _num(est.producers_se[i]),
            "area_proportion": _num(a), "area_proportion_se": _num(se),
            "area_ha": _num(a * total_m2 / M2_PER_HA),
            "area_ha_se": _num(se * total_m2 / M2_PER_HA),
            "area_ha_ci95": _ci(a, se, total_m2 / M2_PER_HA),
            "area_km2": _num(a * total_m2 / M2_PER_KM2),
            "area_km2_ci95": _ci(a, se, total_m2 / M2_PER_KM2),
            "estimable": not bool(est.unsampled[i]),
        })
    return rows


def _caveats(ref: ReferenceSummary, cmap: ClassMap, est: StratifiedEstimate) -> list[str]:
    out = []
    if ref.clustered:
        out.append(
            f"The reference pixels come from {_KIND_TEXT.get(ref.kind, ref.kind)}: they are "
            "clustered (whole areas), not an independent random sample, but the estimators "
            "treat each pixel as a sample drawn at random within its map class, so the "
            "standard errors and intervals are too narrow, and the figures are unbiased only "
            "if the reference areas are representative of each map class. For publishable "
            "figures, draw a "
            "stratified random sample ('geofuse assess MAP --sample-design N'), label it and "
            "assess with '--polygons sample.gpkg --class-field reference'.")
    else:
        out.append("The points are taken as a stratified random sample with the map classes "
                   "as strata (as 'geofuse assess --sample-design' draws them); points chosen "
                   "otherwise do not give design-unbiased estimates.")
    missing = [cmap.class_names[i] for i in np.flatnonzero(est.unsampled)]
    if missing:
        out.append(
            f"Map class(es) {', '.join(missing)} ({100 * (1 - est.covered_share):.2f} % of the "
            "mapped area) have no reference sample: their area and accuracies cannot be "
            "estimated, and the other figures cover the sampled classes "
            f"({100 * est.covered_share:.2f} % of the mapped area) only; add reference data "
            "in those classes.")
    single = [cmap.class_names[i] for i in np.flatnonzero(est.counts.sum(axis=1) == 1)]
    if single:
        out.append(f"Map class(es) {', '.join(single)} have a single reference sample: the "
                   "standard errors that involve them are undefined; add samples.")
    return out


def assessment_dict(cmap: ClassMap, ref: ReferenceSummary, est: StratifiedEstimate,
                    uncertainty: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every figure of an assessment as a JSON-able dict (NaN -> null)."""
    t = cmap.grid.transform
    return {
        "map": str(cmap.path), "crs": cmap.grid.crs_string(),
        "shape": [cmap.grid.height, cmap.grid.width],
        "pixel_size": [abs(t.a), abs(t.e)], "pixel_area_m2": cmap.pixel_area_m2,
        "nodata": cmap.nodata, "class_names_from": cmap.names_from,
        "mapped_area_ha": cmap.total_area_m2 / M2_PER_HA,
        "mapped_area_km2": cmap.total_area_m2 / M2_PER_KM2,
        "reference": {**ref.__dict__, "clustered": ref.clustered,
                      "n_reference_pixels": int(est.counts.sum())},
        "convention": CONVENTION, "z": Z95,
        "method": "stratified estimators of Olofsson et al. (2014), Remote Sensing of "
                  "Environment 148, 42-57: strata = map classes, W_i = mapped area share",
        "classes": cmap.class_names,
        "confusion_matrix": est.counts.astype(int).tolist(),
        "area_proportion_matrix": est.proportions.tolist(),
        "overall_accuracy": _num(est.overall), "overall_accuracy_se": _num(est.overall_se),
        "overall_accuracy_ci95": _ci(est.overall, est.overall_se),
        "covered_share": est.covered_share,
        "per_class": _class_rows(cmap, est),
        "unassessed_classes": [cmap.class_names[i] for i in np.flatnonzero(est.unsampled)],
        "caveats": _caveats(ref, cmap, est),
        "uncertainty": uncertainty,
    }


def assess_map(
    map_path: str | Path,
    *,
    polygons: str | Path | None = None,
    labels: str | Path | None = None,
    out_dir: str | Path | None = None,
    class_field: str = "class",
    classes: list[str] | None = None,
    unlabelled: int | None = None,
) -> AssessmentOutputs:
    """Assess a class map against reference polygons/points or a label raster.

    Args:
        map_path: the class map (``classes.tif`` of ``geofuse predict``).
        polygons: reference polygons or points (GeoPackage, GeoJSON, Shapefile).
        labels: a reference raster of class codes (instead of ``polygons``).
        out_dir: folder of the outputs; default: the map's folder.
        class_field: attribute of ``polygons`` holding the reference class.
        classes: class names for a map that carries none.
        unlabelled: code of unlabelled pixels in ``labels``; default: the map's
            ``label_unlabelled`` tag (the training label raster's), else 255.

    Raises:
        DataNotFoundError, RasterError, AlignmentError, LabelError: unusable inputs (one line
            naming the file, the value and the fix).
    """
    from geofuse.mapping.assess_report import write_assessment

    if (polygons is None) == (labels is None):
        raise ValueError("give exactly one of polygons and labels")
    cmap = open_class_map(map_path, classes)
    source: VectorReference | RasterReference = (
        VectorReference(polygons, cmap, class_field) if polygons is not None
        else RasterReference(labels, cmap, unlabelled))  # type: ignore[arg-type]
    aoa = _aoa_beside(cmap)
    split = confusion_counts(cmap, source, aoa)
    counts = split.sum(axis=0) if aoa is not None else split
    if counts.sum() == 0:
        raise LabelError(
            f"no reference pixel of {source.summary.path!r} falls on a mapped pixel of "
            f"{str(cmap.path)!r} (pixel centres inside polygons, points on pixels that are not "
            "nodata); check that the reference covers mapped parts of the scene")
    est = stratified_estimate(counts, cmap.counts)
    missing = [cmap.class_names[i] for i in np.flatnonzero(est.unsampled)]
    if missing:
        warnings.warn(
            f"{source.summary.path}: no reference sample in map class(es) {missing}: their "
            "area cannot be estimated (the report says so); the other classes are assessed; "
            "add reference data in those classes", UserWarning, stacklevel=2)
    beside = cmap.path.parent / "uncertainty.tif"
    unc = uncertainty_summary(beside, cmap.grid) if beside.is_file() else None
    result = assessment_dict(cmap, source.summary, est, unc)
    if aoa is not None:
        result["aoa"] = aoa_accuracy(split)
    out = Path(out_dir) if out_dir is not None else cmap.path.parent
    paths = write_assessment(result, out, cmap.path.parent)
    return AssessmentOutputs(json_path=paths[0], markdown_path=paths[1], html_path=paths[2],
                             result=result)


def summary_line(result: dict[str, Any]) -> str:
    """One line for the terminal: overall accuracy, its SE and the reference size."""
    oa, se = result["overall_accuracy"], result["overall_accuracy_se"]
    se_text = f"{se:.3f}" if se is not None else "n/a"
    ref = result["reference"]
    return (f"overall accuracy {oa:.3f} ± {se_text} (SE) from {ref['n_reference_pixels']:,} "
            f"reference pixels ({ref['kind']})")
