"""``geofuse extract`` with label points: one patch centred on each point's pixel."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from rasterio.crs import CRS

from geofuse.config import StudyConfig
from geofuse.data.extract import (
    _apply_nodata,
    _base_provenance,
    _check_stack,
    _labels_config,
    _scene_bounds,
    finish_patchset,
    nodata_fraction,
    stack_coverage,
)
from geofuse.data.patchset import PatchSet
from geofuse.data.stack_reader import StackPatchReader
from geofuse.errors import ConfigError, SamplingError, SplitError
from geofuse.labels.points import (
    LabelPoints,
    PointCentres,
    class_order,
    place_points,
    point_groups,
    read_label_points,
)
from geofuse.raster.manifest import StackManifest

#: QC warns when one group holds more than this share of the points.
LARGEST_GROUP_SHARE = 0.5


def _no_points_error(labels: Path, points: LabelPoints, reader: StackPatchReader,
                     patch_size: int) -> SamplingError:
    return SamplingError(
        f"{labels}: none of its {points.report.n_features} feature(s) gives a patch "
        f"({len(points.report.outside)} point(s) outside the stack; the warnings name the "
        f"rest: near the edge, no label, no geometry, classes differing in a pixel); "
        f"{stack_coverage(reader)}. Fix: check the points overlap the stack, or use a smaller "
        f"extract.patch_size (now {patch_size})"
    )


def _check_settings(cfg: StudyConfig, crs: str) -> None:
    """Refuse a group distance in degrees; warn about polygon settings that do nothing here."""
    ex = cfg.extract
    if ex.group_distance and CRS.from_user_input(crs).is_geographic:
        raise ConfigError(
            f"extract.group_distance = {ex.group_distance:g} is in map units, and the stack's "
            f"CRS {crs} is geographic (degrees); prepare the stack on a projected grid (e.g. "
            "UTM) or remove extract.group_distance")
    ignored = [k for k in ("jitter", "min_distance") if getattr(ex, k)]
    if ignored:
        warnings.warn(f"extract.{' and extract.'.join(ignored)} move and space centres inside "
                      "polygons and do nothing for label points (one patch at each point); "
                      "remove them", UserWarning, stacklevel=3)


def _read_capped(reader: StackPatchReader, placed: PointCentres, order: list[np.ndarray],
                 cfg: StudyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Patches of the placed points ``extract.per_class`` takes (all without it), topping a
    class up from its next points when the nodata rule will drop some; the patches and their
    indices into ``placed``."""
    ex, size = cfg.extract, cfg.extract.patch_size
    cap = ex.per_class
    if cap is None:
        return reader.read_patches(placed.rows, placed.cols, size, False), \
            np.arange(len(placed))
    taken = [o[:cap] for o in order]
    batches, chosen = [], []
    pending = np.concatenate(taken)
    while len(pending):
        x = reader.read_patches(placed.rows[pending], placed.cols[pending], size, False)
        batches.append(x)
        chosen.append(pending)
        if ex.on_nodata == "flag":
            break
        good = np.concatenate(chosen)[np.concatenate(
            [nodata_fraction(b) for b in batches]) <= ex.max_nodata_fraction]
        more = []
        for k, o in enumerate(order):
            short = cap - int(np.isin(good, o).sum())
            if short > 0:
                more.append(o[len(taken[k]):len(taken[k]) + short])
                taken[k] = o[:len(taken[k]) + short]
        pending = np.concatenate(more) if more else np.zeros(0, np.int64)
    idx = np.concatenate(chosen)
    return np.concatenate(batches), idx


def _capped_report(points: LabelPoints, placed: PointCentres, cap: int | None
                   ) -> dict[str, list[int]]:
    """Classes with more usable points than ``extract.per_class``: [the cap, usable points]
    (patches lost to nodata are topped up from the class's other points while it has any)."""
    if cap is None:
        return {}
    usable = Counter(points.y[placed.point].tolist())
    out = {points.class_names[k]: [min(cap, n), n] for k, n in sorted(usable.items())
           if n > cap}
    for name, (kept, had) in out.items():
        warnings.warn(f"class {name!r}: kept {kept} of its {had} points "
                      f"(extract.per_class = {cap})", UserWarning, stacklevel=3)
    return out


def _groups_summary(groups: np.ndarray) -> dict[str, Any]:
    sizes = np.array(list(Counter(groups.tolist()).values()), dtype=np.int64)
    return {"n_groups": len(sizes), "largest_group": int(sizes.max(initial=0)),
            "points_in_shared_groups": int(sizes[sizes > 1].sum())}


def _grouping_rule(cfg: StudyConfig) -> str:
    ex = cfg.extract
    rule = f"points whose {ex.patch_size}x{ex.patch_size} px patches share a pixel"
    if ex.group_distance:
        rule += f" or lie within extract.group_distance = {ex.group_distance:g}"
    return rule + " form one group"


def _grouping_fix(cfg: StudyConfig) -> str:
    return ("lower extract.group_distance or extract.patch_size" if cfg.extract.group_distance
            else "lower extract.patch_size")


