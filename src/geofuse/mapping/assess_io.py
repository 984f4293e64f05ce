"""Reading a class map for assessment: header, class names, colours, pixel area, strips.

The map (``geofuse predict``'s ``classes.tif``) is a single-band integer GeoTIFF with class
indices ``0..K-1`` and a nodata value (255 when the file declares none). Class names come from
the dataset tag ``class_names`` (a JSON list; band 1's tag of that name is read too), else from
``--classes``, else ``class_<i>``. The map is read in strips of whole rows
(:data:`STRIP_PIXELS` pixels at most), so memory stays bounded whatever its size.

Areas need a projected CRS: a map in a geographic CRS (degrees) is refused with a one-line
error asking to reproject it, because its pixels do not have one area (they shrink towards the
poles) and every stratum weight ``W_i`` would be biased.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import CRSError, RasterioIOError
from rasterio.windows import Window

from geofuse.errors import DataNotFoundError, LabelError, RasterError
from geofuse.raster.io import Grid

#: Most pixels read at once (a strip of whole rows): 4 Mpx, 4 MB for a uint8 map.
STRIP_PIXELS = 1 << 22
#: Nodata of a class map that declares none (``geofuse predict`` writes 255).
DEFAULT_NODATA = 255
#: Colours of classes without a colour table entry (matplotlib's tab20, as 0-255 RGB).
_TAB20 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
          "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]


@dataclass(frozen=True)
class ClassMap:
    """A class map's header and per-class pixel counts.

    Attributes:
        path: the GeoTIFF.
        grid: its CRS, transform and size.
        class_names: class names in index order (``K`` classes).
        nodata: the value of unmapped pixels.
        colours: ``#rrggbb`` per class (the map's colour table, else a default palette).
        pixel_area_m2: area of one pixel in square metres.
        counts: mapped pixels per class (length ``K``).
        names_from: where the names came from: ``map``, ``--classes`` or ``default``.
        label_codes: class name -> code in the label raster the map's model was trained on
            (``label_codes`` tag; empty when it had none).
        label_unlabelled: that raster's unlabelled code (``label_unlabelled`` tag).
    """

    path: Path
    grid: Grid
    class_names: list[str]
    nodata: int
    colours: list[str]
    pixel_area_m2: float
    counts: np.ndarray
    names_from: str
    label_codes: dict[str, int] = field(default_factory=dict)
    label_unlabelled: int | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def total_area_m2(self) -> float:
        """Area of all mapped (not nodata) pixels."""
        return float(self.counts.sum()) * self.pixel_area_m2

    def strips(self) -> Iterator[tuple[Window, np.ndarray]]:
        """Yield ``(window, values)`` for strips of whole rows, top to bottom."""
        yield from read_strips(self.path, self.grid)


def strip_windows(grid: Grid) -> Iterator[Window]:
    """Windows of whole rows, at most :data:`STRIP_PIXELS` pixels each, top to bottom."""
    rows = max(1, STRIP_PIXELS // max(grid.width, 1))
    for row in range(0, grid.height, rows):
        yield Window(0, row, grid.width, min(rows, grid.height - row))


def read_strips(path: Path, grid: Grid, band: int = 1) -> Iterator[tuple[Window, np.ndarray]]:
    """Yield ``(window, band values)`` for each strip of :func:`strip_windows`."""
    with rasterio.open(path) as src:
        for win in strip_windows(grid):
            yield win, src.read(band, window=win)


def _missing(path: Path) -> DataNotFoundError:
    return DataNotFoundError(
        f"class map {str(path)!r} does not exist; give the classes.tif written by "
        "'geofuse predict' (or another single-band class-index GeoTIFF)"
    )


def tag_names(src: Any) -> list[str] | None:
    """``class_names`` from the dataset's (or band 1's) tags, if it is a JSON list."""
    for tags in (src.tags(), src.tags(1)):
        raw = tags.get("class_names")
        if raw is None:
            continue
        try:
            names = json.loads(raw)
        except ValueError:
            names = [n.strip() for n in raw.split(",")]
        if isinstance(names, list) and names:
            return [str(n) for n in names]
    return None


def _tag_label_codes(src: Any) -> tuple[dict[str, int], int | None]:
    """Class name -> training label-raster code and its unlabelled code, from the map's
    ``label_codes`` / ``label_unlabelled`` tags (written by ``geofuse predict``)."""
    tags = src.tags()
    try:
        codes = {str(n): int(c) for n, c in json.loads(tags.get("label_codes", "{}")).items()}
        unlabelled = int(tags["label_unlabelled"]) if "label_unlabelled" in tags else None
    except (ValueError, TypeError, AttributeError):
        return {}, None
    return codes, unlabelled


def pixel_area_m2(path: Path, grid: Grid) -> float:
    """Area of one pixel in square metres; geographic CRSs raise :class:`RasterError`."""
    crs = grid.crs
    if crs.is_geographic:
        raise RasterError(
            f"class map {str(path)!r} is in a geographic CRS ({grid.crs_string()}, degrees): "
            "its pixels have no single area, so class areas and area-weighted accuracy cannot "
            "be computed; reproject it to a projected CRS in metres with nearest resampling, "
            f"e.g. 'gdalwarp -t_srs EPSG:<UTM zone> -r near {path} classes_utm.tif'"
        )
    try:
        factor = crs.linear_units_factor[1]
    except CRSError:
        factor = 1.0
        warnings.warn(f"class map {str(path)!r}: the CRS has no linear unit; areas assume "
                      "metres", UserWarning, stacklevel=3)
    t = grid.transform
    return abs(t.a * t.e - t.b * t.d) * factor * factor


def _colours(src: Any, k: int) -> list[str]:
    try:
        table = src.colormap(1)
    except ValueError:  # no colour table
        table = {}
    out = []
    for i in range(k):
        rgba = table.get(i)
        out.append("#{:02x}{:02x}{:02x}".format(*rgba[:3]) if rgba is not None
                   else _TAB20[i % len(_TAB20)])
    return out


def _count_classes(path: Path, grid: Grid, nodata: int) -> np.ndarray:
    counts = np.zeros(0, dtype=np.int64)
    for _, block in read_strips(path, grid):
        values = block[block != nodata].astype(np.int64, copy=False)
        if values.size and values.min() < 0:
            raise RasterError(
                f"class map {str(path)!r} holds negative value {int(values.min())}; class maps "
                "hold class indices 0..K-1 (and a nodata value); set the file's nodata to the "
                "value of unmapped pixels"
            )
        found = np.bincount(values)
        if len(found) > len(counts):
            found[: len(counts)] += counts
            counts = found
        else:
            counts[: len(found)] += found
    return counts


def open_class_map(path: str | Path, classes: list[str] | None = None) -> ClassMap:
    """Read a class map's header and count its pixels per class (one pass over strips).

    Args:
        path: the class-index GeoTIFF.
        classes: class names to use when the map carries none (``--classes``).

    Raises:
        DataNotFoundError: the file does not exist.
        RasterError: unreadable, no CRS, geographic CRS, not an integer map, no mapped pixel,
            or a class value beyond the map's class names.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise RasterError(f"class map {str(path)!r} has no CRS; assign the CRS the "
                                  f"map was made in ('gdal_edit.py -a_srs EPSG:xxxx {path}')")
            if not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
                raise RasterError(
                    f"class map {str(path)!r} holds {src.dtypes[0]} values, not class indices; "
                    "give the classes.tif of 'geofuse predict' (uint8 class indices), or for "
                    "the values.tif of a regression run --polygons FILE --value-field NAME")
            grid = Grid(src.crs, src.transform, src.width, src.height)
            nodata = DEFAULT_NODATA if src.nodata is None else int(src.nodata)
            names_tagged = tag_names(src)
            label_codes, label_unlabelled = _tag_label_codes(src)
            names_from = "map" if names_tagged else ("--classes" if classes else "default")
            names = names_tagged or (list(classes) if classes else None)
            area = pixel_area_m2(path, grid)
            counts = _count_classes(path, grid, nodata)
            k = len(names) if names else len(counts)
            colours = _colours(src, max(k, len(counts)))
    except RasterioIOError as err:
        raise RasterError(f"class map {str(path)!r} cannot be read "
                          f"({' '.join(str(err).split())}); check that it is a complete GeoTIFF "
                          "(write it again with 'geofuse predict')") from None
    if counts.sum() == 0:
        raise RasterError(f"class map {str(path)!r} has no mapped pixel (every pixel is nodata "
                          f"{nodata}); check the map and its nodata value")
    if names is None:
        names = [f"class_{i}" for i in range(len(counts))]
    if len(counts) > len(names):
        extra = sorted(int(v) for v in np.flatnonzero(counts[len(names):]) + len(names))
        raise RasterError(
            f"class map {str(path)!r} holds class value(s) {extra} but names only "
            f"{len(names)} classes ({names_from}: {names}); give every class a name "
            "(--classes a,b,c ...) or set the map's nodata"
        )
    full = np.zeros(len(names), dtype=np.int64)
    full[: len(counts)] = counts
    return ClassMap(path=path, grid=grid, class_names=names, nodata=nodata,
                    colours=colours[: len(names)], pixel_area_m2=area, counts=full,
                    names_from=names_from, label_codes=label_codes,
                    label_unlabelled=label_unlabelled)


