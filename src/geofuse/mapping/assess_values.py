"""``geofuse assess VALUES --polygons FILE --value-field NAME``: a regression map against
reference numbers.

Each reference feature is compared with the map where it lies: a point with the pixel under
it, a polygon with the mean of the map's pixels whose centres fall inside it (nodata pixels
left out). The pairs give RMSE, MAE, bias, R2, Pearson and Spearman r
(:func:`~geofuse.evaluation.regression_metrics.regression_metrics`), a per-feature table and an
observed-vs-mapped plot: ``assessment.json``, ``assessment.md`` and ``assessment.html``.

Features without a number are dropped, and features off the map or over nodata only are
listed as skipped. A polygon's mean compares like with like only when the map's value means
the same thing for the polygon as for one pixel's patch (a density, a height, a share): a map
of counts per 1 km cell compares with 1 km reference cells.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.features import geometry_mask
from rasterio.windows import Window, from_bounds

from geofuse.errors import DataNotFoundError, LabelError, RasterError
from geofuse.evaluation.regression_metrics import regression_metrics
from geofuse.io_utils import atomic_write_json, atomic_write_text
from geofuse.labels.polygons import feature_numbers
from geofuse.mapping.assess import AssessmentOutputs
from geofuse.mapping.assess_io import read_vector
from geofuse.mapping.assess_report import HTML_NAME, JSON_NAME, MD_NAME, _save
from geofuse.reporting import html as doc
from geofuse.reporting._regression_report import plot_observed_vs_predicted


def _open_values(path: Path) -> dict[str, Any]:
    """The value map's CRS, transform, size and value name."""
    if not path.is_file():
        raise DataNotFoundError(f"value map {str(path)!r} does not exist; give the values.tif "
                                "of 'geofuse predict' with a regression run")
    with rasterio.open(path) as src:
        if not np.issubdtype(np.dtype(src.dtypes[0]), np.floating):
            raise RasterError(
                f"map {str(path)!r} holds {src.dtypes[0]} class indices, not values; assess a "
                "class map without --value-field, or give the values.tif of a regression run")
        if src.crs is None:
            raise RasterError(f"value map {str(path)!r} has no CRS; assign the CRS the map was "
                              f"made in ('gdal_edit.py -a_srs EPSG:xxxx {path}')")
        return {"crs": src.crs, "transform": src.transform, "width": src.width,
                "height": src.height, "value_name": src.tags().get("value_name", "value")}


def _reference(path: Path, value_field: str, crs: Any) -> tuple[gpd.GeoDataFrame, list[str]]:
    """Reference features with a number (column ``_ref``) in the map's CRS, and the ids of
    those without one."""
    frame = read_vector(path, "reference file", "points or polygons")
    numbers = feature_numbers(frame, path, value_field, key="--value-field")
    frame = frame.assign(_ref=[np.nan if v is None else float(v) for v in numbers],
                         _id=[str(i) for i in range(len(frame))])
    missing = frame["_id"][frame["_ref"].isna() | frame.geometry.isna()].tolist()
    frame = frame[frame["_ref"].notna() & frame.geometry.notna()]
    return frame.to_crs(crs), missing


def _mapped_value(src: Any, geom: Any, info: dict[str, Any]) -> tuple[float, int]:
    """Mean map value over a feature (the pixel under a point) and its pixel count."""
    if geom.geom_type == "Point":
        row, col = src.index(geom.x, geom.y)
        if not (0 <= row < info["height"] and 0 <= col < info["width"]):
            return math.nan, 0
        v = float(src.read(1, window=Window(col, row, 1, 1))[0, 0])
        return (v, 1) if math.isfinite(v) else (math.nan, 0)
    box = from_bounds(*geom.bounds, transform=info["transform"])
    c0, r0 = max(math.floor(box.col_off), 0), max(math.floor(box.row_off), 0)
    c1 = min(math.ceil(box.col_off + box.width), info["width"])
    r1 = min(math.ceil(box.row_off + box.height), info["height"])
    if c1 <= c0 or r1 <= r0:  # off the map
        return math.nan, 0
    win = Window(c0, r0, c1 - c0, r1 - r0)
    data = src.read(1, window=win)
    inside = geometry_mask([geom], out_shape=data.shape, invert=True,
                           transform=src.window_transform(win))
    values = data[inside & np.isfinite(data)]
    return (float(values.mean()), int(values.size)) if values.size else (math.nan, 0)


