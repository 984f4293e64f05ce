"""Read, validate, repair and report label polygons.

:func:`read_label_polygons` reads GeoJSON, GeoPackage or Shapefile (geopandas + pyogrio),
reprojects to the stack CRS, drops null/empty geometries, repairs invalid ones with
``shapely.make_valid`` (keeping the polygonal parts) and drops polygons outside the scene. Each
such step warns with the feature ids; the counts and ids are returned as a
:class:`PolygonReport` for the PatchSet provenance.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from geofuse.errors import DataNotFoundError, LabelError

MAX_IDS_IN_MESSAGE = 20


@dataclass
class PolygonReport:
    """What happened to the features of a label file (ids are feature ids as strings)."""

    path: str
    n_features: int = 0
    n_kept: int = 0
    dropped_null: list[str] = field(default_factory=list)
    dropped_no_class: list[str] = field(default_factory=list)
    dropped_no_area: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    label_kind: str = "a class value"  #: what a feature needs (a number with value_field)
    geometry: str = "polygon"  #: what the kept features are (``point`` for label points)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary with counts and ids."""
        out: dict[str, Any] = asdict(self)
        for key in ("dropped_null", "dropped_no_class", "dropped_no_area", "repaired", "outside"):
            out[f"n_{key}"] = len(out[key])
        return out


@dataclass
class LabelPolygons:
    """Validated label polygons in the stack CRS.

    Attributes:
        ids: feature id of each polygon (``id_field`` value or row number), as strings.
        geometries: Polygon/MultiPolygon per feature, in ``crs``.
        y: class index of each polygon into ``class_names``.
        class_names: class names in index order.
        crs: CRS of the geometries.
        report: what was dropped, repaired or found outside the scene.
        values: the number of each polygon (``value_field``), whose quantile range is then
            its class ``y`` (a stratum, named by its range); ``None`` for class labels.
    """

    ids: list[str]
    geometries: list[BaseGeometry]
    y: np.ndarray
    class_names: list[str]
    crs: str
    report: PolygonReport
    values: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def duplicate_ids(ids: list[str]) -> list[str]:
    """The ids that occur more than once, sorted."""
    seen: set[str] = set()
    repeated = {i for i in ids if i in seen or seen.add(i)}  # type: ignore[func-returns-value]
    return sorted(repeated)


def format_ids(ids: list[str], limit: int = MAX_IDS_IN_MESSAGE) -> str:
    """Comma-separated ids, shortened to ``limit`` with a count of the rest."""
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=4)


def read_frame(path: Path) -> gpd.GeoDataFrame:
    if not path.is_file():
        raise DataNotFoundError(
            f"label file {str(path)!r} does not exist; fix labels.path in the config "
            "(relative paths start at the config's folder)"
        )
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as err:  # pyogrio raises several types for unreadable files
        raise LabelError(
            f"cannot read label file {str(path)!r} ({' '.join(str(err).split())}); "
            "pass a GeoJSON, GeoPackage or Shapefile"
        ) from None
    if len(frame) == 0:
        raise LabelError(
            f"label file {str(path)!r} holds no features (0 polygons or points); export the "
            "labels into it again (check the layer and any filter in your GIS), or fix "
            "labels.path in the config"
        )
    if frame.crs is None:
        raise LabelError(
            f"label file {str(path)!r} has no CRS; write it with one (e.g. a .prj beside a "
            "Shapefile, or save as GeoPackage from your GIS)"
        )
    return frame


def _feature_ids(frame: gpd.GeoDataFrame, path: Path, id_field: str | None) -> list[str]:
    if id_field is None:
        return [str(i) for i in range(len(frame))]
    if id_field not in frame.columns:
        raise LabelError(
            f"{path}: id attribute {id_field!r} not found; columns are "
            f"{[c for c in frame.columns if c != 'geometry']}; fix labels.id_field or omit it "
            "to use row numbers"
        )
    ids = [_value_str(v) for v in frame[id_field]]
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if dupes:
        raise LabelError(
            f"{path}: id attribute {id_field!r} has repeated values {format_ids(dupes)}; ids must "
            "be unique: choose another labels.id_field or omit it to use row numbers"
        )
    return ids