def uncertainty_summary(path: Path, grid: Grid, bins: int = 40) -> dict[str, Any] | None:
    """Histogram of band 1 of an uncertainty raster on the map's grid (two passes, strips).

    Returns None (with a warning) when the raster is not on the map's grid or holds no value.
    """
    try:
        with rasterio.open(path) as src:
            same = (src.width, src.height, src.transform) == (grid.width, grid.height,
                                                              grid.transform)
            nodata = src.nodata
    except RasterioIOError as err:
        warnings.warn(f"uncertainty raster {str(path)!r} is unreadable ({err}); the report "
                      "leaves out its histogram", UserWarning, stacklevel=2)
        return None
    if not same:
        warnings.warn(f"uncertainty raster {str(path)!r} is not on the map's grid; the report "
                      "leaves out its histogram", UserWarning, stacklevel=2)
        return None

    def values() -> Iterator[np.ndarray]:
        for _, block in read_strips(path, grid):
            v = block.astype(np.float64, copy=False).ravel()
            keep = np.isfinite(v) if nodata is None else np.isfinite(v) & (v != nodata)
            yield v[keep]

    lo, hi, n, total = np.inf, -np.inf, 0, 0.0
    for v in values():
        if v.size:
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
            n, total = n + v.size, total + float(v.sum())
    if n == 0:
        return None
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    hist = np.zeros(bins, dtype=np.int64)
    for v in values():
        hist += np.histogram(v, bins=edges)[0]
    return {"path": str(path), "band": 1, "n_pixels": n, "mean": total / n, "min": lo,
            "max": hi, "bin_edges": edges.tolist(), "counts": hist.tolist()}


