"""``geofuse vectorize``: a class map with a minimum mapping unit, as a raster and polygons.

Land-cover maps are published with a minimum mapping unit (MMU): no patch of a class smaller
than it (CORINE: 25 ha). GDAL's sieve filter merges every connected region smaller than the
MMU into its largest neighbouring region; nodata stays nodata and never absorbs a region. The
sieved map is written as ``classes_mmu.tif`` (the input's colour table and class names) and
its regions as polygons in ``classes_mmu.gpkg``: one feature per connected region, with its
class, area and, when the map's ``uncertainty.tif`` is beside it, the region's mean
uncertainty, so that a reviewer can sort the polygons by doubt. ``vectorize.json`` records the
MMU and the class areas before and after.

The map is held in memory (1 byte per pixel, plus 4 for region labels and 4 for the
uncertainty), so maps above :data:`MAX_PIXELS` are refused with the fix (map or crop a part).
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
from scipy.ndimage import label
from shapely.geometry import shape

from geofuse.errors import ConfigError, RasterError, write_failure
from geofuse.io_utils import atomic_path, atomic_write_json, scratch_dir
from geofuse.mapping.assess_io import ClassMap, open_class_map
from geofuse.raster.io import write_cog

#: Largest map vectorized at once: about 1 GB of memory (9 bytes per pixel).
MAX_PIXELS = 120_000_000
#: Polygons written to the GeoPackage per batch.
BATCH = 20_000
LAYER = "classes_mmu"


@dataclass
class VectorizeResult:
    """The written files and the record of ``vectorize.json``."""

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
    return max(1, math.ceil(float(mmu_ha) * 1e4 / pixel_area_m2 - 1e-9))


def vectorize_map(
    map_path: str | Path, out_dir: str | Path | None = None, mmu_ha: float | None = None,
    min_pixels: int | None = None, connectivity: int = 4, classes: list[str] | None = None,
    uncertainty: str | Path | None = None, max_pixels: int = MAX_PIXELS,
) -> VectorizeResult:
    """Sieve ``map_path`` to the MMU and write ``classes_mmu.tif``, ``.gpkg`` and
    ``vectorize.json`` in ``out_dir`` (default: the map's folder).

    Args:
        uncertainty: a raster on the map's grid whose first band (or band ``entropy``) is
            averaged per polygon; default: ``uncertainty.tif`` beside the map, when present.

    Raises:
        DataNotFoundError, RasterError: as :func:`open_class_map`; a map larger than
            ``max_pixels``; an uncertainty raster on another grid.
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
            f"once ({max_pixels:,}, about 9 bytes each); map a smaller part (geofuse predict "
            "on a cropped stack) or crop the map ('gdal_translate -srcwin ...')"
        )
    doubt_path = _uncertainty_path(cmap, uncertainty)
    out = Path(out_dir) if out_dir is not None else cmap.path.parent
    out.mkdir(parents=True, exist_ok=True)
    with rasterio.open(cmap.path) as src:
        values = src.read(1)
        profile, tags, band_tags = src.profile, src.tags(), src.tags(1)
        colours = _colormap(src)
    valid = values != cmap.nodata
    sieved = sieve(values, size, mask=valid, connectivity=connectivity) if size > 1 \
        else values.copy()
    sieved[~valid] = cmap.nodata
    map_out = out / "classes_mmu.tif"
    _write_map(map_out, sieved, profile, tags, band_tags, colours)
    regions, n_regions, region_class = _regions(sieved, valid, cmap.n_classes, connectivity)
    pixels = np.bincount(regions.ravel(), minlength=n_regions + 1)
    doubt_name, doubt = _uncertainty(doubt_path, regions, n_regions)
    polygons = out / f"{LAYER}.gpkg"
    n_polygons = _write_polygons(polygons, regions, cmap, region_class, pixels, doubt_name, doubt,
                                 connectivity)
    record = _record(cmap, sieved, values, valid, size, connectivity, region_class, pixels,
                     n_polygons, doubt_name)
    record_path = out / "vectorize.json"
    atomic_write_json(record_path, record)
    return VectorizeResult(map_out, polygons, record_path, record)


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
    try:
        with scratch_dir(path) as scratch, atomic_path(path) as tmp:
            plain = scratch / "plain.tif"
            with rasterio.open(plain, "w", **profile) as dst:
                dst.write(data, 1)
                dst.update_tags(**tags)
                dst.update_tags(1, **band_tags)
                if colours:
                    dst.write_colormap(1, colours)
            write_cog(plain, tmp, overview_resampling="mode")
    except RasterioError as err:
        raise write_failure(err, path) from None


def _regions(sieved: np.ndarray, valid: np.ndarray, k: int, connectivity: int
             ) -> tuple[np.ndarray, int, np.ndarray]:
    """Connected regions of one class: ids ``1..n`` (0 = nodata) and each region's class."""
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    regions = np.zeros(sieved.shape, np.int32)
    classes = [0]
    for c in range(k):
        ids, n = label((sieved == c) & valid, structure=structure, output=np.int32)
        if n:
            regions += np.where(ids > 0, ids + len(classes) - 1, 0).astype(np.int32)
            classes += [c] * n
    return regions, len(classes) - 1, np.asarray(classes, np.int64)


