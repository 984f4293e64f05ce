"""Label points (field plots, GPS survey, LUCAS, Earth Engine training points): read, place
and group.

A point labels the pixel it falls in; its patch is the ``patch_size`` window centred there.
:func:`read_label_points` reads a GeoJSON, GeoPackage or Shapefile of Point/MultiPoint features
(each part of a MultiPoint is a point of its own, id ``<feature>.<k>``) with the same class,
value and id attributes as label polygons. :func:`place_points` puts them on the stack grid:
points outside the stack or too near its edge for a whole patch are dropped, several points
in one pixel become one when they agree and are all dropped when their classes differ, and
``per_class`` keeps a seeded random subset of a class's points. :func:`point_groups` groups
points for the splits: points whose patches share a pixel are always one group, and points
closer than ``group_distance`` (map units) too (single linkage), so neighbouring points never
straddle a split.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from affine import Affine
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from geofuse.data.stack_reader import centre_limits
from geofuse.labels.polygons import (
    PolygonReport,
    format_ids,
    labelled_features,
    new_report,
    value_strata,
    warn_report,
)

POINT_TYPES = ("Point", "MultiPoint")
AREA_TYPES = ("Polygon", "MultiPolygon")


@dataclass
class LabelPoints:
    """Validated label points in the stack CRS.

    Attributes:
        ids: point id (``id_field`` value or row number; ``<id>.<k>`` for MultiPoint parts).
        xy: float64 (N, 2) map coordinates in ``crs``.
        y: class index of each point into ``class_names`` (a value's quantile range for
            ``value_field``).
        class_names: class names in index order.
        crs: CRS of ``xy``.
        report: what was dropped or found outside the scene.
        values: the number of each point (``value_field``); ``None`` for class labels.
    """

    ids: list[str]
    xy: np.ndarray
    y: np.ndarray
    class_names: list[str]
    crs: str
    report: PolygonReport
    values: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def geometry_counts(frame: gpd.GeoDataFrame) -> dict[str, int]:
    """Features with point, area and other (line) geometries; null/empty ones not counted."""
    kinds = frame.geometry[~(frame.geometry.isna() | frame.geometry.is_empty)].geom_type
    points = int(kinds.isin(POINT_TYPES).sum())
    areas = int(kinds.isin(AREA_TYPES).sum())
    return {"points": points, "areas": areas, "other": len(kinds) - points - areas}


def is_point_layer(frame: gpd.GeoDataFrame) -> bool:
    """True when the label features are points (no polygon among them)."""
    counts = geometry_counts(frame)
    return counts["points"] > 0 and counts["areas"] == 0


def read_label_points(
    frame: gpd.GeoDataFrame, path: Path, class_field: str = "class",
    classes: list[str] | None = None, id_field: str | None = None, crs: str | None = None,
    scene_bounds: tuple[float, float, float, float] | None = None,
    value_field: str | None = None, value_strata_count: int = 4,
) -> LabelPoints:
    """Label points of ``frame`` (read from ``path``), reprojected to ``crs``, with their
    class (or number), warning about features dropped (null geometry, no class, lines,
    outside ``scene_bounds``).

    Raises:
        LabelError: missing class/id attribute, unknown class values, values not numbers.
    """
    frame, ids, labels, class_names = labelled_features(
        frame, path, class_field, classes, id_field, value_field)
    if crs is not None:
        frame = frame.to_crs(crs)
    report = new_report(path, len(frame), value_field)
    report.geometry = "point"
    keep_ids: list[str] = []
    keep_xy: list[tuple[float, float]] = []
    keep_label: list[str] = []
    for fid, geom, label in zip(ids, frame.geometry, labels, strict=True):
        if geom is None or geom.is_empty:
            report.dropped_null.append(fid)
        elif geom.geom_type not in POINT_TYPES:
            report.dropped_no_area.append(fid)  # a line: neither a point nor an area
        elif label is None:
            report.dropped_no_class.append(fid)
        else:
            parts = [geom] if geom.geom_type == "Point" else list(geom.geoms)
            for k, part in enumerate(parts):
                keep_ids.append(fid if len(parts) == 1 else f"{fid}.{k}")
                keep_xy.append((part.x, part.y))
                keep_label.append(label)
    xy = np.asarray(keep_xy, dtype=np.float64).reshape(-1, 2)
    if scene_bounds is not None and len(xy):
        left, bottom, right, top = scene_bounds
        inside = (xy[:, 0] >= left) & (xy[:, 0] <= right) & (xy[:, 1] >= bottom) & \
            (xy[:, 1] <= top)
        report.outside = [i for i, ok in zip(keep_ids, inside.tolist(), strict=True) if not ok]
        keep_ids = [i for i, ok in zip(keep_ids, inside.tolist(), strict=True) if ok]
        keep_label = [v for v, ok in zip(keep_label, inside.tolist(), strict=True) if ok]
        xy = xy[inside]
    report.n_kept = len(keep_ids)
    warn_report(report)
    y = np.array([class_names.index(v) for v in keep_label], dtype=np.int64)
    numbers = None
    if value_field:  # regression: the number itself, stratified by quantile range
        numbers = np.array([float(v) for v in keep_label], dtype=np.float64)
        y, class_names = value_strata(numbers, value_strata_count)
    return LabelPoints(ids=keep_ids, xy=xy, y=y, class_names=class_names,
                       crs=frame.crs.to_string(), report=report, values=numbers)


@dataclass
class PointCentres:
    """Points placed on the stack grid: centre pixel and the index of the point in
    :class:`LabelPoints` of every patch, and what was dropped on the way."""

    rows: np.ndarray
    cols: np.ndarray
    point: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed % 2**63, zlib.crc32(key.encode())])


def _one_per_pixel(points: LabelPoints, pixel: np.ndarray, idx: np.ndarray
                   ) -> tuple[np.ndarray, list[str], list[str]]:
    """``idx`` with one point per pixel: the first of points that agree, none of points whose
    labels (class, or number with ``value_field``) differ; the ids merged and dropped."""
    if len(idx) == 0:
        return idx, [], []
    label = points.y if points.values is None else points.values
    order = np.argsort(pixel[idx], kind="stable")
    idx = idx[order]
    starts = np.flatnonzero(np.r_[True, np.diff(pixel[idx]) != 0])
    ends = np.r_[starts[1:], len(idx)]
    keep, merged, conflicting = [], [], []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        members = idx[a:b]
        if len(np.unique(label[members])) > 1:
            conflicting += [points.ids[i] for i in members.tolist()]
            continue
        keep.append(int(members[0]))
        merged += [points.ids[i] for i in members[1:].tolist()]
    return np.sort(np.asarray(keep, dtype=np.int64)), merged, conflicting


def _capped(points: LabelPoints, idx: np.ndarray, per_class: int | None, seed: int
            ) -> tuple[np.ndarray, dict[str, list[int]]]:
    """At most ``per_class`` points of each class (a seeded random subset), and the classes
    capped (name -> [kept, had])."""
    if per_class is None:
        return idx, {}
    keep, capped = [], {}
    for k, name in enumerate(points.class_names):
        of_class = idx[points.y[idx] == k]
        if len(of_class) > per_class:
            of_class = np.sort(_rng(seed, name).permutation(of_class)[:per_class])
            capped[name] = [per_class, int((points.y[idx] == k).sum())]
        keep.append(of_class)
    return np.sort(np.concatenate(keep)) if keep else idx, capped


def place_points(
    points: LabelPoints, transform: Affine, height: int, width: int, patch_size: int,
    per_class: int | None = None, seed: int = 42,
) -> PointCentres:
    """The centre pixel of every usable point (see the module docstring), warning about the
    points dropped."""
    col, row = ~transform @ (points.xy[:, 0], points.xy[:, 1])
    rows = np.floor(np.asarray(row, dtype=np.float64)).astype(np.int64)
    cols = np.floor(np.asarray(col, dtype=np.float64)).astype(np.int64)
    rlo, rhi = centre_limits(height, patch_size)
    clo, chi = centre_limits(width, patch_size)
    fits = (rows >= rlo) & (rows <= rhi) & (cols >= clo) & (cols <= chi)
    near_edge = [points.ids[i] for i in np.flatnonzero(~fits).tolist()]
    idx, merged, conflicting = _one_per_pixel(points, rows * width + cols, np.flatnonzero(fits))
    idx, capped = _capped(points, idx, per_class, seed)
    report = {"mode": "points", "n_points": len(points), "n_centres": len(idx),
              "near_edge": near_edge, "merged_same_pixel": merged,
              "conflicting_same_pixel": conflicting, "capped_classes": capped}
    _warn_placement(report, patch_size)
    return PointCentres(rows=rows[idx], cols=cols[idx], point=idx, report=report)


def _warn_placement(report: dict[str, Any], patch_size: int) -> None:
    if report["near_edge"]:
        ids = report["near_edge"]
        warnings.warn(f"dropped {len(ids)} point(s) too near the stack's edge for a whole "
                      f"{patch_size}x{patch_size} px patch, ids: {format_ids(ids)}", stacklevel=3)
    if report["merged_same_pixel"]:
        ids = report["merged_same_pixel"]
        warnings.warn(f"{len(ids)} point(s) fall in the pixel of an earlier point with the same "
                      f"label and were merged into it, ids: {format_ids(ids)}", stacklevel=3)
    if report["conflicting_same_pixel"]:
        ids = report["conflicting_same_pixel"]
        warnings.warn(f"dropped {len(ids)} point(s) that share a pixel with a point of another "
                      f"label (the pixel's class is ambiguous), ids: {format_ids(ids)}; fix "
                      "their labels or move them", stacklevel=3)
    for name, (kept, had) in report["capped_classes"].items():
        warnings.warn(f"class {name!r}: kept {kept} of its {had} points "
                      f"(extract.per_class = {kept})", stacklevel=3)


def point_groups(
    rows: np.ndarray, cols: np.ndarray, xy: np.ndarray, ids: list[str], patch_size: int,
    group_distance: float | None = None,
) -> np.ndarray:
    """Group name (``point:<id of the group's first point>``) of every placed point.

    Points whose ``patch_size`` windows share a pixel are one group, and so are points
    closer than ``group_distance`` map units (single linkage: chains join).
    """
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=str)
    pixels = np.column_stack([rows, cols]).astype(np.float64)
    pairs = cKDTree(pixels).query_pairs(patch_size - 1, p=np.inf, output_type="ndarray") \
        if patch_size > 1 else np.zeros((0, 2), dtype=np.int64)
    if group_distance:
        near = cKDTree(xy).query_pairs(group_distance, output_type="ndarray")
        pairs = np.concatenate([pairs.reshape(-1, 2), near.reshape(-1, 2)])
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    first = {}
    for i, c in enumerate(component.tolist()):
        first.setdefault(c, ids[i])
    return np.array([f"point:{first[c]}" for c in component.tolist()], dtype=str)
