"""Label points (field plots, GPS survey, LUCAS, Earth Engine training points): read, place
and group.

A point labels the pixel it falls in; its patch is the ``patch_size`` window centred there.
:func:`read_label_points` reads a GeoJSON, GeoPackage or Shapefile of Point/MultiPoint features
(each part of a MultiPoint is a point of its own, id ``<feature>#<k>``) with the same class,
value and id attributes as label polygons. :func:`place_points` puts them on the stack grid:
points outside the stack or too near its edge for a whole patch are dropped, and several points
in one pixel become one (the mean of their numbers with ``value_field``; with classes, when
they agree: all are dropped when their classes differ). :func:`class_order` is the seeded order
in which ``per_class`` takes a class's points. :func:`point_groups` groups points for the
splits: points whose patches share a pixel, the parts of one MultiPoint and points at most
``group_distance`` apart (map units) are one group (single linkage), so neighbouring points
never straddle a split.
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
from geofuse.errors import LabelError
from geofuse.labels.polygons import (
    PolygonReport,
    duplicate_ids,
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
        ids: point id (``id_field`` value or row number; ``<id>#<k>`` for MultiPoint parts).
        xy: float64 (N, 2) map coordinates in ``crs``.
        y: class index of each point into ``class_names`` (a value's quantile range for
            ``value_field``).
        class_names: class names in index order.
        crs: CRS of ``xy``.
        report: what was dropped or found outside the scene.
        values: the number of each point (``value_field``); ``None`` for class labels.
        feature: row of the feature each point comes from (the parts of a MultiPoint, one
            plot's samples, stay in one group).
    """

    ids: list[str]
    xy: np.ndarray
    y: np.ndarray
    class_names: list[str]
    crs: str
    report: PolygonReport
    values: np.ndarray | None = None
    feature: np.ndarray | None = None  #: feature (row) of each point: MultiPoint parts share it

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
    ids, labels, class_names = labelled_features(frame, path, class_field, classes, id_field,
                                                 value_field)
    if crs is not None:
        frame = frame.to_crs(crs)
    report = new_report(path, len(frame), value_field)
    report.geometry = "point"
    keep_ids: list[str] = []
    keep_xy: list[tuple[float, float]] = []
    keep_label: list[str] = []
    keep_feature: list[int] = []
    for row, (fid, geom, label) in enumerate(zip(ids, frame.geometry, labels, strict=True)):
        if geom is None or geom.is_empty:
            report.dropped_null.append(fid)
        elif geom.geom_type not in POINT_TYPES:
            report.dropped_no_area.append(fid)  # a line: neither a point nor an area
        elif label is None:
            report.dropped_no_class.append(fid)
        else:
            parts = [geom] if geom.geom_type == "Point" else list(geom.geoms)
            for k, part in enumerate(parts):
                keep_ids.append(fid if len(parts) == 1 else f"{fid}#{k}")
                keep_xy.append((part.x, part.y))
                keep_label.append(label)
                keep_feature.append(row)
    _check_unique(keep_ids, path)
    xy = np.asarray(keep_xy, dtype=np.float64).reshape(-1, 2)
    feature = np.asarray(keep_feature, dtype=np.int64)
    if scene_bounds is not None and len(xy):
        left, bottom, right, top = scene_bounds
        inside = (xy[:, 0] >= left) & (xy[:, 0] <= right) & (xy[:, 1] >= bottom) & \
            (xy[:, 1] <= top)
        report.outside = [i for i, ok in zip(keep_ids, inside.tolist(), strict=True) if not ok]
        keep_ids = [i for i, ok in zip(keep_ids, inside.tolist(), strict=True) if ok]
        keep_label = [v for v, ok in zip(keep_label, inside.tolist(), strict=True) if ok]
        xy, feature = xy[inside], feature[inside]
    report.n_kept = len(keep_ids)
    warn_report(report)
    numbers = None
    if value_field:  # regression: the number itself, stratified by quantile range
        numbers = np.array([float(v) for v in keep_label], dtype=np.float64)
        y, class_names = value_strata(numbers, value_strata_count)
    else:
        index = {name: k for k, name in enumerate(class_names)}
        y = np.array([index[v] for v in keep_label], dtype=np.int64)
    return LabelPoints(ids=keep_ids, xy=xy, y=y, class_names=class_names,
                       crs=frame.crs.to_string(), report=report, values=numbers,
                       feature=feature)


def _check_unique(ids: list[str], path: Path) -> None:
    """Point ids must be unique (a MultiPoint part ``F#1`` must not meet a feature ``F#1``)."""
    dupes = duplicate_ids(ids)
    if not dupes:
        return
    raise LabelError(f"{path}: point ids {format_ids(dupes)} occur twice (a MultiPoint's parts "
                     "are named <id>#<k>); give the features unique ids (labels.id_field)")