def read_vector(path: Path, what: str, expected: str) -> Any:
    """A GeoDataFrame of the vector file ``path`` (``what`` names it in errors, e.g.
    'reference file'; ``expected`` says what it should hold, e.g. 'points or polygons').

    Raises:
        DataNotFoundError: no such file.
        LabelError: unreadable, or without a CRS.
    """
    import geopandas as gpd

    if not path.is_file():
        raise DataNotFoundError(f"{what} {str(path)!r} does not exist; give a GeoPackage, "
                                f"GeoJSON or Shapefile of {expected}")
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as err:  # pyogrio raises several types for unreadable files
        raise LabelError(f"cannot read {what} {str(path)!r} ({' '.join(str(err).split())}); "
                         "give a GeoPackage, GeoJSON or Shapefile") from None
    if frame.crs is None:
        raise LabelError(f"{what} {str(path)!r} has no CRS; save it with one")
    return frame


def find_uncertainty(map_path: Path, grid: Grid, given: str | Path | None = None,
                     band: str | None = None, required: bool = False) -> tuple[Path, int] | None:
    """The uncertainty raster of a map and the 1-based index of ``band`` (default: the
    ``entropy`` band, else band 1): ``given``, else ``uncertainty.tif`` beside the map.

    One beside the map that is missing or on another grid gives None (with a warning when on
    another grid) unless ``required``; a given one must exist and be on the map's grid.

    Raises:
        DataNotFoundError: a given (or required) raster is missing.
        RasterError: a given (or required) raster is on another grid.
        ConfigError: it has no band ``band``.
    """
    from geofuse.errors import ConfigError

    strict = given is not None or required
    src_path = Path(given) if given is not None else map_path.parent / "uncertainty.tif"
    if not src_path.is_file():
        if strict:
            raise DataNotFoundError(
                f"uncertainty raster {str(src_path)!r} does not exist; give the uncertainty.tif "
                "that 'geofuse predict' wrote with the map (--uncertainty PATH)")
        return None
    with rasterio.open(src_path) as src:
        same = (src.width, src.height, src.crs, src.transform) == (
            grid.width, grid.height, grid.crs, grid.transform)
        size = f"{src.width}x{src.height}"
        names = [d or f"band_{i + 1}" for i, d in enumerate(src.descriptions)]
    if not same:
        message = (f"uncertainty raster {str(src_path)!r} is {size} px on another grid than the "
                   f"map {str(map_path)!r} ({grid.width}x{grid.height} px)")
        if strict:
            raise RasterError(f"{message}; give the uncertainty.tif written with this map")
        warnings.warn(f"{message}: it is left out", UserWarning, stacklevel=3)
        return None
    if band is None:
        return src_path, (names.index("entropy") + 1 if "entropy" in names else 1)
    if band not in names:
        raise ConfigError(f"uncertainty raster {str(src_path)!r} has no band {band!r}; its "
                          f"bands are {names}; choose one with --band")
    return src_path, names.index(band) + 1