def _value_str(value: Any) -> str:
    """Class or id value as a string; integral floats (1.0 from a column with nulls) as ``1``."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _class_values(frame: gpd.GeoDataFrame, path: Path, class_field: str) -> list[str | None]:
    if class_field not in frame.columns:
        raise LabelError(
            f"{path}: class attribute {class_field!r} not found; columns are "
            f"{[c for c in frame.columns if c != 'geometry']}; set labels.class_field to one of "
            "them"
        )
    return [None if pd.isna(v) else _value_str(v) for v in frame[class_field]]


def _class_names(
    values: list[str | None], path: Path, class_field: str, classes: list[str] | None
) -> list[str]:
    found = sorted({v for v in values if v is not None})
    if classes is None:
        return found
    unknown = [v for v in found if v not in classes]
    if unknown:
        counts = {v: values.count(v) for v in unknown}
        raise LabelError(
            f"{path}: attribute {class_field!r} has class value(s) not in labels.classes: "
            f"{counts} (feature counts); known classes are {classes}; add them to "
            "labels.classes or remove those features"
        )
    return list(classes)


def feature_numbers(frame: gpd.GeoDataFrame, path: Path, value_field: str,
                    key: str = "labels.value_field") -> list[str | None]:
    """``value_field`` as strings of finite numbers (None where missing); ``key`` names the
    setting in messages.

    Raises:
        LabelError: no such attribute, or a value that is not a number.
    """
    if value_field not in frame.columns:
        raise LabelError(
            f"{path}: value attribute {value_field!r} not found; columns are "
            f"{[c for c in frame.columns if c != 'geometry']}; set {key} to one of them"
        )
    numbers = pd.to_numeric(frame[value_field], errors="coerce").astype(float)
    bad = [str(v) for v, n in zip(frame[value_field], numbers, strict=True)
           if not pd.isna(v) and not np.isfinite(n)]
    if bad:
        raise LabelError(f"{path}: attribute {value_field!r} holds values that are not numbers, "
                         f"e.g. {bad[:5]}; fix them or leave them empty (those polygons are "
                         "dropped)")
    return [None if not np.isfinite(n) else repr(float(n)) for n in numbers]


def value_strata(values: np.ndarray, k: int) -> tuple[np.ndarray, list[str]]:
    """Quantile stratum of each value (at most ``k`` ranges, fewer with fewer distinct
    values) and the ranges' names (``lo-hi``)."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return np.zeros(0, dtype=np.int64), []
    edges = np.unique(np.quantile(v, np.linspace(0, 1, k + 1)[1:-1]))
    y = np.searchsorted(edges, v, side="right")
    used = np.unique(y)
    y = np.searchsorted(used, y)
    names = [f"{v[y == i].min():.4g}-{v[y == i].max():.4g}" for i in range(len(used))]
    return y.astype(np.int64), names


def polygonal_part(geom: BaseGeometry) -> BaseGeometry | None:
    """The polygonal part of ``geom`` (Polygon/MultiPolygon), or None if it has no area."""
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return None if geom.is_empty or geom.area <= 0 else geom
    if geom.geom_type == "GeometryCollection":
        parts = [p for g in geom.geoms if (p := polygonal_part(g)) is not None]
        if parts:
            return shapely.union_all(parts)
    return None


def _clean_geometries(
    geoms: gpd.GeoSeries, ids: list[str], report: PolygonReport
) -> list[BaseGeometry | None]:
    """Drop null/empty, repair invalid (keeping polygonal parts); record ids in ``report``."""
    out: list[BaseGeometry | None] = []
    for fid, geom in zip(ids, geoms, strict=True):
        if geom is None or geom.is_empty:
            report.dropped_null.append(fid)
            out.append(None)
            continue
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
            report.repaired.append(fid)
        part = polygonal_part(geom)
        if part is None:
            report.dropped_no_area.append(fid)
        out.append(part)
    return out