def _uncertainty_path(cmap: ClassMap, path: str | Path | None) -> Path | None:
    """The uncertainty raster to average (checked: on the map's grid), or ``None``."""
    given = path is not None
    src_path = Path(path) if given else cmap.path.parent / "uncertainty.tif"
    if not src_path.is_file():
        if given:
            raise RasterError(f"uncertainty raster {str(src_path)!r} does not exist; give the "
                              "uncertainty.tif that 'geofuse predict' wrote beside the map")
        return None
    with rasterio.open(src_path) as src:
        if (src.width, src.height, src.transform) != (cmap.grid.width, cmap.grid.height,
                                                      cmap.grid.transform):
            raise RasterError(
                f"uncertainty raster {str(src_path)!r} is {src.width}x{src.height} px on "
                f"another grid than the map {str(cmap.path)!r} ({cmap.grid.width}x"
                f"{cmap.grid.height} px); give the uncertainty.tif written with the map"
            )
    return src_path


def _uncertainty(src_path: Path | None, regions: np.ndarray, n: int
                 ) -> tuple[str | None, np.ndarray | None]:
    """Mean of the uncertainty band per region (name ``mean_<band>``), or ``(None, None)``."""
    if src_path is None:
        return None, None
    with rasterio.open(src_path) as src:
        names = list(src.descriptions)
        band = names.index("entropy") + 1 if "entropy" in names else 1
        values = src.read(band).astype(np.float64)
        name = names[band - 1] or f"band_{band}"
    finite = np.isfinite(values)
    sums = np.bincount(regions[finite], weights=values[finite], minlength=n + 1)
    counts = np.bincount(regions[finite], minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return f"mean_{name}", sums / counts


def _write_polygons(path: Path, regions: np.ndarray, cmap: ClassMap, region_class: np.ndarray,
                    pixels: np.ndarray, doubt_name: str | None, doubt: np.ndarray | None,
                    connectivity: int) -> int:
    """One polygon per region, written in batches to a GeoPackage (atomically)."""
    crs = cmap.grid.crs
    n = 0
    with atomic_path(path, suffix=".gpkg") as tmp:
        rows: list[dict[str, Any]] = []
        geoms = []
        for geom, value in shapes(regions, mask=regions > 0, connectivity=connectivity,
                                  transform=cmap.grid.transform):
            rid = int(value)
            c = int(region_class[rid])
            row = {"region": rid, "class_id": c, "class_name": cmap.class_names[c],
                   "pixels": int(pixels[rid]),
                   "area_ha": float(pixels[rid]) * cmap.pixel_area_m2 / 1e4}
            if doubt_name is not None and doubt is not None:
                row[doubt_name] = float(doubt[rid])
            rows.append(row)
            geoms.append(shape(geom))
            if len(rows) >= BATCH:
                n += _append(tmp, rows, geoms, crs, first=n == 0)
                rows, geoms = [], []
        if rows or n == 0:
            n += _append(tmp, rows, geoms, crs, first=n == 0)
    return n


def _append(path: Path, rows: list[dict[str, Any]], geoms: list[Any], crs: Any, first: bool
            ) -> int:
    frame = gpd.GeoDataFrame(rows, geometry=geoms, crs=crs)
    frame.to_file(path, driver="GPKG", layer=LAYER, engine="pyogrio",
                  mode="w" if first else "a")
    return len(rows)


def _record(cmap: ClassMap, sieved: np.ndarray, values: np.ndarray, valid: np.ndarray,
            size: int, connectivity: int, region_class: np.ndarray, pixels: np.ndarray,
            n_polygons: int, doubt_name: str | None) -> dict[str, Any]:
    ha = cmap.pixel_area_m2 / 1e4
    after = np.bincount(sieved[valid], minlength=cmap.n_classes)[: cmap.n_classes]
    per_class = []
    for c, name in enumerate(cmap.class_names):
        sizes = pixels[1:][region_class[1:] == c] * ha
        per_class.append({
            "class": name, "area_ha_before": float(cmap.counts[c] * ha),
            "area_ha_after": float(after[c] * ha), "polygons": len(sizes),
            "smallest_ha": float(sizes.min()) if len(sizes) else None,
            "median_ha": float(np.median(sizes)) if len(sizes) else None,
        })
    changed = int((sieved[valid] != values[valid]).sum())
    return {
        "map": str(cmap.path), "mmu_pixels": size, "mmu_ha": size * ha,
        "pixel_area_m2": cmap.pixel_area_m2, "connectivity": connectivity,
        "mapped_pixels": int(valid.sum()), "pixels_changed": changed,
        "changed_fraction": changed / max(1, int(valid.sum())), "polygons": n_polygons,
        "uncertainty_field": doubt_name, "classes": per_class,
    }


def summary(record: dict[str, Any]) -> str:
    """One line for the console."""
    return (f"MMU {record['mmu_ha']:.4g} ha ({record['mmu_pixels']} px, "
            f"{record['connectivity']}-connected): {record['pixels_changed']:,} pixels "
            f"({record['changed_fraction']:.1%}) merged into neighbours, "
            f"{record['polygons']:,} polygons")

