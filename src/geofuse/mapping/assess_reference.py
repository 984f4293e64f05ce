"""Reference data for ``geofuse assess``: polygons or points (a vector file) or a label raster,
turned strip by strip into (map class, reference class) pairs of reference pixels.

- **Vector files** (GeoPackage, GeoJSON, Shapefile; read with geopandas + pyogrio) are
  reprojected to the map's CRS. Polygons are rasterised onto the map grid
  (``rasterio.features.rasterize``: a pixel is reference when its centre lies inside; where
  polygons overlap, the later one wins); each point is one reference sample, the pixel that
  contains it (a filled ``--sample-design`` GeoPackage). Class values are matched to the map's
  class names, or taken as class indices ``0..K-1`` when they are integers that name none.
- **Label rasters** are read onto the map grid with nearest-neighbour resampling (same grid:
  the values as they are). Codes are the map's class indices, or class names when the raster
  carries a ``class_names`` tag; ``unlabelled`` and the raster's nodata are skipped.

Reference pixels on nodata pixels of the map are skipped.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box

from geofuse.errors import AlignmentError, DataNotFoundError, LabelError
from geofuse.mapping.assess_io import ClassMap
from geofuse.raster.io import RasterInfo, read_info, read_warped

_POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass
class ReferenceSummary:
    """What the reference data held and what was used (for the report and the JSON)."""

    kind: str
    path: str
    class_field: str | None = None
    n_features: int = 0
    n_polygons: int = 0
    n_points: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def clustered(self) -> bool:
        """True when reference pixels come in clusters (polygons, raster), not as a sample."""
        return self.kind != "points"


def _fmt_bounds(b: tuple[float, ...] | np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in b) + ")"


def _disjoint(a: tuple[float, ...] | np.ndarray, b: tuple[float, ...]) -> bool:
    return bool(a[0] >= b[2] or a[2] <= b[0] or a[1] >= b[3] or a[3] <= b[1])


def _value_str(value: Any) -> str:
    """A class value as text; integral floats (1.0 from a column with nulls) as ``1``."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def class_indices(values: list[str], names: list[str], where: str) -> np.ndarray:
    """Map class values to map class indices (by name, else as an integer index).

    Raises:
        LabelError: values that are neither a map class name nor an index ``0..K-1``.
    """
    lookup = {n: i for i, n in enumerate(names)}
    out = np.empty(len(values), dtype=np.int64)
    unknown: dict[str, int] = {}
    for j, v in enumerate(values):
        idx = lookup.get(v)
        if idx is None and v.lstrip("-").isdigit() and 0 <= int(v) < len(names):
            idx = int(v)
        if idx is None:
            unknown[v] = unknown.get(v, 0) + 1
            idx = -1
        out[j] = idx
    if unknown:
        raise LabelError(
            f"{where} has reference class value(s) the map does not have: {unknown} (counts); "
            f"the map's classes are {names} (or their indices 0..{len(names) - 1}); rename "
            "those values to map class names, or remove them"
        )
    return out


