"""``geofuse vectorize``: a class map with a minimum mapping unit, as a raster and polygons.

Land-cover maps are published with a minimum mapping unit (MMU): no patch of a class smaller
than it (CORINE: 25 ha). GDAL's sieve filter merges every connected region smaller than a
threshold into its largest neighbouring region; nodata stays nodata and never absorbs a
region. One pass merges a small region only into a neighbour that is already large, so a
cluster of small regions would survive: the threshold is raised in steps (2, 4, 8, ... the
MMU) so that small regions first merge among themselves. Regions that no larger region
touches (an island inside nodata) cannot merge and are flagged ``below_mmu``.

For ``<stem>.tif`` it writes ``<stem>_mmu.tif`` (the input's colour table and class names),
``<stem>_mmu.gpkg`` (one polygon per connected region: class, pixels, area and, when the map's
``uncertainty.tif`` is beside it, the region's mean uncertainty, so that a reviewer can sort
the polygons by doubt) and ``<stem>_vectorize.json`` (the MMU and the class areas before and
after). The three are built in a scratch folder and renamed together at the end.

The map is held in memory, about :data:`BYTES_PER_PIXEL` bytes a pixel at the peak, so maps
above :data:`MAX_PIXELS` (a little more than one Sentinel-2 tile at 10 m) are refused with
the fix (map or crop a part).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.features import shapes, sieve
from rasterio.windows import Window
from scipy.ndimage import label
from shapely import make_valid
from shapely.geometry import MultiPolygon, Polygon, shape

from geofuse.errors import ConfigError, RasterError, write_failure
from geofuse.io_utils import atomic_write_json, staged_together
from geofuse.mapping.assess_io import ClassMap, find_uncertainty, open_class_map
from geofuse.raster.io import write_cog

#: Largest map vectorized at once (a Sentinel-2 tile at 10 m is 120.6 Mpx).
MAX_PIXELS = 125_000_000
#: Peak memory per pixel, measured on a 9 Mpx map with 33,000 regions: 13 bytes in arrays
#: (the map, the sieved map and its mask, region ids, one class's labels), the rest in GDAL's
#: sieve and polygonizer and the batches of polygons.
BYTES_PER_PIXEL = 26
#: Polygons written to the GeoPackage per batch.
BATCH = 20_000
_SIEVE_DTYPES = ("uint8", "uint16", "int16", "int32")


@dataclass
class VectorizeResult:
    """The written files and the record of ``<stem>_vectorize.json``."""

    map_path: Path
    polygons_path: Path
    record_path: Path
    record: dict[str, Any]


def mmu_pixels(mmu_ha: float | None, pixels: int | None, pixel_area_m2: float) -> int:
    """The MMU in pixels: regions with fewer pixels are merged into a neighbour."""
    if (mmu_ha is None) == (pixels is None):
        raise ConfigError("geofuse vectorize needs the minimum mapping unit: --mmu HECTARES or "
                          "--mmu-pixels N (one of them)")
    if pixels is not None:
        return int(pixels)
    if not math.isfinite(float(mmu_ha)) or float(mmu_ha) <= 0:  # type: ignore[arg-type]
        raise ConfigError(f"--mmu {mmu_ha} is not a positive area in hectares; give e.g. "
                          "--mmu 0.5")
    return max(1, math.ceil(float(mmu_ha) * 1e4 / pixel_area_m2 - 1e-9))  # type: ignore[arg-type]


def vectorize_map(
    map_path: str | Path, out_dir: str | Path | None = None, mmu_ha: float | None = None,
    min_pixels: int | None = None, connectivity: int = 4, classes: list[str] | None = None,
    uncertainty: str | Path | None = None, max_pixels: int = MAX_PIXELS,
) -> VectorizeResult:
    """Sieve ``map_path`` to the MMU and write ``<stem>_mmu.tif``, ``<stem>_mmu.gpkg`` and
    ``<stem>_vectorize.json`` in ``out_dir`` (default: the map's folder).

    Args:
        uncertainty: a raster on the map's grid whose band ``entropy`` (else its first) is
            averaged per polygon; default: ``uncertainty.tif`` beside the map when it is on
            the map's grid.

    Raises:
        DataNotFoundError, RasterError: as :func:`open_class_map`; a map larger than
            ``max_pixels`` or smaller than the MMU; a given uncertainty raster on another grid.
        ConfigError: no MMU, or a connectivity other than 4 or 8.
    """
    if connectivity not in (4, 8):
        raise ConfigError(f"--connectivity {connectivity}: regions connect through their 4 "
                          "edge neighbours or all 8 neighbours; give 4 or 8")
    cmap = open_class_map(map_path, classes)
    size = mmu_pixels(mmu_ha, min_pixels, cmap.pixel_area_m2)
    n_px = cmap.grid.width * cmap.grid.height
    if n_px > max_pixels:
        raise RasterError(
            f"class map {str(cmap.path)!r} has {n_px:,} pixels, more than vectorize holds at "
            f"once ({max_pixels:,}, about {BYTES_PER_PIXEL} bytes each); map a smaller part "
            "(geofuse predict on a cropped stack) or crop the map ('gdal_translate -srcwin ...')"
        )
    if size >= n_px:
        raise RasterError(
            f"the minimum mapping unit ({size:,} px) is not smaller than the class map "
            f"{str(cmap.path)!r} ({n_px:,} px); give a smaller --mmu"
        )
    found_doubt = find_uncertainty(cmap.path, cmap.grid, uncertainty)
    out = Path(out_dir) if out_dir is not None else cmap.path.parent
    stem = cmap.path.stem
    targets = {"map": out / f"{stem}_mmu.tif", "polygons": out / f"{stem}_mmu.gpkg",
               "record": out / f"{stem}_vectorize.json"}
    with rasterio.open(cmap.path) as src:
        values = src.read(1)
        profile, tags, band_tags = src.profile, src.tags(), src.tags(1)
        colours = _colormap(src)
    valid = values != cmap.nodata
    sieved = _sieve(values, valid, size, connectivity)
    sieved[~valid] = cmap.nodata
    regions, region_class = _regions(sieved, valid, cmap.n_classes, connectivity)
    n_regions = len(region_class) - 1
    pixels, after = _pixel_counts(regions, sieved, valid, n_regions, cmap.n_classes)
    doubt_name, doubt_means = _uncertainty(found_doubt, regions, n_regions)
    record = _record(cmap, sieved, values, valid, size, connectivity, region_class, pixels,
                     after, doubt_name, mmu_ha)
    out.mkdir(parents=True, exist_ok=True)
    ordered = {k: targets[k] for k in ("map", "polygons", "record")}  # the record last
    with staged_together(ordered) as staged:
        _write_map(staged["map"], sieved, profile, tags, band_tags, colours)
        record["polygons"] = _write_polygons(staged["polygons"], regions, cmap, region_class,
                                             pixels, size, doubt_name, doubt_means, connectivity)
        record["below_mmu"] = int(((pixels[1:] < size)).sum())
        atomic_write_json(staged["record"], record)
    return VectorizeResult(targets["map"], targets["polygons"], targets["record"], record)


def _sieve(values: np.ndarray, valid: np.ndarray, size: int, connectivity: int) -> np.ndarray:
    """Merge regions below ``size`` pixels, the threshold doubled from 2 up to ``size``."""
    work = values if values.dtype.name in _SIEVE_DTYPES else \
        np.where(valid, values, 0).astype(np.uint16)
    step = 2
    while size > 1:
        step = min(step, size)
        work = sieve(work, step, mask=valid, connectivity=connectivity)
        if step == size:
            break
        step *= 2
    return work.astype(values.dtype, copy=work is values)


def _colormap(src: Any) -> dict[int, tuple[int, ...]] | None:
    try:
        return src.colormap(1)
    except ValueError:  # no colour table
        return None


def _write_map(path: Path, data: np.ndarray, profile: dict[str, Any], tags: dict[str, str],
               band_tags: dict[str, str], colours: dict[int, tuple[int, ...]] | None) -> None:
    """The sieved map as a COG with the input's CRS, grid, nodata, tags and colour table."""
    profile = {**profile, "driver": "GTiff", "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate"}
    plain = path.with_name("plain_" + path.name)
    try:
        with rasterio.open(plain, "w", **profile) as dst:
            dst.write(data, 1)
            dst.update_tags(**tags)
            dst.update_tags(1, **band_tags)
            if colours:
                dst.write_colormap(1, colours)
        write_cog(plain, path, overview_resampling="mode")
    except RasterioError as err:
        raise write_failure(err, path) from None
    finally:
        plain.unlink(missing_ok=True)


def _regions(sieved: np.ndarray, valid: np.ndarray, k: int, connectivity: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Connected regions of one class: ids ``1..n`` (0 = nodata) and each region's class
    (index 0: nodata)."""
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    regions = np.zeros(sieved.shape, np.int32)
    classes = [0]
    for c in range(k):
        ids, n = label((sieved == c) & valid, structure=structure, output=np.int32)
        if n:
            inside = ids > 0
            ids += len(classes) - 1
            regions[inside] = ids[inside]
            classes += [c] * n
        del ids
    return regions, np.asarray(classes, np.int64)


def _pixel_counts(regions: np.ndarray, sieved: np.ndarray, valid: np.ndarray, n: int, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels per region and per class, counted in strips of rows (no full-size copies)."""
    pixels = np.zeros(n + 1, np.int64)
    per_class = np.zeros(max(k, 1), np.int64)
    for rows in _row_strips(regions.shape):
        pixels += np.bincount(regions[rows].ravel(), minlength=n + 1)
        per_class += np.bincount(sieved[rows][valid[rows]], minlength=k)[:k]
    return pixels, per_class


def _row_strips(shape: tuple[int, ...]) -> list[slice]:
    step = max(1, (1 << 22) // max(shape[1], 1))
    return [slice(r, min(r + step, shape[0])) for r in range(0, shape[0], step)]


def _uncertainty(found: tuple[Path, int] | None, regions: np.ndarray, n: int
                 ) -> tuple[str | None, np.ndarray | None]:
    """Mean of the uncertainty band (``found``: raster and band) per region (name
    ``mean_<band>``), or ``(None, None)``; read in strips, nodata and NaN left out."""
    if found is None:
        return None, None
    src_path, band = found
    sums = np.zeros(n + 1)
    counts = np.zeros(n + 1, np.int64)
    with rasterio.open(src_path) as src:
        name = src.descriptions[band - 1] or f"band_{band}"
        for rows in _row_strips(regions.shape):
            win = Window(0, rows.start, src.width, rows.stop - rows.start)
            values = src.read(band, window=win, masked=True)
            ok = ~np.ma.getmaskarray(values) & np.isfinite(values.filled(np.nan))
            ids = regions[rows][ok]
            sums += np.bincount(ids, weights=values.data[ok].astype(np.float64), minlength=n + 1)
            counts += np.bincount(ids, minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return f"mean_{name}", sums / counts


def _polygonal(geom: Any) -> MultiPolygon:
    """A valid MultiPolygon (8-connected regions touch themselves at corners)."""
    if not geom.is_valid:
        geom = make_valid(geom)
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon | MultiPolygon)]
    polys = [p for g in parts for p in getattr(g, "geoms", [g])]
    return MultiPolygon(polys)


def _write_polygons(path: Path, regions: np.ndarray, cmap: ClassMap, region_class: np.ndarray,
                    pixels: np.ndarray, size: int, doubt_name: str | None,
                    doubt: np.ndarray | None, connectivity: int) -> int:
    """One polygon per region, written in batches to a GeoPackage."""
    crs = cmap.grid.crs
    layer = path.stem
    n = 0
    rows: list[dict[str, Any]] = []
    geoms = []
    for geom, value in shapes(regions, mask=regions > 0, connectivity=connectivity,
                              transform=cmap.grid.transform):
        rid = int(value)
        c = int(region_class[rid])
        row = {"region": rid, "class_id": c, "class_name": cmap.class_names[c],
               "pixels": int(pixels[rid]),
               "area_ha": float(pixels[rid]) * cmap.pixel_area_m2 / 1e4,
               "below_mmu": bool(pixels[rid] < size)}
        if doubt_name is not None and doubt is not None:
            row[doubt_name] = float(doubt[rid])
        rows.append(row)
        geoms.append(_polygonal(shape(geom)))
        if len(rows) >= BATCH:
            n += _append(path, layer, rows, geoms, crs, first=n == 0)
            rows, geoms = [], []
    if rows or n == 0:
        n += _append(path, layer, rows, geoms, crs, first=n == 0)
    return n


def _append(path: Path, layer: str, rows: list[dict[str, Any]], geoms: list[Any], crs: Any,
            first: bool) -> int:
    frame = gpd.GeoDataFrame(rows, geometry=geoms, crs=crs)
    frame.to_file(path, driver="GPKG", layer=layer, engine="pyogrio",
                  mode="w" if first else "a")
    return len(rows)


def _record(cmap: ClassMap, sieved: np.ndarray, values: np.ndarray, valid: np.ndarray,
            size: int, connectivity: int, region_class: np.ndarray, pixels: np.ndarray,
            after: np.ndarray, doubt_name: str | None, mmu_ha: float | None
            ) -> dict[str, Any]:
    ha = cmap.pixel_area_m2 / 1e4
    per_class = []
    for c, name in enumerate(cmap.class_names):
        sizes = pixels[1:][region_class[1:] == c] * ha
        per_class.append({
            "class": name, "area_ha_before": float(cmap.counts[c] * ha),
            "area_ha_after": float(after[c] * ha), "polygons": len(sizes),
            "smallest_ha": float(sizes.min()) if len(sizes) else None,
            "median_ha": float(np.median(sizes)) if len(sizes) else None,
        })
    changed = sum(int((sieved[r][valid[r]] != values[r][valid[r]]).sum())
                  for r in _row_strips(values.shape))
    mapped = int(cmap.counts.sum())
    return {
        "map": str(cmap.path), "mmu_ha_requested": mmu_ha, "mmu_pixels": size,
        "mmu_ha": size * ha, "pixel_area_m2": cmap.pixel_area_m2,
        "connectivity": connectivity, "mapped_pixels": mapped, "pixels_changed": changed,
        "changed_fraction": changed / max(1, mapped), "uncertainty_field": doubt_name,
        "classes": per_class,
    }


def summary(record: dict[str, Any]) -> str:
    """One line for the console."""
    below = record.get("below_mmu", 0)
    left = (f"; {below} region(s) below the unit have no larger neighbour (islands in "
            "nodata): flagged below_mmu" if below else "")
    return (f"MMU {record['mmu_ha']:.4g} ha ({record['mmu_pixels']} px, "
            f"{record['connectivity']}-connected): {record['pixels_changed']:,} pixels "
            f"({record['changed_fraction']:.1%}) merged into neighbours, "
            f"{record['polygons']:,} polygons{left}")
