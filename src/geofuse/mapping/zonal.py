"""``geofuse zonal MAP --polygons FILE``: a map summarised over given polygons.

Analysts report per field, parcel, district or management unit, not per pixel: the crop of
each LPIS parcel, the forest share of each municipality, the mean canopy height of each stand.
For every polygon of ``polygons`` (any CRS; reprojected onto the map's grid):

- a class map (``classes.tif``): the mapped pixels, the majority class (a tie: the first
  class) and its share, the share of every class (``share_<class>``), the mean of the
  ``entropy`` band of the ``uncertainty.tif`` beside the map when there is one, and the area
  in hectares;
- a value map (``values.tif``, float): the mapped pixels, mean, standard deviation, minimum
  and maximum.

A pixel belongs to a polygon when its centre lies inside (GDAL's rasterisation; where
polygons overlap, the later one in the file wins, with a warning). A polygon that holds no
pixel centre takes the pixel under its representative point (``from_point``). The map is
read in strips of whole rows and only the polygons crossing a strip are rasterised into it,
so memory holds one strip and one count per polygon and class, whatever the map size.

A map is a class map when it names its classes (the ``class_names`` tag ``geofuse predict``
writes, or ``classes``); any other map (float, or integer such as a tree-cover percentage)
holds values.

Outputs (``out_dir``, default the map's folder), renamed into place together:
``<map stem>_zonal_<polygons stem>.gpkg`` (the polygons, in their own CRS, with their
attributes, renamed ``<name>_input`` where one clashes with a statistic, and the statistics)
and ``.json`` (counts, polygons per majority class, settings).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window

from geofuse.errors import DataNotFoundError, LabelError, RasterError
from geofuse.io_utils import atomic_write_json, staged_together
from geofuse.labels.polygons import duplicate_ids, format_ids, polygonal_part
from geofuse.mapping.assess_io import (
    DEFAULT_NODATA,
    STRIP_PIXELS,
    find_uncertainty,
    pixel_area_m2,
    read_vector,
    tag_names,
)
from geofuse.raster.io import Grid

#: Polygons per rasterisation call (bounds the shapes list of one strip).
CHUNK = 50_000
#: Most classes a class map may name (one share column each).
MAX_CLASSES = 254


@dataclass(frozen=True)
class ZonalResult:
    """What :func:`zonal_stats` wrote."""

    gpkg_path: Path
    json_path: Path
    record: dict[str, Any]


@dataclass
class _Map:
    """What the pass over the map needs: path, grid, kind, classes and nodata."""

    path: Path
    crs: Any
    transform: Affine
    width: int
    height: int
    values: bool
    class_names: list[str]
    nodata: float | None


def _open_map(path: Path, classes: list[str] | None) -> _Map:
    """The map's header; a class map is one with class names (its ``class_names`` tag, as
    ``geofuse predict`` writes, or ``classes``), any other map holds values."""
    if not path.is_file():
        raise DataNotFoundError(f"map {str(path)!r} does not exist; give the classes.tif or "
                                "values.tif written by 'geofuse predict'")
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise RasterError(f"map {str(path)!r} has no CRS; assign the CRS it was made "
                                  f"in ('gdal_edit.py -a_srs EPSG:xxxx {path}')")
            integer = np.issubdtype(np.dtype(src.dtypes[0]), np.integer)
            names = (list(classes) if classes else tag_names(src)) if integer else None
            header = (src.crs, src.transform, src.width, src.height)
            nodata = src.nodata
    except rasterio.errors.RasterioIOError as err:
        raise RasterError(f"map {str(path)!r} cannot be read ({' '.join(str(err).split())}); "
                          "check that it is a complete GeoTIFF") from None
    if not names:
        return _Map(path, *header, values=True, class_names=[], nodata=nodata)
    if len(names) > MAX_CLASSES:
        raise RasterError(f"map {str(path)!r} names {len(names)} classes; zonal shares hold at "
                          f"most {MAX_CLASSES}: give a class map, or leave out --classes to "
                          "summarise its values")
    return _Map(path, *header, values=False, class_names=names,
                nodata=DEFAULT_NODATA if nodata is None else nodata)


def _read_polygons(path: Path, crs: Any, id_field: str | None
                   ) -> tuple[gpd.GeoDataFrame, np.ndarray, list[str]]:
    """The polygons (their own CRS), their geometry in the map CRS (None: no area) and ids."""
    frame = read_vector(path, "polygon file", "polygons (--polygons)")
    if not len(frame):
        raise LabelError(f"polygon file {str(path)!r} holds no features; export the polygons "
                         "into it again (check the layer and any filter in your GIS)")
    if id_field is not None and id_field not in frame.columns:
        raise LabelError(f"{path}: no attribute {id_field!r} (--id-field); attributes are "
                         f"{[c for c in frame.columns if c != 'geometry']}")
    ids = [str(v) for v in (frame[id_field] if id_field else range(len(frame)))]
    dupes = duplicate_ids(ids) if id_field is not None else []
    if dupes:
        warnings.warn(f"{path.name}: --id-field {id_field!r} repeats {format_ids(dupes)}; "
                      "the zone_id column does not tell those polygons apart", UserWarning,
                      stacklevel=3)
    geoms = np.empty(len(frame), dtype=object)
    for i, g in enumerate(frame.to_crs(crs).geometry):
        if g is not None and not g.is_empty:
            geoms[i] = polygonal_part(g if g.is_valid else shapely.make_valid(g))
    return frame, geoms, ids


def _overlapping(geoms: np.ndarray) -> int:
    """Polygons that overlap another (partly, or inside or equal to it)."""
    usable = np.flatnonzero([g is not None for g in geoms])
    if len(usable) < 2:
        return 0
    tree = shapely.STRtree(geoms[usable])
    pairs = [tree.query(geoms[usable], predicate=p) for p in ("overlaps", "contains")]
    both = np.concatenate(pairs, axis=1)
    both = both[:, both[0] != both[1]]
    return len(np.unique(both))


def _holds_centre(geom: Any, m: _Map) -> bool:
    """Whether ``geom`` holds the centre of a pixel of the map's grid."""
    minx, miny, maxx, maxy = geom.bounds
    cs, rs = ~m.transform @ (np.array([minx, maxx, minx, maxx]),
                             np.array([miny, miny, maxy, maxy]))
    r0, r1 = max(math.floor(rs.min()), 0), min(math.ceil(rs.max()), m.height)
    c0, c1 = max(math.floor(cs.min()), 0), min(math.ceil(cs.max()), m.width)
    if r1 <= r0 or c1 <= c0:
        return False
    burnt = rasterize([(geom, 1)], out_shape=(r1 - r0, c1 - c0), dtype="uint8",
                      transform=m.transform @ Affine.translation(c0, r0))
    return bool(burnt.any())