def warn_report(report: PolygonReport) -> None:
    name = Path(report.path).name
    if report.dropped_null:
        _warn(f"{name}: dropped {len(report.dropped_null)} feature(s) with null or empty "
              f"geometry, ids: {format_ids(report.dropped_null)}")
    if report.dropped_no_class:
        _warn(f"{name}: dropped {len(report.dropped_no_class)} feature(s) without "
              f"{report.label_kind}, ids: {format_ids(report.dropped_no_class)}")
    if report.repaired:
        _warn(f"{name}: repaired {len(report.repaired)} invalid geometr(ies) with make_valid "
              f"(polygonal parts kept), ids: {format_ids(report.repaired)}")
    if report.dropped_no_area and report.geometry == "point":
        _warn(f"{name}: dropped {len(report.dropped_no_area)} feature(s) that are neither "
              f"points nor polygons (lines), ids: {format_ids(report.dropped_no_area)}")
    elif report.dropped_no_area:
        _warn(f"{name}: dropped {len(report.dropped_no_area)} feature(s) with no polygonal "
              f"area (lines or collapsed rings, or points among polygons: give label points "
              f"a file of their own), ids: {format_ids(report.dropped_no_area)}")
    if report.outside:
        _warn(f"{name}: dropped {len(report.outside)} {report.geometry}(s) entirely outside the "
              f"stack extent, ids: {format_ids(report.outside)}; check the label file and stack "
              "cover the same area")


def labelled_features(
    frame: gpd.GeoDataFrame, path: Path, class_field: str, classes: list[str] | None,
    id_field: str | None, value_field: str | None,
) -> tuple[list[str], list[str | None], list[str]]:
    """The feature ids, each feature's label (class name, or a number as a string with
    ``value_field``; None when missing) and the class names (the distinct numbers with
    ``value_field``)."""
    ids = _feature_ids(frame, path, id_field)
    values = (feature_numbers(frame, path, value_field) if value_field else
              _class_values(frame, path, class_field))
    class_names = (sorted({v for v in values if v is not None}) if value_field else
                   _class_names(values, path, class_field, classes))
    return ids, values, class_names


def new_report(path: Path, n_features: int, value_field: str | None) -> PolygonReport:
    """An empty report of a label file of ``n_features`` features."""
    return PolygonReport(path=str(path), n_features=n_features,
                         label_kind=f"a number in {value_field!r}" if value_field
                         else "a class value")


def read_label_polygons(
    path: str | Path,
    class_field: str = "class",
    classes: list[str] | None = None,
    id_field: str | None = None,
    crs: str | None = None,
    scene_bounds: tuple[float, float, float, float] | None = None,
    value_field: str | None = None,
    value_strata_count: int = 4,
    frame: gpd.GeoDataFrame | None = None,
) -> LabelPolygons:
    """Read label polygons, validate classes, reproject, repair and report.

    Args:
        path: GeoJSON, GeoPackage or Shapefile.
        class_field: attribute holding the class name (numbers are used as strings).
        classes: class names in index order; default: sorted names found in the file.
        id_field: unique feature id attribute; default: row number (0-based).
        crs: target CRS (the stack's); default: the file's own.
        scene_bounds: (left, bottom, right, top) in ``crs``; polygons not touching it are dropped.
        value_field: numeric attribute to learn instead of a class (regression); each
            polygon's class is then its quantile range (:func:`value_strata`).
        value_strata_count: how many quantile ranges at most.
        frame: the file's features when already read (:func:`read_frame`).

    Raises:
        DataNotFoundError: the file does not exist.
        LabelError: unreadable file, no CRS, missing class/id attribute, unknown class values.
    """
    path = Path(path)
    frame = read_frame(path) if frame is None else frame
    ids, values, class_names = labelled_features(frame, path, class_field, classes, id_field,
                                                 value_field)
    if crs is not None:
        frame = frame.to_crs(crs)
    report = new_report(path, len(frame), value_field)
    geoms = _clean_geometries(frame.geometry, ids, report)
    scene = box(*scene_bounds) if scene_bounds is not None else None
    keep_ids, keep_geoms, keep_y = [], [], []
    for fid, geom, value in zip(ids, geoms, values, strict=True):
        if geom is None:
            continue
        if value is None:
            report.dropped_no_class.append(fid)
        elif scene is not None and not geom.intersects(scene):
            report.outside.append(fid)
        else:
            keep_ids.append(fid)
            keep_geoms.append(geom)
            keep_y.append(class_names.index(value))
    report.n_kept = len(keep_ids)
    warn_report(report)
    y, numbers = np.asarray(keep_y, dtype=np.int64), None
    if value_field:  # regression: the number itself, stratified by quantile range
        numbers = np.array([float(class_names[i]) for i in y], dtype=np.float64)
        y, class_names = value_strata(numbers, value_strata_count)
    return LabelPolygons(
        ids=keep_ids, geometries=keep_geoms, y=y, class_names=class_names,
        crs=frame.crs.to_string(), report=report, values=numbers,
    )