class VectorReference:
    """Reference polygons and points from a vector file, on the map's grid."""

    def __init__(self, path: str | Path, cmap: ClassMap, class_field: str = "class") -> None:
        self.path = Path(path)
        self.cmap = cmap
        frame = self._read(class_field)
        self.summary = ReferenceSummary(kind="polygons", path=str(self.path),
                                        class_field=class_field, n_features=len(frame))
        frame = self._drop_unusable(frame, class_field)
        values = [_value_str(v) for v in frame[class_field]]
        codes = class_indices(values, cmap.class_names, f"{self.path}: attribute {class_field!r}")
        geoms = frame.geometry.to_numpy()
        kinds = np.array([g.geom_type for g in geoms])
        poly = np.isin(kinds, _POLYGONAL)
        self.polygons = gpd.GeoSeries(geoms[poly], crs=frame.crs)
        self.poly_values = codes[poly] + 1
        pts = ~poly
        xs = np.array([g.x for g in geoms[pts]], dtype=float)
        ys = np.array([g.y for g in geoms[pts]], dtype=float)
        cols, rows = ~cmap.grid.transform * (xs, ys)
        self.pt_rows = np.floor(np.asarray(rows)).astype(np.int64)
        self.pt_cols = np.floor(np.asarray(cols)).astype(np.int64)
        self.pt_values = codes[pts]
        self.points_on_nodata = 0
        s = self.summary
        s.n_polygons, s.n_points = int(poly.sum()), int(pts.sum())
        s.kind = ("points" if s.n_polygons == 0 else
                  "polygons" if s.n_points == 0 else "polygons+points")

    def _read(self, class_field: str) -> gpd.GeoDataFrame:
        if not self.path.is_file():
            raise DataNotFoundError(
                f"reference file {str(self.path)!r} does not exist; give held-out label "
                "polygons or a filled validation sample (GeoPackage, GeoJSON or Shapefile)")
        try:
            frame = gpd.read_file(self.path, engine="pyogrio")
        except Exception as err:  # pyogrio raises several types for unreadable files
            raise LabelError(f"cannot read reference file {str(self.path)!r} "
                             f"({' '.join(str(err).split())}); pass a GeoPackage, GeoJSON or "
                             "Shapefile") from None
        if len(frame) == 0:
            raise LabelError(f"reference file {str(self.path)!r} holds no feature; export the "
                             "reference polygons or points into it again")
        if frame.crs is None:
            raise LabelError(f"reference file {str(self.path)!r} has no CRS; save it with one "
                             "(e.g. as GeoPackage from your GIS)")
        if class_field not in frame.columns:
            raise LabelError(
                f"{self.path}: class attribute {class_field!r} not found; columns are "
                f"{[c for c in frame.columns if c != 'geometry']}; pass --class-field with "
                "the column that holds the reference class")
        return frame

    def _drop(self, frame: gpd.GeoDataFrame, keep: np.ndarray, reason: str, message: str
              ) -> gpd.GeoDataFrame:
        n = int((~keep).sum())
        if n:
            self.summary.dropped[reason] = self.summary.dropped.get(reason, 0) + n
            warnings.warn(f"{self.path.name}: {n} {message}", UserWarning, stacklevel=4)
        return frame[keep]

    def _drop_unusable(self, frame: gpd.GeoDataFrame, class_field: str) -> gpd.GeoDataFrame:
        frame = self._drop(frame, ~frame[class_field].isna().to_numpy()
                           & (frame[class_field].astype(str).str.strip() != "").to_numpy(),
                           "no_reference_value", f"feature(s) have no value in {class_field!r} "
                           "and are left out (an unfilled validation sample?)")
        if len(frame) == 0:
            raise LabelError(f"{self.path}: no feature has a value in {class_field!r}; fill "
                             "the reference class of each sample (a map class name) and re-run")
        frame = self._drop(frame, ~(frame.geometry.isna() | frame.geometry.is_empty).to_numpy(),
                           "no_geometry", "feature(s) without geometry are left out")
        frame = frame.to_crs(self.cmap.grid.crs).explode(index_parts=False)
        geoms = [shapely.make_valid(g) if g.geom_type in _POLYGONAL and not g.is_valid else g
                 for g in frame.geometry]
        frame = frame.set_geometry(gpd.GeoSeries(geoms, index=frame.index, crs=frame.crs))
        frame = frame.explode(index_parts=False)  # make_valid may return collections
        kinds = frame.geometry.geom_type.to_numpy()
        frame = self._drop(frame, np.isin(kinds, (*_POLYGONAL, "Point")), "not_polygon_or_point",
                           "line or other non-areal geometries are left out")
        scene = self.cmap.grid.bounds
        if len(frame) == 0 or _disjoint(frame.total_bounds, scene):
            raise AlignmentError(
                f"reference file {str(self.path)!r} does not overlap the map "
                f"{str(self.cmap.path)!r}: its features cover "
                f"{_fmt_bounds(frame.total_bounds) if len(frame) else '(nothing)'}, the map "
                f"{_fmt_bounds(scene)} in {self.cmap.grid.crs_string()}; check that both "
                "cover the same area and that the file's CRS is right")
        return self._drop(frame, frame.intersects(box(*scene)).to_numpy(), "outside_map",
                          "feature(s) lie outside the map and are left out")

    def needs(self, window: Window) -> bool:
        """Whether any reference sample may fall in ``window``."""
        r0, r1 = int(window.row_off), int(window.row_off + window.height)
        if np.any((self.pt_rows >= r0) & (self.pt_rows < r1)):
            return True
        return bool(len(self.polygons)) and len(self._polygons_in(window)) > 0

    def _polygons_in(self, window: Window) -> np.ndarray:
        bounds = self.cmap.grid.window_bounds(window)
        return self.polygons.sindex.query(box(*bounds), predicate="intersects")

    def pairs(self, window: Window, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(map class, reference class) of every reference pixel in ``window``."""
        nodata = self.cmap.nodata
        maps, refs = [], []
        hits = self._polygons_in(window) if len(self.polygons) else np.zeros(0, dtype=int)
        if len(hits):
            shapes = zip(self.polygons.iloc[hits], self.poly_values[hits].tolist(), strict=True)
            ref = rasterize(shapes, out_shape=block.shape, fill=0, dtype="uint16",
                            transform=self.cmap.grid.window_transform(window))
            ok = (ref > 0) & (block != nodata)
            maps.append(block[ok].astype(np.int64))
            refs.append(ref[ok].astype(np.int64) - 1)
        r0, r1 = int(window.row_off), int(window.row_off + window.height)
        sel = ((self.pt_rows >= r0) & (self.pt_rows < r1) & (self.pt_cols >= 0)
               & (self.pt_cols < self.cmap.grid.width))
        if sel.any():
            mapped = block[self.pt_rows[sel] - r0, self.pt_cols[sel]].astype(np.int64)
            ok = mapped != nodata
            self.points_on_nodata += int((~ok).sum())
            maps.append(mapped[ok])
            refs.append(self.pt_values[sel][ok])
        if not maps:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(maps), np.concatenate(refs)

    def finish(self) -> None:
        """Warn about points on unmapped pixels (after the scan)."""
        if self.points_on_nodata:
            self.summary.dropped["on_map_nodata"] = self.points_on_nodata
            warnings.warn(f"{self.path.name}: {self.points_on_nodata} point(s) fall on "
                          "unmapped (nodata) pixels and are left out", UserWarning, stacklevel=3)


class RasterReference:
    """A label raster read onto the map's grid with nearest-neighbour resampling."""

    def __init__(self, path: str | Path, cmap: ClassMap, unlabelled: int | None = None) -> None:
        self.path = Path(path)
        self.cmap = cmap
        if unlabelled is None:  # the training raster's, when the map records it
            unlabelled = 255 if cmap.label_unlabelled is None else cmap.label_unlabelled
        self.unlabelled = unlabelled
        self.summary = ReferenceSummary(kind="raster", path=str(self.path))
        self.info = self._open()
        self.lookup = self._code_lookup()
        #: the lookup is the training raster's: its other codes were unlabelled in training
        self.training_codes = self.lookup is not None and self._tag_names() is None
        self.unknown: dict[int, int] = {}
        self.not_trained: dict[int, int] = {}

    def _open(self) -> RasterInfo:
        if not self.path.is_file():
            raise DataNotFoundError(f"label raster {str(self.path)!r} does not exist; give a "
                                    "reference raster of class codes (--labels)")
        info = read_info(self.path)
        grid = self.cmap.grid
        b = transform_bounds(info.crs, grid.crs, *info.bounds, densify_pts=21)
        if _disjoint(b, grid.bounds):
            raise AlignmentError(
                f"label raster {str(self.path)!r} does not overlap the map "
                f"{str(self.cmap.path)!r}: it covers {_fmt_bounds(b)}, the map "
                f"{_fmt_bounds(grid.bounds)} in {grid.crs_string()}; check that both cover "
                "the same area and that the raster's CRS is right")
        return info

    def _tag_names(self) -> str | None:
        with rasterio.open(self.path) as src:
            return src.tags().get("class_names")

    def _code_lookup(self) -> dict[int, int] | None:
        """Raster code -> map index from the raster's ``class_names`` tag, else from the
        map's ``label_codes`` (the codes of the raster its model was trained on), else None."""
        raw = self._tag_names()
        if raw is None:
            names = self.cmap.class_names
            return ({int(c): names.index(n) for n, c in self.cmap.label_codes.items()
                     if n in names} or None)
        try:
            names = [str(n) for n in json.loads(raw)]
        except (ValueError, TypeError):
            return None
        idx = class_indices(names, self.cmap.class_names,
                            f"label raster {self.path}: class_names tag")
        return {code: int(i) for code, i in enumerate(idx)}

    def needs(self, window: Window) -> bool:
        """Every strip may hold labelled pixels."""
        return True

    def pairs(self, window: Window, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(map class, reference class) of every labelled pixel in ``window``."""
        codes = read_warped(self.info, self.cmap.grid, window, "nearest", self.info.nodata)[0]
        ok = np.isfinite(codes) & (codes != self.unlabelled) & (block != self.cmap.nodata)
        ref = codes[ok].astype(np.int64)
        mapped = block[ok].astype(np.int64)
        if self.lookup is not None:
            table = np.full(max(self.lookup, default=0) + 1, -1, dtype=np.int64)
            table[list(self.lookup)] = list(self.lookup.values())
            inside = (ref >= 0) & (ref < len(table))
            ref = np.where(inside, table[np.clip(ref, 0, len(table) - 1)], -1)
        bad = (ref < 0) | (ref >= self.cmap.n_classes)
        if bad.any():
            raw = codes[ok][bad].astype(np.int64)
            seen = self.not_trained if self.training_codes else self.unknown
            for code, n in zip(*np.unique(raw, return_counts=True), strict=True):
                seen[int(code)] = seen.get(int(code), 0) + int(n)
        return mapped[~bad], ref[~bad]

    def finish(self) -> None:
        """Raise for codes that are no map class (after the scan, with pixel counts); codes
        of the training raster that were no training class are left out, with a warning."""
        if self.not_trained:
            self.summary.dropped["pixels_of_codes_not_trained"] = sum(self.not_trained.values())
            warnings.warn(
                f"label raster {self.path.name}: code(s) {self.not_trained} (pixel counts) were "
                f"no class of the map's model (trained on codes {self.cmap.label_codes}); their "
                "pixels are left out", UserWarning, stacklevel=3)
        if self.unknown:
            k = self.cmap.n_classes
            raise LabelError(
                f"label raster {str(self.path)!r} holds code(s) the map does not have: "
                f"{self.unknown} (pixel counts); the map's classes are "
                f"{self.cmap.class_names} (codes 0..{k - 1}); pass --unlabelled with the code "
                f"of unlabelled pixels (now {self.unlabelled}) or recode the raster")