def assess_value_map(map_path: str | Path, polygons: str | Path, value_field: str,
                     out_dir: str | Path | None = None) -> AssessmentOutputs:
    """Compare a value map with the numbers of reference points or polygons.

    Raises:
        DataNotFoundError: the map or the reference file is missing.
        RasterError: the map holds classes, or has no CRS.
        LabelError: the reference file is unreadable, lacks ``value_field`` or a number in
            it, or no feature lies on mapped pixels.
    """
    map_path, polygons = Path(map_path), Path(polygons)
    info = _open_values(map_path)
    frame, missing = _reference(polygons, value_field, info["crs"])
    rows, skipped = [], []
    with rasterio.open(map_path) as src:
        for fid, geom, ref in zip(frame["_id"], frame.geometry, frame["_ref"], strict=True):
            mapped, n = _mapped_value(src, geom, info)
            if n:
                rows.append({"feature": fid, "reference": float(ref), "mapped": mapped,
                             "pixels": n})
            else:
                skipped.append(fid)
    if not rows:
        raise LabelError(f"no feature of {str(polygons)!r} lies on mapped pixels of "
                         f"{str(map_path)!r}; check that they cover the same area")
    ref = np.array([r["reference"] for r in rows])
    mapped = np.array([r["mapped"] for r in rows])
    result = {"kind": "values", "map": str(map_path), "reference": str(polygons),
              "value_field": value_field, "value_name": info["value_name"],
              "metrics": regression_metrics(ref, mapped), "features": rows,
              "skipped_off_map": skipped, "dropped_without_number": missing}
    out = Path(out_dir) if out_dir is not None else map_path.parent
    return write_value_assessment(result, out)


def is_value_map(path: str | Path) -> bool:
    """Whether ``path`` is a readable raster of floating-point values (a regression map)."""
    try:
        with rasterio.open(path) as src:
            return bool(np.issubdtype(np.dtype(src.dtypes[0]), np.floating))
    except rasterio.errors.RasterioIOError:
        return False


def write_value_assessment(result: dict[str, Any], out: Path) -> AssessmentOutputs:
    """``assessment.json``, ``.md`` and ``.html`` of a value-map assessment: pairs from
    ``features`` (points and polygons) or, for a reference raster, its pixel ``sample``."""
    out.mkdir(parents=True, exist_ok=True)
    m, name = result["metrics"], result["value_name"]
    json_path = out / JSON_NAME
    atomic_write_json(json_path, result)
    if result["features"]:
        ref = [r["reference"] for r in result["features"]]
        mapped = [r["mapped"] for r in result["features"]]
    else:  # a reference raster: a uniform sample of its pixels
        ref, mapped = result["sample"]["reference"], result["sample"]["mapped"]
    fig = plot_observed_vs_predicted(np.array(ref), np.array(mapped), name,
                                     "Reference vs mapped")
    fig.axes[0].set(xlabel=f"reference {result['value_field']}", ylabel=f"mapped {name}")
    what = (f"{len(result['features'])} reference features of "
            f"`{Path(result['reference']).name}` (a point: the pixel under it; a polygon: the "
            "mean of the pixels whose centres lie inside it)" if result["features"] else
            f"the {m['n']:,} pixels where the reference raster `{Path(result['reference']).name}`"
            " (averaged onto the map's grid) and the map both hold a value; Spearman r and "
            "the plot from a uniform sample of them")
    blocks: list[doc.Block] = [
        doc.Heading(f"Assessment of {Path(result['map']).name}", 1),
        doc.Para(f"Map of `{name}` against `{result['value_field']}`: {what}."),
        doc.Table(["n", "RMSE", "MAE", "bias (map - reference)", "R2", "Pearson r",
                   "Spearman r"],
                  [[m["n"], *[f"{m[k]:.4g}" for k in ("rmse", "mae", "bias")],
                    *[f"{m[k]:.3f}" for k in ("r2", "pearson_r", "spearman_r")]]]),
        _save(fig, out, "assessment_values", "Reference vs mapped values"),
    ]
    if result["features"]:
        blocks.append(doc.Table(
            ["feature", "reference", "mapped", "pixels"],
            [[r["feature"], f"{r['reference']:.4g}", f"{r['mapped']:.4g}", r["pixels"]]
             for r in result["features"]], caption="Per feature"))
    notes = [f"{len(v)} feature(s) {what}: {', '.join(v[:20])}"
             for v, what in ((result["skipped_off_map"], "off the map or over nodata only"),
                             (result["dropped_without_number"], "without a number"))
             if v]
    if notes:
        blocks.append(doc.Alert("note", "Features left out", notes))
    md_path, html_path = out / MD_NAME, out / HTML_NAME
    atomic_write_text(md_path, doc.to_markdown(blocks))
    atomic_write_text(html_path, doc.to_html(f"Assessment of {Path(result['map']).name}",
                                             blocks))
    return AssessmentOutputs(json_path, md_path, html_path, result)


def value_summary_line(result: dict[str, Any]) -> str:
    """One line for the terminal: RMSE, bias and R2 over the reference features (pixels)."""
    m = result["metrics"]
    what = "reference features" if result["features"] else "reference pixels"
    return (f"{m['n']:,} {what}: RMSE {m['rmse']:.4g}, bias {m['bias']:+.4g}, "
            f"R2 {m['r2']:.3f} ({result['value_name']})")
