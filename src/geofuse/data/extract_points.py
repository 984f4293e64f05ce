"""``geofuse extract`` with label points: one patch centred on each point's pixel."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np

from geofuse.config import StudyConfig
from geofuse.data.extract import (
    _apply_nodata,
    _base_provenance,
    _check_stack,
    _labels_config,
    _scene_bounds,
    finish_patchset,
    stack_coverage,
)
from geofuse.data.patchset import PatchSet
from geofuse.data.stack_reader import StackPatchReader
from geofuse.errors import SamplingError
from geofuse.labels.points import LabelPoints, place_points, point_groups, read_label_points
from geofuse.raster.manifest import StackManifest


def _no_points_error(labels: Path, points: LabelPoints, reader: StackPatchReader,
                     patch_size: int) -> SamplingError:
    return SamplingError(
        f"{labels}: none of its {points.report.n_features} label point(s) gives a patch "
        f"({len(points.report.outside)} outside the stack, the rest too near its edge or "
        f"without a label); {stack_coverage(reader)}. Fix: check the points overlap the "
        f"stack, or use a smaller extract.patch_size (now {patch_size})"
    )


def _groups_summary(groups: np.ndarray) -> dict[str, Any]:
    sizes = np.array(list(Counter(groups.tolist()).values()), dtype=np.int64)
    return {"n_groups": len(sizes), "largest_group": int(sizes.max(initial=0)),
            "points_in_shared_groups": int(sizes[sizes > 1].sum())}


def _qc(points: LabelPoints, placed: dict[str, Any], groups: np.ndarray, y: np.ndarray,
        nodata: dict[str, Any], largest_share: float) -> dict[str, Any]:
    """The extract QC record of a point set: counts, groups and a warning when one group
    holds most points (the splits then have little to choose from)."""
    summary = _groups_summary(groups)
    warnings_: list[str] = []
    if len(groups) and summary["largest_group"] > largest_share * len(groups):
        warnings_.append(
            f"one group holds {summary['largest_group']} of the {len(groups)} points: the "
            "points lie so close together that their patches (or extract.group_distance) chain "
            "them into one group, and the splits cannot separate them; lower "
            "extract.patch_size or extract.group_distance"
        )
    per_class = Counter(points.class_names[int(k)] for k in y.tolist())
    return {"status": "warning" if warnings_ else "passed", "warnings": warnings_,
            "label_fit": {"status": "passed", "warnings": [], "classes": {}},
            "points": {**{k: v for k, v in placed.items() if not isinstance(v, list | dict)},
                       "near_edge": len(placed["near_edge"]),
                       "merged_same_pixel": len(placed["merged_same_pixel"]),
                       "conflicting_same_pixel": len(placed["conflicting_same_pixel"]),
                       "per_class": dict(per_class), **summary},
            "nodata": nodata}


def extract_from_points(cfg: StudyConfig, manifest: StackManifest, labels: Path,
                        frame: gpd.GeoDataFrame, progress: bool = True) -> PatchSet:
    """One patch per label point of ``frame`` (read from ``labels``), grouped so that points
    whose patches share a pixel (or closer than ``extract.group_distance``) never straddle a
    split; write the PatchSet.

    Raises:
        RasterError: the stack does not match its manifest.
        LabelError: bad attributes (see :func:`read_label_points`).
        SamplingError: no point gives a patch; all patches dropped for nodata.
        SplitError: a class has too few groups for every split.
    """
    lab, ex, stack = _labels_config(cfg), cfg.extract, cfg.stack_path
    limit = ex.memory_limit_mb * 2**20
    with StackPatchReader(stack, max_memory_bytes=limit) as reader:
        _check_stack(reader, manifest, stack)
        points = read_label_points(
            frame, labels, class_field=lab.class_field, classes=lab.classes,
            id_field=lab.id_field, crs=reader.crs, scene_bounds=_scene_bounds(reader),
            value_field=lab.value_field, value_strata_count=lab.value_strata)
        placed = place_points(points, reader.transform, reader.height, reader.width,
                              ex.patch_size, ex.per_class, cfg.seed)
        if len(placed) == 0:
            raise _no_points_error(labels, points, reader, ex.patch_size)
        x = reader.read_patches(placed.rows, placed.cols, ex.patch_size, progress)
        coords = reader.pixel_centre_coords(placed.rows, placed.cols)
    keep, frac, nodata = _apply_nodata(cfg, labels, x, None, None, manifest)
    idx = placed.point[keep]
    if not keep.all():
        nodata["points_without_patches"] = [points.ids[i] for i in placed.point[~keep].tolist()]
    ids = [points.ids[i] for i in idx.tolist()]
    groups = point_groups(placed.rows[keep], placed.cols[keep], coords[keep], ids,
                          ex.patch_size, ex.group_distance)
    qc = _qc(points, placed.report, groups, points.y[idx], nodata, largest_share=0.5)
    provenance = {
        **_base_provenance(cfg),
        "labels_path": str(labels),
        "label_geometry": "points",
        "class_field": lab.class_field,
        "id_field": lab.id_field,
        "patch_size": ex.patch_size,
        "centre_convention": "window rows/cols start at centre - patch_size // 2; coords are "
                             "the map x, y of the centre of the pixel holding the point",
        "sampling": {"per_class": ex.per_class, "group_distance": ex.group_distance,
                     **placed.report},
        "point_ids": ids,
        "seed": cfg.seed,
        "polygons": points.report.to_dict(),
        "nodata": nodata,
    }
    return finish_patchset(
        cfg, manifest, x[keep], points.y[idx], groups, coords[keep], frac[keep],
        points.class_names, provenance, qc,
        values=None if points.values is None else points.values[idx],
        value_name=lab.value_field or "",
    )
