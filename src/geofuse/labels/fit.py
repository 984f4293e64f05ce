"""How well patches fit their label polygons: the share of each patch inside its own polygon.

A patch labelled with its polygon's class but lying mostly outside that polygon teaches the
model the surroundings, not the class (e.g. 10 m polygons with 80 m patches). :func:`label_fit`
measures, per class, the share of each patch's footprint inside the polygon it was sampled
from, and flags the classes whose patches mostly (more than :data:`MAX_OUTSIDE_SHARE`) lie more
than half outside their polygon.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from affine import Affine

from geofuse.labels.polygons import LabelPolygons, format_ids
from geofuse.labels.sampling import CentreSample

#: A patch "lies outside" its polygon when less than this share of it is inside.
MIN_INSIDE = 0.5
#: A class is flagged when more than this share of its patches lie outside their polygon.
MAX_OUTSIDE_SHARE = 0.5


def patch_inside_share(
    polygons: LabelPolygons, centres: CentreSample, transform: Affine, patch_size: int
) -> np.ndarray:
    """Share (0..1) of each patch's footprint that lies inside the polygon it came from."""
    if len(centres) == 0:
        return np.zeros(0)
    half = patch_size // 2
    rows0, cols0 = centres.rows - half, centres.cols - half
    xa, ya = transform @ (cols0, rows0)
    xb, yb = transform @ (cols0 + patch_size, rows0 + patch_size)
    boxes = shapely.box(np.minimum(xa, xb), np.minimum(ya, yb),
                        np.maximum(xa, xb), np.maximum(ya, yb))
    geoms = np.empty(len(polygons.geometries), dtype=object)
    geoms[:] = polygons.geometries
    inside = shapely.area(shapely.intersection(boxes, geoms[centres.polygon]))
    return np.clip(inside / shapely.area(boxes), 0.0, 1.0)


def label_fit(
    polygons: LabelPolygons, centres: CentreSample, transform: Affine, patch_size: int,
    keep: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per-class fit of patches to their polygons, with a status and warnings.

    Args:
        polygons: the label polygons the centres were sampled from.
        centres: sampled patch centres (pixel rows/cols of the stack grid).
        transform: affine transform of the stack grid.
        patch_size: patch side in pixels.
        keep: boolean mask of the patches kept (default: all).

    Returns:
        JSON-able dict: ``status`` (``passed`` or ``warning``), ``warnings``, ``classes``
        (per class: patches, mean and median inside share, share of patches outside,
        polygons smaller than a patch) and the thresholds used.
    """
    share = patch_inside_share(polygons, centres, transform, patch_size)
    poly = centres.polygon
    if keep is not None:
        share, poly = share[keep], poly[keep]
    patch_area = patch_size**2 * abs(transform.a * transform.e - transform.b * transform.d)
    geoms = np.empty(len(polygons.geometries), dtype=object)
    geoms[:] = polygons.geometries
    small = shapely.area(geoms) < patch_area
    classes: dict[str, Any] = {}
    warnings: list[str] = []
    for k, name in enumerate(polygons.class_names):
        of_class = polygons.y[poly] == k
        if not of_class.any():
            continue
        s = share[of_class]
        outside = float(np.mean(s < MIN_INSIDE))
        in_class = np.flatnonzero(polygons.y == k)
        n_small = int(small[in_class].sum())
        classes[name] = {
            "patches": int(of_class.sum()), "mean_inside": float(s.mean()),
            "median_inside": float(np.median(s)), "share_outside": outside,
            "polygons": len(in_class), "polygons_smaller_than_patch": n_small,
            "flagged": outside > MAX_OUTSIDE_SHARE,
        }
        if outside > MAX_OUTSIDE_SHARE:
            ids = [polygons.ids[i] for i in in_class[small[in_class]]]
            warnings.append(
                f"class {name!r}: {outside:.0%} of its {int(of_class.sum())} patches lie mostly "
                f"outside their label polygon (median {np.median(s):.0%} inside); {n_small} of "
                f"its {len(in_class)} polygons are smaller than one {patch_size}x{patch_size} px "
                f"patch{f' (ids: {format_ids(ids, 10)})' if ids else ''}; use a smaller "
                "extract.patch_size or larger label polygons"
            )
    return {
        "status": "warning" if warnings else "passed", "warnings": warnings,
        "min_inside": MIN_INSIDE, "max_outside_share": MAX_OUTSIDE_SHARE,
        "patch_area": patch_area, "classes": classes,
    }


def render_markdown(qc: dict[str, Any], title: str) -> str:
    """A short Markdown version of an extract QC record (see :func:`label_fit`)."""
    status = {"passed": "passed", "warning": "WARNING"}.get(qc["status"], qc["status"])
    lines = [f"# Extract QC: {title}", "", f"Status: **{status}**", ""]
    if qc.get("points"):
        lines += _points_markdown(qc["points"])
    else:
        lines += ["| class | patches | mean inside | median inside | patches outside | "
                  "polygons smaller than a patch |", "|---|---|---|---|---|---|"]
    for name, c in qc["label_fit"]["classes"].items():
        lines.append(
            f"| {name} | {c['patches']} | {c['mean_inside']:.0%} | {c['median_inside']:.0%} | "
            f"{c['share_outside']:.0%} | {c['polygons_smaller_than_patch']} of {c['polygons']} |"
        )
    if qc["warnings"]:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in qc["warnings"]]]
    return "\n".join(lines) + "\n"


def _points_markdown(p: dict[str, Any]) -> list[str]:
    """The label points' counts and groups, for :func:`render_markdown`."""
    rows = [("points read", p.get("n_points")), ("placed (one per pixel)", p.get("n_placed")),
            ("too near the edge", p.get("near_edge")),
            ("merged into a point in the same pixel", p.get("merged_same_pixel")),
            ("dropped: classes differ in a pixel", p.get("conflicting_same_pixel")),
            ("groups (no split divides one)", p.get("n_groups")),
            ("largest group", p.get("largest_group")),
            ("points sharing a group", p.get("points_in_shared_groups"))]
    lines = ["| label points | count |", "|---|---|",
             *[f"| {k} | {v} |" for k, v in rows if v is not None]]
    capped = p.get("capped_classes") or {}
    lines += ["", "| class | patches |" + (" capped (kept of usable) |" if capped else ""),
              "|---|---|" + ("---|" if capped else "")]
    for name, n in (p.get("per_class") or {}).items():
        cap = capped.get(name)
        lines.append(f"| {name} | {n} |" + (f" {cap[0]} of {cap[1]} |" if cap else
                                            (" |" if capped else "")))
    return lines