def _qc(cfg: StudyConfig, points: LabelPoints, placed: dict[str, Any], groups: np.ndarray,
        y: np.ndarray, nodata: dict[str, Any]) -> dict[str, Any]:
    """The extract QC record of a point set: counts, groups and a warning when one group
    holds most points (the splits then have little to choose from)."""
    summary = _groups_summary(groups)
    warnings_: list[str] = []
    if len(groups) and summary["largest_group"] > LARGEST_GROUP_SHARE * len(groups):
        warnings_.append(
            f"one group holds {summary['largest_group']} of the {len(groups)} points "
            f"({_grouping_rule(cfg)}), so the splits cannot separate them; "
            f"{_grouping_fix(cfg)}")
        warnings.warn(f"extract QC: {warnings_[-1]}", UserWarning, stacklevel=3)
    per_class = Counter(points.class_names[int(k)] for k in y.tolist())
    counts = {k: (len(v) if isinstance(v, list) else v) for k, v in placed.items()
              if k != "mode" and not isinstance(v, dict)}
    return {"status": "warning" if warnings_ else "passed", "warnings": warnings_,
            "label_fit": {"status": "passed", "warnings": [], "classes": {}},
            "points": {**counts, "capped_classes": placed.get("capped_classes", {}),
                       "per_class": dict(per_class), **summary},
            "nodata": nodata}


def _provenance(cfg: StudyConfig, labels: Path, points: LabelPoints, report: dict[str, Any],
                ids: list[str], nodata: dict[str, Any]) -> dict[str, Any]:
    """The PatchSet provenance of a point set: sources, sampling, the point of every patch."""
    lab, ex = _labels_config(cfg), cfg.extract
    return {
        **_base_provenance(cfg),
        "labels_path": str(labels),
        "label_geometry": "points",
        "class_field": lab.class_field,
        "id_field": lab.id_field,
        "patch_size": ex.patch_size,
        "centre_convention": "window rows/cols start at centre - patch_size // 2; coords are "
                             "the map x, y of the centre of the pixel holding the point",
        "sampling": {"per_class": ex.per_class, "group_distance": ex.group_distance,
                     **report},
        "point_ids": ids,
        "seed": cfg.seed,
        "polygons": points.report.to_dict(),
        "nodata": nodata,
    }


def extract_from_points(cfg: StudyConfig, manifest: StackManifest, labels: Path,
                        frame: gpd.GeoDataFrame, progress: bool = True) -> PatchSet:
    """One patch per label point of ``frame`` (read from ``labels``), grouped so that points
    whose patches share a pixel (or closer than ``extract.group_distance``) never straddle a
    split; write the PatchSet.

    Raises:
        ConfigError: ``extract.group_distance`` on a stack in degrees.
        RasterError: the stack does not match its manifest.
        LabelError: bad attributes or repeated ids (see :func:`read_label_points`).
        SamplingError: no point gives a patch; all patches dropped for nodata.
        SplitError: a class has too few groups for every split.
    """
    lab, ex, stack = _labels_config(cfg), cfg.extract, cfg.stack_path
    limit = ex.memory_limit_mb * 2**20
    with StackPatchReader(stack, max_memory_bytes=limit) as reader:
        _check_stack(reader, manifest, stack)
        _check_settings(cfg, reader.crs)
        points = read_label_points(
            frame, labels, class_field=lab.class_field, classes=lab.classes,
            id_field=lab.id_field, crs=reader.crs, scene_bounds=_scene_bounds(reader),
            value_field=lab.value_field, value_strata_count=lab.value_strata)
        placed = place_points(points, reader.transform, reader.height, reader.width,
                              ex.patch_size)
        if len(placed) == 0:
            raise _no_points_error(labels, points, reader, ex.patch_size)
        x, taken = _read_capped(reader, placed, class_order(points, placed, cfg.seed), cfg)
        report = {**placed.report,
                  "capped_classes": _capped_report(points, placed, ex.per_class)}
        placed = placed.subset(taken)
        coords = reader.pixel_centre_coords(placed.rows, placed.cols)
    read_ids = [points.ids[i] for i in placed.point.tolist()]
    keep, frac, nodata = _apply_nodata(cfg, labels, x, None, None, manifest, read_ids)
    kept = placed.subset(np.flatnonzero(keep))
    idx = kept.point
    ids = [points.ids[i] for i in idx.tolist()]
    groups = point_groups(kept.rows, kept.cols, points.xy[idx], ids, ex.patch_size,
                          ex.group_distance, points.feature[idx])
    qc = _qc(cfg, points, report, groups, points.y[idx], nodata)
    provenance = _provenance(cfg, labels, points, report, ids, nodata)
    try:
        return finish_patchset(
            cfg, manifest, x[keep], points.y[idx], groups, coords[keep], frac[keep],
            points.class_names, provenance, qc, values=kept.values,
            value_name=lab.value_field or "")
    except SplitError as err:
        summary = _groups_summary(groups)
        raise SplitError(
            f"{labels}: {len(groups)} points in {summary['n_groups']} groups (the largest "
            f"holds {summary['largest_group']}; {_grouping_rule(cfg)}): {err}; or "
            f"{_grouping_fix(cfg)}") from None