@dataclass
class PointCentres:
    """Points placed on the stack grid, one per pixel: centre pixel, index of the point in
    :class:`LabelPoints`, its number (``value_field``: the mean of the points in its pixel)
    and what was dropped on the way."""

    rows: np.ndarray
    cols: np.ndarray
    point: np.ndarray
    values: np.ndarray | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, take: np.ndarray) -> PointCentres:
        """The placed points ``take`` (indices), same report."""
        return PointCentres(self.rows[take], self.cols[take], self.point[take],
                            None if self.values is None else self.values[take], self.report)


def _one_per_pixel(points: LabelPoints, pixel: np.ndarray, idx: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray | None, list[str], list[str]]:
    """``idx`` with one point per pixel (the first), the number of each (the mean of its
    pixel's points), the ids merged into another and the ids dropped because the classes in
    their pixel differ."""
    values = None if points.values is None else points.values[idx]
    if len(idx) == 0:
        return idx, values, [], []
    order = np.argsort(pixel[idx], kind="stable")
    idx = idx[order]
    starts = np.flatnonzero(np.r_[True, np.diff(pixel[idx]) != 0])
    ends = np.r_[starts[1:], len(idx)]
    keep, means, merged, conflicting = [], [], [], []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        members = idx[a:b]
        if points.values is None and len(np.unique(points.y[members])) > 1:
            conflicting += [points.ids[i] for i in members.tolist()]
            continue
        keep.append(int(members[0]))
        merged += [points.ids[i] for i in members[1:].tolist()]
        if points.values is not None:
            means.append(float(points.values[members].mean()))
    kept = np.asarray(keep, dtype=np.int64)
    order = np.argsort(kept)
    return (kept[order], None if points.values is None else np.asarray(means)[order],
            merged, conflicting)


def class_order(points: LabelPoints, placed: PointCentres, seed: int) -> list[np.ndarray]:
    """Per class, the placed points (indices into ``placed``) in a seeded random order: the
    order in which ``extract.per_class`` takes them."""
    y = points.y[placed.point]
    return [_rng(seed, name).permutation(np.flatnonzero(y == k))
            for k, name in enumerate(points.class_names)]


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed % 2**63, zlib.crc32(key.encode())])


def place_points(
    points: LabelPoints, transform: Affine, height: int, width: int, patch_size: int,
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
    idx, values, merged, conflicting = _one_per_pixel(points, rows * width + cols,
                                                      np.flatnonzero(fits))
    report = {"mode": "points", "n_points": len(points), "n_placed": len(idx),
              "near_edge": near_edge, "merged_same_pixel": merged,
              "conflicting_same_pixel": conflicting}
    _warn_placement(report, patch_size, points.values is not None)
    return PointCentres(rows=rows[idx], cols=cols[idx], point=idx, values=values,
                        report=report)


def _warn_placement(report: dict[str, Any], patch_size: int, numbers: bool) -> None:
    if report["near_edge"]:
        ids = report["near_edge"]
        warnings.warn(f"dropped {len(ids)} point(s) too near the stack's edge for a whole "
                      f"{patch_size}x{patch_size} px patch, ids: {format_ids(ids)}", stacklevel=3)
    if report["merged_same_pixel"]:
        ids = report["merged_same_pixel"]
        how = ("their numbers averaged" if numbers else "with the same class")
        warnings.warn(f"{len(ids)} point(s) fall in the pixel of an earlier point and were "
                      f"merged into it ({how}), ids: {format_ids(ids)}", stacklevel=3)
    if report["conflicting_same_pixel"]:
        ids = report["conflicting_same_pixel"]
        warnings.warn(f"dropped {len(ids)} point(s) that share a pixel with a point of another "
                      f"class (the pixel's class is ambiguous), ids: {format_ids(ids)}; fix "
                      "their labels or move them", stacklevel=3)


def point_groups(
    rows: np.ndarray, cols: np.ndarray, xy: np.ndarray, ids: list[str], patch_size: int,
    group_distance: float | None = None, feature: np.ndarray | None = None,
) -> np.ndarray:
    """Group name (``point:<id of the group's first point>``) of every placed point.

    One group holds the points whose ``patch_size`` windows (centred on ``rows``, ``cols``)
    share a pixel, the points at most ``group_distance`` map units apart (``xy``: where the
    points are, not their pixel centres) and the parts of one feature (``feature``), with
    single linkage: chains join.
    """
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=str)
    pixels = np.column_stack([rows, cols]).astype(np.float64)
    edges = [cKDTree(pixels).query_pairs(patch_size - 1, p=np.inf, output_type="ndarray")
             if patch_size > 1 else np.zeros((0, 2), dtype=np.int64)]
    if group_distance:
        edges.append(cKDTree(xy).query_pairs(group_distance, output_type="ndarray"))
    if feature is not None:  # each point to the first part of its feature
        first = np.unique(feature, return_index=True)[1]
        lead = first[np.searchsorted(np.unique(feature), feature)]
        edges.append(np.column_stack([np.arange(n), lead]))
    pairs = np.concatenate([e.reshape(-1, 2) for e in edges]).astype(np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    names: dict[int, str] = {}
    for i, c in enumerate(component.tolist()):
        names.setdefault(c, ids[i])
    return np.array([f"point:{names[c]}" for c in component.tolist()], dtype=str)