def _strips(m: _Map) -> list[Window]:
    rows = max(1, STRIP_PIXELS // max(m.width, 1))
    return [Window(0, r, m.width, min(rows, m.height - r)) for r in range(0, m.height, rows)]


def _valid(m: _Map, data: np.ndarray) -> np.ndarray:
    if m.values:
        ok = np.isfinite(data)
        return ok if m.nodata is None or math.isnan(m.nodata) else ok & (data != m.nodata)
    return (data != m.nodata) & (data < len(m.class_names))


def _accumulate(m: _Map, geoms: np.ndarray, unc: tuple[Path, int] | None
                ) -> dict[str, np.ndarray]:
    """Per polygon: class counts (or value sums), uncertainty sums, from one pass over strips."""
    n, k = len(geoms), max(len(m.class_names), 1)
    usable = np.flatnonzero([g is not None for g in geoms])
    tree = shapely.STRtree(geoms[usable]) if len(usable) else None
    acc = {"counts": np.zeros((n + 1) * k, np.int64), "sum": np.zeros(n + 1),
           "sq": np.zeros(n + 1), "min": np.full(n + 1, np.inf), "max": np.full(n + 1, -np.inf),
           "unc": np.zeros(n + 1), "unc_n": np.zeros(n + 1, np.int64)}
    with rasterio.open(m.path) as src:
        unc_src = rasterio.open(unc[0]) if unc else None
        try:
            for win in _strips(m):
                if tree is None:
                    break
                transform = m.transform @ Affine.translation(0, win.row_off)
                xs, ys = transform @ (np.array([0, win.width]), np.array([0, win.height]))
                hits = np.sort(usable[tree.query(shapely.box(min(xs), min(ys), max(xs),
                                                             max(ys)))])  # file order
                if not len(hits):
                    continue
                zone = np.zeros((int(win.height), int(win.width)), np.int32)
                for lo in range(0, len(hits), CHUNK):  # the later polygon wins
                    part = hits[lo:lo + CHUNK]
                    rasterize(zip(geoms[part], (part + 1).tolist(), strict=True),
                              out=zone, transform=transform, dtype="int32")
                data = src.read(1, window=win)
                inside = (zone > 0) & _valid(m, data)
                z = zone[inside].astype(np.int64)
                if m.values:
                    v = data[inside].astype(np.float64)
                    acc["sum"] += np.bincount(z, weights=v, minlength=n + 1)
                    acc["sq"] += np.bincount(z, weights=v * v, minlength=n + 1)
                    np.minimum.at(acc["min"], z, v)
                    np.maximum.at(acc["max"], z, v)
                    acc["counts"][: n + 1] += np.bincount(z, minlength=n + 1)
                else:
                    acc["counts"] += np.bincount(z * k + data[inside].astype(np.int64),
                                                 minlength=(n + 1) * k)
                if unc_src is not None:
                    u = unc_src.read(unc[1], window=win, masked=True).filled(np.nan)
                    u = u.astype(np.float64)[inside]
                    ok = np.isfinite(u)
                    acc["unc"] += np.bincount(z[ok], weights=u[ok], minlength=n + 1)
                    acc["unc_n"] += np.bincount(z[ok], minlength=n + 1)
        finally:
            if unc_src is not None:
                unc_src.close()
    return acc


def _point_fallback(m: _Map, geoms: np.ndarray, empty: np.ndarray,
                    acc: dict[str, np.ndarray], unc: tuple[Path, int] | None) -> list[int]:
    """Polygons that hold no pixel centre take the pixel under their representative point;
    returns those that did (the point on a mapped pixel)."""
    k = max(len(m.class_names), 1)
    done = []
    with rasterio.open(m.path) as src:
        unc_src = rasterio.open(unc[0]) if unc else None
        try:
            for i in empty.tolist():
                if _holds_centre(geoms[i], m):
                    continue  # its pixels are nodata, or a later polygon's
                pt = geoms[i].representative_point()
                col, row = ~m.transform @ (pt.x, pt.y)
                r, c = math.floor(row), math.floor(col)
                if not (0 <= r < m.height and 0 <= c < m.width):
                    continue
                value = src.read(1, window=Window(c, r, 1, 1))
                if not _valid(m, value)[0, 0]:
                    continue
                v = value[0, 0]
                if m.values:
                    acc["sum"][i + 1], acc["sq"][i + 1] = float(v), float(v) ** 2
                    acc["min"][i + 1] = acc["max"][i + 1] = float(v)
                    acc["counts"][i + 1] = 1
                else:
                    acc["counts"][(i + 1) * k + int(v)] = 1
                if unc_src is not None:
                    u = unc_src.read(unc[1], window=Window(c, r, 1, 1), masked=True)
                    if not np.ma.is_masked(u) and np.isfinite(u[0, 0]):
                        acc["unc"][i + 1], acc["unc_n"][i + 1] = float(u[0, 0]), 1
                done.append(i)
        finally:
            if unc_src is not None:
                unc_src.close()
    return done


def _uncertainty(m: _Map, path: Path | None) -> tuple[Path, int] | None:
    """The ``entropy`` band of the uncertainty raster of a class map (see
    :func:`~geofuse.mapping.assess_io.find_uncertainty`); None for a value map."""
    if m.values:
        return None
    return find_uncertainty(m.path, Grid(m.crs, m.transform, m.width, m.height), path)


def _columns(m: _Map, acc: dict[str, np.ndarray], n: int, pixel_ha: float
             ) -> dict[str, Any]:
    """The statistics columns of the output (one row per polygon)."""
    k = max(len(m.class_names), 1)
    if m.values:
        count = acc["counts"][1: n + 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = acc["sum"][1:] / count
            std = np.sqrt(np.maximum(acc["sq"][1:] / count - mean**2, 0.0))
        return {"pixels": count, "mean": np.where(count > 0, mean, np.nan),
                "std": np.where(count > 0, std, np.nan),
                "min": np.where(count > 0, acc["min"][1:], np.nan),
                "max": np.where(count > 0, acc["max"][1:], np.nan),
                "area_ha": count * pixel_ha}
    table = acc["counts"].reshape(n + 1, k)[1:]
    pixels = table.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = table / pixels[:, None]
        unc = acc["unc"][1:] / acc["unc_n"][1:]
    major = table.argmax(axis=1)
    cols: dict[str, Any] = {
        "pixels": pixels, "area_ha": pixels * pixel_ha,
        "majority": [m.class_names[c] if p else None for c, p in zip(major, pixels, strict=True)],
        "majority_share": np.where(pixels > 0, shares[np.arange(n), major], np.nan),
    }
    for c, name in enumerate(m.class_names):
        cols[f"share_{name}"] = np.where(pixels > 0, shares[:, c], np.nan)
    if acc["unc_n"].any():
        cols["mean_entropy"] = np.where(acc["unc_n"][1:] > 0, unc, np.nan)
    return cols


def zonal_stats(map_path: str | Path, polygons: str | Path, *,
                out_dir: str | Path | None = None, id_field: str | None = None,
                classes: list[str] | None = None, uncertainty: str | Path | None = None
                ) -> ZonalResult:
    """Summarise a class or value map over ``polygons`` (see the module docstring).

    Raises:
        DataNotFoundError: the map, the polygon file or the uncertainty raster is missing.
        LabelError: an unreadable polygon file, no CRS, an unknown ``id_field``.
        RasterError: no CRS on the map; no polygon overlaps the map; uncertainty on another
            grid.
    """
    map_path, polygons = Path(map_path), Path(polygons)
    m = _open_map(map_path, classes)
    frame, geoms, ids = _read_polygons(polygons, m.crs, id_field)
    no_area = [ids[i] for i, g in enumerate(geoms) if g is None]
    unc = _uncertainty(m, Path(uncertainty) if uncertainty else None)
    acc = _accumulate(m, geoms, unc)
    n, k = len(geoms), max(len(m.class_names), 1)
    counts = (acc["counts"][1: n + 1] if m.values else
              acc["counts"].reshape(n + 1, k)[1:].sum(axis=1))
    empty = np.flatnonzero((counts == 0) & np.array([g is not None for g in geoms], bool))
    from_point = _point_fallback(m, geoms, empty, acc, unc)
    unmapped = sorted(set(empty.tolist()) - set(from_point))
    if len(unmapped) + len(no_area) == n:
        raise RasterError(
            f"no polygon of {str(polygons)!r} covers a mapped pixel of {str(map_path)!r}; "
            "check that both cover the same area (the polygons are reprojected to the map's "
            f"CRS {m.crs.to_string()})")
    overlaps = _overlapping(geoms)
    _warn(polygons.name, no_area, [ids[i] for i in unmapped], [ids[i] for i in from_point],
          overlaps)
    pixel_ha = _pixel_ha(m)
    cols = _columns(m, acc, n, pixel_ha)
    flag = np.zeros(n, bool)
    flag[from_point] = True
    stats = {"zone_id": ids, **cols, "from_point": flag}
    out_frame = _keep_user_columns(frame, list(stats), polygons.name).assign(**stats)
    record = _record(m, polygons, out_frame, no_area, [ids[i] for i in unmapped], from_point,
                     id_field)
    record["overlapping_polygons"] = overlaps
    out = Path(out_dir) if out_dir is not None else map_path.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{map_path.stem}_zonal_{polygons.stem}"
    targets = {"gpkg": out / f"{stem}.gpkg", "json": out / f"{stem}.json"}
    with staged_together(targets) as staged:  # both, or neither
        out_frame.to_file(staged["gpkg"], driver="GPKG", layer="zonal", engine="pyogrio")
        atomic_write_json(staged["json"], record)
    return ZonalResult(gpkg_path=targets["gpkg"], json_path=targets["json"], record=record)


def _keep_user_columns(frame: gpd.GeoDataFrame, stats: list[str], name: str
                       ) -> gpd.GeoDataFrame:
    """The polygons with their attributes renamed ``<name>_input`` where they clash with a
    statistic (GeoPackage column names ignore case) or are a non-integer ``fid``."""
    taken = {c.lower() for c in stats} | {"geometry"}
    renames = {}
    for col in frame.columns:
        clash = col != "geometry" and col.lower() in taken
        bad_fid = col.lower() == "fid" and not pd.api.types.is_integer_dtype(frame[col])
        if clash or bad_fid:
            new = f"{col}_input"
            while new.lower() in taken or new in frame.columns:
                new += "_"
            renames[col] = new
            taken.add(new.lower())
    if renames:
        warnings.warn(f"{name}: attribute(s) {', '.join(renames)} share a name with the zonal "
                      f"statistics; written as {', '.join(renames.values())}", UserWarning,
                      stacklevel=3)
    return frame.rename(columns=renames)


def _pixel_ha(m: _Map) -> float:
    """One pixel's area in hectares (NaN on a geographic grid, whose pixels differ)."""
    try:
        return pixel_area_m2(m.path, Grid(m.crs, m.transform, m.width, m.height)) / 1e4
    except RasterError:
        warnings.warn(f"map {m.path.name} is on a geographic grid (degrees): its pixels have "
                      "no single area, so area_ha is left empty", UserWarning, stacklevel=3)
        return math.nan


def _warn(name: str, no_area: list[str], unmapped: list[str], from_point: list[str],
          overlaps: int) -> None:
    if no_area:
        warnings.warn(f"{name}: {len(no_area)} feature(s) without polygonal area (no geometry, "
                      f"points or lines) get no statistics, ids: {format_ids(no_area)}",
                      UserWarning, stacklevel=3)
    if unmapped:
        warnings.warn(f"{name}: {len(unmapped)} polygon(s) cover no mapped pixel (outside the "
                      "map, on nodata, or under a later polygon that overlaps them), ids: "
                      f"{format_ids(unmapped)}", UserWarning, stacklevel=3)
    if overlaps:
        warnings.warn(f"{name}: {overlaps} polygon(s) overlap another; a pixel they share counts "
                      "for the later one in the file only", UserWarning, stacklevel=3)
    if from_point:
        warnings.warn(f"{name}: {len(from_point)} polygon(s) smaller than a pixel took the pixel "
                      "under their representative point (from_point)", UserWarning,
                      stacklevel=3)


def _record(m: _Map, polygons: Path, frame: gpd.GeoDataFrame, no_area: list[str],
            unmapped: list[str], from_point: list[int], id_field: str | None
            ) -> dict[str, Any]:
    out: dict[str, Any] = {
        "map": str(m.path), "kind": "values" if m.values else "classes",
        "polygons": str(polygons), "id_field": id_field, "n_polygons": len(frame),
        "n_summarised": int((frame["pixels"] > 0).sum()), "no_area": no_area,
        "unmapped": unmapped, "from_point": len(from_point),
        "rule": "a pixel belongs to a polygon when its centre lies inside; overlaps: the later "
                "polygon in the file; no pixel centre: the pixel under the representative point",
    }
    if not m.values:
        major = frame["majority"].dropna()
        out["polygons_per_majority_class"] = {
            name: int((major == name).sum()) for name in m.class_names}
        out["area_ha_per_majority_class"] = {
            name: float(frame.loc[frame["majority"] == name, "area_ha"].sum())
            for name in m.class_names}
    else:
        ok = frame["pixels"] > 0
        out["mean_of_means"] = float(frame.loc[ok, "mean"].mean()) if ok.any() else None
    return out


def summary(record: dict[str, Any]) -> str:
    """One line: polygons summarised, and per majority class for a class map."""
    head = f"{record['n_summarised']} of {record['n_polygons']} polygons summarised"
    if record["kind"] == "values":
        return head + (f"; mean of their means {record['mean_of_means']:.4g}"
                       if record.get("mean_of_means") is not None else "")
    per = ", ".join(f"{k} {v}" for k, v in record["polygons_per_majority_class"].items() if v)
    return f"{head}; majority class: {per}"
